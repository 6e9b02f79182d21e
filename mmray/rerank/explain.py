"""Which of a product's facts a query names: the reranker's lexical features and its explanation.

Each indexed item has facts (colour, gender, category, every attribute value, from the index
metadata) and title words. A query is lower-cased, split into words, stop words dropped, plurals
made singular and a few shopper words mapped ("mens" -> men, "for her" -> women, "winter" -> wintry).
A query word matches a fact word when they are equal or, both 4+ letters long, nearly equal
(difflib ratio >= FUZZY_RATIO: "jaket" finds "jacket", "hodie" finds "hoodie").

`explanation["matched"]` lists `{"attribute", "value"}` of the facts the query matched;
`explanation["attention"]` is an (h, w) grid over the product photo that sums to 1 and
`explanation["grid"]` its [h, w] (the contract deployments/static/app.js draws).
"""
from __future__ import annotations

import difflib
import functools
import json
import re

import numpy as np

from mmray.catalog.captions import category_noun, singular

FUZZY_RATIO = 0.8
_WORD_RE = re.compile(r"[a-z0-9]+")
STOP_WORDS = frozenset("a an and the for with of in on to my me some something someone that is are made "
                       "from by at as i im want need looking look new good nice best cheap".split())
SYNONYMS = {"mens": "men", "man": "men", "guy": "men", "guys": "men", "him": "men", "male": "men",
            "womens": "women", "woman": "women", "lady": "women", "ladies": "women", "her": "women",
            "female": "women", "winter": "wintry", "rain": "rainy", "grey": "gray", "tshirt": "tee", "t": "",
            "shirt": "tee", "sweater": "sweatshirt", "trouser": "pant", "trousers": "pant", "pants": "pant",
            "shorts": "short", "leggings": "legging", "sweatpants": "sweatpant", "bra": "bra"}
# Per-candidate scalar features every head receives, in this order.
SCALAR_FEATURES = ("bi_encoder_cosine", "facts_matched", "title_matched", "color_agrees", "gender_agrees",
                   "noun_agrees")


def query_words(text: str) -> list[str]:
    out = []
    for w in _WORD_RE.findall(text.lower()):
        w = SYNONYMS.get(w, w)
        if w and w not in STOP_WORDS:
            out.append(singular(w))
    return out


def _words(value: str) -> set[str]:
    return {singular(SYNONYMS.get(w, w) or w) for w in _WORD_RE.findall((value or "").lower())}


@functools.lru_cache(maxsize=65536)
def _near(a: str, b: str) -> bool:
    return a == b or (len(a) >= 4 and len(b) >= 4 and difflib.SequenceMatcher(None, a, b).ratio() >= FUZZY_RATIO)


class FactMatcher:
    """The facts of every row of an index (its metadata columns), and the facet vocabularies."""

    def __init__(self, meta: dict):
        n = len(meta["id"])
        self.facts: list[list[tuple[str, str, set[str]]]] = []
        self.title_words: list[set[str]] = []
        self.color, self.gender, self.noun = [], [], []
        for i in range(n):
            facts = []
            color, gender, category = (meta[c][i] or "" for c in ("color", "gender", "category"))
            leaf = category.split("/")[-1] if category else ""
            noun = category_noun(category) if category else ""
            for name, value, extra in (("color", color, ""), ("gender", gender, ""), ("category", leaf, noun)):
                if value:
                    facts.append((name, value, _words(value) | _words(extra)))
            attrs = json.loads(meta["attributes_json"][i] or "{}") if "attributes_json" in meta else {}
            for name, values in attrs.items():
                for value in values or ():
                    if value:
                        facts.append((name, value, _words(value)))
            self.facts.append(facts)
            self.title_words.append(_words(meta["title"][i]))
            self.color.append(_words(color))
            self.gender.append(_words(gender))
            self.noun.append(_words(noun) | _words(leaf))
        self.vocab = {"color": set().union(*self.color) if n else set(),
                      "gender": {"men", "women"},
                      "noun": set().union(*self.noun) if n else set()}
        self.all_words = set().union(*self.title_words, *(v for facts in self.facts for _, _, v in facts)) if n else set()
        self._near_words: dict[str, frozenset[str]] = {}

    def near_words(self, word: str) -> frozenset[str]:
        """Every word of this index's facts and titles that `word` matches (itself, or nearly equal)."""
        found = self._near_words.get(word)
        if found is None:
            found = frozenset(v for v in self.all_words if _near(word, v)) | {word}
            if len(self._near_words) < 100_000:
                self._near_words[word] = found
        return found

    def features(self, query: str, rows: list[int], cosines: np.ndarray) -> tuple[np.ndarray, list[list[dict]]]:
        """(len(rows), len(SCALAR_FEATURES)) float32 features and each row's matched facts."""
        words = query_words(query)
        near = [self.near_words(w) for w in words]  # each query word -> the index words it matches
        named = {facet: [m for m in near if m & vocab] for facet, vocab in self.vocab.items()}
        out = np.zeros((len(rows), len(SCALAR_FEATURES)), dtype=np.float32)
        matched_all = []
        for j, row in enumerate(rows):
            matched, seen, fact_hit = [], set(), 0
            for m in near:
                hit = False
                for name, value, vocab in self.facts[row]:
                    if not m.isdisjoint(vocab):
                        hit = True
                        if (name, value) not in seen:
                            seen.add((name, value))
                            matched.append({"attribute": name, "value": value})
                fact_hit += hit
            title_hit = sum(not m.isdisjoint(self.title_words[row]) for m in near)
            out[j, 0] = cosines[j]
            out[j, 1] = fact_hit / max(len(words), 1)
            out[j, 2] = title_hit / max(len(words), 1)
            for k, (facet, have) in enumerate((("color", self.color[row]), ("gender", self.gender[row]),
                                               ("noun", self.noun[row])), start=3):
                if named[facet]:
                    out[j, k] = 1.0 if any(not m.isdisjoint(have) for m in named[facet]) else -1.0
            matched_all.append(matched)
        return out, matched_all


def attention_grid(weights: np.ndarray, grid: tuple[int, int]) -> list[list[float]]:
    """(G,) non-negative weights -> an (h, w) nested list that sums to 1 (uniform if all are zero)."""
    w = np.clip(np.asarray(weights, dtype=np.float64).reshape(-1), 0, None)
    total = w.sum()
    w = w / total if total > 0 else np.full(len(w), 1.0 / len(w))
    return np.round(w, 5).reshape(grid).tolist()
