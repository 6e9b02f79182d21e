"""One search service for batch and online: text, image and similar-product search, product lookup.

`SearchService` holds the search logic once: it pins one index version per request (and embeds
with that version's model), applies the hybrid/collapse defaults from `IndexConfig`, and times
the call. Where the work runs is its backend:

- `LocalBackend`: an `IndexPool` and a `ModelPool` in this process (jobs, tests, benchmarks, and
  the co-located Serve replica); the blocking work runs in worker threads.
- the Serve handles of the split graph (`deployments/replicas.py` `HandleBackend`), same methods.

Every method takes keyword arguments only.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from mmray.config import IndexConfig, RerankConfig
from mmray.index.filters import SearchFilters
from mmray.index.retriever import Hit
from mmray.serving import IndexPool, ModelPool
from mmray.storage import ArtifactStore


class NotReady(Exception):
    """No index is loaded yet (or none can be): callers answer 503 with Retry-After."""


class RerankUnavailable(Exception):
    """A request asked for `"rerank": true` and no reranker can serve the index (callers answer 409)."""


@dataclass
class SearchResults:
    hits: list[Hit]
    index_version: str
    took_ms: float
    reranked: bool = False
    explanations: list[dict | None] | None = None  # per hit, when reranked


class SearchBackend(Protocol):
    """Where embedding and retrieval run; every method is a coroutine."""

    async def info(self) -> dict: ...

    async def embed_text(self, *, text: str, model: str) -> np.ndarray: ...

    async def embed_image(self, *, image: bytes, model: str) -> np.ndarray: ...

    async def search(self, *, version: str, vector: np.ndarray, k: int, filters: SearchFilters | None,
                     query_text: str | None, hybrid: bool, collapse: bool) -> list[Hit]: ...

    async def search_text(self, *, version: str, model: str, query: str, k: int, filters: SearchFilters | None,
                          hybrid: bool, collapse: bool) -> list[Hit]:
        """Embed `query` with `model`, then search `version` (one step where both are local)."""
        ...

    async def similar(self, *, version: str, product_id: str, k: int, filters: SearchFilters | None
                      ) -> list[Hit] | None: ...

    # Reranking (where `can_rerank`; both raise mmray.rerank.reranker.RerankerMismatch when the served
    # reranker cannot rerank `version`): (hits, explanations), the top `top_k` candidates reranked.
    can_rerank: bool

    async def search_text_reranked(self, *, version: str, model: str, query: str, k: int,
                                   filters: SearchFilters | None, hybrid: bool, collapse: bool, top_k: int
                                   ) -> tuple[list[Hit], list[dict | None]]: ...

    async def similar_reranked(self, *, version: str, product_id: str, k: int, filters: SearchFilters | None,
                               top_k: int) -> tuple[list[Hit], list[dict | None]] | None: ...

    async def product(self, *, version: str, product_id: str) -> dict | None: ...

    async def image(self, *, version: str, row: int) -> bytes | None: ...

    async def warm(self, model: str) -> None: ...

    async def facets(self, *, version: str) -> dict: ...


class SearchService:
    """Text, image and similar-product search over one backend."""

    def __init__(self, backend: SearchBackend, cfg: IndexConfig, info_ttl_s: float = 0.5,
                 rerank: RerankConfig | None = None):
        self.backend, self.cfg, self.info_ttl_s = backend, cfg, info_ttl_s
        self.rerank_cfg = rerank or RerankConfig()
        self._info: dict | None = None
        self._info_at = 0.0

    @classmethod
    def local(cls, store: ArtifactStore, cfg: IndexConfig, rerank: RerankConfig | None = None) -> SearchService:
        """The current index of `store` and its model, in this process (and the reranker, when `rerank.enabled`)."""
        indexes = IndexPool(store, cfg)
        indexes.refresh()
        if indexes.newest is None:
            raise NotReady(indexes.error)
        rerankers = reranker_pool(store, rerank)
        return cls(LocalBackend(indexes, ModelPool(store, cfg.embed_batch_size, cfg.query_runtime), cfg.search_threads,
                                rerankers), cfg, rerank=rerank)

    async def info(self, fresh: bool = False) -> dict:
        """What is being served (cached for `info_ttl_s`); NotReady before any index is loaded."""
        if fresh or self._info is None or time.monotonic() - self._info_at > self.info_ttl_s:
            self._info, self._info_at = await self.backend.info(), time.monotonic()
        if not self._info.get("ready"):
            raise NotReady(self._info.get("error") or "no index loaded")
        return self._info

    def wants_rerank(self, route: str, rerank: bool | None) -> bool:
        """Whether a request on `route` ("search", "similar", "image") asks for reranking: its own `rerank`,
        else `rerank.enabled` and the route in `rerank.routes`."""
        if rerank is not None:
            return rerank
        return self.rerank_cfg.enabled and route in self.rerank_cfg.routes

    async def _reranked(self, route: str, rerank: bool | None, call):
        """`await call()` ((hits, explanations), or None for an unknown product) when reranking is wanted
        and possible; False when not wanted, or wanted by default (`rerank` None) but unavailable (the
        pool logs why once); RerankUnavailable when the request insisted (`rerank` True)."""
        if not self.wants_rerank(route, rerank):
            return False
        from mmray.rerank.reranker import RerankerMismatch

        try:
            if not getattr(self.backend, "can_rerank", False):
                raise RerankerMismatch("this deployment has no reranker (rerank.enabled is false)")
            return await call()
        except RerankerMismatch as e:
            if rerank:
                raise RerankUnavailable(str(e)) from None
            return False

    async def search_text(self, *, query: str, k: int = 10, filters: SearchFilters | None = None,
                          hybrid: bool | None = None, collapse: bool = True, rerank: bool | None = None) -> SearchResults:
        """`rerank`: None follows `rerank.enabled` and `rerank.routes` (a reranker that cannot serve: the
        bi-encoder order, logged once); True insists (RerankUnavailable if it cannot); False never reranks."""
        start, info = time.perf_counter(), await self.info()
        hybrid = self.cfg.hybrid if hybrid is None else hybrid
        found = await self._reranked("search", rerank, lambda: self.backend.search_text_reranked(
            version=info["version"], model=info["model"], query=query, k=k, filters=filters, hybrid=hybrid,
            collapse=collapse, top_k=self.rerank_cfg.top_k))
        if found is not False:
            return SearchResults(found[0], info["version"], _ms(start), True, found[1])
        hits = await self.backend.search_text(version=info["version"], model=info["model"], query=query, k=k,
                                              filters=filters, hybrid=hybrid, collapse=collapse)
        return SearchResults(hits, info["version"], _ms(start))

    async def search_image(self, *, image: bytes, k: int = 10, filters: SearchFilters | None = None,
                           collapse: bool = True, rerank: bool | None = None) -> SearchResults:
        """Always in the bi-encoder's order: the reranker reads query text, and no image-query path is
        trained; `rerank=True` raises RerankUnavailable saying so."""
        if rerank:
            raise RerankUnavailable("image search is not reranked: the reranker reads query text tokens and "
                                    "has no trained image-query path")
        start, info = time.perf_counter(), await self.info()
        vector = await self.backend.embed_image(image=image, model=info["model"])
        hits = await self.backend.search(version=info["version"], vector=vector, k=k, filters=filters,
                                         query_text=None, hybrid=False, collapse=collapse)
        return SearchResults(hits, info["version"], _ms(start))

    async def similar(self, *, product_id: str, k: int = 10, filters: SearchFilters | None = None,
                      rerank: bool | None = None) -> SearchResults | None:
        """Products like `product_id` (an item or product id), never itself; None if unknown. `rerank` as in
        `search_text` (route "similar")."""
        start, info = time.perf_counter(), await self.info()
        found = await self._reranked("similar", rerank, lambda: self.backend.similar_reranked(
            version=info["version"], product_id=product_id, k=k, filters=filters, top_k=self.rerank_cfg.top_k))
        if found is None:
            return None
        if found is not False:
            return SearchResults(found[0], info["version"], _ms(start), True, found[1])
        hits = await self.backend.similar(version=info["version"], product_id=product_id, k=k, filters=filters)
        return None if hits is None else SearchResults(hits, info["version"], _ms(start))

    async def product(self, *, product_id: str) -> dict | None:
        info = await self.info()
        return await self.backend.product(version=info["version"], product_id=product_id)

    async def image(self, *, version: str, row: int) -> bytes | None:
        """The stored image of item `row` of index `version` (any version this backend holds)."""
        return await self.backend.image(version=version, row=row)

    async def ready(self) -> dict:
        """The served versions, after loading the model (what /readyz waits for)."""
        info = await self.info(fresh=True)
        await self.backend.warm(info["model"])
        return info

    async def embed_text(self, *, text: str) -> tuple[np.ndarray, str]:
        """(unit vector, model version) with the served index's model."""
        info = await self.info()
        return await self.backend.embed_text(text=text, model=info["model"]), info["model_version"]

    async def embed_image(self, *, image: bytes) -> tuple[np.ndarray, str]:
        info = await self.info()
        return await self.backend.embed_image(image=image, model=info["model"]), info["model_version"]

    async def facets(self) -> dict:
        """The filterable values of the served index (`mmray.index.facets.facet_values`) and its version."""
        info = await self.info()
        return {**await self.backend.facets(version=info["version"]), "index_version": info["version"]}


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


class LocalBackend:
    """Embedding and retrieval in this process; blocking work in `threads` worker threads of its own
    (not asyncio's default pool of cores + 4: past a couple of threads the model's Python code only
    fights the event loop for the GIL)."""

    def __init__(self, indexes: IndexPool, models: ModelPool, threads: int, rerankers=None):
        """`rerankers`: a `mmray.rerank.reranker.RerankerPool` (None: no reranking here)."""
        self.indexes, self.models, self.rerankers = indexes, models, rerankers
        self.can_rerank = rerankers is not None
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="mmray-search")

    async def _run(self, fn, /, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: fn(*args, **kwargs))

    async def info(self) -> dict:
        return self.indexes.info()

    async def embed_text(self, *, text: str, model: str) -> np.ndarray:
        return await self._run(lambda: self.models.get(model).embed_texts([text])[0])

    async def embed_image(self, *, image: bytes, model: str) -> np.ndarray:
        return await self._run(lambda: self.models.get(model).embed_images([image])[0])

    async def search(self, *, version, vector, k, filters, query_text, hybrid, collapse) -> list[Hit]:
        retriever = self.indexes.get(version)
        return await self._run(retriever.search, vector, k, filters, query_text=query_text, hybrid=hybrid,
                               collapse=collapse)

    async def search_text(self, *, version, model, query, k, filters, hybrid, collapse) -> list[Hit]:
        retriever = self.indexes.get(version)  # before embedding: a version we lack fails fast

        def work():  # one worker-thread hop for both steps
            vector = self.models.get(model).embed_texts([query])[0]
            return retriever.search(vector, k, filters, query_text=query, hybrid=hybrid, collapse=collapse)
        return await self._run(work)

    async def search_text_reranked(self, *, version, model, query, k, filters, hybrid, collapse, top_k
                                   ) -> tuple[list[Hit], list[dict | None]]:
        """The top `top_k` items reranked (then collapsed to products), the rest in the retriever's order."""
        from mmray.rerank.search import rerank_search

        retriever = self.indexes.get(version)

        def work():
            reranker = self.rerankers.get(retriever)  # RerankerMismatch before any embedding
            embedder = self.models.get(model)
            return rerank_search(retriever, embedder, reranker, query, k, filters, hybrid, collapse, top_k)
        return await self._run(work)

    async def similar_reranked(self, *, version, product_id, k, filters, top_k
                               ) -> tuple[list[Hit], list[dict | None]] | None:
        """/similar's top `top_k` items reranked with the seed's text tokens and facts; None if unknown."""
        from mmray.rerank.search import rerank_similar

        retriever = self.indexes.get(version)

        def work():
            return rerank_similar(retriever, self.rerankers.get(retriever), product_id, k, filters, top_k)
        return await self._run(work)

    async def similar(self, *, version, product_id, k, filters) -> list[Hit] | None:
        retriever = self.indexes.get(version)
        try:
            return await self._run(retriever.similar, product_id, k, filters)
        except KeyError:
            return None

    async def product(self, *, version, product_id) -> dict | None:
        return product_record(self.indexes.get(version), product_id)

    async def image(self, *, version: str, row: int) -> bytes | None:
        return await self._run(self.indexes.get(version).image_bytes, row)

    async def warm(self, model: str) -> None:
        await self._run(self.models.get, model)
        if self.rerankers is not None:
            from mmray.rerank.search import warm_reranker

            await self._run(warm_reranker, self.indexes, self.models, self.rerankers, model)

    async def facets(self, *, version: str) -> dict:
        return self.indexes.get(version).facets()


def reranker_pool(store: ArtifactStore, cfg: RerankConfig | None):
    """The reranker pool of a serving process, or None where `rerank.enabled` is false."""
    if cfg is None or not cfg.enabled:
        return None
    from mmray.rerank.reranker import RerankerPool

    return RerankerPool(store, cfg)


def product_record(retriever, product_id: str) -> dict | None:
    """A product (or one item) and its variants, as the API shows it; None if unknown."""
    rows = retriever.rows_for(product_id)
    if not rows:
        return None
    items = []
    for row in rows:
        item = retriever.item(row)
        item["has_image"] = bool(item.pop("image", ""))  # text-only items have none
        if item.get("price") is not None and item["price"] != item["price"]:  # NaN: no price
            item["price"] = None
        items.append(item | {"row": row})
    return {"id": product_id, "version": retriever.version, "items": items}
