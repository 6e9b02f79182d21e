"""Serve deployments of the split topology: Embedder (batched, e.g. on GPUs), Retriever (CPU) and,
with rerank.enabled, Reranker (batched).

All are thin: the work is `mmray.serving.ModelPool` / `IndexPool` and `mmray.rerank`, the same code the
co-located Ingress and in-process callers use. `HandleBackend` gives `mmray.search.SearchService`
the same backend interface over their handles.
"""
from __future__ import annotations

import asyncio
import logging

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.metrics import record_index_load_error, record_index_loaded
from mmray.config import IndexConfig
from mmray.index.filters import SearchFilters
from mmray.index.retriever import Hit
from mmray.search import product_record
from mmray.serving import IndexPool, ModelPool, VersionNotLoaded
from mmray.storage import ArtifactStore

log = logging.getLogger("ray.serve")


@serve.deployment
class EmbedderDeployment:
    """Text and images -> vectors with the model an index was built with; requests are batched.

    Requests name the model by its artifact ref (`models/dual_encoder/<version>`, from the index
    manifest); the replica loads a verified local copy of it from the store.
    """

    def __init__(self, store: ArtifactStore, max_batch: int, batch_wait_s: float):
        self.models = ModelPool(store, max_batch)
        for method in (self.embed_text, self.embed_image):
            method.set_max_batch_size(max_batch)
            method.set_batch_wait_timeout_s(batch_wait_s)

    async def warm(self, ref: str) -> None:
        await asyncio.to_thread(self.models.get, ref)

    @serve.batch
    async def embed_text(self, requests: list[tuple[str, str]]) -> list[np.ndarray]:
        return await asyncio.to_thread(self._grouped, requests, "text")

    @serve.batch
    async def embed_image(self, requests: list[tuple[bytes, str]]) -> list[np.ndarray]:
        return await asyncio.to_thread(self._grouped, requests, "image")

    def _grouped(self, requests, kind: str) -> list[np.ndarray]:
        """One forward pass per model among the batch's requests."""
        out: list = [None] * len(requests)
        by_model: dict[str, list[int]] = {}
        for i, (_, ref) in enumerate(requests):
            by_model.setdefault(ref, []).append(i)
        for ref, idx in by_model.items():
            embedder = self.models.get(ref)
            payload = [requests[i][0] for i in idx]
            vecs = embedder.embed_texts(payload) if kind == "text" else embedder.embed_images(payload)
            for i, v in zip(idx, vecs):
                out[i] = v
        return out


async def poll_forever(indexes: IndexPool, poll_s: float) -> None:
    """Follow `indexes/current.json` (the pool backs off on broken versions by itself)."""
    while True:
        await asyncio.sleep(poll_s)
        try:
            await asyncio.to_thread(indexes.refresh)
        except Exception as e:  # noqa: BLE001 - the poller must never die
            log.exception("index poll failed: %s", e)


@serve.deployment
class RetrieverDeployment:
    """The current index, reloaded when `indexes/current.json` (or `user_config`) names a new
    version; requests name the version they were embedded for (see `mmray.serving.IndexPool`)."""

    def __init__(self, store: ArtifactStore, cfg: IndexConfig, poll_s: float):
        self.indexes = IndexPool(store, cfg, retry_base_s=poll_s, on_loaded=record_index_loaded,
                                 on_error=record_index_load_error)
        self.indexes.refresh()
        self._poller = asyncio.get_event_loop().create_task(poll_forever(self.indexes, poll_s))

    def reconfigure(self, user_config: dict) -> None:
        """`{"index_version": "v..."}` pins a version; `{}` follows current.json again."""
        self.indexes.pin((user_config or {}).get("index_version"))

    async def info(self) -> dict:
        return self.indexes.info()

    async def search(self, version: str, vector: np.ndarray, k: int, filters: SearchFilters | None,
                     query_text: str | None, hybrid: bool, collapse: bool) -> list[Hit]:
        return self.indexes.get(version).search(vector, k, filters, query_text=query_text, hybrid=hybrid,
                                                collapse=collapse)

    async def similar(self, version: str, product_id: str, k: int, filters: SearchFilters | None) -> list[Hit] | None:
        try:
            return self.indexes.get(version).similar(product_id, k, filters)
        except KeyError:
            return None

    async def product(self, version: str, product_id: str) -> dict | None:
        return product_record(self.indexes.get(version), product_id)

    async def image(self, version: str, row: int) -> bytes | None:
        return self.indexes.get(version).image_bytes(row)

    async def facets(self, version: str) -> dict:
        return self.indexes.get(version).facets()


@serve.deployment
class RerankerDeployment:
    """Reranked searches, answered whole: the replica holds the index versions (following
    `indexes/current.json` like the Retriever), the model's text tower for the query side, and the
    served fusion head with each index's item features (`mmray.rerank.reranker.RerankerPool`).

    Requests are batched with @serve.batch: the batch's text queries go through the text tower in one
    run (`mmray.rerank.search.encode_queries`), then each request retrieves its candidates and runs the
    head (candidate lists differ in length with filters, so the head runs per request). A request is
    `{"route": "search" | "similar", "version": ..., ...}`; the answer is (hits, explanations), None for
    an unknown product, or `{"refused": message}` where the reranker cannot serve the version (the
    caller raises RerankerMismatch with it)."""

    def __init__(self, store: ArtifactStore, cfg: IndexConfig, rerank_cfg, poll_s: float, max_batch: int,
                 batch_wait_s: float):
        from mmray.search import reranker_pool

        self.indexes = IndexPool(store, cfg, retry_base_s=poll_s)
        self.indexes.refresh()
        self._poller = asyncio.get_event_loop().create_task(poll_forever(self.indexes, poll_s))
        self.models = ModelPool(store, cfg.embed_batch_size, cfg.query_runtime)
        self.rerankers = reranker_pool(store, rerank_cfg)
        self.rerank.set_max_batch_size(max_batch)
        self.rerank.set_batch_wait_timeout_s(batch_wait_s)

    async def warm(self, ref: str) -> None:
        """Load the model and build the head's query side for the newest index before traffic."""
        from mmray.rerank.search import warm_reranker

        await asyncio.to_thread(warm_reranker, self.indexes, self.models, self.rerankers, ref)

    @serve.batch
    async def rerank(self, requests: list[dict]) -> list:
        return await asyncio.to_thread(self._batch, requests)

    def _batch(self, requests: list[dict]) -> list:
        from mmray.rerank.reranker import RerankerMismatch
        from mmray.rerank.search import encode_queries, rerank_search, rerank_similar

        out: list = [None] * len(requests)
        pooled, encoded = {}, {}
        for i, r in enumerate(requests):  # the version check, and each version's reranker, once per batch
            try:
                retriever = self.indexes.get(r["version"])
                if r["version"] not in pooled:
                    pooled[r["version"]] = self.rerankers.get(retriever)
            except RerankerMismatch as e:
                out[i] = {"refused": str(e)}
            except VersionNotLoaded as e:
                out[i] = {"not_loaded": str(e)}
        texts: dict[tuple[str, str], list[int]] = {}
        for i, r in enumerate(requests):
            if out[i] is None and r["route"] == "search":
                texts.setdefault((r["version"], r["model"]), []).append(i)
        for (version, model), idx in texts.items():  # one text-tower run per (index, model) in the batch
            embedder = self.models.get(model)
            for i, enc in zip(idx, encode_queries(embedder, pooled[version][0], [requests[i]["query"] for i in idx])):
                encoded[i] = (embedder, enc)
        for i, r in enumerate(requests):
            if out[i] is not None:
                continue
            retriever = self.indexes.get(r["version"])
            if r["route"] == "search":
                embedder, enc = encoded[i]
                out[i] = rerank_search(retriever, embedder, pooled[r["version"]], r["query"], r["k"], r["filters"],
                                       r["hybrid"], r["collapse"], r["top_k"], encoded=enc)
            else:
                out[i] = rerank_similar(retriever, pooled[r["version"]], r["product_id"], r["k"], r["filters"],
                                        r["top_k"])
        return out


class HandleBackend:
    """`mmray.search.SearchBackend` over the split graph's handles (`reranker`: None, no reranking)."""

    def __init__(self, embedder: DeploymentHandle, retriever: DeploymentHandle, reranker: DeploymentHandle | None = None):
        self.embedder, self.retriever, self.reranker = embedder, retriever, reranker
        self.can_rerank = reranker is not None

    async def _rerank(self, request: dict):
        from mmray.rerank.reranker import RerankerMismatch

        found = await self.reranker.rerank.remote(request)
        if isinstance(found, dict):
            if "refused" in found:
                raise RerankerMismatch(found["refused"])
            raise VersionNotLoaded(found["not_loaded"])
        return found

    async def search_text_reranked(self, *, version, model, query, k, filters, hybrid, collapse, top_k):
        return await self._rerank({"route": "search", "version": version, "model": model, "query": query, "k": k,
                                   "filters": filters, "hybrid": hybrid, "collapse": collapse, "top_k": top_k})

    async def similar_reranked(self, *, version, product_id, k, filters, top_k):
        return await self._rerank({"route": "similar", "version": version, "product_id": product_id, "k": k,
                                   "filters": filters, "top_k": top_k})

    async def info(self) -> dict:
        return await self.retriever.info.remote()

    async def embed_text(self, *, text: str, model: str) -> np.ndarray:
        return await self.embedder.embed_text.remote((text, model))

    async def embed_image(self, *, image: bytes, model: str) -> np.ndarray:
        return await self.embedder.embed_image.remote((image, model))

    async def search(self, *, version, vector, k, filters, query_text, hybrid, collapse) -> list[Hit]:
        return await self.retriever.search.remote(version, vector, k, filters, query_text, hybrid, collapse)

    async def search_text(self, *, version, model, query, k, filters, hybrid, collapse) -> list[Hit]:
        vector = await self.embedder.embed_text.remote((query, model))
        return await self.retriever.search.remote(version, vector, k, filters, query, hybrid, collapse)

    async def similar(self, *, version, product_id, k, filters) -> list[Hit] | None:
        return await self.retriever.similar.remote(version, product_id, k, filters)

    async def product(self, *, version, product_id) -> dict | None:
        return await self.retriever.product.remote(version, product_id)

    async def image(self, *, version: str, row: int) -> bytes | None:
        return await self.retriever.image.remote(version, row)

    async def warm(self, model: str) -> None:
        await self.embedder.warm.remote(model)
        if self.reranker is not None:
            await self.reranker.warm.remote(model)

    async def facets(self, *, version: str) -> dict:
        return await self.retriever.facets.remote(version)
