"""Offline evaluation of the recommenders on real data (`jobs/evaluate_recommender.py`).

- Metrics: `hit_rate_at_k`, `ndcg_at_k` (binary relevance; ideal DCG over min(|targets|, k) hits) and
  `recall_at_k` (hits / |targets|), each for one ranked list; callers average over users / products.
- Baskets (UCI Online Retail): `leave_last_basket_out` splits each customer's purchase baskets (time
  order) into history (every earlier basket) and target (the last basket's items not already in the
  history: re-buys are left out, since every ranker here excludes the history). Popularity and
  item-item co-occurrence are counted on the training baskets only: every basket except the held-out
  last ones.
- Rankers: `popularity_ranking`, `cooccurrence_ranking` (sum over history items of the number of training
  baskets holding both; ties and the tail by popularity), `user_vector_ranking` (the route's
  `Recommender.recommend`, the history fed as purchase events with their invoice times; with a
  `SequenceRanker` from `train_sequence_ranker` and `ranker: sasrec` the same call ranks by SASRec) and
  `rrf` (reciprocal rank fusion, constant 60, of two rankings: the parameter-free hybrid).
- `CoPurchases`: the event store's co-purchase counts over the training baskets, for the served blend
  (`recommend.co_purchase_blend`: the ranker's list fused with them by `rrf_fuse`, inside the route's code).
- SASRec is trained on `basket_sequences` of the training baskets only (the held-out last baskets never).
- Links (Luma): `similar_ranking` (nearest products by item vectors, as `Retriever.similar`) and
  `link_recall` with category rules learned on the other half of the products (`split_products`).
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from mmray.config import SasrecConfig
from mmray.recommend.recommender import HistoryEvent, ItemSpace, Recommender, best_per_product, rrf_fuse

RRF_K = 60


# ---------------------------------------------------------------------- metrics
def hit_rate_at_k(ranked: Sequence[str], targets: Iterable[str], k: int = 10) -> float:
    """1.0 if any of the first k of `ranked` is a target, else 0.0."""
    t = set(targets)
    return float(any(r in t for r in ranked[:k]))


def ndcg_at_k(ranked: Sequence[str], targets: Iterable[str], k: int = 10) -> float:
    """Binary-relevance NDCG@k: sum of 1/log2(rank+1) over hits in the first k, over the best possible."""
    t = set(targets)
    if not t:
        return 0.0
    dcg = sum(1.0 / np.log2(i + 2) for i, r in enumerate(ranked[:k]) if r in t)
    ideal = sum(1.0 / np.log2(i + 2) for i in range(min(len(t), k)))
    return float(dcg / ideal)


def recall_at_k(ranked: Sequence[str], targets: Iterable[str], k: int = 10) -> float:
    """Share of the targets found in the first k of `ranked`."""
    t = set(targets)
    if not t:
        return 0.0
    return len(t & set(ranked[:k])) / len(t)


# ---------------------------------------------------------------------- baskets
@dataclass(frozen=True)
class Basket:
    invoice: str
    customer: str | None
    ts: float
    items: tuple[str, ...]  # distinct, in line order


@dataclass(frozen=True)
class Case:
    customer: str
    history: tuple[Basket, ...]  # oldest first
    target: frozenset[str]
    ts: float  # time of the held-out basket


def read_baskets(invoices: Iterable[dict], products: set[str] | None = None) -> list[Basket]:
    """Purchase baskets (cancellations and empty baskets left out), in time order (invoice number breaks ties)."""
    out = []
    for inv in invoices:
        if inv.get("is_cancellation"):
            continue
        items = tuple(dict.fromkeys(str(x["stock_code"]) for x in inv["items"]
                                    if products is None or str(x["stock_code"]) in products))
        if not items:
            continue
        cust = inv.get("customer_id")
        ts = datetime.fromisoformat(inv["invoice_date"]).timestamp()
        out.append(Basket(str(inv["invoice_no"]), None if cust is None else str(cust), ts, items))
    return sorted(out, key=lambda b: (b.ts, b.invoice))


def leave_last_basket_out(baskets: Sequence[Basket]) -> tuple[list[Case], list[Basket], int]:
    """(cases, training baskets, customers dropped because the last basket held only re-buys)."""
    by_customer: dict[str, list[Basket]] = defaultdict(list)
    for b in baskets:
        if b.customer is not None:
            by_customer[b.customer].append(b)
    held_out: set[str] = set()
    cases, dropped = [], 0
    for cust in sorted(by_customer):
        bs = by_customer[cust]
        if len(bs) < 2:
            continue
        last = bs[-1]
        held_out.add(last.invoice)
        seen = {i for b in bs[:-1] for i in b.items}
        target = frozenset(i for i in last.items if i not in seen)
        if not target:
            dropped += 1
            continue
        cases.append(Case(cust, tuple(bs[:-1]), target, last.ts))
    train = [b for b in baskets if b.invoice not in held_out]
    return cases, train, dropped


class BasketStats:
    """Item popularity (baskets holding the item) and pair co-occurrence from training baskets."""

    def __init__(self, baskets: Iterable[Basket]):
        self.pop: Counter = Counter()
        self.co: dict[str, Counter] = defaultdict(Counter)
        for b in baskets:
            self.pop.update(b.items)
            for a in b.items:
                for c in b.items:
                    if a != c:
                        self.co[a][c] += 1
        self._pop_order = sorted(self.pop, key=lambda i: (-self.pop[i], i))


def history_items(case: Case) -> list[str]:
    return list(dict.fromkeys(i for b in case.history for i in b.items))


def popularity_ranking(stats: BasketStats, exclude: set[str], k: int) -> list[str]:
    out = []
    for item in stats._pop_order:
        if item not in exclude:
            out.append(item)
            if len(out) >= k:
                break
    return out


def cooccurrence_ranking(stats: BasketStats, history: Sequence[str], k: int) -> list[str]:
    """Items by summed co-occurrence with the history items (ties: popularity, then id); popularity fills the tail."""
    exclude = set(history)
    score: Counter = Counter()
    for h in exclude:
        for item, n in stats.co.get(h, {}).items():
            if item not in exclude:
                score[item] += n
    ranked = sorted(score, key=lambda i: (-score[i], -stats.pop[i], i))[:k]
    if len(ranked) < k:
        ranked += popularity_ranking(stats, exclude | set(ranked), k - len(ranked))
    return ranked


def history_events(case: Case) -> list[HistoryEvent]:
    """The history as purchase events, newest first (the order the event store reads them)."""
    events = [HistoryEvent(item, "purchase", b.ts) for b in case.history for item in b.items]
    return events[::-1]


def user_vector_ranking(rec: Recommender, case: Case, k: int, co_purchase: CoPurchases | None = None) -> list[str]:
    """The route's ranking for the case's history; with `co_purchase`, fused with it as the served route
    does (`recommend.co_purchase_blend`)."""
    counts = None if co_purchase is None else co_purchase.counts(history_items(case))
    results, _ = rec.recommend(history_events(case), k=k, now=case.ts, co_purchase=counts)
    return [str(rec.space.products[r.row]) for r in results]


def basket_sequences(baskets: Iterable[Basket]) -> list[list[str]]:
    """SASRec training sequences from baskets (time order): each customer's baskets one after another, an
    anonymous basket a sequence of its own. Callers pass the training baskets only."""
    by_customer: dict[str, list[str]] = {}
    out = []
    for b in baskets:
        if b.customer is None:
            out.append(list(b.items))
        else:
            by_customer.setdefault(b.customer, []).extend(b.items)
    return list(by_customer.values()) + out


def train_sequence_ranker(baskets: Iterable[Basket], space: ItemSpace, cfg: SasrecConfig):
    """A `SequenceRanker` trained in process (no Ray) on `basket_sequences(baskets)` over `space`, and
    its per-epoch losses."""
    from mmray.recommend.sasrec import SequenceRanker, build_model, fit, item_vectors_info
    from mmray.recommend.train import training_data

    ids, vectors, rows = training_data(basket_sequences(baskets), space, cfg)
    model, shape = build_model(vectors.shape[1], len(ids), cfg)
    losses = fit(model, vectors, rows, cfg)
    return SequenceRanker(model, {"model": shape, "item_vectors": item_vectors_info(space)}, ids), losses


def rrf(rankings: Sequence[Sequence[str]], k: int, const: int = RRF_K) -> list[str]:
    """Reciprocal rank fusion (`rrf_fuse`, the route's own) of id rankings, the first k."""
    return rrf_fuse(rankings, const)[0][:k]


class CoPurchases:
    """`EventStore.co_purchases` over training baskets: a buyer is a customer (an anonymous basket is a
    buyer of its own), and an item's count is the number of buyers of any history item who bought it."""

    def __init__(self, baskets: Iterable[Basket]):
        self.items_of: dict[str, set[str]] = defaultdict(set)
        self.buyers_of: dict[str, set[str]] = defaultdict(set)
        for b in baskets:
            buyer = b.customer if b.customer is not None else f"invoice:{b.invoice}"
            self.items_of[buyer].update(b.items)
            for item in b.items:
                self.buyers_of[item].add(buyer)

    def counts(self, history: Sequence[str]) -> dict[str, int]:
        own = set(history)
        buyers = set().union(*(self.buyers_of.get(h, set()) for h in own)) if own else set()
        out: Counter = Counter()
        for buyer in buyers:
            out.update(self.items_of[buyer] - own)
        return dict(out)


# ---------------------------------------------------------------------- links
def split_products(products: Iterable[str], salt: str = "mmray-eval") -> tuple[set[str], set[str]]:
    """A deterministic half/half split of product ids (by SHA-256 of salt + id)."""
    a, b = set(), set()
    for p in products:
        (a if hashlib.sha256(f"{salt}:{p}".encode()).digest()[0] % 2 == 0 else b).add(p)
    return a, b


def similar_ranking(space: ItemSpace, product_id: str, k: int) -> list[str]:
    """The k nearest other products by item vector (the product's mean vector as query), as /similar ranks them."""
    v = space.item_vector(product_id)
    allowed = np.ones(len(space), dtype=bool)
    allowed[space.product_rows(product_id)] = False
    rows = best_per_product(space, space.vectors @ v, allowed, k)
    return [str(space.products[r]) for r in rows]


def complements_ranking(rec: Recommender, product_id: str, k: int) -> list[str]:
    found = rec.complements(product_id, k)
    return [] if found is None else [str(rec.space.products[r.row]) for r in found[0]]


def links_by_source(links: Iterable[dict], kinds: Iterable[str]) -> dict[str, set[str]]:
    kinds = set(kinds)
    out: dict[str, set[str]] = defaultdict(set)
    for link in links:
        if link.get("type") in kinds:
            out[str(link["source"])].add(str(link["target"]))
    return dict(out)
