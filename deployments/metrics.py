"""Prometheus metrics of the HTTP front end and the serving index, beside Ray Serve's own.

They are `ray.serve.metrics` objects, so Ray's metrics agent exports them on the node's
metrics export port (`ray start --metrics-export-port=N`) with a `ray_` prefix and the
`deployment`, `replica` and `application` labels Serve adds:

    ray_mmray_http_requests_total{route, status}      requests answered
    ray_mmray_http_request_duration_ms{route}         latency histogram (_bucket, _sum, _count)
    ray_mmray_http_requests_in_flight                 requests being answered by this replica
    ray_mmray_index_info{version}                     1 for the version this replica serves, else 0
    ray_mmray_index_load_errors_total                 index versions that failed to load

`route` is the route template (`/v1/products/{product_id}`), never the raw path, so the number
of series is bounded; a path no route matches is `unmatched`. Metric objects are created on
first use inside the replica: importing this module (the driver does) records nothing.
"""
from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass

from ray.serve import metrics
from starlette.routing import Match

# Latency buckets in ms: 1 ms (a cache hit) to 10 s (the slowest request worth telling apart).
LATENCY_BUCKETS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
UNMATCHED = "unmatched"
# The in-flight gauge is copied from a plain counter this often, not set twice per request: Ray
# exports metrics every few seconds anyway, and a gauge set costs as much as a counter increment.
IN_FLIGHT_PERIOD_S = 0.25


@dataclass
class _HttpMetrics:
    requests: metrics.Counter
    latency: metrics.Histogram
    in_flight: metrics.Gauge
    active: int = 0  # this replica's requests in flight; the gauge mirrors it
    mirror: asyncio.Task | None = None

    async def mirror_in_flight(self) -> None:
        shown = None
        while True:
            if self.active != shown:
                shown = self.active
                self.in_flight.set(shown)
            await asyncio.sleep(IN_FLIGHT_PERIOD_S)


@dataclass
class _IndexMetrics:
    info: metrics.Gauge
    load_errors: metrics.Counter
    version: str | None = None


@functools.cache
def _http() -> _HttpMetrics:
    return _HttpMetrics(
        requests=metrics.Counter("mmray_http_requests", "HTTP requests answered, by route template and status code.",
                                 tag_keys=("route", "status")),
        latency=metrics.Histogram("mmray_http_request_duration_ms", "HTTP request latency in ms, by route template.",
                                  boundaries=LATENCY_BUCKETS_MS, tag_keys=("route",)),
        in_flight=metrics.Gauge("mmray_http_requests_in_flight", "HTTP requests being answered by this replica."))


@functools.cache
def _index() -> _IndexMetrics:
    return _IndexMetrics(
        info=metrics.Gauge("mmray_index_info", "1 for the index version this replica serves, 0 for earlier ones.",
                           tag_keys=("version",)),
        load_errors=metrics.Counter("mmray_index_load_errors", "Index versions that failed to load."))


def route_template(scope) -> str:
    """The template of the route that answers `scope` (`/v1/products/{product_id}`), or `unmatched`.

    The router leaves the route it chose in `scope["route"]`; a request refused before routing
    (e.g. by a body-size middleware) is matched here against the app's routes the same way.
    """
    route = scope.get("route")
    if route is None:
        app = scope.get("app")
        partial = None
        for candidate in getattr(app, "routes", ()):
            match, _ = candidate.matches(scope)
            if match is Match.FULL:
                route = candidate
                break
            if match is Match.PARTIAL and partial is None:
                partial = candidate  # right path, wrong method: answered 405 by that route
        route = route or partial
    return getattr(route, "path", None) or UNMATCHED


class HttpMetrics:
    """ASGI middleware: count, time and track in-flight HTTP requests by route template and status.

    Add it last (outermost) so it also sees what other middleware refuses:
        api.add_middleware(HttpMetrics)
    A request that raises before a response starts is counted as status 500.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        m = _http()
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        loop = asyncio.get_running_loop()
        if m.mirror is None or m.mirror.get_loop() is not loop:  # one per event loop (tests make several)
            m.mirror = loop.create_task(m.mirror_in_flight())
        m.active += 1
        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed_ms = (time.perf_counter() - start) * 1000
            m.active -= 1
            route = route_template(scope)
            m.requests.inc(tags={"route": route, "status": str(status)})
            m.latency.observe(elapsed_ms, tags={"route": route})


def record_index_loaded(version: str) -> None:
    """Call where the Retriever replica starts serving index `version` (first load or reload)."""
    m = _index()
    if m.version is not None and m.version != version:
        m.info.set(0, tags={"version": m.version})
    m.info.set(1, tags={"version": version})
    m.version = version


def record_index_load_error() -> None:
    """Call where the Retriever replica fails to load an index version."""
    _index().load_errors.inc()
