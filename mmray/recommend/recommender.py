"""Recommendations from the multimodal item vectors of an index, no training needed.

- `user_vector`: the weighted mean of the history's item vectors; an event's weight is its type's
  weight (`recommend.event_weights`) x `recency_decay` ** (steps back from the newest event) x
  0.5 ** (age in days / `half_life_days`).
- `Recommender.recommend`: products ranked by cosine to the user vector, purchased products (and,
  with `exclude_seen`, every product of the history) left out, request filters applied, re-ordered by
  MMR (`recommend.diversity`); each result names the history items that contributed most to it
  (weight x cosine). No usable history: popular products in the context product's category, then
  overall (popularity from the event store, ties by similarity to the context product, then catalog order).
- `Recommender.complements` ("goes with"): co-purchase counts where purchase events exist, else
  category rules learned from the catalog's cross-sell links (P(target category | source category),
  ranked within by similarity), else the nearest items of another category.

Candidates are scored by one matrix-vector product over all item vectors (exact; milliseconds for
catalogs of 10^5 items). Products are the unit of a result: the best-scoring item stands for its product.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from mmray.config import RecommendConfig
from mmray.index.filters import SearchFilters

log = logging.getLogger("mmray.recommend")
VERBS = {"view": "viewed", "click": "clicked", "add_to_cart": "added to cart", "purchase": "bought"}


@dataclass
class Rec:
    row: int
    score: float
    because: list[tuple[int, str]] = field(default_factory=list)  # (history row, strongest event type)
    source: str = ""


@dataclass(frozen=True)
class HistoryEvent:
    item_id: str
    type: str
    ts: float | None = None  # None: now


class ItemSpace:
    """Unit item vectors (N, d) and their metadata columns (`id`, `product_id`, `title`, `category`, ...)."""

    def __init__(self, vectors: np.ndarray, meta: dict, source: dict | None = None):
        self.source = source or {}  # what made the vectors: {"model_version", "index"} where known
        v = np.asarray(vectors, dtype=np.float32)
        self.vectors = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        self.meta = meta
        self.ids = list(meta["id"])
        self.products = np.asarray(meta["product_id"], dtype=object)
        self.categories = [c or "" for c in meta.get("category", [""] * len(self.ids))]
        self.row_of = {item: row for row, item in enumerate(self.ids)}
        self.rows_of_product: dict[str, list[int]] = defaultdict(list)
        for row, pid in enumerate(self.products):
            self.rows_of_product[pid].append(row)
        self.product_index = {pid: i for i, pid in enumerate(self.rows_of_product)}
        self.product_of_row = np.array([self.product_index[p] for p in self.products], dtype=np.int64)

    @classmethod
    def from_retriever(cls, retriever) -> ItemSpace:
        return cls(retriever.vectors, retriever.meta, {"model_version": retriever.manifest.get("model_version"),
                                                       "index": retriever.version})

    def __len__(self) -> int:
        return len(self.ids)

    def rows_for(self, item_or_product_id: str) -> list[int]:
        if item_or_product_id in self.row_of:
            return [self.row_of[item_or_product_id]]
        return list(self.rows_of_product.get(item_or_product_id, []))

    def knows(self, item_or_product_id: str) -> bool:
        return item_or_product_id in self.row_of or item_or_product_id in self.rows_of_product

    def item_vector(self, item_or_product_id: str) -> np.ndarray | None:
        rows = self.rows_for(item_or_product_id)
        if not rows:
            return None
        v = self.vectors[rows].mean(axis=0)
        return v / max(float(np.linalg.norm(v)), 1e-12)

    def mask(self, filters: SearchFilters | None) -> np.ndarray:
        if filters is None or filters.is_empty():
            return np.ones(len(self), dtype=bool)
        return filters.mask(self.meta)

    def product_rows(self, item_or_product_id: str) -> list[int]:
        """Every row of the product an item (or product) id belongs to."""
        rows = self.rows_for(item_or_product_id)
        return self.rows_of_product[self.products[rows[0]]] if rows else []


def event_weights(history: Sequence[HistoryEvent], cfg: RecommendConfig, now: float | None = None) -> list[float]:
    """Weight of each event of `history` (newest first)."""
    now = time.time() if now is None else now
    out = []
    for rank, e in enumerate(history):
        age_days = 0.0 if e.ts is None else max(0.0, now - e.ts) / 86400.0
        out.append(cfg.event_weights.get(e.type, 1.0) * cfg.recency_decay ** rank * 0.5 ** (age_days / cfg.half_life_days))
    return out


def user_vector(space: ItemSpace, history: Sequence[HistoryEvent], cfg: RecommendConfig, now: float | None = None
                ) -> tuple[np.ndarray | None, dict[int, float], dict[int, str]]:
    """(unit user vector or None, history row -> summed weight, history row -> its strongest event type)."""
    weights: dict[int, float] = defaultdict(float)
    strongest: dict[int, tuple[float, str]] = {}
    for e, w in zip(history, event_weights(history, cfg, now)):
        rows = space.rows_for(e.item_id)
        for row in rows:
            weights[row] += w / len(rows)
            if row not in strongest or w > strongest[row][0]:
                strongest[row] = (w, e.type)
    if not weights:
        return None, {}, {}
    rows = list(weights)
    u = (np.array([weights[r] for r in rows], dtype=np.float32)[:, None] * space.vectors[rows]).sum(axis=0)
    norm = float(np.linalg.norm(u))
    if norm < 1e-12:
        return None, dict(weights), {}
    return u / norm, dict(weights), {r: t for r, (_, t) in strongest.items()}


def mmr(candidates: Sequence[int], relevance: Sequence[float], vectors: np.ndarray, k: int, diversity: float) -> list[int]:
    """Maximal marginal relevance: repeatedly take the candidate maximising
    (1 - diversity) * relevance - diversity * (max cosine to those already taken); positions into `candidates`."""
    if not len(candidates):
        return []
    rel = np.asarray(relevance, dtype=np.float64)
    vecs = vectors[list(candidates)].astype(np.float64)
    sims = vecs @ vecs.T
    chosen: list[int] = []
    best_sim = np.full(len(rel), -np.inf)
    free = np.ones(len(rel), dtype=bool)
    for _ in range(min(k, len(rel))):
        penalty = np.where(np.isfinite(best_sim), best_sim, 0.0)
        objective = np.where(free, (1 - diversity) * rel - diversity * penalty, -np.inf)
        pick = int(np.argmax(objective))  # ties: the earlier (better-ranked) candidate
        chosen.append(pick)
        free[pick] = False
        best_sim = np.maximum(best_sim, sims[pick])
    return chosen


def rrf_fuse(rankings: Sequence[Sequence], const: int) -> tuple[list, np.ndarray]:
    """Reciprocal rank fusion of ranked lists (rows or ids): (entries by fused score desc, first appearance
    breaking ties; their scores), an entry's score the sum of 1 / (const + rank) over the lists holding it
    (rank from 1)."""
    score: dict = {}
    for ranking in rankings:
        for rank, row in enumerate(ranking, start=1):
            score[row] = score.get(row, 0.0) + 1.0 / (const + rank)
    rows = sorted(score, key=lambda r: -score[r])  # stable: ties keep first appearance
    return rows, np.array([score[r] for r in rows])


def best_per_product(space: ItemSpace, scores: np.ndarray, mask: np.ndarray, limit: int) -> list[int]:
    """The best-scoring allowed row of each product, for the `limit` best products (score desc, row asc)."""
    rows = np.flatnonzero(mask)
    if not len(rows):
        return []
    return first_per_product(space, rows[np.lexsort((rows, -scores[rows]))], limit)


def first_per_product(space: ItemSpace, rows: Iterable[int], limit: int) -> list[int]:
    """The first of `rows` of each product, in order, for the first `limit` products."""
    seen, out = set(), []
    for row in rows:
        p = space.product_of_row[row]
        if p not in seen:
            seen.add(p)
            out.append(int(row))
            if len(out) >= limit:
                break
    return out


class CategoryRules:
    """P(target category | source category) from merchant cross-sell links between products."""

    def __init__(self, counts: dict[str, Counter]):
        self.shares = {src: {dst: n / sum(c.values()) for dst, n in c.items()} for src, c in counts.items() if c}

    @classmethod
    def learn(cls, links: Iterable[dict], space: ItemSpace, kinds: tuple[str, ...] = ("crosssell",)) -> CategoryRules:
        counts: dict[str, Counter] = defaultdict(Counter)
        for link in links:
            if link.get("type") not in kinds:
                continue
            src, dst = space.rows_for(str(link.get("source"))), space.rows_for(str(link.get("target")))
            if src and dst:
                counts[space.categories[src[0]]][space.categories[dst[0]]] += 1
        return cls(counts)

    @classmethod
    def from_file(cls, path: str | None, space: ItemSpace) -> CategoryRules:
        if not path or not os.path.exists(path):
            log.info("no merchant links at %r: complements fall back to the nearest items of another category", path)
            return cls({})
        with open(path, encoding="utf-8") as f:
            return cls.learn((json.loads(line) for line in f if line.strip()), space)

    def targets(self, category: str) -> dict[str, float]:
        return self.shares.get(category, {})


class Recommender:
    """Personalised recommendations (user vector, or the trained sequence model by `recommend.ranker`) and
    complements over one `ItemSpace`."""

    def __init__(self, space: ItemSpace, cfg: RecommendConfig, rules: CategoryRules | None = None,
                 sequence=None, sequence_missing: str | None = None):
        """`sequence`: a `mmray.recommend.sasrec.SequenceRanker`, used when `cfg.ranker` is `sasrec` and it
        matches the item vectors; else the user vector ranks, and `fallback` says why."""
        self.space, self.cfg = space, cfg
        self.rules = rules or CategoryRules({})
        self.sequence, self.fallback = None, None
        if cfg.ranker == "sasrec":
            why = sequence_missing or ("no sequence model given" if sequence is None else sequence.mismatch(space))
            if why:
                self.fallback = why
                log.warning("recommend.ranker is sasrec, ranking by the user vector instead: %s", why)
            else:
                self.sequence = sequence
        self.ranker = "sasrec" if self.sequence is not None else "user_vector"

    # ------------------------------------------------------------------ personalised
    def recommend(self, history: Sequence[HistoryEvent], k: int = 10, filters: SearchFilters | None = None,
                  context_product_id: str | None = None, popularity: dict[str, float] | None = None,
                  now: float | None = None, co_purchase: dict[str, float] | None = None) -> tuple[list[Rec], str]:
        """(results, source): source `user_vector` or `sasrec` (`self.ranker`), `<ranker>+co_purchase` when
        `co_purchase` (item -> buyers of the history who also bought it) was fused in by
        `recommend.co_purchase_blend`, or `popular` when the history gives no vector. Explanations come from
        the user vector's contributions either way."""
        space = self.space
        allowed = space.mask(filters)
        allowed = allowed.copy()
        for e in history:
            if e.type == "purchase" or self.cfg.exclude_seen:
                allowed[space.product_rows(e.item_id)] = False
        if context_product_id:
            allowed[space.product_rows(context_product_id)] = False
        u, weights, kinds = user_vector(space, history, self.cfg, now)
        if u is None:
            return self.popular(k, allowed, context_product_id, popularity or {}), "popular"
        source, scores, cosines = "user_vector", space.vectors @ u, True
        if self.sequence is not None:
            seq = self.sequence.scores(space, [e.item_id for e in reversed(history)])
            if seq is not None:
                source, scores, cosines = "sasrec", seq, False
        pool = best_per_product(space, scores, allowed, max(5 * k, 50))
        rel = scores[pool]
        sources = dict.fromkeys(pool, source)
        if self.cfg.co_purchase_blend and co_purchase and len(pool):
            bought = self._co_purchase_rows(co_purchase, scores, allowed, len(pool))
            if bought:
                pool, rel = rrf_fuse([pool, bought], self.cfg.rrf_constant)
                sources = {r: source if r in sources else "co_purchase" for r in pool}
                source, cosines = f"{source}+co_purchase", False
        if len(pool) and not cosines:  # logits or fused ranks: onto [0, 1] over the pool, the scale of MMR's penalty
            rel = (rel - rel.min()) / max(float(rel.max() - rel.min()), 1e-12)
        picked = [pool[i] for i in mmr(pool, rel, space.vectors, k, self.cfg.diversity)]
        hist_rows = list(weights)
        hist_vecs = space.vectors[hist_rows]
        hist_w = np.array([weights[r] for r in hist_rows])
        out = []
        for row in picked:
            contrib = hist_w * (hist_vecs @ space.vectors[row])
            top = [i for i in np.argsort(-contrib, kind="stable")[: self.cfg.explain_top] if contrib[i] > 0]
            out.append(Rec(row, float(scores[row]), [(hist_rows[i], kinds.get(hist_rows[i], "view")) for i in top],
                           sources[row]))
        return out, source

    def _co_purchase_rows(self, co_purchase: dict[str, float], scores: np.ndarray, allowed: np.ndarray,
                          limit: int) -> list[int]:
        """The `limit` most co-purchased allowed products (count desc, id asc), each as its best-scoring row."""
        space = self.space

        def best_row(item: str) -> int | None:
            rows = [r for r in space.rows_for(item) if allowed[r]]
            return max(rows, key=lambda r: (scores[r], -r)) if rows else None

        ranked = (best_row(item) for item in sorted(co_purchase, key=lambda i: (-co_purchase[i], i)))
        return first_per_product(space, (r for r in ranked if r is not None), limit)

    def popular(self, k: int, allowed: np.ndarray, context_product_id: str | None,
                popularity: dict[str, float]) -> list[Rec]:
        """Popular products in the context product's category first, then overall."""
        space = self.space
        pop = np.zeros(len(space))
        for item, w in popularity.items():
            rows = space.rows_for(item)
            if rows:
                pop[rows] += w / len(rows)
        product_pop = np.bincount(space.product_of_row, weights=pop, minlength=len(space.product_index))
        row_pop = product_pop[space.product_of_row]
        ctx_vec = space.item_vector(context_product_id) if context_product_id else None
        sim = space.vectors @ ctx_vec if ctx_vec is not None else np.zeros(len(space))
        out: list[Rec] = []
        taken: set[int] = set()
        groups = []
        if ctx_vec is not None:
            cat = space.categories[space.rows_for(context_product_id)[0]]
            groups.append(allowed & np.array([c == cat for c in space.categories]))
        groups.append(allowed)
        for group in groups:
            rows = np.flatnonzero(group)
            order = rows[np.lexsort((rows, -sim[rows], -row_pop[rows]))]
            for row in order:
                p = space.product_of_row[row]
                if p in taken:
                    continue
                taken.add(p)
                out.append(Rec(int(row), float(row_pop[row]), [], "popular"))
                if len(out) >= k:
                    return out
        return out

    # ------------------------------------------------------------------ goes with
    def complements(self, product_id: str, k: int = 10, co_purchase: dict[str, int] | None = None,
                    filters: SearchFilters | None = None) -> tuple[list[Rec], str] | None:
        """(results, source) for an item or product id; None if unknown."""
        space = self.space
        own = space.product_rows(product_id)
        if not own:
            return None
        v = space.item_vector(product_id)
        sim = space.vectors @ v
        allowed = space.mask(filters).copy()
        allowed[own] = False
        out: list[Rec] = []
        taken: set[int] = set()

        def take(rows: Iterable[int], score_of, source: str) -> None:
            for row in rows:
                p = space.product_of_row[row]
                if p in taken or not allowed[row]:
                    continue
                taken.add(p)
                out.append(Rec(int(row), float(score_of(row)), [], source))
                if len(out) >= k:
                    return

        sources = []
        if co_purchase:
            counts = np.zeros(len(space))
            for item, n in co_purchase.items():
                rows = space.rows_for(item)
                counts[rows] += n
            product_counts = np.bincount(space.product_of_row, weights=counts, minlength=len(space.product_index))
            row_counts = product_counts[space.product_of_row]
            rows = np.flatnonzero(allowed & (row_counts > 0))
            take(rows[np.lexsort((rows, -sim[rows], -row_counts[rows]))], lambda r: row_counts[r], "co-purchase")
            if out:
                sources.append("co-purchase")
        category = space.categories[own[0]]
        targets = self.rules.targets(category)
        if len(out) < k and targets:
            share = np.array([targets.get(c, 0.0) for c in space.categories])
            score = share * (1 + sim) / 2
            rows = np.flatnonzero(allowed & (share > 0))
            before = len(out)
            take(rows[np.lexsort((rows, -score[rows]))], lambda r: score[r], "catalog-rules")
            if len(out) > before:
                sources.append("catalog-rules")
        if len(out) < k:
            other = allowed & np.array([c != category for c in space.categories])
            rows = np.flatnonzero(other)
            before = len(out)
            take(rows[np.lexsort((rows, -sim[rows]))], lambda r: sim[r], "nearest-other-category")
            if len(out) > before:
                sources.append("nearest-other-category")
        return out, (sources[0] if sources else "catalog-rules")
