"""Creatives online: look the product up in the served index, render its formats in a worker
thread, check the product with the served model's image embedding, publish the images as a
version, and answer with their URLs and checks. The Serve Ingress calls it; tests call it in-process.
"""
from __future__ import annotations

import asyncio
import io
import threading

import numpy as np
from PIL import Image

from mmray.config.creative import CreativeConfig
from mmray.creative.layout import CreativeRequestError
from mmray.creative.publish import MEDIA_TYPES, publish, read_creative
from mmray.creative.studio import Copy, CreativeStudio, Product, headline_for
from mmray.storage import ArtifactStore

URL_PREFIX = "/v1/creatives"


class ProductNotFound(LookupError):
    """No product or item with that id in the served index."""


def product_from_item(item: dict, image: Image.Image) -> Product:
    price = item.get("price")
    return Product(id=item["id"], product_id=item["product_id"], title=item["title"], image=image,
                   price=None if price is None or price != price else float(price), category=item.get("category"),
                   color=item.get("color"), gender=item.get("gender"))


class CreativeService:
    """`search` is the app's `SearchService` (product lookup, stored photos, the served image model)."""

    def __init__(self, cfg: CreativeConfig, store: ArtifactStore, search, headline=headline_for, cache_dir=None):
        self.cfg, self.store, self.search, self.headline, self.cache_dir = cfg, store, search, headline, cache_dir
        self._studio: CreativeStudio | None = None
        self._lock = threading.Lock()

    def studio(self) -> CreativeStudio:
        with self._lock:
            if self._studio is None:
                painter = None
                if self.cfg.diffusion.weights:
                    from mmray.creative.diffusion import DiffusionPainter

                    painter = DiffusionPainter.load(self.cfg.diffusion, self.cache_dir)
                self._studio = CreativeStudio(self.cfg, headline=self.headline, painter=painter)
            return self._studio

    async def create(self, *, product_id: str, formats: list[str], style: str | None = None,
                     with_copy: bool = True, copy: Copy | None = None) -> dict:
        studio = await asyncio.to_thread(self.studio)
        style = studio.check_request(formats, style)  # 422s before any work
        found = await self.search.product(product_id=product_id)
        if found is None:
            raise ProductNotFound(product_id)
        item = next((i for i in found["items"] if i.get("has_image")), None)
        if item is None:
            raise CreativeRequestError("no_image", f"{product_id!r} has no photo to make a creative from")
        data = await self.search.image(version=found["version"], row=item["row"])
        if data is None:
            raise CreativeRequestError("no_image", f"{product_id!r} has no stored photo")
        product = product_from_item(item, Image.open(io.BytesIO(data)).convert("RGB"))
        loop = asyncio.get_running_loop()
        model_version: list[str] = []

        def embed(images) -> np.ndarray:  # from the worker thread, through the app's own embedding path
            out = []
            for im in images:
                buf = io.BytesIO()
                im.save(buf, "PNG")
                vec, mv = asyncio.run_coroutine_threadsafe(self.search.embed_image(image=buf.getvalue()), loop).result()
                out.append(vec)
                model_version[:] = [mv]
            return np.stack(out)

        def work():
            creatives = studio.render_all(product, formats, style, with_copy, copy, embed=embed)
            parents = {"index": f"indexes/{found['version']}"}
            config = {"creative": self.cfg.model_dump(mode="json"), "request": {
                "product_id": product_id, "item_id": product.id, "formats": list(formats), "style": style,
                "with_copy": with_copy}}
            key, version, records = publish(self.store, product.product_id, creatives, self.cfg.image_format,
                                            self.cfg.jpeg_quality, config, parents)
            return creatives, key, version, records

        creatives, key, version, records = await asyncio.to_thread(work)
        head = creatives[0].copy
        return {
            "product_id": product.product_id, "item_id": product.id, "version": version, "style": style,
            "model_version": model_version[0] if model_version else None,
            "copy": None if head is None else {"text": head.text, "source": head.source, "passed": head.passed,
                                               "reasons": head.reasons},
            "creatives": [{"format": r["format"], "url": f"{URL_PREFIX}/{key}/{version}/{r['file']}",
                           "width": r["width"], "height": r["height"], "checks": r["checks"], "passed": r["passed"]}
                          for r in records],
        }

    async def read(self, key: str, version: str, name: str) -> tuple[bytes, str] | None:
        data = await asyncio.to_thread(read_creative, self.store, key, version, name)
        return None if data is None else (data, MEDIA_TYPES[name.rsplit(".", 1)[1]])

