"""The recommendation service behind the /v1 routes: events in, recommendations and complements out,
over the index a request is served from (its item vectors and metadata) and one event store.

Every method is blocking (database, numpy); the HTTP layer runs them in a worker thread.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence

from mmray.config import RecommendConfig
from mmray.index.filters import SearchFilters
from mmray.recommend.events import EventStore
from mmray.recommend.recommender import VERBS, CategoryRules, HistoryEvent, ItemSpace, Rec, Recommender


class RecommendService:
    def __init__(self, store: EventStore, cfg: RecommendConfig, artifacts=None):
        """`artifacts`: the `ArtifactStore` the sequence model is read from (`recommend.ranker: sasrec`)."""
        self.store, self.cfg, self.artifacts = store, cfg, artifacts
        self._lock = threading.Lock()
        self._cached: tuple[str, Recommender] | None = None

    @classmethod
    def from_config(cls, cfg: RecommendConfig, artifacts=None) -> RecommendService:
        return cls(EventStore.from_config(cfg), cfg, artifacts)

    def recommender(self, retriever) -> Recommender:
        """The recommender over `retriever`'s index version (built once per version; with `ranker: sasrec`
        the sequence model current then is loaded with it)."""
        with self._lock:
            if self._cached is None or self._cached[0] != retriever.version:
                space = ItemSpace.from_retriever(retriever)
                sequence, why = None, None
                if self.cfg.ranker == "sasrec":
                    from mmray.recommend.sasrec import load_sequence_ranker

                    sequence, why = load_sequence_ranker(self.artifacts)
                self._cached = (retriever.version, Recommender(space, self.cfg, CategoryRules.from_file(self.cfg.links, space),
                                                               sequence, why))
            return self._cached[1]

    # ------------------------------------------------------------------ events
    def record(self, retriever, user_id: str, events: list[dict]) -> int:
        """Store one batch (EventError if any event is bad; then nothing is stored)."""
        return self.store.add(user_id, events, self.recommender(retriever).space.knows)

    def erase(self, user_id: str) -> int:
        return self.store.delete_user(user_id)

    # ------------------------------------------------------------------ recommendations
    def recommend(self, retriever, *, user_id: str | None, history: Sequence[dict] | None, k: int,
                  filters: SearchFilters | None, context_product_id: str | None) -> dict:
        rec = self.recommender(retriever)
        events = [HistoryEvent(h["item_id"], h["type"]) for h in reversed(history or [])]  # request: oldest first
        if user_id:
            events += [HistoryEvent(e.item_id, e.type, e.ts) for e in self.store.history(user_id)]
        events = [e for e in events if rec.space.knows(e.item_id)]  # items gone from a newer index are skipped
        popularity = None
        if not any(True for _ in events):
            popularity = self.store.popularity()
        co_purchase = None
        if self.cfg.co_purchase_blend and events:
            co_purchase = self.store.co_purchases(list(dict.fromkeys(e.item_id for e in events)))
        results, source = rec.recommend(events, k, filters, context_product_id, popularity, co_purchase=co_purchase)
        return {"results": [self._result(retriever, rec, r, explain=True) for r in results], "source": source,
                "index_version": retriever.version, "history_used": len(events)}

    def complements(self, retriever, product_id: str, k: int) -> dict | None:
        rec = self.recommender(retriever)
        rows = rec.space.product_rows(product_id)
        if not rows:
            return None
        pid = rec.space.products[rows[0]]
        found = rec.complements(product_id, k, self.store.co_purchases([rec.space.ids[r] for r in rows] + [pid]))
        results, source = found
        return {"results": [self._result(retriever, rec, r, explain=False) for r in results], "source": source,
                "index_version": retriever.version}

    @staticmethod
    def _result(retriever, rec: Recommender, r: Rec, explain: bool) -> dict:
        meta, space = retriever.meta, rec.space
        price = meta["price"][r.row]
        pid = space.products[r.row]
        image = meta["image"][r.row] if "image" in meta else ""
        out = {"product_id": pid, "id": space.ids[r.row], "title": meta["title"][r.row],
               "price": None if price is None or price != price else float(price), "score": r.score,
               "retrievers": [r.source], "image_url": f"/images/{retriever.version}/{r.row}.jpg" if image else None,
               "variants": len(space.rows_of_product[pid]), "source": r.source}
        if explain:
            because = [{"id": space.ids[row], "title": meta["title"][row], "type": kind} for row, kind in r.because]
            text = None
            if because:
                text = "because you " + "; ".join(f"{VERBS.get(b['type'], 'viewed')} {b['title']}" for b in because)
            out["explanation"] = {"because": because, "text": text}
        return out
