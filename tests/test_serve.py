"""The Ray Serve application end to end over HTTP: every route, the error shape of bad inputs,
body and pixel caps, hot reload of a new index version under traffic, admission control under
overload, and a schemathesis run against the app's own OpenAPI.

One module fixture builds everything from scratch in tmp: ~40 Luma rows preprocessed at 64 px,
an untrained tiny model checkpoint, an index, and the Serve app on a free loopback port.
"""
from __future__ import annotations

import asyncio
import io
import json
import math
import select
import socket
import threading
import time

import httpx
import pytest
import yaml
from conftest import LUMA_CATALOG, deploy_app, publish_model
from PIL import Image

CAP = 2_000_000  # uploads
JSON_CAP = 100_000
MAX_K = 50
MAX_QUERY = 200
SHIPPED_IMAGE = LUMA_CATALOG.parent / "images" / "mh01-black_main.jpg"

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows() -> list[dict]:
    """The first 12 rows (several variants of a few products) plus every 15th row after them."""
    lines = LUMA_CATALOG.read_text().splitlines()
    picked = lines[:12] + lines[12::15][:28]
    rows = [json.loads(line) for line in picked]
    for r in rows:
        r["images"] = [str(LUMA_CATALOG.parent / p) for p in r["images"]]
    return rows


class App:
    def __init__(self, base: str, cfg, cfg_path: str, root: str, rows: list[dict], version: str, model_version: str):
        self.base, self.cfg, self.cfg_path, self.root, self.rows, self.version = base, cfg, cfg_path, root, rows, version
        self.model_version = model_version
        self.port = int(base.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def app(tmp_path_factory, ray_session):
    from ray import serve

    from mmray.config import ModelConfig, load_config
    from mmray.index.build import build_index
    from mmray.model import build_model
    from mmray.preprocess import run_preprocess
    from mmray.storage import ArtifactStore

    tmp = tmp_path_factory.mktemp("serve")
    root = tmp / "artifacts"
    rows = _rows()
    catalog = tmp / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))
    port = _free_port()
    raw = {
        "data": {"catalog": str(catalog), "name": "luma", "image_size": 64, "holdout_fraction": 0.0,
                 "image_root": str(LUMA_CATALOG.parent)},
        "model": {"kind": "tiny", "image_size": 64, "embed_dim": 32},
        "index": {"embed_batch_size": 16, "embed_concurrency": 1},
        "serve": {"host": "127.0.0.1", "port": port, "max_upload_bytes": CAP, "max_json_bytes": JSON_CAP, "max_inflight": 4, "max_k": MAX_K,
                  "max_query_chars": MAX_QUERY, "reload_poll_s": 0.5, "request_timeout_s": 20,
                  "retry_after_s": 1, "embed_batch_wait_s": 0.01,
                  "ingress": {"num_cpus": 0.5}},
        "storage": {"root": str(root)},
    }
    cfg_path = tmp / "serve.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    cfg = load_config(cfg_path)

    report = run_preprocess(cfg)
    model_version = publish_model(ArtifactStore.from_config(cfg.storage),
                  build_model(ModelConfig(kind="tiny", image_size=64, embed_dim=32), pretrained=False))
    manifest = build_index(cfg)
    assert manifest["count"] == len(rows), report

    base = deploy_app(str(cfg_path), port)
    yield App(base, cfg, str(cfg_path), str(root), rows, manifest["version"], model_version)
    serve.shutdown()


@pytest.fixture(scope="module")
def client(app):
    with httpx.Client(base_url=app.base, timeout=30) as c:
        yield c


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


def search(client, **body) -> dict:
    r = client.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def item(client, item_id: str) -> dict:
    r = client.get(f"/v1/products/{item_id}")
    assert r.status_code == 200, r.text
    (found,) = r.json()["items"]
    return found


def upload(client, path: str, data: bytes, **fields) -> httpx.Response:
    return client.post(path, files={"image": ("photo.jpg", data, "image/jpeg")},
                       data={k: str(v) for k, v in fields.items()})


def image_as(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buf, fmt)
    return buf.getvalue()


# --------------------------------------------------------------------------- plain routes


def test_health_ready_and_index_info(app, client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "index_version": app.version, "model_version": app.model_version,
                        "reload_error": None}
    info = client.get("/v1/index").json()
    assert info["version"] == app.version and info["model_version"] == app.model_version
    assert info["count"] == len(app.rows)
    assert info["products"] == len({r["product_id"] for r in app.rows})
    assert info["loaded_versions"] == [app.version] and info["reload_error"] is None
    assert info["num_shards"] >= 1 and info["factory"]


def test_demo_page_docs_and_openapi(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html") and "<html" in r.text.lower()
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    spec = client.get("/openapi.json").json()
    assert {"/v1/search", "/v1/search/image", "/v1/products/{product_id}", "/v1/products/{product_id}/similar",
            "/v1/embed", "/v1/index", "/healthz", "/readyz"} <= set(spec["paths"])


def test_text_search_returns_complete_results_with_images(app, client):
    out = search(client, query="hoodie for men", k=5)
    assert out["index_version"] == app.version and out["took_ms"] >= 0
    results = out["results"]
    assert 1 <= len(results) <= 5
    assert len({r["product_id"] for r in results}) == len(results)  # collapsed by default
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    for res in results:
        assert {"product_id", "id", "title", "image_url", "price", "score", "retrievers", "variants"} <= set(res)
        assert res["title"] and math.isfinite(res["score"]) and res["variants"] >= 1
        assert set(res["retrievers"]) <= {"vector", "lexical"} and res["retrievers"]
        img = client.get(res["image_url"])
        assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
        assert img.content[:3] == b"\xff\xd8\xff"
    assert_error(client.get(f"/images/{app.version}/99999.jpg"), 404, "not_found")
    assert_error(client.get("/images/v-none/0.jpg"), 404, "not_found")
    for name in ("\u00b2.jpg", "\u0663.jpg", "9" * 4000 + ".jpg", "-1.jpg", "0.png", "..%2F..%2Fmanifest.json", "0.jpg.jpg"):
        assert_error(client.get(f"/images/{app.version}/{name}"), 404, "not_found")
    assert_error(client.get(f"/images/{'v' * 3000}/0.jpg"), 404, "not_found")


@pytest.mark.parametrize("filters", [
    {"gender": "Women", "min_price": 25, "max_price": 50},
    {"category": "Men/Tops"},
    {"color": "blue"},
    {"max_price": 30},
])
def test_search_filters_hold_for_every_result(client, filters):
    results = search(client, query="comfortable", k=MAX_K, filters=filters)["results"]
    assert results, filters
    for res in results:
        it = item(client, res["id"])
        if "gender" in filters:
            assert it["gender"].lower() == filters["gender"].lower()
        if "color" in filters:
            assert it["color"].lower() == filters["color"].lower()
        if "category" in filters:
            assert (it["category"] + "/").lower().startswith(filters["category"].lower() + "/")
        if "min_price" in filters:
            assert it["price"] >= filters["min_price"] and res["price"] >= filters["min_price"]
        if "max_price" in filters:
            assert it["price"] <= filters["max_price"] and res["price"] <= filters["max_price"]


def test_filters_that_match_nothing_give_no_results(client):
    assert search(client, query="jacket", filters={"color": "no-such-colour"})["results"] == []


def test_hybrid_on_and_off(client):
    off = search(client, query="hoodie", k=10, hybrid=False)["results"]
    assert off and all(r["retrievers"] == ["vector"] for r in off)
    on = search(client, query="hoodie", k=10, hybrid=True)["results"]
    assert any("lexical" in r["retrievers"] for r in on)
    lexical_titles = [r["title"] for r in on if "lexical" in r["retrievers"]]
    assert any("hoodie" in t.lower() for t in lexical_titles)
    default = search(client, query="hoodie", k=10)["results"]  # index.hybrid defaults to on
    assert [r["id"] for r in default] == [r["id"] for r in on]


def test_collapse_one_result_per_product(app, client):
    n_items, n_products = len(app.rows), len({r["product_id"] for r in app.rows})
    items = search(client, query="shirt", k=MAX_K, hybrid=False, collapse=False)["results"]
    assert len(items) == n_items and len({r["id"] for r in items}) == n_items
    assert len({r["product_id"] for r in items}) == n_products < n_items  # variants repeat product ids
    assert all(r["variants"] == 1 for r in items)
    products = search(client, query="shirt", k=MAX_K, hybrid=False, collapse=True)["results"]
    assert len(products) == n_products and len({r["product_id"] for r in products}) == n_products
    assert sum(r["variants"] for r in products) == n_items


def test_image_search_by_upload(app, client):
    r = upload(client, "/v1/search/image", SHIPPED_IMAGE.read_bytes(), k=5)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["index_version"] == app.version and 1 <= len(out["results"]) <= 5
    assert all(res["retrievers"] == ["vector"] for res in out["results"])
    r = upload(client, "/v1/search/image", SHIPPED_IMAGE.read_bytes(), k=MAX_K,
               filters=json.dumps({"gender": "Women"}), collapse="false")
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert results and all(item(client, res["id"])["gender"] == "Women" for res in results)
    # A PNG upload is accepted as well.
    png = io.BytesIO()
    Image.open(SHIPPED_IMAGE).save(png, "PNG")
    assert upload(client, "/v1/search/image", png.getvalue(), k=3).status_code == 200


def test_product_lookup_and_404(app, client):
    pid = app.rows[0]["product_id"]
    variants = [r["id"] for r in app.rows if r["product_id"] == pid]
    r = client.get(f"/v1/products/{pid}")
    assert r.status_code == 200
    found = r.json()
    assert found["id"] == pid and found["version"] == app.version
    assert sorted(i["id"] for i in found["items"]) == sorted(variants) and len(variants) > 1
    for it in found["items"]:
        assert it["product_id"] == pid and "image" not in it and "row" not in it
        assert client.get(it["image_url"]).status_code == 200
    assert item(client, variants[0])["id"] == variants[0]
    assert_error(client.get("/v1/products/NO-SUCH-PRODUCT"), 404, "not_found")


def test_similar_excludes_the_product_itself(app, client):
    pid = app.rows[0]["product_id"]
    for query_id in (pid, app.rows[0]["id"]):
        r = client.get(f"/v1/products/{query_id}/similar", params={"k": 5})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == 5 and all(res["product_id"] != pid for res in results)
    r = client.get(f"/v1/products/{pid}/similar", params={"k": MAX_K, "gender": "Women", "max_price": 45})
    assert r.status_code == 200, r.text
    for res in r.json()["results"]:
        it = item(client, res["id"])
        assert it["gender"] == "Women" and it["price"] <= 45 and it["product_id"] != pid
    assert_error(client.get("/v1/products/NO-SUCH-PRODUCT/similar"), 404, "not_found")


def test_embed_text_and_image_give_unit_vectors(app, client):
    r = client.post("/v1/embed", json={"text": "red running jacket"})
    assert r.status_code == 200, r.text
    text = r.json()
    assert text["dim"] == 32 == len(text["vector"]) and text["model_version"] == app.model_version
    assert math.isclose(math.sqrt(sum(x * x for x in text["vector"])), 1.0, abs_tol=1e-4)
    again = client.post("/v1/embed", json={"text": "red running jacket"}).json()
    assert again["vector"] == pytest.approx(text["vector"], abs=1e-5)
    r = upload(client, "/v1/embed", SHIPPED_IMAGE.read_bytes())
    assert r.status_code == 200, r.text
    image = r.json()
    assert image["dim"] == 32 == len(image["vector"]) and image["model_version"] == app.model_version
    assert math.isclose(math.sqrt(sum(x * x for x in image["vector"])), 1.0, abs_tol=1e-4)
    assert image["vector"] != pytest.approx(text["vector"], abs=1e-3)


# --------------------------------------------------------------------------- bad inputs


def _raw_response(sock: socket.socket, timeout: float = 30) -> bytes:
    """Read one HTTP response (headers + Content-Length body) from a raw socket."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), None)
    while length is not None and len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def _assert_raw_413(response: bytes) -> None:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), response[:300]
    assert json.loads(body)["error"]["code"] == "payload_too_large"


def test_declared_body_over_the_cap_is_refused_before_it_is_sent(app):
    with socket.create_connection(("127.0.0.1", app.port), timeout=30) as s:
        s.sendall(b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n{\"query\": \"" % (50 * JSON_CAP))
        _assert_raw_413(_raw_response(s))  # answered although almost none of the 100 MB arrived


def test_declared_body_over_the_cap_via_httpx(client):
    body = b'{"query": "' + b"x" * (JSON_CAP + 10) + b'"}'
    try:
        r = client.post("/v1/search", content=body, headers={"Content-Type": "application/json"})
    except httpx.TransportError as e:  # the server may close while the client is still writing
        pytest.fail(f"no 413 answer, the connection broke instead: {e!r}")
    assert_error(r, 413, "payload_too_large")
    assert client.get("/healthz").status_code == 200


def test_chunked_body_over_the_cap_is_refused_while_it_streams(app):
    """No Content-Length: the server counts the chunks and answers 413 while the client is still
    sending (past the cap the chunks slow down, so the answer has time to come back mid-body)."""
    chunk = b"x" * 65536
    planned = 4 * JSON_CAP
    with socket.create_connection(("127.0.0.1", app.port), timeout=30) as s:
        s.sendall(b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        sent, answered_at = 0, None
        deadline = time.time() + 60
        while sent < planned and time.time() < deadline:
            if select.select([s], [], [], 0)[0]:
                answered_at = sent
                break
            if select.select([], [s], [], 1.0)[1]:
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                if sent > JSON_CAP:
                    time.sleep(0.1)
        assert answered_at is not None, f"no answer while sending {sent} bytes"
        assert JSON_CAP < answered_at < planned  # the cap tripped it, and the body never completed
        _assert_raw_413(_raw_response(s))


def test_chunked_body_over_the_cap_via_httpx_generator(client):
    def body():
        yield b'{"query": "'
        for _ in range(2 * JSON_CAP // 65536):
            yield b"x" * 65536
        yield b'"}'

    try:
        r = client.post("/v1/search", content=body(), headers={"Content-Type": "application/json"})
    except httpx.TransportError as e:
        pytest.fail(f"no 413 answer, the connection broke instead: {e!r}")
    assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
    assert_error(r, 413, "payload_too_large")


def test_body_just_under_the_cap_is_not_refused_for_size(client):
    body = json.dumps({"query": "x" * (JSON_CAP - 100)}).encode()
    assert len(body) <= JSON_CAP
    r = client.post("/v1/search", content=body, headers={"Content-Type": "application/json"})
    assert_error(r, 422, "invalid_request")  # too long a query, but it was read


def test_caps_differ_by_body_type(client):
    """A 1 MB body is too large as JSON but fine as an image upload (multipart)."""
    big = b"x" * 1_000_000
    assert JSON_CAP < len(big) < CAP
    r = client.post("/v1/search", content=b'{"query": "' + big + b'"}', headers={"Content-Type": "application/json"})
    assert_error(r, 413, "payload_too_large")
    assert_error(upload(client, "/v1/search/image", big), 415, "not_an_image")  # read whole, then judged


@pytest.mark.parametrize("route", ["/v1/search/image", "/v1/embed"])
@pytest.mark.parametrize("case", ["not_image", "gif", "bmp", "truncated", "bomb"])
def test_bad_uploads(client, bad_images, route, case):
    data, status, code = {
        "not_image": (bad_images["not_image.jpg"], 415, "not_an_image"),
        "gif": (image_as("GIF"), 415, "unsupported_format"),
        "bmp": (image_as("BMP"), 415, "unsupported_format"),
        "truncated": (bad_images["truncated.jpg"], 400, "truncated_image"),
        "bomb": (bad_images["bomb.png"], 413, "too_many_pixels"),
    }[case]
    assert len(data) < CAP
    assert_error(upload(client, route, data), status, code)


def test_an_empty_upload_is_not_an_image(client):
    assert_error(upload(client, "/v1/search/image", b""), 415, "not_an_image")


@pytest.mark.parametrize("body", [
    {"query": "x" * (MAX_QUERY + 1)},
    {"query": "jacket", "k": MAX_K + 1},
    {"query": "jacket", "k": 0},
    {"query": "jacket", "k": -3},
    {"query": "jacket", "k": "many"},
    {"query": ""},
    {"k": 3},
    {"query": "jacket", "filters": {"size": "M"}},
    {"query": "jacket", "colour": "red"},
    {"query": "jacket", "filters": {"min_price": 50, "max_price": 10}},
    {"query": "jacket", "filters": {"min_price": -1}},
    {"query": "jacket", "filters": "cheap"},
    {"query": 42},
    [],
], ids=["query_too_long", "k_over_max", "k_zero", "k_negative", "k_not_int", "empty_query", "no_query",
        "unknown_filter", "unknown_field", "min_over_max", "negative_price", "filters_not_object", "query_not_str",
        "not_an_object"])
def test_invalid_search_requests_are_422(client, body):
    assert_error(client.post("/v1/search", json=body), 422, "invalid_request")


@pytest.mark.parametrize("content", [b"{not json", b"", b'{"query": "a",}', b"\xff\xfe"])
def test_invalid_json_is_422(client, content):
    r = client.post("/v1/search", content=content, headers={"Content-Type": "application/json"})
    assert_error(r, 422, "invalid_request")


def test_invalid_image_search_form_fields(client):
    good = SHIPPED_IMAGE.read_bytes()
    assert_error(upload(client, "/v1/search/image", good, k=MAX_K + 1), 422, "invalid_request")
    assert_error(upload(client, "/v1/search/image", good, k=0), 422, "invalid_request")
    assert_error(upload(client, "/v1/search/image", good, filters="{oops"), 422, "invalid_request")
    for filters in ('{"size": "M"}', "[1]", "null", '{"min_price": "cheap"}'):
        assert_error(upload(client, "/v1/search/image", good, filters=filters), 422, "invalid_request")
    assert_error(upload(client, "/v1/search/image", good, filters='{"min_price": 9, "max_price": 1}'), 422,
                 "invalid_request")
    assert_error(client.post("/v1/search/image", data={"k": "3"}), 422, "invalid_request")  # no file


def test_invalid_similar_parameters(app, client):
    pid = app.rows[0]["product_id"]
    for params in ({"k": MAX_K + 1}, {"k": 0}, {"min_price": 50, "max_price": 10}, {"min_price": -5}):
        assert_error(client.get(f"/v1/products/{pid}/similar", params=params), 422, "invalid_request")


def test_invalid_embed_requests(client):
    r = client.post("/v1/embed", content=b"red jacket", headers={"Content-Type": "text/plain"})
    assert_error(r, 415, "unsupported_media_type")
    assert_error(client.post("/v1/embed"), 415, "unsupported_media_type")
    assert_error(client.post("/v1/embed", content=b"{nope", headers={"Content-Type": "application/json"}), 422,
                 "invalid_request")
    assert_error(client.post("/v1/embed", json={"text": "a", "extra": 1}), 422, "invalid_request")
    assert_error(client.post("/v1/embed", json={"text": ""}), 422, "invalid_request")
    assert_error(client.post("/v1/embed", json={"text": "x" * (MAX_QUERY + 1)}), 422, "invalid_request")
    assert_error(client.post("/v1/embed", data={"text": "no file"}, files={"other": ("a.txt", b"a")}), 422,
                 "invalid_request")


def test_unknown_route_and_method_use_the_error_shape(client):
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(client.get("/v1/search"), 405, "method_not_allowed")


# --------------------------------------------------------------------------- hot reload, overload


def test_hot_reload_under_traffic_fails_no_request(app, client):
    from mmray.index.build import build_index

    old = client.get("/v1/index").json()["version"]
    outcomes: list[tuple[int, str | None]] = []
    stop = threading.Event()
    switched = threading.Event()

    def traffic():
        deadline = time.time() + 150
        with httpx.Client(base_url=app.base, timeout=30) as c:
            while not stop.is_set() and time.time() < deadline and len(outcomes) < 2000:
                try:
                    r = c.post("/v1/search", json={"query": "jacket", "k": 3})
                    outcomes.append((r.status_code, r.json().get("index_version") if r.status_code == 200 else r.text))
                except httpx.HTTPError as e:
                    outcomes.append((0, repr(e)))
                if outcomes[-1][1] not in (old, None) and outcomes[-1][0] == 200:
                    switched.set()
                time.sleep(0.05)

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        while len(outcomes) < 3 and worker.is_alive():
            time.sleep(0.1)
        new = build_index(app.cfg)["version"]
        assert new != old
        deadline = time.time() + 60
        while time.time() < deadline and client.get("/v1/index").json()["version"] != new:
            time.sleep(0.2)
        info = client.get("/v1/index").json()
        assert info["version"] == new, info
        assert info["loaded_versions"] == [old, new]
        switched.wait(30)
        n_after = len(outcomes)
        while len(outcomes) < n_after + 5 and worker.is_alive():
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join(35)

    failed = [o for o in outcomes if o[0] != 200]
    assert not failed, failed[:5]
    versions = [v for _, v in outcomes]
    assert versions[0] == old and versions[-1] == new, (versions[0], versions[-1])
    assert set(versions) == {old, new}
    first_new = versions.index(new)
    assert all(v == new for v in versions[first_new:]), "went back to the old index after switching"
    app.version = new
    # The old version's images stay served while it is loaded; the new index answers everything.
    out = search(client, query="hoodie", k=3)
    assert out["index_version"] == new
    assert client.get(out["results"][0]["image_url"]).status_code == 200
    assert client.get(f"/images/{old}/0.jpg").status_code == 200


def test_overload_is_a_fast_503_with_retry_after(app, client):
    async def burst(n: int) -> list[httpx.Response | Exception]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(base_url=app.base, timeout=30, limits=limits) as c:
            async def one(i: int):
                try:
                    return await c.post("/v1/search", json={"query": f"warm jacket {i}", "k": 10})
                except Exception as e:  # noqa: BLE001 - recorded and asserted on below
                    return e
            return await asyncio.gather(*(one(i) for i in range(n)))

    responses: list = []
    for _ in range(3):  # bounded: a few bursts until admission control has shown itself
        start = time.time()
        got = asyncio.run(burst(48))
        assert time.time() - start < 45
        responses += got
        if any(isinstance(r, httpx.Response) and r.status_code == 503 for r in got):
            break
    errors = [r for r in responses if not isinstance(r, httpx.Response)]
    assert not errors, errors[:3]
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    rejected = [r for r in responses if r.status_code == 503]
    assert rejected, f"no 503 in {len(statuses)} concurrent requests with max_inflight=4"
    assert 200 in statuses
    for r in rejected:
        assert_error(r, 503, "overloaded")
        assert r.headers["retry-after"] == "1"
    time.sleep(1)
    assert search(client, query="jacket", k=3)["results"]


# --------------------------------------------------------------------------- schemathesis


def test_schemathesis_finds_no_server_errors(app):
    """Schema-valid and schema-violating requests for every operation: any answer but a 5xx."""
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_url(app.base + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    problems: list[str] = []
    calls: dict[tuple[str, str], int] = {}

    def run(op, mode, session) -> None:
        @settings(max_examples=15, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=mode))
        def check(case):
            response = case.call(base_url=app.base, session=session, timeout=30)
            calls[op.label, mode.value] = calls.get((op.label, mode.value), 0) + 1
            if response.status_code >= 500:
                problems.append(f"{op.label} [{mode.value}] -> {response.status_code} "
                                f"{response.text[:200]}\n  {case.as_curl_command()}")

        try:
            check()
        except Unsatisfiable:  # nothing to violate: an operation without parameters or body
            assert mode == schemathesis.GenerationMode.NEGATIVE, op.label

    with requests.Session() as session:
        for op in operations:
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                run(op, mode, session)
    assert not problems, "\n".join(problems[:10])
    for label in ("POST /v1/search", "POST /v1/search/image", "GET /v1/products/{product_id}/similar"):
        assert calls.get((label, "positive"), 0) >= 5 and calls.get((label, "negative"), 0) >= 5, (label, calls)
    assert calls.get(("GET /v1/products/{product_id}", "positive"), 0) >= 5, calls


# --------------------------------------------------------------------------- broken versions


def _wait_for(client, predicate, timeout_s: float = 20.0) -> dict:
    deadline, body = time.time() + timeout_s, None
    while time.time() < deadline:
        body = client.get("/readyz").json()
        if predicate(body):
            return body
        time.sleep(0.2)
    raise AssertionError(f"/readyz never got there: {body}")


def test_a_broken_pointer_or_corrupt_version_keeps_the_loaded_index_serving(app, client):
    import shutil

    from mmray.storage import INDEX_KIND, ArtifactStore, new_version

    store = ArtifactStore.from_config(app.cfg.storage)
    serving = client.get("/v1/index").json()["version"]
    pointer = store.path(INDEX_KIND, "current.json")
    original = open(pointer, "rb").read()
    try:
        for bad, why in ((b"", "empty"), (b"{oops", "not JSON"), (b'{"version": "../../../etc"}', "not a version")):
            open(pointer, "wb").write(bad)
            body = _wait_for(client, lambda b, why=why: why in (b.get("reload_error") or ""))
            assert body["status"] == "ready" and body["index_version"] == serving
            assert app.root not in json.dumps(body)  # no absolute paths shown to clients
            assert search(client, query="jacket", k=3)["index_version"] == serving

        # A complete-looking version with one flipped byte: refused by hash, retried with back-off.
        bad_version = new_version()
        shutil.copytree(store.path(INDEX_KIND, serving), store.path(INDEX_KIND, bad_version))
        manifest_path = store.path(INDEX_KIND, bad_version, "manifest.json")
        manifest = json.load(open(manifest_path)) | {"version": bad_version}
        json.dump(manifest, open(manifest_path, "w"))
        vectors = store.path(INDEX_KIND, bad_version, "vectors.npy")
        data = bytearray(open(vectors, "rb").read())
        data[-1] ^= 0x01
        open(vectors, "wb").write(bytes(data))
        open(pointer, "wb").write(json.dumps({"version": bad_version}).encode())
        body = _wait_for(client, lambda b: "SHA-256" in (b.get("reload_error") or ""))
        assert body["index_version"] == serving and bad_version in body["reload_error"]
        first = float(body["reload_error"].rsplit("next try in ", 1)[1].split(" ")[0])
        later = _wait_for(client, lambda b: float((b.get("reload_error") or "next try in 0 s").rsplit(
            "next try in ", 1)[1].split(" ")[0]) >= 4 * max(first, 1), timeout_s=30)
        assert later["index_version"] == serving  # backing off, never serving the corrupt version
        assert search(client, query="jacket", k=3)["index_version"] == serving
    finally:
        open(pointer, "wb").write(original)
    body = _wait_for(client, lambda b: b.get("reload_error") is None)
    assert body["index_version"] == serving


# --------------------------------------------------------------------------- split topology, API keys


def test_split_topology_with_api_keys_serves_the_same_results(app, client, tmp_path):
    """The same config with `serve.topology: split` (Ingress -> Embedder + Retriever handles) and API
    keys from a mounted file, deployed beside the co-located app under /split."""
    from ray import serve

    from deployments.app import build_app
    from mmray.serving import VersionNotLoaded

    keys = tmp_path / "keys"
    keys.write_text("# mounted from a Kubernetes Secret\nsecret-one\n")
    raw = yaml.safe_load(open(app.cfg_path))
    raw["serve"] |= {"topology": "split", "auth": {"enabled": True, "keys_file": str(keys)},
                     "ingress": {"num_cpus": 0.25}, "embedder": {"num_cpus": 0.25}, "retriever": {"num_cpus": 0.25}}
    path = tmp_path / "split.yaml"
    path.write_text(yaml.safe_dump(raw))
    serve.run(build_app({"config": str(path)}), name="split", route_prefix="/split")
    try:
        deadline = time.time() + 120
        while time.time() < deadline and client.get("/split/readyz").status_code != 200:  # open without a key
            time.sleep(0.5)
        assert client.get("/split/readyz").json()["index_version"] == app.version
        body = {"query": "jacket", "k": 5}
        assert_error(client.post("/split/v1/search", json=body), 401, "unauthorized")
        assert_error(client.post("/split/v1/search", json=body, headers={"Authorization": "Bearer nope"}), 401)
        r = client.post("/split/v1/search", json=body, headers={"Authorization": "Bearer secret-one"})
        assert r.status_code == 200, r.text
        assert r.json()["results"] == search(client, **body)["results"]  # same service, other topology
        assert len(r.headers.get_list("x-request-id")) == 1  # Serve's own header, not a second copy of ours

        # The retriever never answers for a version it does not hold (no silent mixing of versions).
        retriever = serve.get_deployment_handle("RetrieverDeployment", app_name="split")
        vector = [0.0] * 32
        with pytest.raises(VersionNotLoaded):
            retriever.search.remote("v20991231-000000-000-abcdef", vector, 3, None, None, False, True).result()

        # A Retriever replica dies: while Serve replaces it, answers are 200 or 503, never 500.
        import ray

        name = next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                    if "split" in a["name"] and "RetrieverDeployment" in a["name"])
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        statuses, deadline = [], time.time() + 60
        auth = {"Authorization": "Bearer secret-one"}
        while time.time() < deadline and len(statuses) < 400:
            r = client.post("/split/v1/search", json=body, headers=auth)
            statuses.append(r.status_code)
            if r.status_code == 503:
                assert r.headers.get("retry-after"), r.text
            if len(statuses) > 5 and statuses[-3:] == [200, 200, 200]:
                break
            time.sleep(0.05)
        assert set(statuses) <= {200, 503}, statuses
        assert statuses[-1] == 200, statuses
    finally:
        serve.delete("split")


def test_health_stays_fast_while_clients_upload_huge_images(app):
    """8 clients upload 39-megapixel PNGs at once: decoding runs in worker threads behind admission
    control, so /healthz on the same replica keeps answering quickly."""
    from concurrent.futures import ThreadPoolExecutor

    from conftest import bomb_png

    png = bomb_png(6245, 6245)  # 39.0 Mpx, under the 40 Mpx cap: decoded for real
    assert len(png) < CAP
    stop = threading.Event()

    def uploader(_):
        codes = []
        with httpx.Client(base_url=app.base, timeout=60) as c:
            for _ in range(2):
                codes.append(upload(c, "/v1/search/image", png, k=3).status_code)
        return codes

    health = []

    def prober():
        with httpx.Client(base_url=app.base, timeout=10) as c:
            while not stop.is_set() and len(health) < 500:
                t = time.perf_counter()
                assert c.get("/healthz").status_code == 200
                health.append(time.perf_counter() - t)
                time.sleep(0.02)

    probe = threading.Thread(target=prober, daemon=True)
    probe.start()
    with ThreadPoolExecutor(8) as pool:
        codes = [c for cs in pool.map(uploader, range(8)) for c in cs]
    stop.set()
    probe.join(30)
    assert set(codes) <= {200, 503} and 200 in codes, codes  # admitted ones answer, the rest are told to retry
    health.sort()
    p99 = health[int(0.99 * (len(health) - 1))]
    assert len(health) >= 20 and p99 < 0.2, f"/healthz p99 {p99 * 1000:.0f} ms over {len(health)} probes"


def test_model_pool_answers_for_a_held_model_while_another_loads(monkeypatch):
    from mmray import serving

    class Store:
        def resolve_ref(self, ref):
            return ref

    release, started = threading.Event(), threading.Event()

    def from_version(folder, batch_size, runtime):
        if folder == "models/dual_encoder/slow":
            started.set()
            assert release.wait(10)
        return f"embedder of {folder}"

    monkeypatch.setattr(serving.Embedder, "from_version", staticmethod(from_version))
    pool = serving.ModelPool(Store(), 8)
    assert pool.get("models/dual_encoder/held") == "embedder of models/dual_encoder/held"
    loader = threading.Thread(target=pool.get, args=("models/dual_encoder/slow",))
    loader.start()
    assert started.wait(10)
    t0 = time.perf_counter()
    assert pool.get("models/dual_encoder/held") == "embedder of models/dual_encoder/held"  # not queued behind the load
    assert time.perf_counter() - t0 < 1.0
    release.set()
    loader.join(10)
    assert list(pool.models) == ["models/dual_encoder/held", "models/dual_encoder/slow"]
