"""The web demo served at `/`: one self-contained page that calls the /v1 routes."""

DEMO_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mmray demo</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px}
form{margin:.5rem 0}input,button,select{font-size:1rem;padding:.3rem}
#results{display:grid;grid-template-columns:repeat(auto-fill,minmax(160px,1fr));gap:1rem;margin-top:1rem}
.card{border:1px solid #ddd;border-radius:6px;padding:.5rem;font-size:.85rem}
.card img{width:100%;height:180px;object-fit:contain;background:#fff}
.meta{color:#666}.err{color:#b00}
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
const $ = (id) => document.getElementById(id);
function show(data, t0) {
  if (data.error) { $("status").innerHTML = '<span class="err">' + data.error.code + ': ' + data.error.message + '</span>'; return; }
  $("status").textContent = data.results.length + " results, index " + data.index_version + ", " + data.took_ms + " ms";
  $("results").innerHTML = data.results.map(r =>
    '<div class="card"><img src="' + r.image_url + '" alt=""><b>' + r.title + '</b><div class="meta">' +
    r.id + (r.price !== null ? ' &middot; $' + r.price.toFixed(2) : '') + ' &middot; ' + r.retrievers.join('+') +
    '</div><a href="#" onclick="similar(\\'' + r.product_id + '\\');return false">similar</a></div>').join("");
}
async function similar(pid) { const r = await fetch("/v1/products/" + encodeURIComponent(pid) + "/similar?k=12"); show(await r.json()); }
$("text").onsubmit = async (e) => {
  e.preventDefault();
  const filters = {}; if ($("gender").value) filters.gender = $("gender").value;
  if ($("maxp").value) filters.max_price = Number($("maxp").value);
  const r = await fetch("/v1/search", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({query: $("q").value, k: 12, filters})});
  show(await r.json());
};
$("photo").onsubmit = async (e) => {
  e.preventDefault(); const fd = new FormData(); fd.append("image", $("file").files[0]); fd.append("k", "12");
  const r = await fetch("/v1/search/image", {method: "POST", body: fd}); show(await r.json());
};
</script></body></html>
"""
