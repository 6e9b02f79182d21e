"""Serve deployments that wrap the library: Embedder (batched) and Retriever (hot-reloading).

Both are thin: the work is `mmray.embedder.Embedder` and `mmray.index.retriever.Retriever`,
the same classes the batch jobs use.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict

import numpy as np
from ray import serve

from mmray.embedder import Embedder
from mmray.index.filters import SearchFilters
from mmray.index.retriever import IndexLoadError, Retriever
from mmray.storage import current_path

log = logging.getLogger("ray.serve")


@serve.deployment
class EmbedderDeployment:
    """Text and images -> vectors with the model an index was built with; requests are batched."""

    def __init__(self, max_batch: int = 32, batch_wait_s: float = 0.005):
        self.models: OrderedDict[str, Embedder] = OrderedDict()  # model path -> Embedder, the last two
        self.embed_text.set_max_batch_size(max_batch)
        self.embed_text.set_batch_wait_timeout_s(batch_wait_s)
        self.embed_image.set_max_batch_size(max_batch)
        self.embed_image.set_batch_wait_timeout_s(batch_wait_s)

    def _model(self, path: str) -> Embedder:
        if path not in self.models:
            self.models[path] = Embedder.from_checkpoint(path)
            while len(self.models) > 2:
                self.models.popitem(last=False)
        self.models.move_to_end(path)
        return self.models[path]

    async def warm(self, path: str) -> None:
        await asyncio.to_thread(self._model, path)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def embed_text(self, requests: list[tuple[str, str]]) -> list[np.ndarray]:
        return await asyncio.to_thread(self._grouped, requests, "text")

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def embed_image(self, requests: list[tuple[bytes, str]]) -> list[np.ndarray]:
        return await asyncio.to_thread(self._grouped, requests, "image")

    async def embed_image_unbatched(self, image: bytes, path: str) -> np.ndarray:
        """One image per call (the benchmark's baseline for @serve.batch)."""
        return await asyncio.to_thread(lambda: self._model(path).embed_images([image])[0])

    def _grouped(self, requests, kind: str) -> list[np.ndarray]:
        out: list = [None] * len(requests)
        by_model: dict[str, list[int]] = {}
        for i, (_, path) in enumerate(requests):
            by_model.setdefault(path, []).append(i)
        for path, idx in by_model.items():
            model = self._model(path)
            payload = [requests[i][0] for i in idx]
            vecs = model.embed_texts(payload) if kind == "text" else model.embed_images(payload)
            for i, v in zip(idx, vecs):
                out[i] = v
        return out


@serve.deployment
class RetrieverDeployment:
    """The current index, reloaded when `indexes/current.json` (or `user_config`) names a new version.

    The previous version stays loaded, so a request embedded with the old model is answered from
    the old index: a swap never fails a request.
    """

    def __init__(self, index_root: str, nprobe: int = 32, ef_search: int = 128, rrf_k: int = 60,
                 poll_s: float = 2.0):
        self.root, self.poll_s = index_root, poll_s
        self.kwargs = {"nprobe": nprobe, "ef_search": ef_search, "rrf_k": rrf_k}
        self.loaded: OrderedDict[str, Retriever] = OrderedDict()
        self.pinned: str | None = None
        self.error: str | None = None
        self._load_current()
        self._poller = asyncio.get_event_loop().create_task(self._poll())

    def reconfigure(self, user_config: dict) -> None:
        """`{"index_version": "v..."}` pins a version; `{}` follows current.json again."""
        self.pinned = (user_config or {}).get("index_version")
        self._load_current()

    def _target(self) -> str | None:
        if self.pinned:
            return os.path.join(self.root, self.pinned)
        return current_path(self.root)

    def _load_current(self) -> None:
        folder = self._target()
        if folder is None:
            self.error = f"no index published under {self.root}"
            return
        version = os.path.basename(folder)
        if self.loaded and next(reversed(self.loaded)) == version:
            return
        try:
            retriever = self.loaded.pop(version, None) or Retriever.load(folder, **self.kwargs)
        except IndexLoadError as e:  # keep serving what we have; report it on /readyz
            self.error = str(e)
            log.error("index reload refused: %s", e)
            return
        self.loaded[version] = retriever
        while len(self.loaded) > 2:
            self.loaded.popitem(last=False)
        self.error = None
        log.info("serving index %s", version)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await asyncio.to_thread(self._load_current)
            except Exception as e:  # noqa: BLE001 - the poller must never die
                log.exception("index poll failed: %s", e)

    def _get(self, version: str | None) -> Retriever:
        if not self.loaded:
            raise IndexLoadError(self.error or "no index loaded")
        if version and version in self.loaded:
            return self.loaded[version]
        return next(reversed(self.loaded.values()))

    async def info(self) -> dict:
        if not self.loaded:
            return {"ready": False, "error": self.error}
        r = self._get(None)
        m = r.manifest
        return {"ready": True, "version": r.version, "model_path": m["model_path"],
                "model_version": m["model_version"], "count": m["count"], "products": m["products"],
                "factory": m["factory"], "num_shards": m["num_shards"], "folder": r.folder,
                "loaded_versions": list(self.loaded), "reload_error": self.error}

    async def search(self, version: str, vector: np.ndarray, k: int, filters: dict | None, query_text: str | None,
                     hybrid: bool, collapse: bool) -> list[dict]:
        r = self._get(version)
        hits = r.search(vector, k, SearchFilters(**(filters or {})), query_text=query_text, hybrid=hybrid,
                        collapse=collapse)
        return [hit.__dict__ | {"version": r.version} for hit in hits]

    async def similar(self, version: str | None, product_id: str, k: int, filters: dict | None) -> list[dict] | None:
        r = self._get(version)
        try:
            hits = r.similar(product_id, k, SearchFilters(**(filters or {})))
        except KeyError:
            return None
        return [hit.__dict__ | {"version": r.version} for hit in hits]

    async def product(self, product_id: str) -> dict | None:
        r = self._get(None)
        rows = r.rows_for(product_id)
        if not rows:
            return None
        items = [r.item(row) | {"row": row} for row in rows]
        return {"id": product_id, "version": r.version, "items": items}

    async def image_file(self, version: str, row: int) -> str | None:
        if version not in self.loaded:
            return None
        r = self.loaded[version]
        if not 0 <= row < len(r):
            return None
        return os.path.join(r.folder, r.meta["image"][row])
