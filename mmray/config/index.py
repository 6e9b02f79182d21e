"""Index building and search settings (`jobs.build_index`, the Retriever)."""
from __future__ import annotations

from pydantic import Field

from mmray.config.base import StrictConfig


class IndexConfig(StrictConfig):
    """FAISS + lexical index."""

    factory: str = "auto"
    """FAISS factory string (`Flat`, `HNSW32`, `IVF4096,PQ32`) or `auto` (chosen by catalog size)."""
    image_weight: float = Field(0.5, ge=0.0, le=1.0)
    """Item vector = normalise(w * image + (1 - w) * text)."""
    hybrid: bool = True
    """Fuse lexical (BM25) and vector rankings by reciprocal rank fusion."""
    rrf_k: int = Field(60, ge=1)
    """RRF constant: score = sum 1 / (rrf_k + rank)."""
    num_shards: int = Field(1, ge=1)
    """Shards the vectors are split across (FAISS IndexShards)."""
    nprobe: int = Field(32, ge=1)
    """IVF lists probed per query (recall vs speed)."""
    ef_search: int = Field(128, ge=1)
    """HNSW search beam width (recall vs speed)."""
    embed_batch_size: int = Field(64, ge=1)
    """Rows per embedding batch."""
    embed_concurrency: int = Field(2, ge=1)
    """Embedder actors in the Ray Data pool that embeds the catalog (one model copy each)."""
    embed_num_gpus: float = Field(0.0, ge=0)
    """GPUs per embedder actor (0: CPU)."""
