"""The shop page (deployments/static/) in headless Chromium against a real test Serve app.

What the app serves is checked against the API itself (the page shows what the route answers, in
order). Routes of features this branch's app lacks (events, recommendations, complements, copy,
reranker explanations) are answered by `page.route` mocks shaped exactly as the agreed contracts;
without the mocks those panels must switch themselves off. Catalog text never becomes markup.
Screenshots go to tests/artifacts/ (git-ignored). Needs Debian's `chromium` and `playwright`.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest
from conftest import LUMA_CATALOG
from shop_app import serve_shop

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
PHOTO = LUMA_CATALOG.parent / "images" / "mh01-black_main.jpg"
OTHER_PHOTO = LUMA_CATALOG.parent / "images" / "mb05-black-0.jpg"
EVIL_TITLE = '<img src=x onerror="window.pwned=1">'
BOLD_TITLE = "<b>bold</b> & <i>co</i>"
EVIL_MESSAGE = "no product '<img src=y onerror=\"window.pwned=2\">'"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shop(tmp_path_factory, ray_session):
    yield from serve_shop(tmp_path_factory.mktemp("shop"))


@pytest.fixture(scope="module")
def api(shop):
    with httpx.Client(base_url=shop.base, timeout=30, trust_env=False) as c:
        yield c


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
def page(browser, shop, request):
    # bypass_csp: Playwright's polling waits evaluate strings; the page's own CSP is exercised in the phone test
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "Failed to load resource" not in m.text else None)
    page.sent = []  # (method, path, body) of every /v1 request
    page.on("request", lambda r: page.sent.append((r.method, r.url.removeprefix(shop.base), r.post_data_buffer))
            if "/v1/" in r.url else None)
    yield page
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"shop-{request.node.name}.png"), full_page=True)
    context.close()
    assert errors == [], errors


def open_page(page, shop, path: str = "/") -> None:
    with page.expect_response(lambda r: r.url.endswith("/v1/facets")):
        page.goto(shop.base + path)
    page.wait_for_selector("#f-gender option:nth-child(2)", state="attached")


def titles(page, where: str = "#results") -> list[str]:
    return page.locator(f"{where} .card-title").all_text_contents()


def wait_titles(page, want: list[str], where: str = "#results", timeout_s: float = 10) -> None:
    """Until the cards under `where` show `want` (the page renders an answer just after it arrives)."""
    deadline = time.monotonic() + timeout_s
    while titles(page, where) != want and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert titles(page, where) == want


def result_titles(answer: dict) -> list[str]:
    return [r["title"] for r in answer["results"]]


def sent_json(page, path: str) -> list[dict]:
    return [json.loads(body) for method, p, body in page.sent if p == path and method == "POST"]


def assert_not_pwned(page) -> None:
    page.wait_for_function("[...document.images].every((i) => i.complete)")
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.locator("main b, main i, main script, #error img, .card-title img").count() == 0


def search(page, query: str) -> None:
    page.fill("#q", query)
    with page.expect_response(lambda r: r.url.endswith("/v1/search")):
        page.press("#q", "Enter")
    page.wait_for_selector("#results .card")


# --------------------------------------------------------------------------- against the real app


def test_page_files_and_facets_route(shop, api):
    r = api.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert api.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert api.get("/static/nope.js").status_code == 404 and api.get("/static/..%2Fapp.py").status_code == 404
    facets = api.get("/v1/facets").json()
    products = lambda pred: len({row["product_id"] for row in shop.rows if pred(row)})  # noqa: E731
    assert facets["gender"] == [{"value": g, "products": products(lambda row, g=g: row.get("gender") == g)}
                                for g in sorted({row["gender"] for row in shop.rows if row.get("gender")})]
    assert {c["value"]: c["products"] for c in facets["category"]}["Men"] == products(
        lambda row: row["category"].startswith("Men/"))
    prices = [row["price"] for row in shop.rows if row.get("price") is not None]
    assert facets["price"] == {"min": min(prices), "max": max(prices)} and facets["index_version"] == shop.version


def test_report_is_served_from_the_current_report_artifact(shop, api):
    from mmray.report import publish_report
    from mmray.storage import ArtifactStore

    r = api.get("/report")
    assert r.status_code == 307 and r.headers["location"] == "report/"
    r = api.get("/report/")
    assert r.status_code == 404 and "run `mmray evaluate`" in r.json()["error"]["message"]
    png = PHOTO.read_bytes()  # any bytes the manifest lists; only .html/.png/.json are served
    publish_report(ArtifactStore(shop.root), {"test": True}, {"plots/a.png": png}, "<html>report</html>", {})
    r = api.get("/report/")
    assert r.text == "<html>report</html>" and r.headers["content-type"].startswith("text/html")
    assert "script-src" not in r.headers["content-security-policy"]  # no script runs in the report
    assert api.get("/report/plots/a.png").content == png and api.get("/report/report.json").json() == {"test": True}
    assert api.get("/report/manifest.json").status_code == 404 and api.get("/report/plots/b.png").status_code == 404


def test_text_search_shows_what_the_api_answers(page, shop, api):
    open_page(page, shop)
    search(page, "jacket")
    expected = api.post("/v1/search", json={"query": "jacket", "k": 24}).json()
    assert titles(page) == result_titles(expected)
    assert sent_json(page, "/v1/search") == [{"query": "jacket", "k": 24}]
    first = page.locator("#results .card").first
    top = expected["results"][0]
    assert first.locator(".price").text_content() == f"${top['price']:.2f}"
    assert first.locator(".score").text_content() == f"score {top['score']:.3f}"
    assert first.locator(".retrievers li").all_text_contents() == top["retrievers"]
    page.wait_for_function("[...document.querySelectorAll('#results img')].every((i) => i.complete && i.naturalWidth > 0)")
    assert f"index {shop.version}" in page.text_content("#status")


def test_filter_narrows_the_results(page, shop, api):
    open_page(page, shop)
    search(page, "jacket")
    options = page.locator("#f-gender option").evaluate_all("(os) => os.map((o) => o.value)")
    assert options == ["", *sorted({row["gender"] for row in shop.rows if row.get("gender")})]
    with page.expect_response(lambda r: r.url.endswith("/v1/search")):
        page.select_option("#f-gender", "Women")
    page.wait_for_function("document.querySelector('#status').textContent.includes('gender Women')")
    expected = api.post("/v1/search", json={"query": "jacket", "k": 24, "filters": {"gender": "Women"}}).json()
    assert titles(page) == result_titles(expected) and expected["results"]
    women = {row["product_id"] for row in shop.rows if row.get("gender") == "Women"}
    assert {r["product_id"] for r in expected["results"]} <= women
    assert sent_json(page, "/v1/search")[-1] == {"query": "jacket", "k": 24, "filters": {"gender": "Women"}}
    with page.expect_response(lambda r: r.url.endswith("/v1/search")):
        page.fill("#f-max", "40")
        page.press("#f-max", "Enter")
    assert sent_json(page, "/v1/search")[-1]["filters"] == {"gender": "Women", "max_price": 40}


def test_image_upload_by_picker_drop_and_paste(page, shop, api):
    open_page(page, shop)
    photos = {"picker": PHOTO.read_bytes(), "drop": OTHER_PHOTO.read_bytes(), "paste": PHOTO.read_bytes()}
    expected = {name: result_titles(api.post("/v1/search/image", files={"image": ("p.jpg", data, "image/jpeg")},
                                             data={"k": "24"}).json()) for name, data in photos.items()}
    assert expected["picker"] != expected["drop"]  # so each check below sees its own photo's answer
    with page.expect_response(lambda r: r.url.endswith("/v1/search/image")) as answer:
        page.set_input_files("#file", files=[{"name": "shoe.jpg", "mimeType": "image/jpeg", "buffer": photos["picker"]}])
    assert answer.value.ok and answer.value.request.headers["content-type"].startswith("multipart/form-data; boundary=")
    page.wait_for_selector("#results .card")
    assert titles(page) == expected["picker"]
    assert page.locator("#query-photo").is_visible()
    # Another photo dropped on the page, then the first one pasted.
    for event in ("drop", "paste"):
        with page.expect_response(lambda r: r.url.endswith("/v1/search/image")) as answer:
            page.evaluate("""([bytes, event]) => {
                const dt = new DataTransfer();
                dt.items.add(new File([new Uint8Array(bytes)], event + ".jpg", {type: "image/jpeg"}));
                const e = event === "drop" ? new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true})
                                           : new ClipboardEvent("paste", {clipboardData: dt, bubbles: true, cancelable: true});
                document.body.dispatchEvent(e);
            }""", [list(photos[event]), event])
        assert answer.value.ok
        wait_titles(page, expected[event])
        assert titles(page) == expected[event], event


def without_routes(page, shop) -> None:
    """Make the app look like a version without events, recommendations, complements and copy: those requests
    are answered with what this app's router answers for a path it has no route for (a real 404)."""
    missing = httpx.post(shop.base + "/v1/no-such-route", json={})
    assert missing.status_code == 404

    def absent(route):
        route.fulfill(status=404, body=missing.content, headers=dict(missing.headers))
    for pattern in ("**/v1/events", "**/v1/recommendations", "**/v1/copy", "**/v1/creatives",
                    re.compile(r"/v1/products/[^/]+/complements\?")):
        page.route(pattern, absent)


def test_product_view_similar_and_missing_features_switch_off(page, shop, api):
    without_routes(page, shop)
    open_page(page, shop)
    search(page, "hoodie")
    top = api.post("/v1/search", json={"query": "hoodie", "k": 24}).json()["results"][0]
    similar = api.get(f"/v1/products/{top['product_id']}/similar", params={"k": 8}).json()
    with page.expect_response(lambda r: "/similar" in r.url):
        page.locator("#results .card-open").first.click()
    assert page.locator("#product").is_visible()
    assert page.text_content("#pv-title") == top["title"]
    page.wait_for_selector("#similar .card")
    assert titles(page, "#similar") == result_titles(similar) and similar["results"]
    page.wait_for_selector("#pv-facts dt")
    product = api.get(f"/v1/products/{top['product_id']}").json()
    item = next(i for i in product["items"] if i["id"] == top["id"])
    facts = dict(zip(page.locator("#pv-facts dt").all_text_contents(), page.locator("#pv-facts dd").all_text_contents()))
    assert facts["Category"] == item["category"] and facts["Colour"] == item["color"] and facts["Item"] == item["id"]
    # Without events, recommendations, complements or copy routes their panels switch off.
    page.wait_for_function("window.performance.getEntriesByType('resource').filter((e) => "
                           "/\\/v1\\/(events|recommendations)$|complements/.test(e.name)).length >= 3")
    assert page.locator("#complements-panel").is_hidden() and page.locator("#recs-panel").is_hidden()
    with page.expect_response(lambda r: r.url.endswith("/v1/copy")) as copy:
        page.click("#copy-button")
    assert copy.value.status == 404
    page.wait_for_selector("#copy-panel", state="hidden")
    with page.expect_response(lambda r: r.url.endswith("/v1/creatives")) as made:
        page.click("#creative-button")
    assert made.value.status == 404
    page.wait_for_selector("#creative-panel", state="hidden")
    assert page.locator("#pv-explain").is_hidden()  # no reranker: no explanation
    # Opening a similar product replaces the view; the missing routes are not asked again.
    asked = len([p for m, p, b in page.sent if "/complements" in p or p in ("/v1/events", "/v1/copy")])
    with page.expect_response(lambda r: "/similar" in r.url):
        page.locator("#similar .card-open").first.click()
    assert page.text_content("#pv-title") == similar["results"][0]["title"]
    assert len([p for m, p, b in page.sent if "/complements" in p or p in ("/v1/events", "/v1/copy")]) == asked
    assert page.locator("#copy-panel").is_hidden() and page.locator("#creative-panel").is_hidden()


def test_creatives_panel_shows_what_the_api_answers(page, shop, api):
    open_page(page, shop)
    search(page, "bag")
    top = api.post("/v1/search", json={"query": "bag", "k": 24}).json()["results"][0]
    with page.expect_response(lambda r: "/similar" in r.url):
        page.locator("#results .card-open").first.click()
    page.uncheck("#creative-form input[value='1080x1080']")
    page.check("#creative-form input[value='300x250']")
    with page.expect_response(lambda r: r.url.endswith("/v1/creatives")) as made:
        page.click("#creative-button")
    assert made.value.status == 200
    answer = made.value.json()
    assert sent_json(page, "/v1/creatives")[-1] == {"product_id": top["product_id"], "formats": ["1200x628", "300x250"],
                                                    "with_copy": True}
    assert [c["format"] for c in answer["creatives"]] == ["1200x628", "300x250"]
    page.wait_for_selector("#creative-out figure.creative")
    page.wait_for_function("[...document.querySelectorAll('#creative-out img')].every((i) => i.complete && i.naturalWidth)")
    figures = page.locator("#creative-out figure.creative")
    assert figures.count() == 2
    for i, c in enumerate(answer["creatives"]):
        img = figures.nth(i).locator("img")
        assert img.get_attribute("src") == c["url"]
        assert img.evaluate("(i) => [i.naturalWidth, i.naturalHeight]") == [c["width"], c["height"]]
        assert ("checks passed" if c["passed"] else "a check failed") in figures.nth(i).text_content()
        assert figures.nth(i).locator(".checks li").count() == len(c["checks"])
    passed = sum(c["passed"] for c in answer["creatives"])
    assert page.text_content("#creative-status") == f"{passed} of 2 passed their checks."


def test_keyboard_only_and_phone_width(browser, shop, api):
    """Under the page's own Content-Security-Policy (no bypass): a violation would be a console error."""
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    # a CSP violation logs "Refused to ..."; the 404s of this app's missing routes are expected
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "Failed to load resource" not in m.text
            else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        open_page(page, shop)
        assert page.evaluate("document.activeElement.id") == "q"
        page.keyboard.type("bag")
        with page.expect_response(lambda r: r.url.endswith("/v1/search")):
            page.keyboard.press("Enter")
        page.wait_for_selector("#results .card")
        # No sideways scrolling at phone width.
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        page.locator("#results .card-open").first.focus()
        with page.expect_response(lambda r: "/similar" in r.url):
            page.keyboard.press("Enter")
        assert page.locator("#product").is_visible()
        assert page.evaluate("document.activeElement.id") == "pv-close"
        page.wait_for_selector("#similar .card")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "shop-phone-product.png"))
        page.keyboard.press("Escape")
        assert page.locator("#product").is_hidden()
        assert page.evaluate("document.activeElement.className") == "card-open"
        page.screenshot(path=str(ARTIFACTS / "shop-phone-results.png"), full_page=True)
        assert page.evaluate("[...document.querySelectorAll('#results img')].every((i) => i.naturalWidth > 0)")
        assert errors == [], errors
    finally:
        context.close()


# --------------------------------------------------------------------------- contracts of other issues, mocked


def mock_json(route, body: dict, status: int = 200, headers: dict | None = None) -> None:
    route.fulfill(status=status, content_type="application/json", body=json.dumps(body), headers=headers or {})


def test_markup_titles_and_error_messages_stay_text(page, shop):
    def evil_search(route):
        real = route.fetch().json()
        real["results"][0]["title"], real["results"][1]["title"] = EVIL_TITLE, BOLD_TITLE
        real["results"][1]["image_url"] = "javascript:window.pwned=3"
        real["index_version"] = "v<u>1</u>"
        mock_json(route, real)
    page.route("**/v1/search", evil_search)
    page.route(re.compile(r"/v1/products/[^/]+/similar\?"), lambda route: mock_json(
        route, {"error": {"code": "not_found", "message": EVIL_MESSAGE}}, 404))
    open_page(page, shop)
    search(page, "jacket")
    assert titles(page)[:2] == [EVIL_TITLE, BOLD_TITLE]
    assert "index v<u>1</u>" in page.text_content("#status")
    second = page.locator("#results .card").nth(1)  # its javascript: image URL is dropped
    assert second.locator("img").count() == 0 and second.locator(".nophoto").count() == 1
    assert page.locator("[onclick], [onerror]").count() == 0
    page.locator("#results .card-open").first.click()
    assert page.text_content("#pv-title") == EVIL_TITLE
    page.wait_for_function("document.querySelector('#similar-note').textContent.includes('not_found')")
    assert EVIL_MESSAGE in page.text_content("#similar-note")
    assert_not_pwned(page)


def test_busy_and_refused_answers_are_explained(page, shop):
    answers = iter([({"error": {"code": "overloaded", "message": "server busy, retry shortly"}}, 503, {"Retry-After": "3"}),
                    ({"error": {"code": "invalid_request", "message": "query: longer than 500 characters"}}, 422, {})])

    def handler(route):
        body, status, headers = next(answers)
        mock_json(route, body, status, headers)
    page.route("**/v1/search", handler)
    open_page(page, shop)
    page.fill("#q", "jacket")
    page.press("#q", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    text = page.text_content("#error")
    assert "busy or still loading" in text and "Try again in 3 s" in text and "overloaded: server busy" in text
    page.press("#q", "Enter")
    page.wait_for_function("document.querySelector('#error').textContent.includes('invalid_request')")
    assert "The request was refused. (422 invalid_request: query: longer than 500 characters)" in page.text_content("#error")
    assert page.locator("#results .card").count() == 0


def test_events_recommendations_complements_copy_and_explanations(page, shop, api):
    """Each mock answers exactly the agreed contract (API.md) and records what the page sent."""
    real = api.post("/v1/search", json={"query": "jacket", "k": 24}).json()
    pool = real["results"]
    grid = [[0.0] * 4 for _ in range(3)]
    grid[1][2] = 0.7
    grid[0][0] = 0.3

    def reranked(route):  # issue 14: each result gains `explanation`, the response `reranked`
        body = route.fetch().json()
        for i, r in enumerate(body["results"]):
            r["explanation"] = ({"matched": [{"attribute": "color", "value": "Black"}, {"attribute": "material", "value": "<b>Nylon</b>"}],
                                 "attention": grid, "grid": [3, 4]} if i == 0 else None)
        body["reranked"] = True
        mock_json(route, body)

    def events(route):  # issue 15
        mock_json(route, {"accepted": len(json.loads(route.request.post_data)["events"])})

    def recommendations(route):
        history = json.loads(route.request.post_data)["history"]
        seen = {h["item_id"] for h in history}
        results = [dict(r, explanation={"because": [{"id": pool[0]["id"], "title": pool[0]["title"]}]})
                   for r in pool if r["id"] not in seen][:3]
        mock_json(route, {"results": results, "source": "sequence"})

    def complements(route):
        mock_json(route, {"results": pool[-2:], "source": "catalog-rules"})

    def copy(route):  # issue 16
        req = json.loads(route.request.post_data)
        mock_json(route, {"product_id": req["product_id"], "engine": "grounded", "outputs": [
            {"kind": kind, "variants": [
                {"text": f"{kind} one <script>window.pwned=9</script>", "passed": True, "reasons": [], "removed": []},
                {"text": f"{kind} two", "passed": False, "reasons": ["unsupported claim: waterproof"],
                 "removed": [{"text": "100% waterproof", "reason": "not in catalog facts"}]}]}
            for kind in req["kinds"]]})

    page.route("**/v1/search", reranked)
    page.route("**/v1/events", events)
    page.route("**/v1/recommendations", recommendations)
    page.route(re.compile(r"/v1/products/[^/]+/complements\?"), complements)
    page.route("**/v1/copy", copy)
    open_page(page, shop)
    search(page, "jacket")
    assert page.text_content("#results .card .why") == "matches color Black, material <b>Nylon</b>"
    assert "reranked" in page.text_content("#status")

    with page.expect_response(lambda r: r.url.endswith("/v1/recommendations")):
        page.locator("#results .card-open").first.click()
    top = pool[0]
    (ev,) = sent_json(page, "/v1/events")
    assert set(ev) == {"user_id", "events"} and len(ev["user_id"]) >= 16
    assert [{k: e[k] for k in ("type", "item_id")} for e in ev["events"]] == [{"type": "click", "item_id": top["id"]}]
    assert isinstance(ev["events"][0]["ts"], float)
    (rec,) = sent_json(page, "/v1/recommendations")
    assert rec == {"user_id": ev["user_id"], "history": [{"item_id": top["id"], "type": "click"}], "k": 8,
                   "filters": None, "context_product_id": None}

    # Explanation: chips, and the attention grid drawn over the photo, strongest cell most opaque.
    assert page.locator("#pv-matched li").all_text_contents() == ["color Black", "material <b>Nylon</b>"]
    assert page.locator("#pv-attention").is_hidden()
    page.click("#pv-attention-toggle")
    assert page.locator("#pv-attention").is_visible()
    alpha = page.evaluate("""() => { const c = document.getElementById('pv-attention');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        return {w: c.width, h: c.height, a: Array.from({length: c.width * c.height}, (_, i) => d[4 * i + 3])}; }""")
    assert (alpha["w"], alpha["h"]) == (4, 3)
    a = alpha["a"]
    assert a.index(max(a)) == 1 * 4 + 2 and a[0] > 0 and sum(1 for v in a if v > 0) == 2
    assert abs(a[0] / a[6] - 0.3 / 0.7) < 0.05

    page.wait_for_selector("#complements .card")
    assert titles(page, "#complements") == result_titles({"results": pool[-2:]})

    page.uncheck("#copy-form input[value=description]")
    page.check("#copy-form input[value=bullets]")
    page.select_option("#copy-tone", "friendly")
    with page.expect_response(lambda r: r.url.endswith("/v1/copy")):
        page.click("#copy-button")
    page.wait_for_selector("#copy-out .copy-kind")
    (req,) = sent_json(page, "/v1/copy")
    assert req == {"product_id": top["product_id"], "kinds": ["title", "bullets"], "tone": "friendly", "channel": None,
                   "n_variants": 2, "engine": None}
    assert page.locator("#copy-out h4").all_text_contents() == ["title", "bullets"]
    first = page.locator("#copy-out .copy-kind").first
    assert first.locator(".copy-text").all_text_contents() == ["title one <script>window.pwned=9</script>", "title two"]
    assert first.locator(".verdict").all_text_contents() == ["\u2713 passed guardrails", "\u2717 blocked by guardrails"]
    assert first.locator(".reasons li").all_text_contents() == ["unsupported claim: waterproof"]
    assert first.locator(".removed li").all_text_contents() == ["100% waterproof \u2014 not in catalog facts"]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "shop-product-view.png"), full_page=True)

    page.keyboard.press("Escape")
    page.wait_for_selector("#recs .card")
    assert titles(page, "#recs") == [r["title"] for r in pool[1:4]]
    assert page.locator("#recs .because").first.text_content() == f"because you viewed {top['title']}"
    assert "(sequence)" in page.text_content("#recs-note")
    assert_not_pwned(page)
