"""Catalog-wide creatives with Ray Data: every product of the current index x every requested
format -> images and a manifest, published as one version of `creatives/batch`.

Rows are products (one item each: the first with a photo); an actor pool of `CreativeWorker`s, each
holding the same CreativeStudio the server uses and the index's own model, renders every format of
a product, writes the images straight into the version folder and returns one row per creative;
the driver writes `creatives.json` and `manifest.jsonl` and commits (manifest with SHA-256 last).
"""
from __future__ import annotations

import io
import json
import logging

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from mmray.config import MmrayConfig
from mmray.config.creative import CreativeConfig
from mmray.creative.publish import BATCH_KIND, RECORDS, file_name, product_key
from mmray.creative.service import product_from_item
from mmray.creative.studio import CreativeStudio
from mmray.storage import INDEX_KIND, ArtifactStore
from mmray.storage.fs import write_bytes

log = logging.getLogger(__name__)


def catalog_products(index, products: list[str] | None = None, limit: int | None = None) -> list[dict]:
    """One row per product of an index version (its first item with a photo), in index order."""
    table = pq.read_table(io.BytesIO(index.read_bytes("metadata.parquet"))).to_pylist()
    wanted = set(products) if products else None
    rows, seen = [], set()
    for item in table:
        pid = item["product_id"]
        if pid in seen or not item.get("image") or (wanted is not None and not ({pid, item["id"]} & wanted)):
            continue
        seen.add(pid)
        rows.append({k: item.get(k) for k in ("id", "product_id", "title", "price", "category", "color", "gender",
                                               "image")})
        if limit is not None and len(rows) >= limit:
            break
    return rows


class CreativeWorker:
    """Ray Data actor: a batch of product rows -> one row per creative, images written to the version."""

    def __init__(self, cfg: CreativeConfig, store: ArtifactStore, index_ref: str, model_ref: str,
                 kind: str, version: str, formats: list[str], style: str | None, with_copy: bool):
        from mmray.embedder import Embedder

        self.cfg, self.store, self.kind, self.version = cfg, store, kind, version
        self.formats, self.style, self.with_copy = formats, style, with_copy
        self.index = store.resolve_ref(index_ref, verify=False)
        embedder = Embedder.from_version(store.resolve_ref(model_ref))
        self.studio = CreativeStudio(cfg, embed=embedder.embed_images)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {k: [] for k in ("product_id", "item_id", "format", "file", "width", "height",
                                                "passed", "checks")}
        for i in range(len(batch["id"])):
            item = {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in batch.items()}
            photo = Image.open(io.BytesIO(self.index.read_bytes(item["image"]))).convert("RGB")
            product = product_from_item(item, photo)
            key = product_key(product.product_id)
            for c in self.studio.render_all(product, self.formats, self.style, self.with_copy):
                rel = f"{key}/{file_name(c.format, self.cfg.image_format)}"
                write_bytes(self.store.fs, self.store.path(self.kind, self.version, rel),
                            c.encode(self.cfg.image_format, self.cfg.jpeg_quality))
                for k, v in (("product_id", product.product_id), ("item_id", product.id), ("format", c.format),
                             ("file", rel), ("width", c.image.width), ("height", c.image.height),
                             ("passed", c.passed), ("checks", json.dumps(c.checks))):
                    out[k].append(v)
        return out


def generate_creatives(cfg: MmrayConfig, formats: list[str] | None = None, style: str | None = None,
                       products: list[str] | None = None, limit: int | None = None, with_copy: bool = True,
                       concurrency: int = 1) -> dict:
    """Render and publish; returns the published manifest (without its file list)."""
    import ray

    c = cfg.creative
    formats = formats or list(c.formats)
    style = CreativeStudio(c).check_request(formats, style)  # a bad format fails before Ray starts work
    store = ArtifactStore.from_config(cfg.storage)
    index = store.resolve(INDEX_KIND, verify=False, hint="run `python -m jobs.build_index`")
    model_ref = index.manifest["parents"]["model"]
    rows = catalog_products(index, products, limit)
    if not rows:
        raise ValueError("no products with a photo to make creatives of")
    with store.begin(BATCH_KIND, config={"creative": c.model_dump(mode="json"), "formats": formats, "style": style},
                     parents={"index": index.ref, "model": model_ref}) as writer:
        ds = ray.data.from_items(rows).map_batches(
            CreativeWorker, batch_size=4, batch_format="numpy",
            fn_constructor_args=(c, store, index.ref, model_ref, writer.kind, writer.name, formats, style, with_copy),
            compute=ray.data.ActorPoolStrategy(size=concurrency))
        made = ds.take_all()
        records = [{**r, "checks": json.loads(r["checks"]), "passed": bool(r["passed"]),
                    "width": int(r["width"]), "height": int(r["height"])} for r in made]
        records.sort(key=lambda r: (r["product_id"], formats.index(r["format"])))
        writer.write_json(RECORDS, {"formats": formats, "style": style, "creatives": records})
        writer.write_text("manifest.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        summary = {"products": len(rows), "creatives": len(records), "passed": sum(r["passed"] for r in records)}
        version = writer.commit(extra={"summary": summary})
    log.info("creatives: %s", summary)
    return {k: v for k, v in version.manifest.items() if k not in ("files", "config")}
