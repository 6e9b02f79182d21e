"""Filterable values of a loaded index (what the shop page offers as filters): category paths with
every prefix (the category filter matches whole-segment prefixes), genders, colours, and the price
range, each value with the number of products that carry it."""
from __future__ import annotations

import math

import numpy as np


def facet_values(meta: dict[str, np.ndarray]) -> dict:
    """{"category": [{"value", "products"}], "gender": [...], "color": [...], "price": {"min", "max"}}.

    `meta`: the Retriever's metadata columns (object arrays; `price` float with NaN for none).
    Values are counted in distinct products; empty values are left out; lists are sorted by value.
    """
    products = meta["product_id"]
    out: dict = {}
    for column in ("category", "gender", "color"):
        seen: dict[str, set] = {}
        for value, pid in zip(meta[column], products):
            if not value:
                continue
            keys = _prefixes(value) if column == "category" else [value]
            for key in keys:
                seen.setdefault(key, set()).add(pid)
        out[column] = [{"value": v, "products": len(p)} for v, p in sorted(seen.items())]
    prices = [float(p) for p in meta["price"] if p is not None and not math.isnan(p)]
    out["price"] = {"min": min(prices), "max": max(prices)} if prices else {"min": None, "max": None}
    return out


def _prefixes(path: str) -> list[str]:
    """'Women/Tops/Jackets' -> ['Women', 'Women/Tops', 'Women/Tops/Jackets']."""
    parts = [p for p in path.strip("/").split("/") if p]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]
