"""Serve deployments that wrap the library: Embedder (batched) and Retriever (hot-reloading).

Both are thin: the work is `mmray.embedder.Embedder` and `mmray.index.retriever.Retriever`,
the same classes the batch jobs use.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict

import numpy as np
from ray import serve

from mmray.embedder import Embedder
from mmray.index.filters import SearchFilters
from mmray.index.retriever import IndexLoadError, Retriever
from mmray.storage import INDEX_KIND, ArtifactError, ArtifactStore

log = logging.getLogger("ray.serve")


@serve.deployment
class EmbedderDeployment:
    """Text and images -> vectors with the model an index was built with; requests are batched.

    Requests name the model by its artifact ref (`models/dual_encoder/<version>`, from the index
    manifest); the replica loads a verified local copy of it from the store.
    """

    def __init__(self, store: ArtifactStore, max_batch: int = 32, batch_wait_s: float = 0.005):
        self.store = store
        self.models: OrderedDict[str, Embedder] = OrderedDict()  # model ref -> Embedder, the last two
        self.embed_text.set_max_batch_size(max_batch)
        self.embed_text.set_batch_wait_timeout_s(batch_wait_s)
        self.embed_image.set_max_batch_size(max_batch)
        self.embed_image.set_batch_wait_timeout_s(batch_wait_s)

    def _model(self, ref: str) -> Embedder:
        if ref not in self.models:
            self.models[ref] = Embedder.from_checkpoint(self.store.resolve_ref(ref).local_dir())
            while len(self.models) > 2:
                self.models.popitem(last=False)
        self.models.move_to_end(ref)
        return self.models[ref]

    async def warm(self, ref: str) -> None:
        await asyncio.to_thread(self._model, ref)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def embed_text(self, requests: list[tuple[str, str]]) -> list[np.ndarray]:
        return await asyncio.to_thread(self._grouped, requests, "text")

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def embed_image(self, requests: list[tuple[bytes, str]]) -> list[np.ndarray]:
        return await asyncio.to_thread(self._grouped, requests, "image")

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
    the old index: a swap never fails a request. A version that cannot be loaded (corrupt, a bad
    pointer) leaves the loaded one serving; the error shows on /readyz, and that version is
    retried with exponential back-off instead of being re-hashed on every poll.
    """

    MAX_BACKOFF_S = 300.0

    def __init__(self, store: ArtifactStore, nprobe: int = 32, ef_search: int = 128, rrf_k: int = 60,
                 poll_s: float = 2.0):
        self.store, self.poll_s = store, poll_s
        self.kwargs = {"nprobe": nprobe, "ef_search": ef_search, "rrf_k": rrf_k}
        self.loaded: OrderedDict[str, Retriever] = OrderedDict()
        self.pinned: str | None = None
        self.error: str | None = None
        self.failed: dict[str, tuple[int, float]] = {}  # version -> (failures, monotonic time of next try)
        self._load_current()
        self._poller = asyncio.get_event_loop().create_task(self._poll())

    def reconfigure(self, user_config: dict) -> None:
        """`{"index_version": "v..."}` pins a version; `{}` follows current.json again."""
        self.pinned = (user_config or {}).get("index_version")
        self._load_current()

    def _target(self) -> str | None:
        return self.pinned or self.store.current(INDEX_KIND)

    def _load_current(self) -> None:
        try:
            version = self._target()
        except ArtifactError as e:  # a pointer we refuse to follow: keep serving what we have
            self._set_error(str(e))
            return
        if version is None:
            self._set_error("no index has been published yet: run `python -m jobs.build_index`")
            return
        if version in self.loaded:
            self.loaded.move_to_end(version)
            self.error = None
            return
        failures, retry_at = self.failed.get(version, (0, 0.0))
        if time.monotonic() < retry_at:
            return
        try:
            retriever = Retriever.load(self.store.resolve(INDEX_KIND, version), **self.kwargs)
        except (ArtifactError, OSError) as e:  # keep serving what we have; report it on /readyz
            delay = min(self.poll_s * 2 ** failures, self.MAX_BACKOFF_S)
            self.failed[version] = (failures + 1, time.monotonic() + delay)
            self._set_error(f"{e} (next try in {delay:.0f} s)")
            log.error("index reload refused: %s", self.error)
            return
        self.failed.pop(version, None)
        self.loaded[version] = retriever
        while len(self.loaded) > 2:
            self.loaded.popitem(last=False)
        self.error = None
        log.info("serving index %s", version)

    def _set_error(self, message: str) -> None:
        """Errors are shown to clients on /readyz: never with the storage root's absolute path."""
        self.error = message.replace(self.store.root, "<storage.root>")

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
        return {"ready": True, "version": r.version, "model": m["parents"]["model"],
                "model_version": m["model_version"], "count": m["count"], "products": m["products"],
                "factory": m["factory"], "num_shards": m["num_shards"],
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
