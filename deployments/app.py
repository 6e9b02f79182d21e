"""The Serve application: Ingress (FastAPI, /v1), co-located with the index and model, or in
front of Embedder and Retriever deployments (`serve.topology`).

    serve run deployments.app:build_app config=configs/local.yaml
    serve run deployments/serve_config.yaml

`build_app(args)` validates its args, loads the config, and gives each deployment only its own
sub-config; resources and limits come from `serve.*` through `.options()`.
"""

import asyncio
import json
import logging
import re
import sys
from typing import Literal

from fastapi import FastAPI, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import ORJSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve import Application
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from deployments.api import (
    ApiError,
    CreativeRequest,
    EmbedRequest,
    EmbedResponse,
    SearchRequest,
    SearchResponse,
    error_response,
    install_error_handlers,
    parse_filters,
)
from deployments.metrics import HttpMetrics, record_index_load_error, record_index_loaded
from deployments.pages import PAGE_CSP, REPORT_CSP, ReportPages, StaticPages
from deployments.replicas import EmbedderDeployment, HandleBackend, RerankerDeployment, RetrieverDeployment, poll_forever
from deployments.security import install_security
from mmray.config import (
    CopyConfig,
    CreativeConfig,
    DeploymentConfig,
    IndexConfig,
    MmrayConfig,
    RecommendConfig,
    RerankConfig,
    ServeConfig,
    load_config,
)
from mmray.copy import CopyError, CopyRequest
from mmray.copy.engines import EngineError
from mmray.copy.service import CopyService
from mmray.creative import CreativeRequestError
from mmray.creative.service import CreativeService, ProductNotFound
from mmray.images import ImageRejected, decode_image, encode_image
from mmray.index.filters import SearchFilters
from mmray.recommend.events import EventError
from mmray.search import LocalBackend, NotReady, RerankUnavailable, SearchResults, SearchService, reranker_pool
from mmray.serving import IndexPool, ModelPool, VersionNotLoaded
from mmray.storage import ArtifactStore
from mmray.storage.artifacts import VERSION_RE

api = FastAPI(title="mmray", version="0.1.0", default_response_class=ORJSONResponse,
              description="Multimodal product search: text and photo search, similar products.")
install_error_handlers(api)
IMAGE_NAME = re.compile(r"([0-9]{1,9})\.jpg")  # ASCII digits only: '²'.isdigit() is True in Python
IMAGE_STATUS = {"too_many_pixels": 413, "file_too_large": 413, "not_an_image": 415, "unsupported_format": 415,
                "truncated_image": 400, "corrupt_image": 400}


class BodyLimit:
    """ASGI middleware: refuse a body over its cap while it streams in, before it is buffered.

    The cap depends on the body's type: `upload_bytes` for multipart/form-data (image uploads),
    `json_bytes` for everything else. A declared Content-Length over the cap is refused at once;
    a chunked body is counted as it arrives and, past the cap, the app sees a disconnect and
    whatever it answers is replaced by 413.
    """

    def __init__(self, app, json_bytes: int, upload_bytes: int):
        self.app, self.json_bytes, self.upload_bytes = app, json_bytes, upload_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        multipart = headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data")
        cap = self.upload_bytes if multipart else self.json_bytes
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > cap):
            return await self._reject(scope, receive, send, cap)
        seen, exceeded, replaced = 0, False, False

        async def limited_receive():
            nonlocal seen, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal replaced
            if not exceeded:
                return await send(message)
            if not replaced:
                replaced = True
                await self._reject(scope, receive, send, cap)

        await self.app(scope, limited_receive, guarded_send)
        if exceeded and not replaced:
            await self._reject(scope, receive, send, cap)

    async def _reject(self, scope, receive, send, cap: int):
        response = error_response(413, "payload_too_large", f"request body exceeds {cap} bytes")
        await response(scope, receive, send)


def _log_access_to_replica_log() -> None:
    """Send mmray.access lines (INFO) where the replica's own log goes: its stderr, a Ray log file."""
    access = logging.getLogger("mmray.access")
    if not access.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False


def _unavailable(code: str, message: str, retry_after_s: int) -> ApiError:
    return ApiError(503, code, message, {"Retry-After": str(retry_after_s)})


# Events and recommendations (issue 15): request bodies; the logic is mmray/recommend.
class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = Field(..., description="view, click, add_to_cart or purchase", max_length=32)
    item_id: str = Field(..., max_length=200)
    ts: float | None = Field(None, description="Seconds since the epoch; stored only from trusted clients")


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(..., min_length=1, max_length=200)
    events: list[EventIn]


class HistoryItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: str = Field(..., max_length=200)
    type: Literal["view", "click", "add_to_cart", "purchase"] = "view"


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str | None = Field(None, min_length=1, max_length=200)
    history: list[HistoryItem] | None = Field(None, max_length=1000, description="Oldest first")
    k: int = Field(10, ge=1)
    filters: SearchFilters | None = None
    context_product_id: str | None = None


def _recommend_service(cfg: RecommendConfig | None, colocated: bool, store: ArtifactStore | None = None):
    """(service, None) or (None, why the recommendation routes answer 501)."""
    if cfg is None:
        return None, "recommendations are not configured on this app"
    if not colocated:
        return None, "recommendations need serve.topology: colocated (the split topology does not serve them yet)"
    from mmray.recommend.service import RecommendService

    try:
        return RecommendService.from_config(cfg, store), None
    except Exception as e:  # noqa: BLE001 - a bad store or key switches these routes off, not the whole app
        logging.getLogger("mmray.recommend").error("event store unavailable: %s: %s", type(e).__name__, e)
        return None, f"the event store is unavailable ({type(e).__name__}: {e})"[:300]


@serve.deployment
@serve.ingress(api)
class Ingress:
    """HTTP routing, validation and admission control; the search itself is `SearchService`.

    With `serve.topology: colocated` this replica holds the index and the model (no handle hops);
    with `split` it calls the Embedder and Retriever deployments through their handles.
    """

    def __init__(self, cfg: ServeConfig, index_cfg: IndexConfig, store: ArtifactStore,
                 embedder: DeploymentHandle | None = None, retriever: DeploymentHandle | None = None,
                 reranker: DeploymentHandle | None = None, creative: CreativeConfig | None = None, copy_cfg: CopyConfig | None = None,
                 recommend_cfg: RecommendConfig | None = None, rerank_cfg: RerankConfig | None = None):
        self.cfg = cfg
        self.copy = CopyService(store, copy_cfg or CopyConfig(), cfg.port)  # /v1/copy; engines load on first use
        self.recommend, self.recommend_error = _recommend_service(recommend_cfg, colocated=embedder is None, store=store)
        if embedder is None or retriever is None:
            indexes = IndexPool(store, index_cfg, retry_base_s=cfg.reload_poll_s, on_loaded=record_index_loaded,
                                on_error=record_index_load_error)
            indexes.refresh()
            self._poller = asyncio.get_event_loop().create_task(poll_forever(indexes, cfg.reload_poll_s))
            models = ModelPool(store, index_cfg.embed_batch_size, index_cfg.query_runtime)
            backend = LocalBackend(indexes, models, index_cfg.search_threads, reranker_pool(store, rerank_cfg))
        else:  # the split graph: reranked searches go to the Reranker deployment (when rerank.enabled)
            backend = HandleBackend(embedder, retriever, reranker)
        self.service = SearchService(backend, index_cfg, rerank=rerank_cfg)
        self.creatives = CreativeService(creative or CreativeConfig(), store, self.service)
        self.pages, self.report_pages = StaticPages(), ReportPages(store)  # the shop page and /report
        self.inflight = 0
        self.decodes = asyncio.Semaphore(cfg.max_concurrent_decodes)
        api.user_middleware.clear()
        api.add_middleware(BodyLimit, json_bytes=cfg.max_json_bytes, upload_bytes=cfg.max_upload_bytes)
        install_security(api, cfg, id_header=False)  # request ids + access log, API keys, rate limit, docs switch
        _log_access_to_replica_log()
        api.add_middleware(HttpMetrics)  # outermost: every answer is counted, 401/413/429 included
        api.middleware_stack = None  # rebuilt with the limits on first request

    # ------------------------------------------------------------------ plumbing
    async def guarded(self, fn, /, *args, **kwargs):
        """Admission control + timeout around one request's work: overload, no index, a replica
        that lacks the pinned version or has died are a fast 503 with Retry-After, never a hang or a 500."""
        retry = self.cfg.retry_after_s
        if self.inflight >= self.cfg.max_inflight:
            raise _unavailable("overloaded", "server busy, retry shortly", retry)
        self.inflight += 1
        try:
            return await asyncio.wait_for(fn(*args, **kwargs), timeout=self.cfg.request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"request took longer than {self.cfg.request_timeout_s} s") from None
        except NotReady as e:
            raise _unavailable("not_ready", f"index not loaded: {e}", retry) from None
        except RerankUnavailable as e:
            raise ApiError(409, "rerank_unavailable", str(e)[:500]) from None
        except VersionNotLoaded:
            raise _unavailable("version_unavailable", "the index version this request was pinned to is "
                               "loading or gone on a replica; retry", retry) from None
        except BackPressureError:
            raise _unavailable("overloaded", "server busy, retry shortly", retry) from None
        except (RayActorError, ActorUnavailableError, DeploymentUnavailableError):
            raise _unavailable("unavailable", "a replica is restarting; retry shortly", retry) from None
        finally:
            self.inflight -= 1

    def check_k(self, k: int) -> None:
        if k > self.cfg.max_k:
            raise ApiError(422, "invalid_request", f"k: must be <= {self.cfg.max_k}")

    def check_text(self, name: str, text: str) -> None:
        if len(text) > self.cfg.max_query_chars:
            raise ApiError(422, "invalid_request", f"{name}: longer than {self.cfg.max_query_chars} characters")

    @staticmethod
    def results(res: SearchResults) -> ORJSONResponse:
        """The response, serialised straight away: its shape is `SearchResponse` by construction, so
        FastAPI's second validation pass over every result is skipped (a measurable share of a request)."""
        explanations = res.explanations or [None] * len(res.hits)
        return ORJSONResponse({"results": [{"product_id": h.product_id, "id": h.id, "title": h.title,
                                            "price": h.price, "score": h.score, "retrievers": h.retrievers,
                                            "variants": h.variants,
                                            "image_url": f"/images/{res.index_version}/{h.row}.jpg" if h.image else None,
                                            "explanation": ex}
                                           for h, ex in zip(res.hits, explanations)],
                               "index_version": res.index_version, "took_ms": res.took_ms, "reranked": res.reranked})

    async def read_image(self, upload: UploadFile) -> bytes:
        """Read, check and decode an upload in a worker thread (at most `max_concurrent_decodes`
        at once), so a burst of huge images never stalls the event loop."""
        data = await upload.read(self.cfg.max_upload_bytes + 1)
        async with self.decodes:
            return await asyncio.to_thread(self._decode, data)

    def _decode(self, data: bytes) -> bytes:
        try:
            decoded = decode_image(data, max_side=self.cfg.upload_max_side, allowed_formats=list(self.cfg.upload_formats),
                                   max_pixels=self.cfg.max_upload_pixels, max_bytes=self.cfg.max_upload_bytes)
        except ImageRejected as e:
            raise ApiError(IMAGE_STATUS.get(e.reason, 400), e.reason, e.detail) from None
        return encode_image(decoded.image, "JPEG", 92)

    # ------------------------------------------------------------------ routes
    @api.get("/healthz", summary="Process is up")
    async def healthz(self):
        return {"status": "ok"}

    @api.get("/readyz", summary="Model and index are loaded")
    async def readyz(self):
        try:
            info = await self.service.ready()
        except (NotReady, RayActorError, ActorUnavailableError, DeploymentUnavailableError, BackPressureError) as e:
            return error_response(503, "not_ready", f"not ready: {e}"[:500], {"Retry-After": str(self.cfg.retry_after_s)})
        return {"status": "ready", "index_version": info["version"], "model_version": info["model_version"],
                "reload_error": info.get("reload_error")}

    @api.get("/v1/index", summary="Serving versions")
    async def index_info(self):
        info = await self.guarded(self.service.info, fresh=True)
        return {k: info[k] for k in ("version", "model_version", "count", "products", "factory", "num_shards",
                                     "loaded_versions", "reload_error")}

    @api.post("/v1/search", response_model=SearchResponse, summary="Text search")
    async def search(self, body: SearchRequest):
        self.check_text("query", body.query)
        self.check_k(body.k)
        res = await self.guarded(self.service.search_text, query=body.query, k=body.k, filters=body.filters,
                                 hybrid=body.hybrid, collapse=body.collapse, rerank=body.rerank)
        return self.results(res)

    @api.post("/v1/search/image", response_model=SearchResponse, summary="Search by photo (multipart upload)")
    async def search_image(self, image: UploadFile = File(...), k: int = Form(10, ge=1),
                           filters: str | None = Form(None, description="JSON object of filters"),
                           collapse: bool = Form(True),
                           rerank: bool | None = Form(None, description="Image search is never reranked (the reranker "
                                                      "reads query text); true answers 409 rerank_unavailable")):
        self.check_k(k)
        parsed = parse_filters(filters)

        async def work():
            if rerank:  # refused before the upload is decoded
                return await self.service.search_image(image=b"", rerank=True)
            data = await self.read_image(image)
            return await self.service.search_image(image=data, k=k, filters=parsed, collapse=collapse, rerank=rerank)
        return self.results(await self.guarded(work))

    @api.get("/v1/products/{product_id}", summary="A product or item and its variants")
    async def product(self, product_id: str):
        found = await self.guarded(self.service.product, product_id=product_id)
        if found is None:
            raise ApiError(404, "not_found", f"no product or item {product_id!r}")
        for item in found["items"]:
            row = item.pop("row")
            item["image_url"] = f"/images/{found['version']}/{row}.jpg" if item.pop("has_image") else None
        return found

    @api.get("/v1/products/{product_id}/similar", response_model=SearchResponse, summary="Similar products")
    async def similar(self, product_id: str, k: int = Query(10, ge=1), category: str | None = None,
                      gender: str | None = None, color: str | None = None,
                      min_price: float | None = Query(None, ge=0), max_price: float | None = Query(None, ge=0),
                      rerank: bool | None = Query(None, description="Rerank the nearest products with the seed's text "
                                                  "and facts (default: rerank.enabled and 'similar' in rerank.routes); "
                                                  "true answers 409 rerank_unavailable where no reranker can serve")):
        self.check_k(k)
        given = {"category": category, "gender": gender, "color": color, "min_price": min_price,
                 "max_price": max_price}
        filters = parse_filters(json.dumps({key: v for key, v in given.items() if v is not None}))
        res = await self.guarded(self.service.similar, product_id=product_id, k=k, filters=filters, rerank=rerank)
        if res is None:
            raise ApiError(404, "not_found", f"no product or item {product_id!r}")
        return self.results(res)

    @api.post("/v1/embed", response_model=EmbedResponse, summary="Text (JSON) or image (multipart) to a vector")
    async def embed(self, request: Request):
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("image")
            if not hasattr(upload, "read"):
                raise ApiError(422, "invalid_request", "multipart body needs an 'image' file field")

            async def work():
                return await self.service.embed_image(image=await self.read_image(upload))
        elif ctype.startswith("application/json"):
            try:
                body = EmbedRequest.model_validate_json(await request.body())
            except ValueError as e:
                raise ApiError(422, "invalid_request", str(e).splitlines()[0][:300]) from None
            self.check_text("text", body.text)

            async def work():
                return await self.service.embed_text(text=body.text)
        else:
            raise ApiError(415, "unsupported_media_type", "send application/json {\"text\": ...} or multipart 'image'")
        vector, model_version = await self.guarded(work)
        return {"vector": [float(x) for x in vector], "dim": len(vector), "model_version": model_version}

    # ------------------------------------------------------------------ product copy (issue 16)
    @api.post("/v1/copy", summary="Product copy from catalog facts, every claim checked against the catalog")
    async def copy_text(self, body: CopyRequest):
        async def work():
            try:
                return await self.copy.write(body, self.service)
            except CopyError as e:
                raise ApiError(404 if e.code == "not_found" else 422, e.code, str(e)) from None
            except EngineError as e:
                raise ApiError(503, "engine_unavailable", str(e)[:500], {"Retry-After": str(self.cfg.retry_after_s)}) from None
        return await self.guarded(work)

    @api.get("/images/{version}/{name}", include_in_schema=False)
    async def image(self, version: str, name: str):
        match = IMAGE_NAME.fullmatch(name)
        if not match or not VERSION_RE.fullmatch(version):
            raise ApiError(404, "not_found", "no such image")
        try:
            data = await self.guarded(self.service.image, version=version, row=int(match.group(1)))
        except ApiError as e:
            if e.code != "version_unavailable":
                raise
            data = None  # an image of a version nobody serves any more is simply not there
        if data is None:
            raise ApiError(404, "not_found", "no such image")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400"})

    # ------------------------------------------------------------------ creatives (issue 18)
    @api.post("/v1/creatives", summary="Banners and ad creatives of a product, with their checks")
    async def creatives(self, body: CreativeRequest):
        try:
            return await self.guarded(self.creatives.create, product_id=body.product_id, formats=body.formats,
                                      style=body.style, with_copy=body.with_copy)
        except CreativeRequestError as e:
            raise ApiError(422, e.code, e.message) from None
        except ProductNotFound:
            raise ApiError(404, "not_found", f"no product or item {body.product_id!r}") from None

    @api.get("/v1/creatives/{key}/{version}/{name}", include_in_schema=False)
    async def creative_image(self, key: str, version: str, name: str):
        found = await self.creatives.read(key, version, name) if VERSION_RE.fullmatch(version) else None
        if found is None:
            raise ApiError(404, "not_found", "no such creative")
        return Response(found[0], media_type=found[1], headers={"Cache-Control": "public, max-age=86400"})

    # ------------------------------------------------------------------ shop page, facets, report
    @api.get("/v1/facets", summary="Filterable values of the served index (categories, genders, colours, prices)")
    async def facets(self):
        return await self.guarded(self.service.facets)

    @api.get("/", include_in_schema=False)
    async def page(self):
        return await self.static("index.html")

    @api.get("/static/{name}", include_in_schema=False)
    async def static(self, name: str):
        found = self.pages.get(name)
        if found is None:
            raise ApiError(404, "not_found", "no such file")
        return Response(found[0], media_type=found[1], headers={"Content-Security-Policy": PAGE_CSP,
                                                                "X-Content-Type-Options": "nosniff",
                                                                "Cache-Control": "no-cache"})

    @api.get("/report", include_in_schema=False)
    async def report_root(self):
        return RedirectResponse("report/", status_code=307)  # relative: the plots' relative links then resolve

    @api.get("/report/{rel:path}", include_in_schema=False)
    async def report(self, rel: str):
        found = await asyncio.to_thread(self.report_pages.get, rel or "index.html")
        if found is None:
            raise ApiError(404, "not_found", "no evaluation report here yet: run `mmray evaluate` "
                           "(python -m jobs.evaluate)" if not rel else "no such report file")
        return Response(found[0], media_type=found[1], headers={"Content-Security-Policy": REPORT_CSP,
                                                                "X-Content-Type-Options": "nosniff",
                                                                "Cache-Control": "no-cache"})

    # ------------------------------------------------------------------ events, recommendations (issue 15)
    async def recommend_call(self, fn, /, *args, needs_index: bool = True, **kwargs):
        """Run a blocking `RecommendService` method in a worker thread (with the served index's
        retriever as its first argument when `needs_index`), under the usual admission control."""
        if self.recommend is None:
            raise ApiError(501 if self.recommend_error.startswith("recommendations need") else 503,
                           "not_supported", self.recommend_error)

        async def work():
            if needs_index:
                info = await self.service.info()
                retriever = self.service.backend.indexes.get(info["version"])
                return await asyncio.to_thread(fn, retriever, *args, **kwargs)
            return await asyncio.to_thread(fn, *args, **kwargs)
        try:
            return await self.guarded(work)
        except EventError as e:
            raise ApiError(413 if e.code == "batch_too_large" else 422, e.code, e.message) from None

    @api.post("/v1/events", summary="Record a batch of behaviour events (atomic; acknowledged once durable)")
    async def events(self, body: EventsRequest):
        n = await self.recommend_call(self.recommend.record if self.recommend else None, body.user_id,
                                      [e.model_dump() for e in body.events])
        return {"accepted": n}

    @api.delete("/v1/users/{user_id}", summary="Erase every event of a user")
    async def delete_user(self, user_id: str):
        n = await self.recommend_call(self.recommend.erase if self.recommend else None, user_id, needs_index=False)
        return {"deleted": n}

    @api.post("/v1/recommendations", summary="Personalised recommendations from a user's events or a given history")
    async def recommendations(self, body: RecommendRequest):
        self.check_k(body.k)
        if body.context_product_id is not None and len(body.context_product_id) > 200:
            raise ApiError(422, "invalid_request", "context_product_id: at most 200 characters")
        return await self.recommend_call(
            self.recommend.recommend if self.recommend else None, user_id=body.user_id,
            history=[h.model_dump() for h in body.history or []], k=body.k, filters=body.filters,
            context_product_id=body.context_product_id)

    @api.get("/v1/products/{product_id}/complements", summary="Products that go with this one")
    async def complements(self, product_id: str, k: int = Query(10, ge=1)):
        self.check_k(k)
        found = await self.recommend_call(self.recommend.complements if self.recommend else None, product_id, k)
        if found is None:
            raise ApiError(404, "not_found", f"no product or item {product_id!r}")
        return found


class AppArgs(BaseModel):
    """Arguments of `build_app` (from `serve run ... key=value` or a serve config's `args`)."""

    model_config = ConfigDict(extra="forbid")
    config: str = "configs/local.yaml"
    overrides: list[str] = []


def _options(d: DeploymentConfig, retry_after_s: int) -> dict:
    # Serve's own queue limit is the outer guard; its 503s carry Retry-After too.
    opts = {"ray_actor_options": {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus},
            "max_ongoing_requests": d.max_ongoing_requests, "max_queued_requests": d.max_queued_requests,
            "backpressure_config": {"status_code": 503, "retry_after_s": retry_after_s},
            # mmray.access logs each request once (deployments/security.py); Serve's own line would be a second
            "logging_config": {"enable_access_log": False}}
    if d.num_replicas == "auto":
        opts["autoscaling_config"] = {"min_replicas": d.min_replicas, "max_replicas": d.max_replicas,
                                      "target_ongoing_requests": d.target_ongoing_requests}
    else:
        opts["num_replicas"] = d.num_replicas
    return opts


def build_app(args: AppArgs | dict | None = None) -> Application:
    """The whole graph for one config; `args` come from `serve run`/`serve build` or a serve config."""
    a = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    cfg: MmrayConfig = load_config(a.config, a.overrides)
    s = cfg.serve
    store = ArtifactStore.from_config(cfg.storage)
    ingress = Ingress.options(**_options(s.ingress, s.retry_after_s))
    if s.topology == "colocated":
        return ingress.bind(s, cfg.index, store, creative=cfg.creative, copy_cfg=cfg.copy, recommend_cfg=cfg.recommend,
                            rerank_cfg=cfg.rerank)
    embedder = EmbedderDeployment.options(**_options(s.embedder, s.retry_after_s)).bind(
        store, s.embed_max_batch, s.embed_batch_wait_s)
    retriever = RetrieverDeployment.options(**_options(s.retriever, s.retry_after_s)).bind(
        store, cfg.index, s.reload_poll_s)
    reranker = None
    if cfg.rerank.enabled:
        reranker = RerankerDeployment.options(**_options(s.reranker, s.retry_after_s)).bind(
            store, cfg.index, cfg.rerank, s.reload_poll_s, s.rerank_max_batch, s.rerank_batch_wait_s)
    return ingress.bind(s, cfg.index, store, embedder, retriever, reranker, creative=cfg.creative, copy_cfg=cfg.copy,
                        recommend_cfg=cfg.recommend, rerank_cfg=cfg.rerank)

