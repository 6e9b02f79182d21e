"""Catalog facts as structured data: one `ProductFacts` per product (or item), the catalog table
they come from, and the removal of instruction-like text from catalog fields.

Catalog text is data, never instructions: a description sentence that reads like an instruction
to a model ("ignore previous instructions and ...") is cut out before it reaches a prompt or
counts as evidence for a claim, and is listed in `ProductFacts.quarantined_text`.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from mmray.catalog.captions import category_noun

# The dataset columns the Copywriter reads (datasets/<name>/items/*.parquet).
FACT_COLUMNS = ["id", "product_id", "title", "description", "category", "gender", "color", "sizes", "tags",
                "attributes_json", "price"]

# Text that addresses a model instead of describing a product; shared by the input sanitiser and
# the output check (an engine that echoes such text has been steered by its input).
INSTRUCTION_RE = re.compile(
    r"\b(ignore|disregard|forget|override)\b[^.!?\n]{0,40}\b(instructions?|prompts?|rules|guidelines|above|previous)\b"
    r"|\b(system|developer)\s+(prompt|message|instructions?)\b"
    r"|\byou\s+are\s+(now\s+)?(an?\s+)?(ai|assistant|chatbot|language\s+model|gpt)\b"
    r"|\bas\s+an\s+(ai|assistant|language\s+model)\b"
    r"|\b(new|real|actual)\s+instructions?\b"
    r"|<\s*/?\s*(system|assistant|user|im_start|im_end|script)\b|<\|[a-z_]+\|>"
    r"|\b(assistant|system|user)\s*:"
    r"|\b(write|say|state|claim|tell|respond|reply|output|print)\b[^.!?\n]{0,30}\b(instead|only)\b",
    re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+")  # "$19.99" stays whole: a sentence ends at a mark and a space


def split_sentences(text: str) -> list[str]:
    """Sentences (and lines) of `text`, stripped, in order."""
    return [s.strip() for line in (text or "").splitlines() for s in _SENTENCE_END_RE.split(line) if s.strip(" -\t")]


def strip_instructions(text: str) -> tuple[str, list[str]]:
    """`text` less its instruction-like sentences; returns (clean text, the sentences removed)."""
    kept, removed = [], []
    for line in (text or "").splitlines():
        parts = split_sentences(line)
        bad = [s for s in parts if INSTRUCTION_RE.search(s)]
        removed += bad
        good = [s for s in parts if s not in bad]
        if good:
            kept.append(" ".join(good))
    return "\n".join(kept), removed


class ProductFacts(BaseModel):
    """What the catalog says about one product (all its variants) or one item: the only source of
    claims. Lists are de-duplicated in catalog order."""

    product_id: str
    item_ids: list[str]
    title: str
    category: str = ""
    category_noun: str = "item"
    gender: str = ""
    colors: list[str] = []
    sizes: list[str] = []
    attributes: dict[str, list[str]] = {}
    tags: list[str] = []
    price_min: float | None = None
    price_max: float | None = None
    description: str = Field("", description="The merchant's description, instruction-like sentences removed")
    quarantined_text: list[str] = Field([], description="Catalog sentences removed as instructions")

    def prompt_data(self, description_chars: int) -> dict[str, Any]:
        """The facts as the JSON an LLM sees: only fields that have a value."""
        price = None
        if self.price_min is not None:
            price = (f"{self.price_min:.2f}" if self.price_min == self.price_max
                     else f"{self.price_min:.2f}-{self.price_max:.2f}")
        data = {"title": self.title, "product_type": self.category_noun, "category": self.category,
                "audience": self.gender, "colors": self.colors, "sizes": self.sizes,
                "attributes": self.attributes, "price": price,
                "merchant_description": _cut(self.description, description_chars)}
        return {k: v for k, v in data.items() if v not in (None, "", [], {})}


def _cut(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[:chars].rsplit(" ", 1)[0] + " ..."


def _unique(values: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for v in values:
        if v and v not in seen:
            seen[v] = None
    return list(seen)


def facts_from_rows(key: str, rows: list[dict], nouns: dict[str, str] | None = None) -> ProductFacts:
    """Facts of `key` (a product or item id) from its catalog rows (dicts with FACT_COLUMNS)."""
    attrs: dict[str, list[str]] = {}
    for r in rows:
        for name, values in json.loads(r.get("attributes_json") or "{}").items():
            attrs.setdefault(name, [])
            attrs[name] = _unique([*attrs[name], *[str(v) for v in values or []]])
    prices = [float(r["price"]) for r in rows if r.get("price") is not None and not math.isnan(float(r["price"]))]
    description, quarantined = strip_instructions(rows[0].get("description") or "")
    title, title_bad = strip_instructions(rows[0].get("title") or "")
    return ProductFacts(
        product_id=rows[0].get("product_id") or key, item_ids=[r["id"] for r in rows], title=title or key,
        category=rows[0].get("category") or "", category_noun=category_noun(rows[0].get("category") or "", nouns),
        gender=_unique(r.get("gender") or "" for r in rows)[0] if any(r.get("gender") for r in rows) else "",
        colors=_unique(r.get("color") or "" for r in rows), sizes=_unique(s for r in rows for s in r.get("sizes") or []),
        attributes={k: v for k, v in attrs.items() if v}, tags=_unique(t for r in rows for t in r.get("tags") or []),
        price_min=min(prices) if prices else None, price_max=max(prices) if prices else None,
        description=description, quarantined_text=title_bad + quarantined)


class Catalog:
    """The catalog's fact rows, grouped by product; facts for a product or an item id."""

    def __init__(self, rows: list[dict], nouns: dict[str, str] | None = None, ref: str = ""):
        self.rows, self.nouns, self.ref = rows, nouns, ref
        self.by_id = {r["id"]: r for r in rows}
        self.by_product: dict[str, list[dict]] = {}
        for r in rows:
            self.by_product.setdefault(r.get("product_id") or r["id"], []).append(r)

    @classmethod
    def from_parquet(cls, paths: list[str], filesystem=None, nouns: dict[str, str] | None = None,
                     ref: str = "") -> Catalog:
        table = pq.read_table(paths, filesystem=filesystem, columns=FACT_COLUMNS)
        return cls(table.to_pylist(), nouns, ref)

    def __contains__(self, key: str) -> bool:
        return key in self.by_id or key in self.by_product

    def product_ids(self) -> list[str]:
        return list(self.by_product)

    def rows_for(self, key: str) -> list[dict]:
        if key in self.by_product:
            return self.by_product[key]
        return [self.by_id[key]] if key in self.by_id else []

    def facts(self, key: str) -> ProductFacts | None:
        rows = self.rows_for(key)
        return facts_from_rows(key, rows, self.nouns) if rows else None

    def exemplar(self, key: str, chars: int) -> str:
        """The merchant's description of `key`, instruction-like sentences removed, cut to `chars`."""
        rows = self.rows_for(key)
        text = strip_instructions(rows[0].get("description") or "")[0] if rows else ""
        return _cut(" ".join(text.split()), chars) if text else ""
