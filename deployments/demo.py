"""The web demo served at `/`: one self-contained page that calls the /v1 routes.

Catalog text (titles, ids) and error messages reach the page only through `textContent` and
attributes set with `setAttribute`, never as markup: a title reading `<img onerror=...>` shows as
those characters. Ids go into URLs through `encodeURIComponent`; handlers are closures, not
`onclick` strings. tests/test_demo.py checks this in headless Chromium.
"""

DEMO_HTML = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mmray demo</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px}
form{margin:.5rem 0}input,button,select{font-size:1rem;padding:.3rem}
#results{display:grid;grid-template-columns:repeat(auto-fill,minmax(160px,1fr));gap:1rem;margin-top:1rem}
.card{border:1px solid #ddd;border-radius:6px;padding:.5rem;font-size:.85rem}
.card img{width:100%;height:180px;object-fit:contain;background:#fff}
.title{font-weight:bold;overflow-wrap:anywhere}.meta{color:#666}.err{color:#b00}
</style></head><body>
<h1>mmray</h1><p>Search the catalog by text or by photo. API docs: <a href="/docs">/docs</a>.</p>
<form id="text"><input id="q" size="40" placeholder="e.g. red jacket for women" required>
<select id="gender"><option value="">any gender</option><option>Men</option><option>Women</option></select>
<input id="maxp" type="number" min="0" placeholder="max price" style="width:7rem">
<button>Search</button></form>
<form id="photo"><input id="file" type="file" accept="image/jpeg,image/png,image/webp" required>
<button>Search by photo</button></form>
<div id="status" class="meta"></div><div id="results"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);

// An element with attributes and children; string children become text nodes, never markup.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

// Only same-origin paths ("/images/..."), so a result cannot point the page elsewhere.
const localPath = (url) => (typeof url === "string" && /^\/(?![\/\\])/.test(url) ? url : "");

function card(r) {
  const meta = [String(r.id)];
  if (typeof r.price === "number") meta.push("$" + r.price.toFixed(2));
  if (Array.isArray(r.retrievers)) meta.push(r.retrievers.join("+"));
  const link = el("a", {href: "#", class: "similar"}, "similar");
  link.addEventListener("click", (e) => { e.preventDefault(); similar(r.product_id); });
  const photo = r.image_url != null ? el("img", {src: localPath(r.image_url), alt: ""})
                                       : el("div", {class: "nophoto"}, "no photo");  // a text-only item
  return el("div", {class: "card"}, photo,
            el("div", {class: "title"}, String(r.title)), el("div", {class: "meta"}, meta.join(" \u00b7 ")), link);
}

function show(data) {
  if (!data || data.error || !Array.isArray(data.results)) {
    const err = (data && data.error) || {code: "bad_response", message: "unexpected answer from the server"};
    $("status").replaceChildren(el("span", {class: "err"}, String(err.code) + ": " + String(err.message)));
    $("results").replaceChildren();
    return;
  }
  $("status").textContent = data.results.length + " results, index " + data.index_version + ", " + data.took_ms + " ms";
  $("results").replaceChildren(...data.results.map(card));
}

// Every answer goes to show(): JSON as it is, anything else (a proxy's HTML, a network error) as an error.
async function call(url, options) {
  $("status").textContent = "searching\u2026";
  let data;
  try {
    const r = await fetch(url, options);
    data = await r.json().catch(() => ({error: {code: String(r.status), message: r.statusText || "not JSON"}}));
  } catch (e) {
    data = {error: {code: "network", message: String(e)}};
  }
  show(data);
}

function similar(pid) { return call("/v1/products/" + encodeURIComponent(pid) + "/similar?k=12"); }

$("text").addEventListener("submit", (e) => {
  e.preventDefault();
  const filters = {};
  if ($("gender").value) filters.gender = $("gender").value;
  if ($("maxp").value) filters.max_price = Number($("maxp").value);
  call("/v1/search", {method: "POST", headers: {"Content-Type": "application/json"},
                      body: JSON.stringify({query: $("q").value, k: 12, filters})});
});
$("photo").addEventListener("submit", (e) => {
  e.preventDefault();
  const fd = new FormData();
  fd.append("image", $("file").files[0]);
  fd.append("k", "12");
  call("/v1/search/image", {method: "POST", body: fd});
});
</script></body></html>
"""
