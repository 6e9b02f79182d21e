"""What a long-running search process holds: index versions (hot reload with back-off) and the
models those indexes were built with. Used by the Serve replicas and by in-process callers alike.

`IndexPool` follows `indexes/current.json` (or a pinned version), keeps the newest two loaded so
requests embedded with the previous model finish on the previous index, and never serves a
version it was not asked for: `get(version)` raises `VersionNotLoaded` instead of mixing a new
model's query vector with an old index. A version that cannot be loaded leaves the loaded one
serving; its error is kept for /readyz and it is retried with exponential back-off.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from mmray.config import IndexConfig
from mmray.embedder import Embedder
from mmray.index.retriever import Retriever
from mmray.storage import INDEX_KIND, ArtifactError, ArtifactStore

log = logging.getLogger(__name__)


class VersionNotLoaded(Exception):
    """A request named an index version this process does not hold (yet, or any more)."""


class IndexPool:
    """The index versions this process serves."""

    KEEP = 2
    MAX_BACKOFF_S = 300.0

    def __init__(self, store: ArtifactStore, cfg: IndexConfig, retry_base_s: float = 2.0,
                 on_loaded: Callable[[str], None] | None = None, on_error: Callable[[], None] | None = None):
        """`on_loaded(version)` / `on_error()` are told of each load and each refused version (metrics)."""
        self.store, self.cfg, self.retry_base_s = store, cfg, retry_base_s
        self.on_loaded, self.on_error = on_loaded or (lambda version: None), on_error or (lambda: None)
        self.loaded: OrderedDict[str, Retriever] = OrderedDict()
        self.pinned: str | None = None
        self.error: str | None = None
        self.failed: dict[str, tuple[int, float]] = {}  # version -> (failures, monotonic time of next try)
        self._lock = threading.Lock()  # refresh runs in a worker thread; one load at a time

    def pin(self, version: str | None) -> None:
        """Serve `version` only (None: follow current.json again)."""
        self.pinned = version
        self.refresh()

    def refresh(self) -> None:
        """Load what the pointer (or the pin) names, if it is new; never raises."""
        with self._lock:
            try:
                version = self.pinned or self.store.current(INDEX_KIND)
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
                retriever = Retriever.load(self.store.resolve(INDEX_KIND, version), self.cfg)
            except (ArtifactError, OSError) as e:
                delay = min(self.retry_base_s * 2 ** failures, self.MAX_BACKOFF_S)
                self.failed[version] = (failures + 1, time.monotonic() + delay)
                self._set_error(f"{e} (next try in {delay:.0f} s)")
                log.error("index reload refused: %s", self.error)
                self.on_error()
                return
            self.failed.pop(version, None)
            self.loaded[version] = retriever
            while len(self.loaded) > self.KEEP:
                self.loaded.popitem(last=False)
            self.error = None
            log.info("serving index %s", version)
            self.on_loaded(version)

    def _set_error(self, message: str) -> None:
        """Errors reach clients (/readyz): never with the storage root's absolute path."""
        self.error = message.replace(self.store.root, "<storage.root>")

    @property
    def newest(self) -> Retriever | None:
        return next(reversed(self.loaded.values())) if self.loaded else None

    def get(self, version: str) -> Retriever:
        try:
            return self.loaded[version]
        except KeyError:
            raise VersionNotLoaded(f"index {version} is not loaded here") from None

    def info(self) -> dict:
        """What is served: version, its model, counts; `ready` False (with `error`) before any load."""
        r = self.newest
        if r is None:
            return {"ready": False, "error": self.error or "no index loaded"}
        m = r.manifest
        return {"ready": True, "version": r.version, "model": m["parents"]["model"],
                "model_version": m["model_version"], "count": m["count"], "products": m["products"],
                "factory": m["factory"], "num_shards": m["num_shards"], "loaded_versions": list(self.loaded),
                "reload_error": self.error}


class ModelPool:
    """Embedders by model ref (`models/dual_encoder/<version>`), the newest two kept."""

    KEEP = 2

    def __init__(self, store: ArtifactStore, batch_size: int, runtime: str = "torch"):
        self.store, self.batch_size, self.runtime = store, batch_size, runtime
        self.models: OrderedDict[str, Embedder] = OrderedDict()
        self._lock = threading.Lock()  # guards `models`
        self._loading = threading.Lock()  # one load at a time

    def get(self, ref: str) -> Embedder:
        with self._lock:
            if ref in self.models:
                self.models.move_to_end(ref)
                return self.models[ref]
        # Loaded outside the lock (seconds: download, verify, ONNX export), so queries for the
        # model already held keep being answered while a new one loads.
        with self._loading:
            with self._lock:
                if ref in self.models:  # another thread loaded it meanwhile
                    return self.models[ref]
            embedder = Embedder.from_version(self.store.resolve_ref(ref), self.batch_size, self.runtime)
            with self._lock:
                self.models[ref] = embedder
                while len(self.models) > self.KEEP:
                    self.models.popitem(last=False)
                return embedder
