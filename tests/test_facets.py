"""Filter values of an index (mmray/index/facets.py) against a naive count over the rows."""
from __future__ import annotations

import numpy as np

from mmray.index.facets import facet_values


def test_facets_count_distinct_products_per_value_and_category_prefix():
    rows = [  # (product_id, category, gender, color, price)
        ("p1", "Women/Tops/Jackets", "Women", "Red", 10.0),
        ("p1", "Women/Tops/Jackets", "Women", "Blue", 12.0),  # a second variant: same product
        ("p2", "Women/Tops/Tees", "Women", "Red", float("nan")),
        ("p3", "Men/Bottoms", "Men", "", 55.5),
        ("p4", "", None, "Blue", 3.0),
    ]
    meta = {name: np.array([r[i] for r in rows], dtype=object)
            for i, name in enumerate(("product_id", "category", "gender", "color"))}
    meta["price"] = np.array([r[4] for r in rows], dtype=np.float64)
    out = facet_values(meta)
    assert out["category"] == [{"value": "Men", "products": 1}, {"value": "Men/Bottoms", "products": 1},
                               {"value": "Women", "products": 2}, {"value": "Women/Tops", "products": 2},
                               {"value": "Women/Tops/Jackets", "products": 1}, {"value": "Women/Tops/Tees", "products": 1}]
    assert out["gender"] == [{"value": "Men", "products": 1}, {"value": "Women", "products": 2}]
    assert out["color"] == [{"value": "Blue", "products": 2}, {"value": "Red", "products": 2}]
    assert out["price"] == {"min": 3.0, "max": 55.5}
    empty = {k: v[:0] for k, v in meta.items()}
    assert facet_values(empty) == {"category": [], "gender": [], "color": [], "price": {"min": None, "max": None}}
