"""The Serve application: Ingress (FastAPI, /v1) -> Embedder, Retriever.

    serve run deployments.app:build_app config=configs/local.yaml
    serve run deployments/serve_config.yaml

`build_app(args)` validates its args, loads the config, and gives each deployment only its own
sub-config; resources and limits come from `serve.*` through `.options()`.
"""

import asyncio
import json
import os
import time

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from deployments.api import (
    ApiError,
    EmbedRequest,
    EmbedResponse,
    SearchRequest,
    SearchResponse,
    error_response,
    install_error_handlers,
    parse_filters,
)
from deployments.demo import DEMO_HTML
from deployments.replicas import EmbedderDeployment, RetrieverDeployment
from mmray.config import DeploymentConfig, MmrayConfig, ServeConfig, load_config
from mmray.images import ImageRejected, decode_image, encode_image
from mmray.storage import ArtifactStore

api = FastAPI(title="mmray", version="0.1.0",
              description="Multimodal product search: text and photo search, similar products.")
install_error_handlers(api)
IMAGE_STATUS = {"too_many_pixels": 413, "file_too_large": 413, "not_an_image": 415, "unsupported_format": 415,
                "truncated_image": 400, "corrupt_image": 400}


class BodyLimit:
    """ASGI middleware: refuse a body over the cap while it streams in, before it is buffered.

    A declared Content-Length over the cap is refused at once. A chunked body is counted as it
    arrives; past the cap the app sees a disconnect and whatever it answers is replaced by 413.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._reject(scope, receive, send)
        seen, exceeded, replaced = 0, False, False

        async def limited_receive():
            nonlocal seen, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal replaced
            if not exceeded:
                return await send(message)
            if not replaced:
                replaced = True
                await self._reject(scope, receive, send)

        await self.app(scope, limited_receive, guarded_send)
        if exceeded and not replaced:
            await self._reject(scope, receive, send)

    async def _reject(self, scope, receive, send):
        response = error_response(413, "payload_too_large", f"request body exceeds {self.max_bytes} bytes")
        await response(scope, receive, send)


@serve.deployment
@serve.ingress(api)
class Ingress:
    def __init__(self, embedder: DeploymentHandle, retriever: DeploymentHandle, cfg: dict, hybrid: bool):
        self.embedder, self.retriever = embedder, retriever
        self.cfg = ServeConfig.model_validate(cfg)
        self.hybrid_default = hybrid
        self.inflight = 0
        self._info: dict | None = None
        self._info_at = 0.0
        api.user_middleware.clear()
        api.add_middleware(BodyLimit, max_bytes=self.cfg.max_body_bytes)
        api.middleware_stack = None  # rebuilt with the limit on first request

    # ------------------------------------------------------------------ plumbing
    async def info(self, fresh: bool = False) -> dict:
        if fresh or self._info is None or time.monotonic() - self._info_at > 1.0:
            self._info = await self.retriever.info.remote()
            self._info_at = time.monotonic()
        if not self._info.get("ready"):
            raise ApiError(503, "not_ready", f"index not loaded: {self._info.get('error')}",
                           {"Retry-After": str(self.cfg.retry_after_s)})
        return self._info

    async def guarded(self, work):
        """Admission control + timeout: overload is a fast 503 with Retry-After, never a hang."""
        if self.inflight >= self.cfg.max_inflight:
            raise ApiError(503, "overloaded", "server busy, retry shortly", {"Retry-After": str(self.cfg.retry_after_s)})
        self.inflight += 1
        try:
            return await asyncio.wait_for(work, timeout=self.cfg.request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"request took longer than {self.cfg.request_timeout_s} s") from None
        finally:
            self.inflight -= 1

    def check_k(self, k: int) -> None:
        if k > self.cfg.max_k:
            raise ApiError(422, "invalid_request", f"k: must be <= {self.cfg.max_k}")

    def results(self, hits: list[dict]) -> list[dict]:
        return [{"product_id": h["product_id"], "id": h["id"], "title": h["title"], "price": h["price"],
                 "score": h["score"], "retrievers": h["retrievers"], "variants": h["variants"],
                 "image_url": f"/images/{h['version']}/{h['row']}.jpg"} for h in hits]

    async def read_image(self, upload: UploadFile) -> bytes:
        data = await upload.read(self.cfg.max_body_bytes + 1)
        try:
            decoded = decode_image(data, max_side=1024, allowed_formats=["JPEG", "PNG", "WEBP"],
                                   max_pixels=40_000_000, max_bytes=self.cfg.max_body_bytes)
        except ImageRejected as e:
            raise ApiError(IMAGE_STATUS.get(e.reason, 400), e.reason, e.detail) from None
        return encode_image(decoded.image, "JPEG", 92)

    # ------------------------------------------------------------------ routes
    @api.get("/healthz", summary="Process is up")
    async def healthz(self):
        return {"status": "ok"}

    @api.get("/readyz", summary="Model and index are loaded")
    async def readyz(self):
        info = await self.retriever.info.remote()
        if not info.get("ready"):
            return error_response(503, "not_ready", f"index not loaded: {info.get('error')}")
        await self.embedder.warm.remote(info["model"])
        return {"status": "ready", "index_version": info["version"], "model_version": info["model_version"],
                "reload_error": info.get("reload_error")}

    @api.get("/v1/index", summary="Serving versions")
    async def index_info(self):
        info = await self.info(fresh=True)
        return {k: info[k] for k in ("version", "model_version", "count", "products", "factory", "num_shards",
                                     "loaded_versions", "reload_error")}

    @api.post("/v1/search", response_model=SearchResponse, summary="Text search")
    async def search(self, body: SearchRequest):
        if len(body.query) > self.cfg.max_query_chars:
            raise ApiError(422, "invalid_request", f"query: longer than {self.cfg.max_query_chars} characters")
        self.check_k(body.k)

        async def work():
            start = time.perf_counter()
            info = await self.info()
            vector = await self.embedder.embed_text.remote((body.query, info["model"]))
            hybrid = body.hybrid if body.hybrid is not None else self.hybrid_default
            hits = await self.retriever.search.remote(info["version"], vector, body.k,
                                                      body.filters.model_dump() if body.filters else None,
                                                      body.query, hybrid, body.collapse)
            return {"results": self.results(hits), "index_version": info["version"],
                    "took_ms": round((time.perf_counter() - start) * 1000, 2)}
        return await self.guarded(work())

    @api.post("/v1/search/image", response_model=SearchResponse, summary="Search by photo (multipart upload)")
    async def search_image(self, image: UploadFile = File(...), k: int = Form(10, ge=1),
                           filters: str | None = Form(None, description="JSON object of filters"),
                           collapse: bool = Form(True)):
        self.check_k(k)
        parsed = parse_filters(filters)
        data = await self.read_image(image)

        async def work():
            start = time.perf_counter()
            info = await self.info()
            vector = await self.embedder.embed_image.remote((data, info["model"]))
            hits = await self.retriever.search.remote(info["version"], vector, k,
                                                      parsed.model_dump() if parsed else None, None, False, collapse)
            return {"results": self.results(hits), "index_version": info["version"],
                    "took_ms": round((time.perf_counter() - start) * 1000, 2)}
        return await self.guarded(work())

    @api.get("/v1/products/{product_id}", summary="A product or item and its variants")
    async def product(self, product_id: str):
        found = await self.guarded(self.retriever.product.remote(product_id))
        if found is None:
            raise ApiError(404, "not_found", f"no product or item {product_id!r}")
        for item in found["items"]:
            item["image_url"] = f"/images/{found['version']}/{item.pop('row')}.jpg"
            item.pop("image", None)
            if item.get("price") is not None and item["price"] != item["price"]:  # NaN: no price
                item["price"] = None
        return found

    @api.get("/v1/products/{product_id}/similar", response_model=SearchResponse, summary="Similar products")
    async def similar(self, product_id: str, k: int = Query(10, ge=1), category: str | None = None,
                      gender: str | None = None, color: str | None = None,
                      min_price: float | None = Query(None, ge=0), max_price: float | None = Query(None, ge=0)):
        self.check_k(k)
        given = {"category": category, "gender": gender, "color": color, "min_price": min_price,
                 "max_price": max_price}
        filters = parse_filters(json.dumps({key: v for key, v in given.items() if v is not None}))
        filters = filters.model_dump() if filters else None

        async def work():
            start = time.perf_counter()
            hits = await self.retriever.similar.remote(None, product_id, k, filters)
            if hits is None:
                raise ApiError(404, "not_found", f"no product or item {product_id!r}")
            version = hits[0]["version"] if hits else (await self.info())["version"]
            return {"results": self.results(hits), "index_version": version,
                    "took_ms": round((time.perf_counter() - start) * 1000, 2)}
        return await self.guarded(work())

    @api.post("/v1/embed", response_model=EmbedResponse, summary="Text (JSON) or image (multipart) to a vector")
    async def embed(self, request: Request):
        ctype = request.headers.get("content-type", "")
        info = await self.info()
        if ctype.startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("image")
            if not hasattr(upload, "read"):
                raise ApiError(422, "invalid_request", "multipart body needs an 'image' file field")
            data = await self.read_image(upload)
            work = self.embedder.embed_image.remote((data, info["model"]))
        elif ctype.startswith("application/json"):
            try:
                body = EmbedRequest.model_validate_json(await request.body())
            except ValueError as e:
                raise ApiError(422, "invalid_request", str(e).splitlines()[0][:300]) from None
            if len(body.text) > self.cfg.max_query_chars:
                raise ApiError(422, "invalid_request", f"text: longer than {self.cfg.max_query_chars} characters")
            work = self.embedder.embed_text.remote((body.text, info["model"]))
        else:
            raise ApiError(415, "unsupported_media_type", "send application/json {\"text\": ...} or multipart 'image'")
        vector = await self.guarded(work)
        return {"vector": [float(x) for x in vector], "dim": len(vector), "model_version": info["model_version"]}

    @api.get("/images/{version}/{name}", include_in_schema=False)
    async def image(self, version: str, name: str):
        stem = name.removesuffix(".jpg")
        if not stem.isdigit():
            raise ApiError(404, "not_found", "no such image")
        path = await self.retriever.image_file.remote(version, int(stem))
        if path is None or not os.path.exists(path):
            raise ApiError(404, "not_found", "no such image")
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400"})

    @api.get("/", include_in_schema=False, response_class=HTMLResponse)
    async def demo(self):
        return DEMO_HTML


class AppArgs(BaseModel):
    """Arguments of `build_app` (from `serve run ... key=value` or a serve config's `args`)."""

    model_config = ConfigDict(extra="forbid")
    config: str = "configs/local.yaml"
    overrides: list[str] = []


def _options(d: DeploymentConfig, retry_after_s: int) -> dict:
    # Serve's own queue limit is the outer guard; its 503s carry Retry-After too.
    opts = {"ray_actor_options": {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus},
            "max_ongoing_requests": d.max_ongoing_requests, "max_queued_requests": d.max_queued_requests,
            "backpressure_config": {"status_code": 503, "retry_after_s": retry_after_s}}
    if d.num_replicas == "auto":
        opts["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}
    else:
        opts["num_replicas"] = int(d.num_replicas)
    return opts


def build_app(args: AppArgs | dict | None = None) -> Application:
    """The whole graph for one config; `args` come from `serve run`/`serve build` or a serve config."""
    a = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    cfg: MmrayConfig = load_config(a.config, a.overrides)
    s = cfg.serve
    store = ArtifactStore.from_config(cfg.storage)
    embedder = EmbedderDeployment.options(**_options(s.embedder, s.retry_after_s)).bind(
        store, s.embed_max_batch, s.embed_batch_wait_s)
    retriever = RetrieverDeployment.options(**_options(s.retriever, s.retry_after_s)).bind(
        store, cfg.index.nprobe, cfg.index.ef_search, cfg.index.rrf_k, s.reload_poll_s)
    return Ingress.options(**_options(s.ingress, s.retry_after_s)).bind(embedder, retriever, s.model_dump(), cfg.index.hybrid)

