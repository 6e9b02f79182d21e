"""Metadata filters shared by the library search functions and the HTTP API."""
from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class SearchFilters(BaseModel):
    """Restrict results; every field is optional and they combine with AND."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    category: str | None = Field(None, max_length=200)
    """Category path prefix, e.g. `Women/Tops` (case-insensitive, whole segments)."""
    gender: str | None = Field(None, max_length=50)
    """Exact gender, e.g. `Men`, `Women`, `Unisex` (case-insensitive)."""
    color: str | None = Field(None, max_length=50)
    """Exact colour, e.g. `Blue` (case-insensitive)."""
    min_price: float | None = Field(None, ge=0, allow_inf_nan=False)
    """Lowest price, inclusive."""
    max_price: float | None = Field(None, ge=0, allow_inf_nan=False)
    """Highest price, inclusive."""
    available_only: bool = False
    """Only items marked available."""

    @model_validator(mode="after")
    def _price_range(self):
        if self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
            raise ValueError("min_price must not exceed max_price")
        return self

    def is_empty(self) -> bool:
        return not (self.category or self.gender or self.color or self.available_only
                    or self.min_price is not None or self.max_price is not None)

    def mask(self, meta: dict[str, np.ndarray]) -> np.ndarray:
        """(N,) bool over metadata columns (lower-cased strings, float prices)."""
        keep = np.ones(len(meta["id"]), dtype=bool)
        if self.category:
            prefix = self.category.strip("/").lower()
            cats = meta["category_lc"]
            keep &= (cats == prefix) | np.char.startswith(cats.astype(str), prefix + "/")
        if self.gender:
            keep &= meta["gender_lc"] == self.gender.lower()
        if self.color:
            keep &= meta["color_lc"] == self.color.lower()
        if self.min_price is not None:
            keep &= meta["price"] >= self.min_price
        if self.max_price is not None:
            keep &= meta["price"] <= self.max_price
        if self.available_only:
            keep &= meta["available"]
        return keep
