"""Settings of the reranker, recommender and copywriter stages."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from mmray.config.base import StrictConfig


class RerankConfig(StrictConfig):
    """Cross-attention reranker over retrieved candidates."""

    enabled: bool = False
    """Rerank retrieved candidates."""
    top_k: int = Field(50, ge=1)
    """Candidates passed to the reranker."""


class RecommendConfig(StrictConfig):
    """Personalised and similar-item recommendation."""

    event_store: str = "sqlite:///artifacts/events.sqlite"
    """Event store URL (SQLite file by default)."""
    diversity: float = Field(0.3, ge=0.0, le=1.0)
    """MMR trade-off between relevance (0) and diversity (1)."""


class CopyConfig(StrictConfig):
    """Grounded product copy generation."""

    engine: Literal["grounded", "vllm", "openai", "transformers"] = "grounded"
    """grounded: weightless template generator; vllm: ray.serve.llm; openai: compatible endpoint; transformers: local model."""
    model: str | None = None
    """Model id or path for vllm / transformers / openai engines."""
    max_tokens: int = Field(256, ge=1)
    """Generation cap."""
