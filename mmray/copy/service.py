"""The Copywriter behind /v1/copy: its catalog is the dataset the served index was built from
(reloaded when the index moves to a version of another dataset), its exemplars the similar
products the SearchService finds; the writing runs in a worker thread."""
from __future__ import annotations

import asyncio
import threading

from mmray.config.copy import CopyConfig
from mmray.copy.copywriter import Copywriter
from mmray.copy.facts import Catalog
from mmray.copy.schema import CopyRequest
from mmray.dataset import item_paths
from mmray.storage import INDEX_KIND, ArtifactStore


def load_catalog(store: ArtifactStore, dataset_ref: str) -> Catalog:
    """The fact rows of one published dataset version (`datasets/<name>/<version>`)."""
    dataset = store.resolve_ref(dataset_ref)
    return Catalog.from_parquet(item_paths(dataset), filesystem=store.fs, ref=dataset_ref)


class CopyService:
    def __init__(self, store: ArtifactStore, cfg: CopyConfig, serve_port: int = 8000):
        self.store, self.cfg, self.serve_port = store, cfg, serve_port
        self.writer: Copywriter | None = None
        self.lock = threading.Lock()

    def _writer_for(self, index_version: str) -> Copywriter:
        ref = self.store.read_manifest(INDEX_KIND, index_version)["parents"]["dataset"]
        with self.lock:
            if self.writer is None or self.writer.catalog.ref != ref:
                engines = self.writer.engines if self.writer is not None else None  # keep loaded models
                self.writer = Copywriter(load_catalog(self.store, ref), self.cfg, self.store, engines, self.serve_port)
            return self.writer

    async def write(self, req: CopyRequest, search) -> dict:
        """`search`: the SearchService (its served index version and similar products)."""
        info = await search.info()
        writer = await asyncio.to_thread(self._writer_for, info["version"])
        writer.check_request(req)
        similar = []
        if self.cfg.exemplars and (req.engine or self.cfg.engine) != "grounded":
            # the bi-encoder's neighbours, as `jobs.generate_copy` picks them (mmray/copy/batch.py)
            res = await search.similar(product_id=req.product_id, k=self.cfg.exemplars, rerank=False)
            similar = [h.product_id for h in res.hits] if res is not None else []
        return await asyncio.to_thread(writer.write, req, similar)
