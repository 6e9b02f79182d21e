"""Catalog-wide copy with the same Copywriter the server uses: Ray Data over the products of the
current dataset, one row per (product, kind, variant) with its text and guardrail verdict, written
as Parquet into a new version of `copy/<dataset name>`.

With the vllm engine in production, `ray.data.llm`'s processor would do the batch generation;
here every engine runs through the Copywriter in an actor pool (see the issue's report).
"""
from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq

from mmray.config import MmrayConfig
from mmray.copy.schema import CopyRequest
from mmray.dataset import current_dataset
from mmray.storage import ArtifactError

log = logging.getLogger(__name__)

OUTPUT_SCHEMA = pa.schema([("product_id", pa.string()), ("engine", pa.string()), ("kind", pa.string()),
                           ("variant", pa.int32()), ("text", pa.string()), ("passed", pa.bool_()),
                           ("reasons", pa.string()), ("removed", pa.string()), ("raw", pa.string())])


def copy_kind(dataset_name: str) -> str:
    return f"copy/{dataset_name}"


class CopyBatch:
    """Ray Data actor: a Copywriter over the dataset `dataset_ref`, exemplars from the current index."""

    def __init__(self, cfg: MmrayConfig, dataset_ref: str, kinds: list[str], n_variants: int):
        from mmray.copy.copywriter import Copywriter
        from mmray.copy.service import load_catalog
        from mmray.index.retriever import IndexLoadError, Retriever
        from mmray.storage import ArtifactStore

        store = ArtifactStore.from_config(cfg.storage)
        self.writer = Copywriter(load_catalog(store, dataset_ref), cfg.copy, store)
        self.kinds, self.n = kinds, n_variants
        try:
            self.retriever = Retriever.load_current(store, cfg.index) if cfg.copy.exemplars else None
        except IndexLoadError:
            self.retriever = None  # no index yet: no exemplars

    def _similar(self, pid: str) -> list[str]:
        if self.retriever is None:
            return []
        try:
            return [h.product_id for h in self.retriever.similar(pid, self.writer.cfg.exemplars)]
        except KeyError:
            return []

    def __call__(self, batch: dict) -> dict:
        rows = {name: [] for name in OUTPUT_SCHEMA.names}
        for pid in batch["product_id"]:
            pid = str(pid)
            out = self.writer.write(CopyRequest(product_id=pid, kinds=self.kinds, n_variants=self.n), self._similar(pid))
            for o in out["outputs"]:
                for i, v in enumerate(o["variants"]):
                    for key, value in (("product_id", pid), ("engine", out["engine"]), ("kind", o["kind"]), ("variant", i),
                                       ("text", v["text"]), ("passed", v["passed"]), ("reasons", json.dumps(v["reasons"])),
                                       ("removed", json.dumps(v["removed"])),
                                       ("raw", out["raw"][i] if i < len(out["raw"]) else "")):
                        rows[key].append(value)
        return rows


def generate_copy(cfg: MmrayConfig, kinds: list[str], n_variants: int = 1, limit: int | None = None) -> dict:
    """Copy for every product (or the first `limit`) of the current dataset; returns the manifest."""
    import ray

    dataset = current_dataset(cfg)
    store = dataset.store
    from mmray.copy.service import load_catalog

    products = load_catalog(store, dataset.ref).product_ids()[:limit]
    if not products:
        raise ArtifactError(f"{dataset.ref} has no products")
    ds = ray.data.from_items([{"product_id": p} for p in products])
    out = ds.map_batches(CopyBatch, batch_size=8, batch_format="numpy",
                         fn_constructor_args=(cfg, dataset.ref, kinds, n_variants),
                         compute=ray.data.ActorPoolStrategy(size=1))
    with store.begin(copy_kind(cfg.data.name), config=cfg.model_dump(mode="json"),
                     parents={"dataset": dataset.ref}) as writer:
        out.write_parquet(writer.path("outputs"), filesystem=store.fs)
        passed = pq.read_table(writer.path("outputs"), filesystem=store.fs, columns=["passed"]).column("passed").to_pylist()
        n, passed = len(passed), sum(passed)
        version = writer.commit(extra={"engine": cfg.copy.engine, "products": len(products), "outputs": n,
                                       "passed": passed, "kinds": kinds, "n_variants": n_variants})
    return {**version.manifest, "path": version.uri}
