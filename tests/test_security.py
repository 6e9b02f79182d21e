"""deployments/security.py against a tiny FastAPI app with the project's error handlers (no Ray):
API keys, rate limit, request ids, the access log and the docs switch."""
from __future__ import annotations

import hashlib
import logging
import os

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from deployments.api import SearchRequest, install_error_handlers
from deployments.security import REQUEST_ID, KeyRing, TokenBuckets, install_security
from mmray.config import ConfigError, ServeConfig, load_config
from mmray.config.serve import AuthConfig

KEY, OTHER = "k-3f9a1c0d2e7b4a65", "k-88d2b0e4f1a9c357"


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_app(clock=None, **serve) -> FastAPI:
    api = FastAPI()
    install_error_handlers(api)

    @api.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @api.get("/")
    async def root():
        return {"demo": True}

    @api.post("/v1/search")
    async def search(body: SearchRequest, request: Request):
        return {"n": len(body.query), "state_id": request.state.request_id, "var_id": REQUEST_ID.get()}

    @api.get("/v1/products/{product_id}")
    async def product(product_id: str):
        return {"id": product_id}

    @api.get("/boom")
    async def boom():
        raise RuntimeError("kaboom")

    install_security(api, ServeConfig.model_validate(serve), clock=clock or Clock())
    return api


def client(api, host="10.0.0.1") -> TestClient:
    return TestClient(api, client=(host, 40000), raise_server_exceptions=False)


def search(c: TestClient, headers=None, params=None):
    return c.post("/v1/search", json={"query": "red shoes"}, headers=headers or {}, params=params)


def assert_error(r, status: int, code: str):
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]
    assert r.headers["x-request-id"]


@pytest.fixture
def keys_env(monkeypatch):
    monkeypatch.setenv("MMRAY_API_KEYS", f" {KEY} , {OTHER},")


# --------------------------------------------------------------------------- API keys


def test_auth_off_passes_everything(monkeypatch):
    monkeypatch.delenv("MMRAY_API_KEYS", raising=False)
    c = client(make_app())
    for path in ("/", "/docs", "/openapi.json", "/healthz"):
        assert c.get(path).status_code == 200, path
    assert search(c).status_code == 200
    assert search(c, {"Authorization": "Bearer nonsense"}).status_code == 200


@pytest.mark.parametrize("headers, status", [
    ({}, 401),
    ({"Authorization": f"Bearer {KEY}x"}, 401),
    ({"Authorization": KEY}, 401),  # no scheme
    ({"Authorization": f"Basic {KEY}"}, 401),
    ({"X-API-Key": KEY[:-1]}, 401),
    ({"Authorization": f"Bearer {KEY}"}, 200),
    ({"Authorization": f"bearer {OTHER}"}, 200),
    ({"X-API-Key": KEY}, 200),
    ({"Authorization": "Bearer wrong", "X-API-Key": KEY}, 401),  # a bearer token is the one checked
])
def test_auth_on_checks_the_key(keys_env, headers, status):
    r = search(client(make_app(auth={"enabled": True})), headers)
    assert r.status_code == status, r.text
    if status == 401:
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        assert KEY not in r.text


def test_auth_on_protects_docs_and_demo_but_not_health(keys_env):
    c = client(make_app(auth={"enabled": True}))
    for path in ("/", "/docs", "/openapi.json", "/redoc", "/v1/products/p1", "/nowhere"):
        assert_error(c.get(path), 401, "unauthorized")
        assert c.get(path, headers={"X-API-Key": KEY}).status_code in (200, 404), path
    assert c.get("/healthz").status_code == 200
    assert c.get("/readyz").status_code == 404  # open, so it reaches the router (no such route here)


def test_keys_from_a_named_env_variable(monkeypatch):
    monkeypatch.delenv("MMRAY_API_KEYS", raising=False)
    monkeypatch.setenv("SHOP_KEYS", KEY)
    c = client(make_app(auth={"enabled": True, "keys_env": "SHOP_KEYS"}))
    assert search(c, {"X-API-Key": KEY}).status_code == 200
    assert search(c, {"X-API-Key": OTHER}).status_code == 401


def test_keys_file_with_comments_and_rotation(monkeypatch, tmp_path):
    monkeypatch.delenv("MMRAY_API_KEYS", raising=False)
    path = tmp_path / "keys"
    path.write_text(f"# rotated 2024-05\n\n  {KEY}  \n#{OTHER}\n")
    c = client(make_app(auth={"enabled": True, "keys_file": str(path)}))
    assert search(c, {"X-API-Key": KEY}).status_code == 200
    assert search(c, {"X-API-Key": OTHER}).status_code == 401  # commented out
    assert search(c, {"X-API-Key": f"#{OTHER}"}).status_code == 401

    path.write_text(f"{OTHER}\n")
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a clock that did not tick still rotates
    assert search(c, {"X-API-Key": OTHER}).status_code == 200
    assert search(c, {"X-API-Key": KEY}).status_code == 401

    path.unlink()  # mid-rotation: the last good keys stay
    assert search(c, {"X-API-Key": OTHER}).status_code == 200
    path.write_text("# emptied\n")
    assert search(c, {"X-API-Key": OTHER}).status_code == 401  # an empty file closes, never opens


def test_keys_from_env_and_file_together(monkeypatch, tmp_path):
    monkeypatch.setenv("MMRAY_API_KEYS", KEY)
    (tmp_path / "keys").write_text(OTHER)
    ring = KeyRing(AuthConfig(enabled=True, keys_file=str(tmp_path / "keys")))
    assert ring.match(KEY.encode()) == hashlib.sha256(KEY.encode()).hexdigest()
    assert ring.match(OTHER.encode()) == hashlib.sha256(OTHER.encode()).hexdigest()
    assert ring.match(b"") is None and ring.match(KEY.encode() + b" ") is None


def test_enabled_without_keys_fails_loudly(monkeypatch, tmp_path):
    monkeypatch.delenv("MMRAY_API_KEYS", raising=False)
    with pytest.raises(ConfigError, match=r"serve.auth.enabled is true but no API key.*MMRAY_API_KEYS"):
        make_app(auth={"enabled": True})
    monkeypatch.setenv("MMRAY_API_KEYS", " , ")
    with pytest.raises(ConfigError, match="no API key"):
        make_app(auth={"enabled": True})
    (tmp_path / "empty").write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="no API key.*empty"):
        make_app(auth={"enabled": True, "keys_file": str(tmp_path / "empty")})
    with pytest.raises(ConfigError, match="serve.auth.keys_file: cannot read"):
        make_app(auth={"enabled": True, "keys_file": str(tmp_path / "absent")})


def test_auth_config_takes_no_keys_and_loads_from_overrides():
    cfg = load_config(overrides=["serve.auth.enabled=true", "serve.auth.keys_file=/etc/mmray/keys",
                                 "serve.rate_limit.burst=5", "serve.docs_enabled=false"])
    assert cfg.serve.auth.enabled and cfg.serve.auth.keys_file == "/etc/mmray/keys"
    assert cfg.serve.rate_limit.burst == 5 and cfg.serve.docs_enabled is False
    defaults = ServeConfig()
    assert not defaults.auth.enabled and not defaults.rate_limit.enabled and defaults.docs_enabled
    assert defaults.auth.open_paths == defaults.rate_limit.exempt_paths == ["/healthz", "/readyz"]
    with pytest.raises(ConfigError, match="serve.auth.keys: unknown field"):
        load_config(overrides=["serve.auth.keys=[abc]"])


# --------------------------------------------------------------------------- rate limit


def limited(clock, **rate_limit) -> FastAPI:
    return make_app(clock, rate_limit={"enabled": True, "requests_per_s": 2.0, "burst": 3, **rate_limit})


def test_burst_then_429_with_retry_after_then_refill():
    clock = Clock()
    c = client(limited(clock))
    assert [search(c).status_code for _ in range(3)] == [200, 200, 200]
    r = search(c)
    assert_error(r, 429, "rate_limited")
    assert int(r.headers["retry-after"]) >= 1
    clock.t += 0.4  # 0.8 of a token
    assert search(c).status_code == 429
    clock.t += 0.1
    assert search(c).status_code == 200
    assert search(c).status_code == 429
    clock.t += 60  # refills to burst, not past it
    assert [search(c).status_code for _ in range(4)] == [200, 200, 200, 429]


def test_retry_after_comes_from_the_bucket():
    clock = Clock()
    c = client(make_app(clock, rate_limit={"enabled": True, "requests_per_s": 0.1, "burst": 1}))
    assert search(c).status_code == 200
    assert search(c).headers["retry-after"] == "10"
    clock.t += 7.5
    assert search(c).headers["retry-after"] == "3"  # 2.5 s left, rounded up
    clock.t += 2.4
    assert search(c).headers["retry-after"] == "1"  # never 0


def test_separate_clients_and_health_exempt():
    clock = Clock()
    api = limited(clock)
    a, b = client(api, "10.0.0.1"), client(api, "10.0.0.2")
    assert [search(a).status_code for _ in range(4)] == [200, 200, 200, 429]
    assert search(b).status_code == 200
    assert all(a.get("/healthz").status_code == 200 for _ in range(10))


def test_forwarded_for_ignored_unless_trusted():
    clock = Clock()
    c = client(limited(clock))
    statuses = [search(c, {"X-Forwarded-For": f"192.0.2.{i}"}).status_code for i in range(4)]
    assert statuses == [200, 200, 200, 429]  # one peer, one bucket, whatever it claims

    c = client(limited(clock, trust_forwarded_for=True))
    assert [search(c, {"X-Forwarded-For": "192.0.2.7, 10.1.1.1"}).status_code for _ in range(4)] == [200, 200, 200, 429]
    assert search(c, {"X-Forwarded-For": "192.0.2.8, 10.1.1.1"}).status_code == 200  # first hop is the client
    assert search(c, {"X-Forwarded-For": "192.0.2.9"}).status_code == 200


def test_keyed_by_api_key_when_auth_is_on(keys_env):
    clock = Clock()
    api = make_app(clock, auth={"enabled": True}, rate_limit={"enabled": True, "requests_per_s": 1.0, "burst": 2})
    a, b = client(api, "10.0.0.1"), client(api, "10.0.0.2")
    assert search(a, {"X-API-Key": KEY}).status_code == 200
    assert search(b, {"X-API-Key": KEY}).status_code == 200  # same key from elsewhere: same bucket
    assert_error(search(a, {"X-API-Key": KEY}), 429, "rate_limited")
    assert search(a, {"X-API-Key": OTHER}).status_code == 200  # same address, other key
    assert search(a).status_code == 401  # no key: refused before it can spend anyone's tokens


def test_bucket_table_is_bounded_lru():
    clock = Clock()
    buckets = TokenBuckets(rate=1.0, burst=1, max_clients=3, clock=clock)
    for name in "abc":
        assert buckets.take(name) == 0.0
    assert buckets.take("a") == pytest.approx(1.0)  # a is now the most recent
    assert buckets.take("d") == 0.0
    assert len(buckets) == 3
    assert buckets.take("b") == 0.0  # b was evicted: back with a full bucket
    assert buckets.take("a") > 0  # a was kept
    assert len(buckets) == 3


# --------------------------------------------------------------------------- request id + access log


def test_request_id_echoed_when_sane_and_given_to_the_route():
    c = client(make_app())
    r = search(c, {"X-Request-Id": "abc.DEF_123-x"})
    assert r.headers["x-request-id"] == "abc.DEF_123-x"
    assert r.json()["state_id"] == r.json()["var_id"] == "abc.DEF_123-x"
    assert REQUEST_ID.get() is None
    r = search(c, {"X-Request-Id": "a" * 128})
    assert r.headers["x-request-id"] == "a" * 128


@pytest.mark.parametrize("given", ["a" * 129, "x" * 4000, "has space", "semi;colon", "new\nline", "tab\there", "",
                                   "caf\u00e9"])
def test_request_id_replaced_when_not_sane(given):
    api = make_app()
    sent = []

    async def receive():
        return {"type": "http.request", "body": b'{"query": "q"}', "more_body": False}

    async def send(message):
        sent.append(message)

    # raw ASGI: HTTP clients refuse to send some of these headers at all
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/search", "raw_path": b"/v1/search", "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"x-request-id", given.encode("utf-8"))],
             "client": ("10.0.0.1", 1), "server": ("test", 80)}
    import anyio
    anyio.run(api, scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    ids = [v for k, v in start["headers"] if k == b"x-request-id"]
    assert start["status"] == 200 and len(ids) == 1
    assert len(ids[0]) == 32 and int(ids[0], 16) >= 0 and ids[0] != given.encode("utf-8")


def test_request_id_on_every_error(keys_env):
    clock = Clock()
    api = make_app(clock, auth={"enabled": True}, rate_limit={"enabled": True, "requests_per_s": 1.0, "burst": 1},
                   docs_enabled=False)
    c = client(api)
    ok = {"X-API-Key": KEY}
    r = search(c, {"X-Request-Id": "rid-401"})
    assert r.status_code == 401 and r.headers["x-request-id"] == "rid-401"
    assert search(c, ok).status_code == 200
    r = search(c, {**ok, "X-Request-Id": "rid-429"})
    assert r.status_code == 429 and r.headers["x-request-id"] == "rid-429"
    clock.t += 10
    r = c.get("/docs", headers={**ok, "X-Request-Id": "rid-404"})
    assert r.status_code == 404 and r.headers["x-request-id"] == "rid-404"
    clock.t += 10
    r = c.post("/v1/search", json={"k": 3}, headers={**ok, "X-Request-Id": "rid-422"})
    assert_error(r, 422, "invalid_request")
    clock.t += 10
    r = c.get("/boom", headers={**ok, "X-Request-Id": "rid-500"})
    assert_error(r, 500, "internal")
    assert r.headers["x-request-id"] == "rid-500" and r.json()["error"]["message"] == "internal error (RuntimeError)"


def test_access_log_line_has_no_query_text_or_body(keys_env, caplog):
    c = client(make_app(auth={"enabled": True}))
    caplog.set_level(logging.INFO, logger="mmray.access")
    r = c.post("/v1/search", params={"q": "MARKERQS7731"}, json={"query": "MARKERBODY9921"},
               headers={"Authorization": f"Bearer {KEY}", "X-Request-Id": "rid-log-1"})
    assert r.status_code == 200
    c.get("/v1/products/PRODMARK55", headers={"X-API-Key": KEY})
    search(c, {"X-API-Key": "wrong-key-MARK"})
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "mmray.access"]
    assert len(lines) == 3
    fingerprint = hashlib.sha256(KEY.encode()).hexdigest()[:8]
    assert lines[0].startswith("POST /v1/search 200 ") and "ms id=rid-log-1" in lines[0]
    assert lines[0].endswith(f"key={fingerprint}")
    assert lines[1].startswith("GET /v1/products/{product_id} 200 ")  # the route, not the id asked for
    assert lines[2].startswith("POST /v1/search 401 ") and lines[2].endswith("key=-")
    text = "\n".join(lines)
    for secret in ("MARKERQS7731", "MARKERBODY9921", "PRODMARK55", "MARK", KEY, "wrong-key"):
        assert secret not in text


def test_log_queries_opts_in_to_the_query_string_only(caplog):
    c = client(make_app(log_queries=True))
    caplog.set_level(logging.INFO, logger="mmray.access")
    c.post("/v1/search?q=MARKERQS7731", json={"query": "MARKERBODY9921"})
    (line,) = [rec.getMessage() for rec in caplog.records if rec.name == "mmray.access"]
    assert line.startswith("POST /v1/search?q=MARKERQS7731 200 ") and "MARKERBODY9921" not in line


# --------------------------------------------------------------------------- docs switch


def test_docs_switch():
    on = client(make_app())
    assert on.get("/docs").status_code == 200 and on.get("/openapi.json").json()["paths"]
    off = client(make_app(docs_enabled=False))
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        r = off.get(path)
        assert_error(r, 404, "not_found")
        assert r.json() == off.get("/no-such-route").json()  # indistinguishable from an unknown route
    assert search(off).status_code == 200 and off.get("/").status_code == 200
