"""The demo page (deployments/demo.py) in headless Chromium: catalog text and error messages never
become markup, ids reach URLs encoded, and text search, photo search and "similar" still work.

The page is served with canned /v1 answers by a small HTTP server on loopback (no Ray, no
models). Needs Debian's `chromium` and the `playwright` package (`.ci/run` installs both);
skips without them.
"""
from __future__ import annotations

import io
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote

import pytest
from PIL import Image

from deployments.demo import DEMO_HTML

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
JS_URI_SAFE = "!*'()"  # what encodeURIComponent leaves as it is, beyond Python's quote(safe="")

IMG_TITLE = '<img src=x onerror="window.pwned=1">'
BOLD_TITLE = "<b>bold</b>"
EVIL_ID = "p/1?x=<script>window.pwned=2</script>#'\""
ERROR_MESSAGE = "no product or item '<img src=y onerror=\"window.pwned=3\">'"
SEARCH = {
    "results": [
        {"product_id": EVIL_ID, "id": "item-<i>1</i>", "title": IMG_TITLE, "price": 12.5, "score": 0.9,
         "retrievers": ["vector", "lexical"], "variants": 1, "image_url": "/images/v1/0.jpg"},
        {"product_id": "p2", "id": "p2-a", "title": BOLD_TITLE, "price": None, "score": 0.5,
         "retrievers": ["vector"], "variants": 2, "image_url": "javascript:window.pwned=4"},
    ],
    "index_version": "v<u>1</u>", "took_ms": 1.5,
}


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


class Api(BaseHTTPRequestHandler):
    """`/` is the demo page; /v1 routes answer canned JSON and record what they were sent."""

    seen: list[tuple[str, str, bytes]] = []  # (method, raw path, body)
    image = _jpeg()

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.seen.append(("GET", self.path, b""))
        if self.path == "/":
            self._send(200, DEMO_HTML.encode(), "text/html; charset=utf-8")
        elif self.path.startswith("/images/"):
            self._send(200, self.image, "image/jpeg")
        elif self.path.startswith("/v1/products/") and "/similar" in self.path:
            error = {"error": {"code": "not_found", "message": ERROR_MESSAGE}}
            self._send(404, json.dumps(error).encode())
        else:
            self._send(404, b'{"error": {"code": "not_found", "message": "no route"}}')

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append(("POST", self.path, self.headers.get("Content-Type", "").encode() + b"\n" + body))
        if self.path == "/v1/search" and json.loads(body)["query"] == "proxy":
            self._send(502, b"<html><img src=x onerror=window.pwned=5></html>", "text/html")
        elif self.path in ("/v1/search", "/v1/search/image"):
            self._send(200, json.dumps(SEARCH).encode())
        else:
            self._send(404, b"{}")


@pytest.fixture(scope="module")
def base():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


@pytest.fixture
def page(browser, base):
    Api.seen.clear()
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base + "/")
    yield page
    page.close()
    assert errors == [], errors


def assert_not_pwned(page) -> None:
    page.wait_for_function("[...document.images].every((i) => i.complete)")
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.locator("#results b, #results i, #results u, #results script, #status img").count() == 0


def test_text_search_shows_catalog_text_literally(page):
    page.fill("#q", "red jacket")
    page.select_option("#gender", "Women")
    page.fill("#maxp", "50")
    page.click("#text button")
    page.wait_for_selector(".card >> nth=1")

    assert page.locator(".card .title").all_text_contents() == [IMG_TITLE, BOLD_TITLE]
    assert page.locator(".card .meta").all_text_contents() == ["item-<i>1</i> \u00b7 $12.50 \u00b7 vector+lexical",
                                                              "p2-a \u00b7 vector"]
    assert "index v<u>1</u>" in page.text_content("#status")
    # One img per card (the product image), none from the titles; a non-local image URL is dropped.
    assert page.locator("img").count() == 2 and page.locator(".card > img").count() == 2
    assert page.locator(".card > img").evaluate_all("(imgs) => imgs.map((i) => i.getAttribute('src'))") == [
        "/images/v1/0.jpg", ""]
    assert_not_pwned(page)
    sent = [json.loads(body.split(b"\n", 1)[1]) for method, path, body in Api.seen if path == "/v1/search"]
    assert sent == [{"query": "red jacket", "k": 12, "filters": {"gender": "Women", "max_price": 50}}]


def test_similar_link_encodes_the_id_and_errors_stay_text(page):
    page.fill("#q", "jacket")
    page.click("#text button")
    page.wait_for_selector(".card >> nth=1")
    assert page.locator("[onclick]").count() == 0  # handlers are closures, not strings built from data

    with page.expect_response(lambda r: "/similar" in r.url):
        page.locator(".card a.similar").first.click()
    page.wait_for_selector("#status .err")

    paths = [path for method, path, _ in Api.seen if "/similar" in path]
    assert paths == [f"/v1/products/{quote(EVIL_ID, safe=JS_URI_SAFE)}/similar?k=12"]
    assert unquote(paths[0].split("/")[3]) == EVIL_ID
    assert page.text_content("#status") == "not_found: " + ERROR_MESSAGE
    assert page.locator(".card").count() == 0
    assert_not_pwned(page)


def test_photo_search_uploads_the_file(page):
    page.set_input_files("#file", files=[{"name": "shoe.jpg", "mimeType": "image/jpeg", "buffer": Api.image}])
    page.click("#photo button")
    page.wait_for_selector(".card >> nth=1")
    assert page.locator(".card .title").all_text_contents() == [IMG_TITLE, BOLD_TITLE]
    (body,) = [body for method, path, body in Api.seen if path == "/v1/search/image"]
    assert body.startswith(b"multipart/form-data; boundary=")
    assert b'name="image"; filename="shoe.jpg"' in body and Api.image in body and b'name="k"\r\n\r\n12\r\n' in body
    assert_not_pwned(page)


def test_non_json_answer_is_an_error_not_markup(page):
    page.fill("#q", "proxy")
    page.click("#text button")
    page.wait_for_selector("#status .err")
    assert page.text_content("#status") == "502: Bad Gateway"
    assert_not_pwned(page)
