"""Held-out evaluation queries for a catalog, built from its attributes with graded relevance.

For each held-out (test-split) item, short shopper-style queries are written from its facts:
  "<colour> <garment> for <gender>"            e.g. "blue jacket for women"
  "<garment> for <gender> made of <material>"  e.g. "hoodie for men made of wool"
  "<colour> <garment>"                         for items without a gender (gear)
Relevance of every held-out item to a query is graded by facet match:
  2 = every facet the query names matches;  1 = garment (and gender) match, another facet does not;
  0 = otherwise.
Only test-split products are queries or corpus, so no query was seen in training.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from mmray.catalog import garment_noun


@dataclass
class EvalQuery:
    text: str
    facets: dict[str, str]  # facet -> required value (lower case)
    relevance: dict[str, int] = field(default_factory=dict)  # item id -> grade (only > 0 stored)


def item_facets(item: dict) -> dict[str, object]:
    attrs = json.loads(item.get("attributes_json") or "{}")
    return {"noun": garment_noun(item.get("category") or ""),
            "gender": (item.get("gender") or "").lower(),
            "color": (item.get("color") or "").lower(),
            "material": {m.lower() for m in attrs.get("material", [])}}


def _gender_words(gender: str) -> str:
    return {"men": "for men", "women": "for women"}.get(gender, "")


def build_queries(items: list[dict]) -> list[EvalQuery]:
    """Queries over `items` (the held-out corpus), deduplicated, with graded relevance."""
    queries: dict[str, EvalQuery] = {}
    for item in items:
        f = item_facets(item)
        if f["noun"] == "item":
            continue
        g = _gender_words(f["gender"])
        if f["color"]:
            text = " ".join(p for p in (f["color"], f["noun"], g) if p)
            queries.setdefault(text, EvalQuery(text, {"noun": f["noun"], "gender": f["gender"] if g else "",
                                                      "color": f["color"]}))
        for material in sorted(f["material"])[:1]:
            text = " ".join(p for p in (f["noun"], g, f"made of {material.lower()}") if p)
            queries.setdefault(text, EvalQuery(text, {"noun": f["noun"], "gender": f["gender"] if g else "",
                                                      "material": material}))
    facets = {item["id"]: item_facets(item) for item in items}
    for q in queries.values():
        for item_id, f in facets.items():
            grade = grade_item(q.facets, f)
            if grade:
                q.relevance[item_id] = grade
    return [q for q in queries.values() if q.relevance]


def grade_item(query: dict[str, str], item: dict[str, object]) -> int:
    if query["noun"] != item["noun"] or (query.get("gender") and query["gender"] != item["gender"]):
        return 0
    color_ok = not query.get("color") or query["color"] == item["color"]
    material_ok = not query.get("material") or query["material"] in item["material"]
    return 2 if color_ok and material_ok else 1


def relevance_matrix(queries: list[EvalQuery], item_ids: list[str]) -> np.ndarray:
    """(Q, N) graded relevance in the order of `item_ids`."""
    col = {item_id: j for j, item_id in enumerate(item_ids)}
    rel = np.zeros((len(queries), len(item_ids)), dtype=np.int8)
    for i, q in enumerate(queries):
        for item_id, grade in q.relevance.items():
            rel[i, col[item_id]] = grade
    return rel
