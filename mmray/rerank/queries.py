"""Queries written the way shoppers type, from catalog facts, graded by rule.

Per item, deterministic templates (a hash of the item id picks the variants):
  "womens blue jaket"        audience word, colour, the garment noun with one typo
  "tank for yoga"            noun + an intent phrase that names an attribute value
  "something warm for men"   intent + audience, no noun
  "cotton tee mens"          material + noun + audience
Intents map to attribute values of the catalog (INTENTS): "for hiking" -> activity Hiking/Trail/Outdoor,
"something warm" -> climate Cold/Wintry, "for summer" -> climate Hot, ...
Each query has `must` facets (an item failing one grades 0) and `want` facets (all met: 2, else 1).
Facets are those of `mmray.evalset.item_facets` (noun, gender, color, attributes by name).
Used on training products for training lists and, separately, on held-out products for the
second evaluation set (no query is written from a training product there).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from mmray.evalset import EvalQuery, item_facets

# intent phrase -> (attribute name, accepted values)
INTENTS: dict[str, tuple[str, frozenset[str]]] = {
    "for hiking": ("activity", frozenset({"hiking", "trail", "outdoor"})),
    "for the gym": ("activity", frozenset({"gym"})),
    "for yoga": ("activity", frozenset({"yoga"})),
    "for travel": ("activity", frozenset({"travel", "overnight"})),
    "something warm": ("climate", frozenset({"cold", "wintry"})),
    "for winter": ("climate", frozenset({"cold", "wintry"})),
    "for summer": ("climate", frozenset({"hot"})),
    "for rainy days": ("climate", frozenset({"rainy"})),
    "waterproof": ("features", frozenset({"waterproof"})),
}
_AUDIENCE = {"men": ("mens", "for men", "men's"), "women": ("womens", "for women", "ladies")}


@dataclass
class ShopperQuery:
    text: str
    must: dict[str, frozenset[str]]
    want: dict[str, frozenset[str]]
    relevance: dict[str, int] = field(default_factory=dict)

    def as_eval_query(self) -> EvalQuery:
        return EvalQuery(self.text, {k: "|".join(sorted(v)) for k, v in {**self.must, **self.want}.items()},
                         dict(self.relevance))


def _facet_values(f: dict, name: str) -> set[str]:
    if name in ("noun", "gender", "color"):
        return {f[name]} if f[name] else set()
    return set(f["attributes"].get(name, ()))


def grade(q: ShopperQuery, f: dict) -> int:
    if any(not (_facet_values(f, k) & v) for k, v in q.must.items()):
        return 0
    return 2 if all(_facet_values(f, k) & v for k, v in q.want.items()) else 1


def typo(word: str, h: int) -> str:
    """One deterministic typo in a word of 5+ letters (a dropped or a swapped interior letter)."""
    if len(word) < 5:
        return word
    i = 1 + h % (len(word) - 2)
    if (h >> 8) % 2:
        return word[:i] + word[i + 1:]
    return word[:i] + word[i + 1] + word[i] + word[i + 2:] if i + 1 < len(word) else word


def shopper_queries(items: list[dict], caption_cfg=None, min_relevant: int = 1) -> list[EvalQuery]:
    """Deduplicated shopper-style queries over `items` (the corpus they are graded against)."""
    facets = {it["id"]: item_facets(it, caption_cfg) for it in items}
    queries: dict[str, ShopperQuery] = {}

    def add(text: str, must: dict, want: dict) -> None:
        text = " ".join(text.split())
        queries.setdefault(text, ShopperQuery(text, {k: frozenset(v) for k, v in must.items()},
                                              {k: frozenset(v) for k, v in want.items()}))

    for item_id, f in facets.items():
        if f["noun"] == "item":
            continue
        h = int(hashlib.sha256(item_id.encode()).hexdigest()[:8], 16)
        gender = f["gender"] if f["gender"] in _AUDIENCE else ""
        aud = _AUDIENCE[gender][h % 3] if gender else ""
        g_must = {"gender": {gender}} if gender else {}
        noun = f["noun"]
        if f["color"]:
            add(f"{aud if h % 2 else ''} {f['color']} {typo(noun, h)} {'' if h % 2 else aud}",
                {"noun": {noun}, **g_must}, {"color": {f["color"]}})
        for phrase, (name, values) in INTENTS.items():
            if _facet_values(f, name) & values and (h >> 4) % 3 != 2:
                add(f"{noun} {phrase}", {"noun": {noun}}, {name: values})
                add(f"{phrase} {aud}", {name: values, **g_must}, {})
                break
        materials = sorted(_facet_values(f, "material"))
        if materials:
            m = materials[h % len(materials)].split()[-1]  # "organic cotton" -> "cotton"
            if m.isalpha():
                add(f"{m} {noun} {aud}", {"noun": {noun}, **g_must},
                    {"material": {v for v in _facet_values(f, "material") if v.split()[-1] == m}})
    out = []
    for q in queries.values():
        for item_id, f in facets.items():
            g = grade(q, f)
            if g:
                q.relevance[item_id] = g
        if sum(1 for g in q.relevance.values() if g == 2) >= min_relevant:
            out.append(q.as_eval_query())
    return out
