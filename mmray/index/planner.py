"""Filtered vector search: metadata held as columns ready for filtering, a plan per filter, and
the search that carries it out.

`FilterPlanner` is built once per loaded index. Each filterable column becomes integer codes with
the rows of every value as a sorted slice of one argsort (category also by path prefix, prices
sorted for ranges), so a filter costs O(rows of its most selective condition), never a Python pass
over every row. A `FilterPlan` is the matching rows, their share of the index (the selectivity)
and a strategy:

- `exact` when the share is below `index.filter_exact_share` (or the index is Flat): inner products
  with only the matching rows, read in place by FAISS (`knn_inner_products_by_idx`), so no copy of
  the vector matrix is made (rows that form one run lo..hi-1, as a catalog stored in category
  order gives, are scanned as a slice of the matrix: no gather, ~1.5x faster at 1,000 rows);
- `post` otherwise, on an HNSW index (`index.filter_post_margin` > 0): an unfiltered search for
  k' = margin * k / share candidates (efSearch raised to at least k'), keeping the matching ones.
  If the k' candidates were the exact top k', the k best matching among them are the exact
  filtered top k whenever at least k of them match, so a query is only accepted then; one left
  with fewer matches (its neighbourhood matches less than `share` suggests) goes on to `ann`. A
  beam of k' is cheaper than the selector's efSearch / share (a graph search with a selector has
  to widen its beam ~1/share to find as many matching rows) whenever margin * k < efSearch, so
  a search with margin * k >= efSearch skips it;
- `ann` otherwise: the FAISS index with an `IDSelectorBitmap` over the matching rows and its search
  effort (HNSW `efSearch`, IVF `nprobe`) raised by `effort_boost(share)` = 1 / share, capped by
  `index.filter_max_effort`, so about as many matching candidates are examined as an unfiltered
  search examines candidates; a shard of an `IndexShards` is searched with its own slice of the
  bitmap. A gentler raise (share^-(1 - share): 3.6x at 20 %) was faster but lost recall against
  the unfiltered search on filters that follow the vectors (categories do), so it is not used.
  `search` falls back to `exact` for a query that gets fewer matching rows than asked for.

Whether the selector search or an exact scan of the matching rows is faster for a broad filter
(the `ann` plan, and the queries a `post` plan passes on) depends on the index, the share and the
machine, so it is measured rather than modelled: a plan's first `index.filter_trial_queries` single
queries each way are timed, and the plan keeps the way whose fastest trial was faster (or drops a way
at once whose first trial was `DECISIVE` times slower than the other's: `decided`). Both ways return
rows that match the filter, and the exact way the exact ones, so the choice moves speed only.

Plans are cached by filter (`index.filter_cache`): a shop offers few filter combinations, so the
rows, bitmap and FAISS selector of a repeated filter are built once.
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict

import faiss
import numpy as np

from mmray.config import IndexConfig
from mmray.index.filters import SearchFilters

_DEFAULTS = IndexConfig()
_CHUNK = 8192  # rows per block when several queries are scored exactly (bounded working memory)


class _Column:
    """A string column as codes, with the sorted rows of each code as slices of one argsort."""

    def __init__(self, values: np.ndarray):
        uniques, codes = np.unique(np.asarray(values, dtype=str), return_inverse=True)
        self.codes = codes.astype(np.int32).ravel()
        self.code_of = {str(v): i for i, v in enumerate(uniques)}
        self.order = np.argsort(self.codes, kind="stable").astype(np.int64)  # rows ascending within a code
        self.starts = np.searchsorted(self.codes[self.order], np.arange(len(uniques) + 1))

    def rows(self, code: int) -> np.ndarray:
        return self.order[self.starts[code]:self.starts[code + 1]]


class FilterPlan:
    """The rows one filter matches (sorted int64, or None for every row), its selectivity and the
    search strategy; the bitmap and FAISS selectors are built on first use and kept."""

    def __init__(self, rows: np.ndarray | None, n: int, strategy: str):
        self.rows, self.n, self.strategy = rows, n, strategy
        self.count = n if rows is None else len(rows)
        # first row of a run (the rows are lo..lo+count-1, as a catalog stored by category gives):
        # scanned as a slice of the vector matrix, in place
        self.run_start = int(rows[0]) if rows is not None and self.count and rows[-1] - rows[0] + 1 == self.count \
            else None
        self.share = self.count / n if n else 0.0
        self._bitmap: np.ndarray | None = None
        self._mask: np.ndarray | None = None
        self._selectors: dict = {}
        self.trials: dict[str, list[float]] = {"ann": [], "exact": []}  # seconds per query, each way
        self.choice: str | None = None  # "ann" or "exact" once the trials are done

    @property
    def everything(self) -> bool:
        return self.rows is None

    def bitmap(self) -> np.ndarray:
        """Packed bits, little-endian within a byte (row r is bit r & 7 of byte r >> 3), as
        `faiss.IDSelectorBitmap` reads them."""
        if self._bitmap is None:
            self._bitmap = np.packbits(self._bools(), bitorder="little")
        return self._bitmap

    def mask(self) -> np.ndarray:
        """(N,) bool, read-only; kept (hybrid search's BM25 takes it)."""
        if self._mask is None:
            mask = self._bools()
            mask.flags.writeable = False
            self._mask = mask
        return self._mask

    def _bools(self) -> np.ndarray:
        if self._mask is not None:
            return self._mask
        mask = np.zeros(self.n, dtype=bool)
        mask[slice(None) if self.rows is None else self.rows] = True
        return mask

    def contains(self, rows: np.ndarray) -> np.ndarray:
        """Bool per row of `rows` (valid row numbers): does the filter match it."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.rows is None:
            return np.ones(len(rows), dtype=bool)
        if self._mask is not None:
            return self._mask[rows]
        if self.strategy == "exact":  # small sorted row set: binary search, no N-sized array
            pos = np.minimum(np.searchsorted(self.rows, rows), max(self.count - 1, 0))
            return self.rows[pos] == rows if self.count else np.zeros(len(rows), dtype=bool)
        bits = self.bitmap()
        return ((bits[rows >> 3] >> (rows & 7).astype(np.uint8)) & 1).astype(bool)

    def selector(self, lo: int = 0, hi: int | None = None) -> faiss.IDSelector:
        """An `IDSelectorBitmap` over rows lo..hi-1, ids relative to lo (one shard's local ids)."""
        hi = self.n if hi is None else hi
        sel = self._selectors.get((lo, hi))
        if sel is None:
            if lo % 8 == 0:
                bits = self.bitmap()[lo // 8:(hi + 7) // 8]  # a view: the shard's bytes of the bitmap
            else:
                bits = np.packbits(self._bools()[lo:hi], bitorder="little")
            sel = faiss.IDSelectorBitmap(hi - lo, faiss.swig_ptr(bits))
            sel.bits_ref = bits  # keep the buffer alive as long as the selector
            self._selectors[(lo, hi)] = sel
        return sel



class FilterPlanner:
    """Columns for filtering one index's metadata, and the filtered search over its vectors."""

    def __init__(self, meta: dict[str, np.ndarray], ann: faiss.Index, vectors: np.ndarray,
                 exact_share: float = _DEFAULTS.filter_exact_share, max_effort: int = _DEFAULTS.filter_max_effort,
                 cache_size: int = _DEFAULTS.filter_cache, post_margin: float = _DEFAULTS.filter_post_margin,
                 trial_queries: int = _DEFAULTS.filter_trial_queries):
        self.ann, self.vectors = ann, np.ascontiguousarray(vectors, dtype=np.float32)
        self.n = len(self.vectors)
        self.exact_share, self.max_effort, self.cache_size = exact_share, max_effort, cache_size
        self.post_margin, self.trial_queries = post_margin, trial_queries
        self.category = _Column(meta["category_lc"])
        self.gender = _Column(meta["gender_lc"])
        self.color = _Column(meta["color_lc"])
        price = np.asarray(meta["price"], dtype=np.float64)
        self.price = price
        self.price_order = np.argsort(price, kind="stable").astype(np.int64)  # NaN (no price) last
        self.price_sorted = price[self.price_order]
        self.n_priced = int(np.count_nonzero(~np.isnan(price)))
        self.available = np.asarray(meta["available"], dtype=bool)
        self.available_rows = np.flatnonzero(self.available).astype(np.int64)
        self._prefix_codes: dict[str, np.ndarray] = {}
        self._prefix_rows: dict[str, np.ndarray] = {}
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()  # a serving process searches from several threads
        self.everything = FilterPlan(None, self.n, "ann")
        self.exact_index = _is_flat(ann)
        self.shards = _shard_bounds(ann)
        self.graph_index = _is_hnsw(ann)
        self._graph = faiss.downcast_index(ann if self.shards is None else self.shards[0][0]) if self.graph_index else None

    # ------------------------------------------------------------------ plans
    def plan(self, filters: SearchFilters | None) -> FilterPlan:
        """The (cached) plan for `filters`; `everything` for no filter."""
        if filters is None or filters.is_empty():
            return self.everything
        key = (filters.category and filters.category.strip("/").lower(), (filters.gender or "").lower(),
               (filters.color or "").lower(), filters.min_price, filters.max_price, filters.available_only)
        with self._lock:
            plan = self._cache.get(key)
            if plan is not None:
                self._cache.move_to_end(key)
                return plan
        rows = self.matching_rows(filters)
        plan = FilterPlan(rows, self.n, self.strategy_for(len(rows)))
        if self.cache_size:
            with self._lock:
                self._cache[key] = plan
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return plan

    def without(self, plan: FilterPlan, exclude) -> FilterPlan:
        """`plan` minus some rows (not cached: `similar` excludes the query's own product)."""
        exclude = np.unique(np.asarray(exclude, dtype=np.int64))
        rows = np.arange(self.n, dtype=np.int64) if plan.rows is None else plan.rows
        rows = np.setdiff1d(rows, exclude, assume_unique=True)
        return FilterPlan(rows, self.n, self.strategy_for(len(rows)))

    def strategy_for(self, count: int) -> str:
        if self.exact_index or count < self.exact_share * self.n:
            return "exact"
        return "post" if self.graph_index and self.post_margin > 0 else "ann"

    def matching_rows(self, filters: SearchFilters) -> np.ndarray:
        """Sorted int64 rows matching `filters`: the rows of the most selective condition, then the
        other conditions checked on those rows only."""
        conds = []  # (rows, check(rows) -> bool per row); every `rows` is sorted except the price range's
        if filters.category:
            prefix = filters.category.strip("/").lower()
            codes = self._category_codes(prefix)
            ok = np.zeros(len(self.category.code_of), dtype=bool)
            ok[codes] = True
            conds.append((self._category_rows(prefix, codes), lambda r, ok=ok: ok[self.category.codes[r]]))
        for col, value in ((self.gender, filters.gender), (self.color, filters.color)):
            if value:
                code = col.code_of.get(value.lower())
                if code is None:
                    return np.zeros(0, dtype=np.int64)
                conds.append((col.rows(code), lambda r, col=col, code=code: col.codes[r] == code))
        by_price = None
        if filters.min_price is not None or filters.max_price is not None:
            lo_p = -math.inf if filters.min_price is None else filters.min_price
            hi_p = math.inf if filters.max_price is None else filters.max_price
            priced = self.price_sorted[:self.n_priced]
            a, b = np.searchsorted(priced, lo_p, "left"), np.searchsorted(priced, hi_p, "right")
            by_price = self.price_order[a:b]
            conds.append((by_price, lambda r, lo=lo_p, hi=hi_p: (self.price[r] >= lo) & (self.price[r] <= hi)))
        if filters.available_only:
            conds.append((self.available_rows, lambda r: self.available[r]))
        conds.sort(key=lambda c: len(c[0]))
        rows = conds[0][0]
        for _, check in conds[1:]:
            if not len(rows):
                break
            rows = rows[check(rows)]  # a new array: the columns' row sets are never written
        if conds[0][0] is by_price:
            rows = np.sort(rows)  # price-ordered rows
        return rows

    def _category_codes(self, prefix: str) -> np.ndarray:
        codes = self._prefix_codes.get(prefix)
        if codes is None:
            codes = np.array([c for v, c in self.category.code_of.items()
                              if v and (v == prefix or v.startswith(prefix + "/"))], dtype=np.int64)
            self._prefix_codes[prefix] = codes
        return codes

    def _category_rows(self, prefix: str, codes: np.ndarray) -> np.ndarray:
        rows = self._prefix_rows.get(prefix)
        if rows is None:
            if len(codes) == 1:
                rows = self.category.rows(int(codes[0]))
            else:
                parts = [self.category.rows(int(c)) for c in codes]
                rows = np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
            if len(self._prefix_rows) < 4096:  # distinct prefixes of the catalog's category paths
                self._prefix_rows[prefix] = rows
        return rows

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, plan: FilterPlan, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, rows) of each query among the plan's rows, (nq, min(k, count)), best first:
        exact for an `exact` plan; for `post`, the unfiltered candidates, then `broad` for the
        queries left short; for `ann`, `broad`; and exact for any query the ANN index could not
        give that many matching rows."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries.reshape(1, -1)
        k = min(k, plan.count)
        if k <= 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        if plan.everything:
            scores, rows = self.ann.search(queries, k)
            short = rows[:, -1] < 0  # the ANN index found fewer than k rows (tiny or odd index)
            if short.any():
                scores, rows = scores.copy(), rows.copy()
                scores[short], rows[short] = self.exact(queries[short], plan, k)
            return scores, rows
        if plan.strategy == "exact":
            return self.exact(queries, plan, k)
        if plan.strategy == "post" and self.post_margin * k < self._graph_ef():
            scores, rows = self.post_search(queries, plan, k)
            short = rows[:, -1] < 0  # fewer than k matching candidates: the selector search or exact next
            if short.any():
                scores[short], rows[short] = self.broad(queries[short], plan, k)
            return scores, rows
        return self.broad(queries, plan, k)

    def broad(self, queries: np.ndarray, plan: FilterPlan, k: int) -> tuple[np.ndarray, np.ndarray]:
        """A broad filter's search: the selector search or the exact scan, whichever this plan
        measured faster (timed on its first single queries, `trial_queries` each way, alternating;
        the fastest of each way's trials compared, since load from other work only adds time and
        the first selector search also builds the bitmap). Batches take the selector search."""
        how = "ann" if len(queries) != 1 else plan.choice  # batches: the ANN index (it spreads them over threads)
        if how is None and self.trial_queries <= 0:
            how = "ann"
        if how is not None:
            return self.exact(queries, plan, k) if how == "exact" else self._ann_or_exact(queries, plan, k)
        trials = plan.trials
        how = "ann" if len(trials["ann"]) <= len(trials["exact"]) else "exact"
        t0 = time.perf_counter()
        out = self.exact(queries, plan, k) if how == "exact" else self._ann_or_exact(queries, plan, k)
        trials[how].append(time.perf_counter() - t0)
        plan.choice = decided(trials, self.trial_queries)
        return out

    def _ann_or_exact(self, queries: np.ndarray, plan: FilterPlan, k: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            scores, rows = self.ann_search(queries, plan, k)
        except RuntimeError:
            return self.exact(queries, plan, k)
        short = rows[:, -1] < 0
        if short.any():
            scores, rows = scores.copy(), rows.copy()
            scores[short], rows[short] = self.exact(queries[short], plan, k)
        return scores, rows

    def post_search(self, queries: np.ndarray, plan: FilterPlan, k: int) -> tuple[np.ndarray, np.ndarray]:
        """An unfiltered search for k' = margin * k / share candidates, the k best matching ones
        kept: (nq, k) scores and global rows, best first; a query with fewer than k matching
        candidates gets -1 rows (and -inf scores) in its empty slots."""
        kp = min(self.n, max(k, math.ceil(self.post_margin * k / max(plan.share, 1e-9))))
        if self.shards is None:
            d, i = self.ann.search(queries, kp, params=self._post_params(self.ann, kp))
        else:
            parts_d, parts_i = [], []
            for shard, lo, hi in self.shards:
                d, i = shard.search(queries, min(kp, hi - lo), params=self._post_params(shard, kp))
                parts_d.append(d)
                parts_i.append(np.where(i >= 0, i + lo, -1))
            d, i = np.concatenate(parts_d, axis=1), np.concatenate(parts_i, axis=1)
        keep = i >= 0
        keep[keep] = plan.contains(i[keep])
        d = np.where(keep, d, -np.inf).astype(np.float32, copy=False)
        order = np.argsort(-d, axis=1, kind="stable")[:, :k]
        d, i = np.take_along_axis(d, order, axis=1), np.take_along_axis(i, order, axis=1)
        i[~np.isfinite(d)] = -1
        return d, i

    def _graph_ef(self) -> int:
        """The HNSW index's efSearch (its first shard's): a `post` search is worth it only while
        its beam of margin * k / share stays under the selector's efSearch / share."""
        return self._graph.hnsw.efSearch

    def _post_params(self, index: faiss.Index, kp: int):
        index = faiss.downcast_index(index)
        return faiss.SearchParametersHNSW(efSearch=max(index.hnsw.efSearch, kp))

    def exact(self, queries: np.ndarray, plan: FilterPlan, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k inner products among the plan's rows; (nq, k') scores and rows, k' = min(k, count)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if plan.run_start is not None:
            return exact_in_slice(self.vectors, queries, plan.run_start, plan.count, k)
        rows = np.arange(self.n, dtype=np.int64) if plan.rows is None else plan.rows
        return exact_among(self.vectors, queries, rows, k)

    def ann_search(self, queries: np.ndarray, plan: FilterPlan, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ANN index restricted to the plan's rows, search effort raised by 1 / share; rows
        are global (-1 for empty slots)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        boost = effort_boost(plan.share)
        if self.shards is None:
            return self.ann.search(queries, k, params=self._params(self.ann, plan, boost, 0, self.n))
        parts_d, parts_i = [], []
        for shard, lo, hi in self.shards:
            d, i = shard.search(queries, k, params=self._params(shard, plan, boost, lo, hi))
            parts_d.append(d)
            parts_i.append(np.where(i >= 0, i + lo, -1))
        d, i = np.concatenate(parts_d, axis=1), np.concatenate(parts_i, axis=1)
        d = np.where(i >= 0, d, -np.inf)
        order = np.argsort(-d, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(d, order, axis=1), np.take_along_axis(i, order, axis=1)

    def _params(self, index: faiss.Index, plan: FilterPlan, boost: float, lo: int, hi: int):
        key = ("params", id(index), lo, hi)
        params = plan._selectors.get(key)
        if params is None:  # built once per plan and index (shard), then reused by every query
            params = plan._selectors[key] = self._new_params(index, plan, boost, lo, hi)
        return params

    def _new_params(self, index: faiss.Index, plan: FilterPlan, boost: float, lo: int, hi: int):
        sel = plan.selector(lo, hi)
        index = faiss.downcast_index(index)
        if isinstance(index, faiss.IndexRefine):
            base = self._new_params(index.base_index, plan, boost, lo, hi)
            return faiss.IndexRefineSearchParameters(k_factor=index.k_factor, base_index_params=base)
        if isinstance(index, faiss.IndexHNSW):
            ef = min(self.max_effort, max(index.hnsw.efSearch, math.ceil(index.hnsw.efSearch * boost)))
            return faiss.SearchParametersHNSW(sel=sel, efSearch=ef)
        if isinstance(index, faiss.IndexIVF):
            nprobe = min(index.nlist, self.max_effort, max(index.nprobe, math.ceil(index.nprobe * boost)))
            return faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
        return faiss.SearchParameters(sel=sel)


DECISIVE = 10.0
"""A way whose fastest trial took this many times the other way's slowest is dropped at once: on a
large index the exact scan of a broad filter's rows can cost 50x a selector search (1M rows, 60 %:
70 ms against 1.2 ms), and the remaining trials would only add that to the first queries."""


def decided(trials: dict[str, list[float]], needed: int) -> str | None:
    """The way a broad plan keeps, from its trials (seconds per query, each way): the one whose
    fastest trial was faster (other load only adds time) once each way has `needed` trials, or
    sooner when one way is DECISIVE times slower than the other; None while undecided."""
    ann, exact = trials["ann"], trials["exact"]
    if ann and exact and min(len(ann), len(exact)) >= needed:
        return min(trials, key=lambda way: min(trials[way]))
    if ann and exact:
        if min(exact) > DECISIVE * max(ann):
            return "ann"
        if min(ann) > DECISIVE * max(exact):
            return "exact"
    return None


def effort_boost(share: float) -> float:
    """How many times an unfiltered search's effort a filter matching `share` of the rows gets."""
    return 1.0 / min(max(share, 1e-9), 1.0)


def exact_among(vectors: np.ndarray, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of `queries` (nq, d) among `vectors[rows]`, reading the rows in
    place (FAISS for one query, blocks of `_CHUNK` rows for several): no copy of `vectors`."""
    nq, m = len(queries), len(rows)
    k = min(k, m)
    if k <= 0:
        return np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    if nq == 1 or m <= _CHUNK:
        vals = np.empty((nq, k), dtype=np.float32)
        ids = np.empty((nq, k), dtype=np.int64)
        faiss.knn_inner_products_by_idx(faiss.swig_ptr(queries), faiss.swig_ptr(vectors), faiss.swig_ptr(rows),
                                        vectors.shape[1], nq, len(vectors), m, k, faiss.swig_ptr(vals),
                                        faiss.swig_ptr(ids), 0)
        return vals, ids  # ids are already row numbers (the subset's values)
    best_s = np.full((nq, 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((nq, 0), dtype=np.int64)
    for lo in range(0, m, _CHUNK):
        block = rows[lo:lo + _CHUNK]
        scores = queries @ vectors[block].T  # one block of rows at a time
        s = np.concatenate([best_s, scores], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(block, scores.shape)], axis=1)
        top = np.argpartition(-s, k - 1, axis=1)[:, :k] if s.shape[1] > k else np.argsort(-s, axis=1)
        best_s, best_i = np.take_along_axis(s, top, axis=1), np.take_along_axis(i, top, axis=1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_s, order, axis=1), np.take_along_axis(best_i, order, axis=1)


def exact_in_slice(vectors: np.ndarray, queries: np.ndarray, lo: int, m: int, k: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of `queries` among rows lo..lo+m-1 of `vectors`, read in place:
    for one query FAISS scans the slice (one block of a C-contiguous matrix: no row gather);
    several go to `exact_among` (FAISS's own batched path for a block multiplies through BLAS,
    measured ~9x slower than the gathered scan for 100 queries over 250 rows on this 2-core
    machine, `benchmarks.index_filtered --sort-by-category`)."""
    nq, k = len(queries), min(k, m)
    if k <= 0:
        return np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64)
    if nq == 1:
        block = vectors[lo:lo + m]  # a view
        vals = np.empty((nq, k), dtype=np.float32)
        ids = np.empty((nq, k), dtype=np.int64)
        faiss.knn_inner_product(faiss.swig_ptr(queries), faiss.swig_ptr(block), vectors.shape[1], nq, m, k,
                                faiss.swig_ptr(vals), faiss.swig_ptr(ids))
        ids += lo
        return vals, ids
    return exact_among(vectors, queries, np.arange(lo, lo + m, dtype=np.int64), k)


def _is_flat(index: faiss.Index) -> bool:
    """Exact index (Flat, or shards of Flat): ANN and exact search are the same thing."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexShards):
        return all(_is_flat(index.at(i)) for i in range(index.count()))
    return isinstance(index, faiss.IndexFlat)


def _is_hnsw(index: faiss.Index) -> bool:
    """An HNSW graph index (or shards of them): its search takes `SearchParametersHNSW`."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexShards):
        return index.count() > 0 and all(_is_hnsw(index.at(i)) for i in range(index.count()))
    return isinstance(index, faiss.IndexHNSW)


def _shard_bounds(index: faiss.Index) -> list[tuple[faiss.Index, int, int]] | None:
    """(shard, first row, end row) of an IndexShards with successive ids, or None."""
    index = faiss.downcast_index(index)
    if not isinstance(index, faiss.IndexShards):
        return None
    out, lo = [], 0
    for i in range(index.count()):
        shard = faiss.downcast_index(index.at(i))
        out.append((shard, lo, lo + shard.ntotal))
        lo += shard.ntotal
    return out
