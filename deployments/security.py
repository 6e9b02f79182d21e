"""Access control and limits for the HTTP front end: API keys, per-client rate limit, request ids,
the access log, and switching the docs off.

One call wires it into an app: `install_security(api, cfg.serve)`. Each piece is a pure ASGI
middleware (no BaseHTTPMiddleware: that one costs a task and a body copy per request). Order, outside in:

    RequestContext (X-Request-Id, access log) -> ApiKeyAuth -> RateLimit -> DocsGate -> the app

so 401, 429 and 404 answers carry a request id and are logged, and a request is limited by the key
it proved it holds.
"""
from __future__ import annotations

import contextvars
import hashlib
import hmac
import inspect
import logging
import math
import os
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable

from fastapi import FastAPI
from starlette.requests import Request

from deployments.api import error_response
from mmray.config import ConfigError, ServeConfig
from mmray.config.serve import AuthConfig

access_log = logging.getLogger("mmray.access")
log = logging.getLogger(__name__)

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("mmray_request_id", default=None)
"""The current request's id, for log lines written below the route (also `request.state.request_id`)."""
_SANE_ID = re.compile(rb"[A-Za-z0-9._-]{1,128}")


def current_request_id() -> str | None:
    return REQUEST_ID.get()


def key_fingerprint(key: str | bytes) -> str:
    """What the logs show of a key: 8 hex digits of its SHA-256, never the key."""
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()[:8]


def _route_path(scope) -> str:
    """The path the router matches (without the mount's root_path)."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("", "/"):
        return path[len(root):] or "/"
    return path


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return value
    return None


# --------------------------------------------------------------------------- request id + access log


class RequestContext:
    """Give every request an id (the client's X-Request-Id when sane, else a uuid4), put it on every
    response, and write one access-log line: method, route path, status, latency, id, key fingerprint.

    The route template (`/v1/products/{product_id}`) is logged, not the raw path; never the body, and
    the query string only with `log_queries`. An exception from the app becomes the app's own 500
    answer here (so it carries the id too) and is re-raised for the server to log.
    """

    def __init__(self, app, log_queries: bool = False, on_error: Callable | None = None, id_header: bool = True):
        self.app, self.log_queries, self.on_error, self.id_header = app, log_queries, on_error, id_header

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        given = _header(scope, b"x-request-id")
        rid = given.decode("ascii") if given is not None and _SANE_ID.fullmatch(given) else uuid.uuid4().hex
        # the same scope dict all the way down: the router writes the matched route into it, which this
        # middleware and the metrics middleware outside it read afterwards
        scope["state"] = state = {**(scope.get("state") or {}), "request_id": rid}
        rid_header = (b"x-request-id", rid.encode("ascii"))
        status = 0

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if self.id_header:
                    headers = [h for h in message.get("headers") or () if h[0].lower() != b"x-request-id"]
                    message = {**message, "headers": [*headers, rid_header]}
            await send(message)

        token = REQUEST_ID.set(rid)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if not status:
                if self.on_error is None:
                    response = error_response(500, "internal", f"internal error ({type(exc).__name__})")
                else:
                    response = self.on_error(Request(scope), exc)
                    response = await response if inspect.isawaitable(response) else response
                await response(scope, receive, send_with_id)
            raise
        finally:
            REQUEST_ID.reset(token)
            self._log(scope, state, status or 500, start)

    def _log(self, scope, state: dict, status: int, start: float) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        route = scope.get("route")
        path = getattr(route, "path", None) or _route_path(scope)[:256]
        if self.log_queries and scope.get("query_string"):
            path = f"{path}?{scope['query_string'].decode('latin-1')[:512]}"
        key_id = state.get("api_key_id")
        access_log.info("%s %s %d %.1fms id=%s key=%s", scope["method"], path, status,
                        (time.perf_counter() - start) * 1000, state["request_id"], key_id[:8] if key_id else "-")


# --------------------------------------------------------------------------- API keys


class KeyRing:
    """The accepted API keys: from an environment variable (read once) and/or a file (one key per
    line, `#` comments), re-read when the file changes so a rotated Kubernetes Secret takes effect
    without a restart. A file that vanishes or cannot be read mid-rotation keeps the last good keys.
    """

    def __init__(self, cfg: AuthConfig):
        self.path = cfg.keys_file
        self.env_keys = [k.strip() for k in os.environ.get(cfg.keys_env, "").split(",") if k.strip()]
        self.file_keys: list[str] = []
        self._stamp: tuple | None = None
        self._unreadable = False
        self._keys: dict[bytes, str] = {}
        if self.path is not None:
            try:
                self._reload(os.stat(self.path))
            except OSError as e:
                raise ConfigError(f"serve.auth.keys_file: cannot read {self.path} ({e.strerror})") from None
        self._index()
        if not self._keys:
            where = f"the environment variable {cfg.keys_env} (comma-separated)"
            if self.path is not None:
                where += f" or the file {self.path} (one key per line)"
            raise ConfigError(f"serve.auth.enabled is true but no API key is configured: put keys in {where}, "
                              "or set serve.auth.enabled=false")

    def match(self, candidate: bytes) -> str | None:
        """The key's id (its SHA-256) if `candidate` is a configured key. Compares in constant time
        against every key, without stopping at the first match."""
        self._refresh()
        found = None
        for key, key_id in self._keys.items():
            if hmac.compare_digest(candidate, key):
                found = key_id
        return found

    def _refresh(self) -> None:
        if self.path is None:
            return
        try:
            st = os.stat(self.path)  # follows the Secret's ..data symlink: a swap changes inode and mtime
            if (st.st_ino, st.st_mtime_ns, st.st_size) != self._stamp:
                self._reload(st)
                self._index()
            self._unreadable = False
        except OSError as e:
            if not self._unreadable:  # once per outage, not once per request
                log.warning("serve.auth.keys_file %s unreadable (%s); keeping the previous keys", self.path, e.strerror)
            self._unreadable = True

    def _reload(self, st: os.stat_result) -> None:
        with open(self.path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
        self.file_keys = [line for line in lines if line and not line.startswith("#")]
        self._stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if not self.file_keys:
            log.warning("serve.auth.keys_file %s holds no key", self.path)

    def _index(self) -> None:
        keys = [k.encode() for k in (*self.env_keys, *self.file_keys)]
        self._keys = {k: hashlib.sha256(k).hexdigest() for k in keys}


class ApiKeyAuth:
    """401 unless the request carries a configured key (`Authorization: Bearer <key>` or `X-API-Key`).
    Sets `state["api_key_id"]` (the key's SHA-256) for the rate limit and the access log."""

    def __init__(self, app, keys: KeyRing, open_paths: list[str]):
        self.app, self.keys, self.open_paths = app, keys, frozenset(open_paths)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or _route_path(scope) in self.open_paths:
            return await self.app(scope, receive, send)
        candidate = None
        auth = _header(scope, b"authorization")
        if auth is not None:
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                candidate = token.strip()
        if candidate is None:
            candidate = _header(scope, b"x-api-key")
        key_id = self.keys.match(candidate) if candidate else None
        if key_id is None:
            message = "invalid API key" if candidate else "missing API key: send Authorization: Bearer <key>"
            response = error_response(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        scope.setdefault("state", {})["api_key_id"] = key_id
        await self.app(scope, receive, send)


# --------------------------------------------------------------------------- rate limit


class TokenBuckets:
    """One token bucket per client, in an LRU of at most `max_clients` entries.

    A bucket holds up to `burst` tokens and refills at `rate` per second; a request spends one.
    Dropping the least recently seen client loses little: it was idle longest, so its bucket is the
    fullest, and it comes back with a full one.
    """

    def __init__(self, rate: float, burst: int, max_clients: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.max_clients, self.clock = rate, burst, max_clients, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str) -> float:
        """Spend a token: 0.0 if the request may go, else the seconds until the next token."""
        now = self.clock()
        tokens, at = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait


class RateLimit:
    """429 with Retry-After once a client's bucket is empty. A client is its API key when auth is on
    (set by ApiKeyAuth), else its address: the peer, or the first X-Forwarded-For hop if trusted."""

    def __init__(self, app, buckets: TokenBuckets, exempt_paths: list[str], trust_forwarded_for: bool = False):
        self.app, self.buckets, self.exempt = app, buckets, frozenset(exempt_paths)
        self.trust_forwarded_for = trust_forwarded_for

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or _route_path(scope) in self.exempt:
            return await self.app(scope, receive, send)
        wait = self.buckets.take(self.client(scope))
        if wait > 0:
            response = error_response(429, "rate_limited", "too many requests, slow down",
                                      {"Retry-After": str(max(1, math.ceil(wait)))})
            return await response(scope, receive, send)
        await self.app(scope, receive, send)

    def client(self, scope) -> str:
        key_id = (scope.get("state") or {}).get("api_key_id")
        if key_id:
            return f"key:{key_id}"
        if self.trust_forwarded_for:
            forwarded = _header(scope, b"x-forwarded-for")
            hop = forwarded.split(b",", 1)[0].strip()[:64].decode("latin-1") if forwarded else ""
            if hop:
                return f"ip:{hop}"
        peer = scope.get("client")
        return f"ip:{peer[0]}" if peer else "ip:unknown"


# --------------------------------------------------------------------------- docs


class DocsGate:
    """404 (the project's error shape, as for any unknown route) on the docs and schema paths."""

    def __init__(self, app, paths: list[str]):
        self.app, self.paths = app, frozenset(paths)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and _route_path(scope) in self.paths:
            return await error_response(404, "not_found", "Not Found")(scope, receive, send)
        await self.app(scope, receive, send)


def docs_paths(api: FastAPI) -> list[str]:
    return [p for p in (api.docs_url, api.redoc_url, api.openapi_url, api.swagger_ui_oauth2_redirect_url) if p]


# --------------------------------------------------------------------------- wiring


def install_security(api: FastAPI, cfg: ServeConfig, *, clock: Callable[[], float] = time.monotonic,
                     id_header: bool = True) -> None:
    """Add the middlewares `cfg` asks for to `api`, outermost last added. Call before the app's first
    request (Starlette builds its middleware stack then), after `install_error_handlers(api)` (its 500
    answer is reused) and after any middleware that should sit inside (e.g. the body limit).
    Raises ConfigError when auth is on and no key is configured. `clock` drives the rate limit.
    `id_header=False` leaves the X-Request-Id response header to the server: Ray Serve's own request-id
    middleware already sets it (with the same id) outside every app middleware, and two would be sent."""
    if not cfg.docs_enabled:
        api.add_middleware(DocsGate, paths=docs_paths(api))
    rl = cfg.rate_limit
    if rl.enabled:
        buckets = TokenBuckets(rl.requests_per_s, rl.burst, rl.max_clients, clock)
        api.add_middleware(RateLimit, buckets=buckets, exempt_paths=rl.exempt_paths,
                           trust_forwarded_for=rl.trust_forwarded_for)
    if cfg.auth.enabled:
        api.add_middleware(ApiKeyAuth, keys=KeyRing(cfg.auth), open_paths=cfg.auth.open_paths)
    api.add_middleware(RequestContext, log_queries=cfg.log_queries, id_header=id_header,
                       on_error=api.exception_handlers.get(Exception) or api.exception_handlers.get(500))
