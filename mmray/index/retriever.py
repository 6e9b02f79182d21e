"""Search over a built index: vector (FAISS), lexical (BM25), fused by reciprocal rank fusion,
with metadata filters and variant collapsing.

Filters are exact: a `FilterPlanner` (mmray/index/planner.py) turns a filter into the matching rows
and scores a selective filter's rows exactly, a broad one through the ANN index with a selector and
raised search effort; when the ANN index cannot return k matching items, the search falls back to
exact scoring of the matching rows, so k results come back whenever k matching items exist.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import faiss
import numpy as np
import pyarrow.parquet as pq

from mmray.config import IndexConfig
from mmray.index.ann import load_ann
from mmray.index.facets import facet_values
from mmray.index.filters import SearchFilters
from mmray.index.lexical import LexicalIndex
from mmray.index.planner import FilterPlan, FilterPlanner
from mmray.storage import INDEX_KIND, ArtifactError, ArtifactStore, Version


class IndexLoadError(ArtifactError):
    """An index version that is missing, half-written, corrupt or inconsistent."""


@dataclass
class Hit:
    row: int
    id: str
    product_id: str
    title: str
    price: float | None
    score: float
    retrievers: list[str] = field(default_factory=list)
    image: str = ""
    variants: int = 1  # items of this product that pass the filters (when collapsed)


class Retriever:
    """One loaded index version."""

    def __init__(self, folder: str, manifest: dict, ann: faiss.Index, vectors: np.ndarray, meta: dict,
                 lexical: LexicalIndex, rrf_k: int, cfg: IndexConfig | None = None):
        self.folder, self.manifest, self.ann, self.vectors, self.lexical = folder, manifest, ann, vectors, lexical
        self.meta, self.rrf_k = meta, rrf_k
        self.version = manifest["version"]
        self.row_of = {item_id: row for row, item_id in enumerate(meta["id"])}
        self.rows_of_product: dict[str, list[int]] = {}
        for row, pid in enumerate(meta["product_id"]):
            self.rows_of_product.setdefault(pid, []).append(row)
        cfg = cfg or IndexConfig()
        self.planner = FilterPlanner(meta, ann, vectors, cfg.filter_exact_share, cfg.filter_max_effort,
                                     cfg.filter_cache, cfg.filter_post_margin, cfg.filter_trial_queries)
        self._facets: dict | None = None

    @classmethod
    def load(cls, version: Version, cfg: IndexConfig | None = None) -> Retriever:
        """A published index version (files already verified by the store), from a local copy."""
        return cls.from_folder(version.local_dir(), version.manifest, cfg)

    @classmethod
    def load_current(cls, store: ArtifactStore, cfg: IndexConfig | None = None) -> Retriever:
        try:
            version = store.resolve(INDEX_KIND, hint="run `python -m jobs.build_index`")
        except ArtifactError as e:
            raise IndexLoadError(str(e)) from None
        return cls.load(version, cfg)

    @classmethod
    def from_folder(cls, folder: str, manifest: dict, cfg: IndexConfig | None = None) -> Retriever:
        """Load the files of a local index folder that `manifest` describes (checked by its writer
        or by the store that copied it here); search effort and fusion from `cfg`."""
        cfg = cfg or IndexConfig()
        where = f"index {manifest.get('version', folder)}"
        try:
            ann = load_ann([os.path.join(folder, s) for s in manifest["shards"]], cfg.nprobe, cfg.ef_search)
            vectors = np.load(os.path.join(folder, "vectors.npy"))
            table = pq.read_table(os.path.join(folder, "metadata.parquet")).to_pydict()
            lexical = LexicalIndex.load(os.path.join(folder, "lexical"))
        except Exception as e:  # noqa: BLE001 - any read failure means the same thing to the caller
            raise IndexLoadError(f"{where} cannot be loaded: {type(e).__name__}: {e}") from None
        if ann.ntotal != len(vectors) or len(vectors) != len(table["id"]):
            raise IndexLoadError(f"{where} is inconsistent: {ann.ntotal} vectors in FAISS, "
                                 f"{len(vectors)} stored, {len(table['id'])} metadata rows")
        meta = {k: np.array(v, dtype=object) for k, v in table.items()}
        meta["price"] = np.array([np.nan if p is None else p for p in table["price"]], dtype=np.float64)
        meta["available"] = np.array(table["available"], dtype=bool)
        for col in ("category", "gender", "color"):
            meta[f"{col}_lc"] = np.array([(v or "").lower() for v in table[col]], dtype=object)
        return cls(folder, manifest, ann, vectors, meta, lexical, cfg.rrf_k, cfg)

    def __len__(self) -> int:
        return len(self.vectors)

    # ------------------------------------------------------------------ search
    def search(self, vector: np.ndarray, k: int = 10, filters: SearchFilters | None = None,
               query_text: str | None = None, hybrid: bool = False, collapse: bool = True,
               exclude_rows: list[int] | None = None) -> list[Hit]:
        """Top-k items (or products, when `collapse`) for a query vector, optionally fused with BM25."""
        plan = self.planner.plan(filters)
        if exclude_rows:
            plan = self.planner.without(plan, exclude_rows)
        n_match = plan.count
        if n_match == 0 or k <= 0:
            return []
        vector = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        fetch = min(n_match, k * (4 if collapse else 1))
        while True:
            vec_rows, vec_scores = self._vector_candidates(vector, plan, fetch)
            if not collapse and not (hybrid and query_text):  # the plain vector ranking: hits in bulk
                return self._hits(vec_rows[:k], vec_scores[:k])
            ranked = self._fuse(vec_rows, vec_scores, query_text, plan.mask(), fetch) if hybrid and query_text \
                else [(r, s, ("vector",)) for r, s in zip(vec_rows, vec_scores)]
            if collapse:
                hits = self._collapse(ranked, plan, k)
            else:
                hits = [self._hit(r, s, src) for r, s, src in ranked[:k]]
            if len(hits) >= k or fetch >= n_match:
                return hits[:k]
            fetch = min(n_match, fetch * 4)

    def _vector_candidates(self, vector, plan: FilterPlan, fetch) -> tuple[list[int], list[float]]:
        scores, rows = self.planner.search(vector, plan, fetch)
        return rows[0].tolist(), scores[0].tolist()

    def search_vectors(self, queries: np.ndarray, k: int = 10, filters: SearchFilters | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items of several query vectors under one filter, uncollapsed: (nq, k') scores and
        rows, k' = min(k, matching rows), best first (the batch form of `search`'s vector part)."""
        return self.planner.search(np.asarray(queries, dtype=np.float32), self.planner.plan(filters), k)

    def _fuse(self, vec_rows, vec_scores, query_text, mask, fetch):
        """Reciprocal rank fusion: score = sum over rankings of 1 / (rrf_k + rank), rank from 1."""
        lex = self.lexical.scores(query_text, mask)
        top = np.argsort(-lex, kind="stable")[:fetch]
        lex_rows = top[np.isfinite(lex[top]) & (lex[top] > 0)].tolist()
        fused: dict[int, list] = {}
        for ranking, name in ((vec_rows, "vector"), (lex_rows, "lexical")):
            for rank, row in enumerate(ranking, start=1):
                entry = fused.get(row)
                if entry is None:
                    fused[row] = [1.0 / (self.rrf_k + rank), (name,)]
                else:
                    entry[0] += 1.0 / (self.rrf_k + rank)
                    entry[1] += (name,)
        return sorted(((r, s, src) for r, (s, src) in fused.items()), key=lambda t: (-t[1], t[0]))

    def _collapse(self, ranked, plan: FilterPlan, k: int) -> list[Hit]:
        """One hit per product (the first k products), its best-ranked item; `retrievers` joins
        every candidate row of the product; `variants` counts all of the product's items that pass
        the filters, not only those among the candidates."""
        products = self.meta["product_id"]
        best: dict[str, tuple[int, float, set]] = {}
        for row, score, sources in ranked:
            pid = products[row]
            if pid in best:
                best[pid][2].update(sources)
            elif len(best) < k:
                best[pid] = (row, score, set(sources))
        hits = []
        for pid, (row, score, sources) in best.items():
            hit = self._hit(row, score, sources)
            rows = self.rows_of_product[pid]
            hit.variants = len(rows) if plan.everything else int(np.count_nonzero(plan.contains(rows)))
            hits.append(hit)
        return hits

    def _hits(self, rows: list[int], scores: list[float]) -> list[Hit]:
        """`_hit` for a vector-only ranking, reading each metadata column once for all rows (Hit
        built positionally: keyword arguments cost a third more on this per-query path)."""
        meta, idx = self.meta, np.asarray(rows, dtype=np.int64)
        ids, pids, titles, images = (meta[c][idx].tolist() for c in ("id", "product_id", "title", "image"))
        prices = meta["price"][idx].tolist()
        return [Hit(r, i, p, t, None if pr != pr else pr, sc, ["vector"], im)
                for r, i, p, t, pr, sc, im in zip(rows, ids, pids, titles, prices, scores, images)]

    def _hit(self, row: int, score: float, sources) -> Hit:
        meta = self.meta
        price = meta["price"][row]
        return Hit(row=row, id=meta["id"][row], product_id=meta["product_id"][row],
                   title=meta["title"][row], price=None if price != price else float(price),
                   score=float(score), retrievers=sorted(sources), image=meta["image"][row])

    def similar(self, item_id: str, k: int = 10, filters: SearchFilters | None = None,
                collapse: bool = True) -> list[Hit]:
        """Items like `item_id` (an item or product id), excluding the item's own product."""
        rows = self.rows_for(item_id)
        if not rows:
            raise KeyError(item_id)
        query = self.vectors[rows].mean(axis=0)
        query /= max(np.linalg.norm(query), 1e-12)
        own = self.rows_of_product[self.meta["product_id"][rows[0]]]
        return self.search(query, k, filters, collapse=collapse, exclude_rows=own)

    def rows_for(self, item_or_product_id: str) -> list[int]:
        if item_or_product_id in self.row_of:
            return [self.row_of[item_or_product_id]]
        return list(self.rows_of_product.get(item_or_product_id, []))

    def image_bytes(self, row: int) -> bytes | None:
        """The stored (resized) first image of item `row`; None for a row that does not exist or a
        text-only item (no image)."""
        if not 0 <= row < len(self) or not self.meta["image"][row]:
            return None
        with open(os.path.join(self.folder, self.meta["image"][row]), "rb") as f:
            return f.read()

    def item(self, row: int) -> dict:
        return {k: (v[row].item() if hasattr(v[row], "item") else v[row])
                for k, v in self.meta.items() if not k.endswith("_lc")}

    def facets(self) -> dict:
        """Filterable values and their product counts (computed once per loaded version)."""
        if self._facets is None:
            self._facets = facet_values(self.meta)
        return self._facets
