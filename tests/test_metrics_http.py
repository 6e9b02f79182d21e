"""deployments.metrics end to end: a tiny Serve app (no models) with the HttpMetrics middleware,
requests of known routes and statuses, then the counts read back from Ray's metrics agent.

The agent exports every few seconds, so the test polls http://127.0.0.1:<METRICS_PORT>/metrics
(the port the shared `ray_session` passes to `ray.init`) until the numbers match, at most 60 s.
"""
from __future__ import annotations

import threading
import time

import httpx
import pytest
from conftest import METRICS_PORT, _free_port
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow

APP_NAME = "metrics-test"
WAIT_S = 60
OUR_LABELS = ("route", "status", "version", "le")  # the rest are Ray's and Serve's (node, replica, ...)


def _build_app():
    """The Serve application, built inside a function so Ray ships it by value to the replica."""
    import asyncio

    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel
    from ray import serve

    from deployments.metrics import HttpMetrics, record_index_load_error, record_index_loaded

    api = FastAPI()
    api.add_middleware(HttpMetrics)

    class Item(BaseModel):
        name: str

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
    @serve.ingress(api)
    class Tiny:
        def __init__(self):
            self.released = asyncio.Event()

        @api.get("/ok")
        async def ok(self):
            return {"ok": True}

        @api.get("/items/{item_id}")
        async def item(self, item_id: str):
            if item_id != "known":
                raise HTTPException(404, "no such item")
            return {"id": item_id}

        @api.post("/items")
        async def create(self, item: Item):
            return item

        @api.get("/boom")
        async def boom(self):
            raise RuntimeError("unexpected")

        @api.get("/hold")
        async def hold(self):
            await asyncio.wait_for(self.released.wait(), timeout=WAIT_S)
            return {"held": True}

        @api.post("/release")
        async def release(self):
            self.released.set()
            return {"released": True}

        @api.post("/index/{version}")
        async def index_loaded(self, version: str):
            record_index_loaded(version)
            return {"version": version}

        @api.post("/index-error")
        async def index_error(self):
            record_index_load_error()
            return {}

    return Tiny.bind()


def scrape() -> dict[tuple[str, frozenset], float]:
    """Every sample of the test app on the metrics endpoint: (name, our labels) -> value."""
    text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("application") != APP_NAME:
                continue
            labels = {k: v for k, v in s.labels.items() if k in OUR_LABELS}
            out[(s.name, frozenset(labels.items()))] = s.value
    return out


def wait_for(expected: list[tuple[tuple[str, dict], float]]) -> dict:
    """Poll the endpoint until every expected sample has its value; fail with the differences."""
    want = {(name, frozenset(labels.items())): value for (name, labels), value in expected}
    deadline, seen = time.time() + WAIT_S, {}
    while time.time() < deadline:
        try:
            seen = scrape()
        except httpx.HTTPError:
            seen = {}
        if all(seen.get(key) == value for key, value in want.items()):
            return seen
        time.sleep(1)
    diff = {f"{name}{dict(labels)}": (seen.get((name, labels)), value) for (name, labels), value in want.items()
            if seen.get((name, labels)) != value}
    pytest.fail(f"metrics not as expected after {WAIT_S} s (seen, wanted): {diff}")


@pytest.fixture(scope="module")
def base(ray_session):
    from ray import serve

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(_build_app(), name=APP_NAME, route_prefix="/tiny")
    yield f"http://127.0.0.1:{port}/tiny"
    serve.shutdown()


def test_route_template_without_routing():
    """A request refused before the router ran (no `scope["route"]`) is matched against the app's routes."""
    from fastapi import FastAPI

    from deployments.metrics import route_template

    api = FastAPI()
    api.get("/v1/products/{product_id}")(lambda product_id: None)
    api.post("/v1/search")(lambda: None)

    def scope(method, path):
        return {"type": "http", "method": method, "path": path, "root_path": "", "app": api}

    assert route_template(scope("GET", "/v1/products/a%2Fb")) == "/v1/products/{product_id}"
    assert route_template(scope("GET", "/v1/search")) == "/v1/search"  # 405: the path's route all the same
    assert route_template(scope("GET", "/v1/nothing/here")) == "unmatched"
    assert route_template({"type": "http", "route": api.routes[-1]}) == "/v1/search"


def test_metrics_endpoint_serves_prometheus_text(ray_session):
    r = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10)
    assert r.status_code == 200
    assert "# TYPE" in r.text


def test_requests_latency_and_in_flight_by_route_template(base):
    with httpx.Client(base_url=base, timeout=30) as c:
        for _ in range(3):
            assert c.get("/ok").status_code == 200
        assert c.get("/items/known").status_code == 200
        assert c.get("/items/missing").status_code == 404
        assert c.get("/items/also-missing").status_code == 404
        assert c.post("/items", json={"wrong": 1}).status_code == 422
        assert c.get("/items").status_code == 405  # route exists for POST only
        assert c.get("/no/such/path").status_code == 404
        assert c.get("/boom").status_code == 500

        held = {}
        thread = threading.Thread(target=lambda: held.setdefault("r", httpx.get(base + "/hold", timeout=WAIT_S + 10)))
        thread.start()
        try:
            wait_for([(("ray_mmray_http_requests_in_flight", {}), 1)])
        finally:
            assert c.post("/release").status_code == 200
            thread.join()
        assert held["r"].status_code == 200

    requests = "ray_mmray_http_requests_total"
    seen = wait_for([
        ((requests, {"route": "/ok", "status": "200"}), 3),
        ((requests, {"route": "/items/{item_id}", "status": "200"}), 1),
        ((requests, {"route": "/items/{item_id}", "status": "404"}), 2),
        ((requests, {"route": "/items", "status": "422"}), 1),
        ((requests, {"route": "/items", "status": "405"}), 1),
        ((requests, {"route": "unmatched", "status": "404"}), 1),
        ((requests, {"route": "/boom", "status": "500"}), 1),
        ((requests, {"route": "/hold", "status": "200"}), 1),
        (("ray_mmray_http_request_duration_ms_count", {"route": "/ok"}), 3),
        (("ray_mmray_http_request_duration_ms_count", {"route": "/items/{item_id}"}), 3),
        (("ray_mmray_http_request_duration_ms_bucket", {"route": "/ok", "le": "+Inf"}), 3),
        (("ray_mmray_http_requests_in_flight", {}), 0),
    ])
    # Ray Serve's own metrics are on the same endpoint.
    assert "ray_serve_" in httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).text
    # Bounded cardinality: no raw path became a label.
    routes = {dict(labels).get("route") for name, labels in seen if name == requests}
    assert routes == {"/ok", "/items/{item_id}", "/items", "unmatched", "/boom", "/hold", "/release"}, routes
    # The /hold request waited for the release: its latency lands above 1 ms, and the sum is its time.
    assert seen[("ray_mmray_http_request_duration_ms_bucket", frozenset({"route": "/hold", "le": "1.0"}.items()))] == 0
    assert seen[("ray_mmray_http_request_duration_ms_sum", frozenset({"route": "/hold"}.items()))] > 1


def test_index_version_and_load_errors(base):
    with httpx.Client(base_url=base, timeout=30) as c:
        assert c.post("/index/v1").status_code == 200
        assert c.post("/index-error").status_code == 200
        assert c.post("/index/v2").status_code == 200
    wait_for([
        (("ray_mmray_index_info", {"version": "v1"}), 0),
        (("ray_mmray_index_info", {"version": "v2"}), 1),
        (("ray_mmray_index_load_errors_total", {}), 1),
    ])
