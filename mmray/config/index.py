"""Index building and search settings (`jobs.build_index`, the Retriever)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from mmray.config.base import StrictConfig


class IndexConfig(StrictConfig):
    """FAISS + lexical index."""

    factory: str = "auto"
    """FAISS factory string (`Flat`, `HNSW32`, `IVF4096,PQ32`) or `auto` (chosen by catalog size:
    `mmray.index.ann.auto_factory`)."""
    image_weight: float = Field(0.5, ge=0.0, le=1.0)
    """Item vector = normalise(w * image + (1 - w) * text)."""
    hybrid: bool = True
    """Fuse lexical (BM25) and vector rankings by reciprocal rank fusion."""
    rrf_k: int = Field(60, ge=1)
    """RRF constant: score = sum 1 / (rrf_k + rank)."""
    num_shards: int = Field(1, ge=1)
    """Shards the vectors are split across (FAISS IndexShards)."""
    nprobe: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    """IVF lists probed per query (recall vs speed). `auto`: 8 on IVF-Flat lists (R@10 0.992 at 200k
    vectors in 1,024 lists, 0.987 at 1M in 2,048: BENCHMARKS.md, Filtered search), 32 on compressed
    codes (IVF-PQ, whose candidates are re-ranked)."""
    ef_search: int = Field(128, ge=1)
    """HNSW search beam width (recall vs speed)."""
    filter_exact_share: float = Field(0.1, ge=0.0, le=1.0)
    """A filtered search whose filter matches less than this share of the index scores only the
    matching rows exactly (in place, no copy of the vectors); a broader one searches the ANN index
    with a bitmap selector and raised effort (`mmray/index/planner.py`). Below ~10 %, HNSW misses
    rows of a category far from the query unless its effort costs more than the exact scan
    (measured in BENCHMARKS.md, "Filtered search")."""
    filter_post_margin: float = Field(2.0, ge=0.0)
    """On an HNSW index, a filter broader than `filter_exact_share` is first tried as an unfiltered
    search for k' = margin * k / share candidates (efSearch at least k'), keeping the matching
    ones; a query left with fewer than k matches goes on to the selector search or the exact scan
    (`filter_trial_queries`). Used only while margin * k < efSearch (then a beam of k' costs less
    than the selector's efSearch / share). 0 turns it off (the selector search only)."""
    filter_trial_queries: int = Field(5, ge=0)
    """A broad filter's plan times its first single queries both ways, this many each: the ANN
    index with the selector and the exact scan of its matching rows; it then keeps, for that
    filter's single queries, whichever way's fastest trial was faster (batches take the ANN
    index). On HNSW32 at 50k the exact scan of a 20 % filter's rows measured faster than the
    selector search at efSearch / share. 0: always the ANN index."""
    filter_max_effort: int = Field(2048, ge=1)
    """Cap on the raised HNSW `efSearch` / IVF `nprobe` of a filtered ANN search."""
    filter_cache: int = Field(64, ge=0)
    """Filter plans (matching rows, bitmap, FAISS selector) kept per loaded index, least recently
    used dropped; a plan takes about N/8 bytes plus 8 per matching row (N more once a hybrid search
    used it)."""
    embed_batch_size: int = Field(64, ge=1)
    """Rows per embedding batch."""
    embed_runtime: Literal["torch", "onnx", "onnx-int8"] = "onnx"
    """Where the Ray Data index build runs both towers: `onnx` exports them to ONNX Runtime (fp32,
    checked against torch, cached next to the model as `compiled/...`; a tower that fails the
    check stays on torch with a warning), `onnx-int8` quantises them (calibrated on catalog
    photos), `torch` (GPU actors: `embed_num_gpus`). BENCHMARKS.md, "Embedding", has the speed and
    quality of each."""
    query_runtime: Literal["torch", "onnx", "onnx-int8"] = "onnx"
    """The same choice for a serving process on CPU (the co-located Ingress, an in-process
    SearchService): query text and uploaded photos. ONNX Runtime holds no GIL while it runs, so the
    HTTP event loop keeps a core. The split graph's Embedder deployment (GPU) always uses torch."""
    search_threads: int = Field(2, ge=1)
    """Worker threads a process searching through `LocalBackend` (the co-located Ingress, an
    in-process SearchService) runs embedding and search in. More threads than cores only add GIL contention
    with the HTTP event loop: 2 measured best on a 1-CPU replica (BENCHMARKS.md, serve)."""
    embed_concurrency: int = Field(2, ge=1)
    """Embedder actors in the Ray Data pool that embeds the catalog (one model copy each)."""
    embed_num_gpus: float = Field(0.0, ge=0)
    """GPUs per embedder actor (0: CPU)."""
