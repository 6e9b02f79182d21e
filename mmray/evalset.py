"""Held-out evaluation queries for a catalog, built from the facets it has, with graded relevance.

For each held-out (test-split) item, short shopper-style queries are written from its facts, in
the wording of the captions (`CaptionConfig`: leaf noun, audience, attribute phrasing):
  "<colour> <noun> <audience>"              e.g. "blue jacket for women"
  "<noun> <audience> <attribute phrase>"    e.g. "hoodie for men made of wool", "apple spain origin"
  "<noun> <audience>"                       only for an item that writes neither of the above
The audience is left out where there is none or it is everyone ("unisex"). The attributes that
write queries are `CaptionConfig.query_attributes`, by default the one most held-out items have.
Relevance of every held-out item to a query is graded by facet match:
  2 = every facet the query names matches;  1 = noun (and audience) match, another facet does not;
  0 = otherwise.
Only test-split products are queries or corpus, so no query was seen in training.
"""
from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field

import numpy as np

from mmray.catalog.captions import attribute_phrase, audience_phrase, category_noun
from mmray.config import CaptionConfig

_COLUMN_FACETS = ("noun", "gender", "color")  # facets from columns; any other query facet is an attribute


@dataclass
class EvalQuery:
    text: str
    facets: dict[str, str]  # facet (noun, gender, color or an attribute name) -> required value (lower case)
    relevance: dict[str, int] = field(default_factory=dict)  # item id -> grade (only > 0 stored)


def item_facets(item: dict, cfg: CaptionConfig | None = None) -> dict[str, object]:
    """noun, gender, color (lower case, '' where absent) and attributes: name -> set of lower-case values."""
    attrs = json.loads(item.get("attributes_json") or "{}")
    nouns = (cfg or CaptionConfig()).nouns
    return {"noun": category_noun(item.get("category") or "", nouns),
            "gender": (item.get("gender") or "").lower(),
            "color": (item.get("color") or "").lower(),
            "attributes": {_facet_key(k.lower()): {v.lower() for v in vs if v} for k, vs in attrs.items() if vs}}


def _facet_key(attribute: str) -> str:
    return attribute if attribute not in _COLUMN_FACETS else f"attribute:{attribute}"


def query_attributes(facets: list[dict[str, object]], cfg: CaptionConfig) -> list[str]:
    """`cfg.query_attributes`, or the attribute most items have (ties: by name); [] without attributes."""
    if cfg.query_attributes is not None:
        return [_facet_key(name.lower()) for name in cfg.query_attributes]
    counts = collections.Counter(name for f in facets for name in f["attributes"])
    return [min(counts, key=lambda name: (-counts[name], name))] if counts else []


def build_queries(items: list[dict], cfg: CaptionConfig | None = None) -> list[EvalQuery]:
    """Queries over `items` (the held-out corpus), deduplicated, with graded relevance."""
    cfg = cfg or CaptionConfig()
    facets = {item["id"]: item_facets(item, cfg) for item in items}
    attributes = query_attributes([f for f in facets.values() if f["noun"] != "item"], cfg)
    queries: dict[str, EvalQuery] = {}

    def add(words: tuple[str, ...], wanted: dict[str, str]) -> None:
        text = " ".join(w for w in words if w)
        queries.setdefault(text, EvalQuery(text, wanted))

    for f in facets.values():
        if f["noun"] == "item":
            continue
        audience = audience_phrase(f["gender"], everyone="")
        base = {"noun": f["noun"], "gender": f["gender"] if audience else ""}
        wrote = False
        if f["color"]:
            add((f["color"], f["noun"], audience), {**base, "color": f["color"]})
            wrote = True
        for name in attributes:
            for value in sorted(f["attributes"].get(name, ()))[:1]:
                add((f["noun"], audience, attribute_phrase(name.removeprefix("attribute:"), [value], cfg)),
                    {**base, name: value})
                wrote = True
        if not wrote:
            add((f["noun"], audience), base)
    for q in queries.values():
        for item_id, f in facets.items():
            grade = grade_item(q.facets, f)
            if grade:
                q.relevance[item_id] = grade
    return [q for q in queries.values() if q.relevance]


def grade_item(query: dict[str, str], item: dict[str, object]) -> int:
    """2 if the item has every facet the query names; 1 if only its noun (and audience) match; else 0."""
    if query["noun"] != item["noun"] or (query.get("gender") and query["gender"] != item["gender"]):
        return 0
    color_ok = not query.get("color") or query["color"] == item["color"]
    attrs_ok = all(value in item["attributes"].get(name, ()) for name, value in query.items()
                   if name not in _COLUMN_FACETS)
    return 2 if color_ok and attrs_ok else 1


def relevance_matrix(queries: list[EvalQuery], item_ids: list[str]) -> np.ndarray:
    """(Q, N) graded relevance in the order of `item_ids`."""
    col = {item_id: j for j, item_id in enumerate(item_ids)}
    rel = np.zeros((len(queries), len(item_ids)), dtype=np.int8)
    for i, q in enumerate(queries):
        for item_id, grade in q.relevance.items():
            rel[i, col[item_id]] = grade
    return rel
