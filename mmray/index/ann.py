"""FAISS helpers: a factory string in, an index out; sharding; a recall self-check.

numpy in, `(D, I)` out. Vectors are unit-norm, so inner product is cosine similarity.
"""
from __future__ import annotations

import math

import faiss
import numpy as np

from mmray.config import IndexConfig

_DEFAULTS = IndexConfig()  # search-effort defaults live in the config, not here


def auto_factory(n: int, dim: int) -> str:
    """Exact search while it is cheap, IVF over flat vectors in the middle, compressed IVF-PQ at scale.

    IVF-Flat rather than HNSW32 between 50k and 2M: measured in one run at 200k and at 1M x 256
    (BENCHMARKS.md, Filtered search), IVF-Flat at nprobe 8 answered 2.9x / 2.5x the unfiltered
    single queries at higher recall (0.992 / 0.987 against 0.973 / 0.949), filtered ones faster at
    20 %, built 3-8x faster and took 20 % less memory. IVF-PQ alone finds about half the true top 10
    of clustered product vectors, so its candidates are re-ranked on 8-bit copies of the vectors
    (`Refine(SQ8)`): 0.93 recall@10 on a 60k test set against 0.46 without, at a quarter of the
    memory of re-ranking on floats."""
    if n <= 50_000:
        return "Flat"
    lists = 1 << int(math.log2(4 * math.sqrt(n)))
    if n <= 2_000_000:
        return f"IVF{lists},Flat"
    m = max(8, dim // 8)
    while dim % m:  # PQ needs the dimension to be a multiple of the number of sub-quantizers
        m -= 1
    return f"IVF{lists},PQ{m},Refine(SQ8)"


AUTO_NPROBE_FLAT, AUTO_NPROBE_CODES = 8, 32
"""`index.nprobe: auto` on IVF-Flat lists and on compressed (PQ / SQ) codes (IndexConfig.nprobe)."""


def resolve_nprobe(index: faiss.Index, nprobe: int | str) -> int:
    """`nprobe` itself, or for `auto` the value for this index's kind of IVF lists."""
    if nprobe != "auto":
        return int(nprobe)
    ivf = _ivf_of(index)
    return AUTO_NPROBE_FLAT if isinstance(ivf, faiss.IndexIVFFlat) else AUTO_NPROBE_CODES


def build_ann(vectors: np.ndarray, factory: str, num_shards: int = 1, train_sample: int = 100_000,
              seed: int = 0, nprobe: int | str = _DEFAULTS.nprobe, ef_search: int = _DEFAULTS.ef_search) -> faiss.Index:
    """An inner-product index of `vectors` (N, d) from a factory string; IVF/PQ train on a sample.

    With `num_shards > 1` the rows are split into contiguous ranges, one sub-index each, joined
    by `faiss.IndexShards` (ids stay global); a Retriever replica can hold a single shard.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if factory == "auto":
        factory = auto_factory(n, dim)
    if num_shards <= 1:
        return _build_one(vectors, factory, train_sample, seed, nprobe, ef_search)
    shards = faiss.IndexShards(dim, False, True)  # not threaded; successive ids
    bounds = np.linspace(0, n, num_shards + 1).astype(int)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        shards.add_shard(_build_one(vectors[lo:hi], factory, train_sample, seed, nprobe, ef_search))
    return shards


def _build_one(vectors: np.ndarray, factory: str, train_sample: int, seed: int, nprobe: int | str,
               ef_search: int) -> faiss.Index:
    n, dim = vectors.shape
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(f"invalid FAISS factory string {factory!r}: {str(e).splitlines()[0]}") from None
    if not index.is_trained:
        ivf = _ivf_of(index)
        if ivf is not None:
            train_sample = max(train_sample, 39 * ivf.nlist)  # FAISS wants >= 39 points per list
            if hasattr(ivf, "do_polysemous_training"):
                ivf.do_polysemous_training = False  # only helps Hamming search, which we never use
        rng = np.random.default_rng(seed)
        sample = vectors[rng.choice(n, size=min(n, train_sample), replace=False)]
        try:
            index.train(sample)
        except RuntimeError as e:  # e.g. fewer training vectors than IVF lists
            raise ValueError(f"FAISS index {factory!r} cannot be trained on {len(sample)} vectors: "
                             f"{str(e).splitlines()[0]}") from None
    index.add(vectors)
    set_search_effort(index, nprobe, ef_search)
    return index


def _ivf_of(index: faiss.Index):
    """The IVF index inside `index` (also under a refine wrapper), or None."""
    try:
        return faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:
        return None


def set_search_effort(index: faiss.Index, nprobe: int | str = _DEFAULTS.nprobe, ef_search: int = _DEFAULTS.ef_search,
                      k_factor: int = 8) -> None:
    """Search-time knobs: IVF lists probed (`auto`: `resolve_nprobe`), HNSW beam width, re-ranked
    candidates of a refined (`...,RFlat`) index. Knobs an index does not have are skipped."""
    if isinstance(index, faiss.IndexShards):  # `auto` is resolved per shard (ParameterSpace sees no IVF in shards)
        for i in range(index.count()):
            set_search_effort(faiss.downcast_index(index.at(i)), nprobe, ef_search, k_factor)
        return
    nprobe = resolve_nprobe(index, nprobe)
    for name, value in (("nprobe", nprobe), ("efSearch", ef_search), ("k_factor_rf", k_factor)):
        try:
            faiss.ParameterSpace().set_index_parameter(index, name, value)
        except RuntimeError:
            pass


def save_ann(index: faiss.Index, folder: str) -> list[str]:
    """Write `index` as shard_NNN.faiss files (one per shard); returns the file names."""
    import os

    shards = ([faiss.downcast_index(index.at(i)) for i in range(index.count())]
              if isinstance(index, faiss.IndexShards) else [index])
    names = []
    for i, shard in enumerate(shards):
        names.append(f"shard_{i:03d}.faiss")
        faiss.write_index(shard, os.path.join(folder, names[-1]))
    return names


def load_ann(paths: list[str], nprobe: int | str = _DEFAULTS.nprobe, ef_search: int = _DEFAULTS.ef_search) -> faiss.Index:
    """Read shard files back into one index (IndexShards when there are several)."""
    parts = [faiss.read_index(p) for p in paths]
    for part in parts:
        set_search_effort(part, nprobe, ef_search)
    if len(parts) == 1:
        return parts[0]
    shards = faiss.IndexShards(parts[0].d, False, True)
    for part in parts:
        shards.add_shard(part)
    return shards


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k (the reference every index is checked against)."""
    scores = queries @ vectors.T
    k = min(k, vectors.shape[0])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    idx = np.take_along_axis(top, order, axis=1)
    return np.take_along_axis(scores, idx, axis=1), idx


def recall_at_k(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    """Share of the exact top-k that `index` also returns."""
    _, exact = exact_search(vectors, queries, k)
    _, approx = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    hits = [len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact)]
    return float(np.sum(hits) / exact.size)
