"""Serving settings for the Ray Serve application."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from mmray.config.base import StrictConfig


class DeploymentConfig(StrictConfig):
    """Resources and scaling of one deployment, applied with `.options()`."""

    num_replicas: Annotated[int, Field(ge=1)] | Literal["auto"] = 1
    """Fixed replica count, or "auto" to autoscale between `min_replicas` and `max_replicas`."""
    min_replicas: int = Field(1, ge=0)
    """Autoscaling lower bound (with num_replicas: auto)."""
    max_replicas: int = Field(4, ge=1)
    """Autoscaling upper bound (with num_replicas: auto)."""
    target_ongoing_requests: float = Field(8, gt=0)
    """Autoscaling target: requests in flight per replica."""
    num_cpus: float = Field(1.0, ge=0)
    """CPUs per replica."""
    num_gpus: float = Field(0.0, ge=0)
    """GPUs per replica."""
    max_ongoing_requests: int = Field(16, ge=1)
    """Requests a replica works on at once."""
    max_queued_requests: int = Field(64, ge=-1)
    """Requests queued at the caller before 503 (-1: unbounded)."""


HEALTH_PATHS = ("/healthz", "/readyz")
"""Probe routes: open without an API key and exempt from the rate limit (a probe must not be throttled)."""


class AuthConfig(StrictConfig):
    """Optional API keys. The keys never live in the YAML: they come from the environment and/or a mounted file."""

    enabled: bool = False
    """Require `Authorization: Bearer <key>` (or `X-API-Key: <key>`); 401 otherwise. Refuses to start with no key."""
    keys_env: str = "MMRAY_API_KEYS"
    """Environment variable holding comma-separated keys (read once at startup)."""
    keys_file: str | None = None
    """File with one key per line (`#` starts a comment), e.g. a mounted Secret; re-read when it changes."""
    open_paths: list[str] = list(HEALTH_PATHS)
    """Paths served without a key (exact match). /docs, /openapi.json and / are not open."""


class RateLimitConfig(StrictConfig):
    """Per-client token bucket, kept in each Ingress replica (N replicas let a client through up to N times the rate)."""

    enabled: bool = False
    """Answer 429 with Retry-After once a client has spent its bucket."""
    requests_per_s: float = Field(10.0, gt=0)
    """Sustained requests per second per client (the refill rate)."""
    burst: int = Field(20, ge=1)
    """Bucket size: requests a client may send at once after being idle."""
    trust_forwarded_for: bool = False
    """Key clients by the first X-Forwarded-For hop. Only behind a proxy that sets that header itself: otherwise any
    client picks its own bucket by sending the header, and without a proxy in front the peer address is the client."""
    max_clients: int = Field(100_000, ge=1)
    """Buckets kept; past it the least recently seen client is dropped (it comes back with a full bucket)."""
    exempt_paths: list[str] = list(HEALTH_PATHS)
    """Paths never limited (exact match)."""


class ServeConfig(StrictConfig):
    """HTTP front end and deployment graph."""

    host: str = "127.0.0.1"
    """Address the HTTP proxy binds."""
    port: int = Field(8000, ge=1, le=65535)
    """HTTP port."""
    topology: Literal["colocated", "split"] = "colocated"
    """`colocated`: the Ingress replica embeds and retrieves itself (fewest hops: single-node and
    CPU configs). `split`: Ingress -> Embedder (e.g. on GPUs) and Retriever (CPU) deployments."""
    direct_ingress: bool = True
    """Clients reach the Ingress replica itself on `port` (Ray Serve's direct ingress: no proxy hop,
    about 20 ms less per request here). Needs RAY_SERVE_ENABLE_DIRECT_INGRESS=1 and
    RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT=<port> in the environment Ray starts with (`make serve`
    sets them; see `ray_start_env`). Further Ingress replicas on a node take the next ports.
    False: everything goes through Serve's HTTP proxy on `port`."""
    tuned_replicas: bool = True
    """Start Ray with Serve's replica throughput settings (`REPLICA_ENV` below: user code on the
    replica's own event loop, buffered request logs), as `make serve` does; about 10-20 % more
    QPS at concurrency 16 here (BENCHMARKS.md, serve)."""
    proxy_port: int = Field(8100, ge=1, le=65535)
    """With direct_ingress, the port of Serve's HTTP proxy, which Ray still runs (health checks, fallback)."""
    keep_alive_timeout_s: float = Field(90.0, gt=0)
    """HTTP keep-alive of the Serve proxy (clients reuse connections)."""
    request_timeout_s: float = Field(10.0, gt=0)
    """Per-request timeout."""
    max_json_bytes: int = Field(64 * 1024, ge=1024)
    """JSON (and any non-multipart) request bodies larger than this are refused while streaming (413)."""
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    """multipart/form-data (image upload) bodies larger than this are refused while streaming (413)."""
    max_upload_pixels: int = Field(40_000_000, ge=1)
    """Uploaded images over this many pixels (width x height, read from the header) get 413."""
    upload_formats: list[Literal["JPEG", "PNG", "WEBP", "GIF", "BMP"]] = ["JPEG", "PNG", "WEBP"]
    """Upload formats accepted, recognised by magic bytes."""
    upload_max_side: int = Field(1024, ge=32)
    """Uploads are decoded at most this large on their longest side before embedding."""
    max_concurrent_decodes: int = Field(2, ge=1)
    """Uploads decoded at once (in worker threads, so the event loop stays free); others wait."""
    max_query_chars: int = Field(512, ge=1)
    """Longest accepted text query."""
    max_k: int = Field(100, ge=1)
    """Largest k a request may ask for."""
    max_inflight: int = Field(32, ge=1)
    """Requests the ingress works on at once; past it, 503 with Retry-After (never a hung connection)."""
    retry_after_s: int = Field(1, ge=0)
    """Retry-After seconds sent with 503."""
    reload_poll_s: float = Field(2.0, gt=0)
    """How often replicas check `indexes/current.json` for a new version."""
    embed_batch_wait_s: float = Field(0.0, ge=0)
    """@serve.batch wait for more requests before embedding a batch (split topology). 0: embed
    whatever is queued at once, so a lone request never waits; requests that arrive while a batch
    runs still form the next batch."""
    embed_max_batch: int = Field(32, ge=1)
    """@serve.batch maximum batch size."""
    rerank_batch_wait_s: float = Field(0.0, ge=0)
    """@serve.batch wait of the Reranker deployment (split topology, with rerank.enabled): 0 reranks whatever
    is queued at once; requests that arrive while a batch runs form the next one (their query texts go
    through the text tower together)."""
    rerank_max_batch: int = Field(16, ge=1)
    """@serve.batch maximum batch size of the Reranker deployment."""
    docs_enabled: bool = True
    """Serve /docs, /redoc and /openapi.json; off, they answer 404 like an unknown route."""
    log_queries: bool = False
    """Put the query string in the access log ("mmray.access"); off, only the route path. Bodies are never logged."""
    auth: AuthConfig = AuthConfig()
    """API keys."""
    rate_limit: RateLimitConfig = RateLimitConfig()
    """Per-client rate limit."""
    ingress: DeploymentConfig = DeploymentConfig(num_cpus=1.0, max_ongoing_requests=256, max_queued_requests=256)
    """Ingress deployment (HTTP, validation, admission; with topology colocated also the model and index)."""
    embedder: DeploymentConfig = DeploymentConfig(num_cpus=1.0, max_ongoing_requests=64, max_queued_requests=256)
    """Embedder deployment (the model)."""
    retriever: DeploymentConfig = DeploymentConfig(num_cpus=0.25, max_ongoing_requests=64, max_queued_requests=256)
    """Retriever deployment."""
    reranker: DeploymentConfig = DeploymentConfig(num_cpus=1.0, max_ongoing_requests=64, max_queued_requests=256)
    """Reranker deployment (split topology, with rerank.enabled): it holds the index, its reranker item
    features, the model's text tower (query side) and the fusion head, and answers reranked searches whole."""


# Ray Serve reads these when its processes start, so they go into the environment of `ray start`
# (or of the driver that calls ray.init), not into the application. Each is one of the settings
# Serve's own RAY_SERVE_THROUGHPUT_OPTIMIZED=1 bundles; that switch is not used as a whole because
# it also turns on direct ingress and gRPC handles, which `serve.direct_ingress` decides here.
REPLICA_ENV = {
    # user code on the replica's own event loop: no cross-thread hop and no second loop thread
    # competing for the GIL on every request (the largest single share of the HTTP overhead here)
    # (RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0 is left out: a driver started with it cannot call a
    # DeploymentHandle outside an event loop)
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    # Serve's request-path log lines are written in batches, not flushed one by one
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
}


def ray_start_env(cfg: ServeConfig) -> dict[str, str]:
    """Environment Ray must start with to serve `cfg` (read by Serve's controller and replicas)."""
    env = dict(REPLICA_ENV) if cfg.tuned_replicas else {}
    if cfg.direct_ingress:
        env |= {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(cfg.port),
                "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(cfg.port + 49)}
    return env


def http_options(cfg: ServeConfig) -> dict:
    """`serve.start(http_options=...)` for this config: the proxy's address and keep-alive."""
    return {"host": cfg.host, "port": cfg.proxy_port if cfg.direct_ingress else cfg.port,
            "request_timeout_s": cfg.request_timeout_s * 2, "keep_alive_timeout_s": cfg.keep_alive_timeout_s}
