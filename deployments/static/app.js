// The mmray shop page: plain JS, no build step, talks only to this origin's /v1 routes.
//
// Catalog text (titles, ids, descriptions, copy) and server messages reach the page only as text
// (DOM nodes, textContent, setAttribute), never as markup: a title "<img onerror=...>" shows as
// those characters. Ids go into URLs through encodeURIComponent; images only from same-origin paths.
// Optional panels (events, recommendations, complements, copy, creatives) switch themselves off for the visit
// when their route answers 404 (an app without that feature).
"use strict";

const $ = (id) => document.getElementById(id);
const K = 24;

// An element with attributes and children; string children become text nodes, never markup.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children.filter((c) => c !== null && c !== undefined).map((c) => (c instanceof Node ? c : String(c))));
  return node;
}

// Only same-origin paths ("/images/..."), so a result cannot point the page elsewhere.
const localPath = (url) => (typeof url === "string" && /^\/(?![\/\\])/.test(url) ? url : "");
const money = (p) => (typeof p === "number" && isFinite(p) ? "$" + p.toFixed(2) : "");

function visitorId() {
  // One random id per visit (this tab), for events and recommendations; nothing else identifies the shopper.
  let id = sessionStorage.getItem("mmray-visitor");
  if (!id) {
    id = (crypto.randomUUID ? crypto.randomUUID() : Array.from(crypto.getRandomValues(new Uint8Array(16)),
      (b) => b.toString(16).padStart(2, "0")).join(""));
    sessionStorage.setItem("mmray-visitor", id);
  }
  return id;
}

const state = {
  visitor: visitorId(),
  clicks: [],            // [{item_id, type}] of this visit, oldest first
  last: null,            // the last search: {kind: "text", query} or {kind: "image", file}
  off: {},               // route name -> true once it answered 404
  current: null,         // the result shown in the product view
  opener: null,          // the element focused before the product view opened
  seq: 0,                // answers of older searches are dropped
};

// ------------------------------------------------------------------ HTTP

// {ok, status, data, error: {code, message}, retryAfter}; never throws.
async function api(method, path, body) {
  const options = {method, headers: {Accept: "application/json"}};
  if (body instanceof FormData) options.body = body;
  else if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, options);
  } catch (e) {
    return {ok: false, status: 0, error: {code: "network", message: "the server cannot be reached (" + String(e) + ")"}};
  }
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (r.ok && data !== null) return {ok: true, status: r.status, data};
  const err = data && data.error && typeof data.error === "object" ? data.error
    : {code: String(r.status), message: r.statusText || "unexpected answer from the server"};
  return {ok: false, status: r.status, retryAfter: r.headers.get("Retry-After"),
          error: {code: String(err.code), message: String(err.message)}};
}

// A sentence for an error answer: what happened, and what the shopper can do.
function describe(res) {
  const e = res.error;
  const detail = e.code + ": " + e.message;
  if (res.status === 0) return "Cannot reach the server. Check your connection and try again. (" + detail + ")";
  if (res.status === 503) {
    const wait = res.retryAfter ? " Try again in " + res.retryAfter + " s." : " Try again shortly.";
    return "The service is busy or still loading." + wait + " (" + detail + ")";
  }
  if (res.status === 401 || res.status === 403) return "This server needs an API key. (" + detail + ")";
  if (res.status === 429) return "Too many requests: slow down a little." + (res.retryAfter ? " Retry in " + res.retryAfter + " s." : "") + " (" + detail + ")";
  if (res.status === 413) return "That file is too large. (" + detail + ")";
  if (res.status === 415) return "That file is not an image we can read (JPEG, PNG or WebP). (" + detail + ")";
  if (res.status >= 400 && res.status < 500) return "The request was refused. (" + res.status + " " + detail + ")";
  return "The server had a problem. (" + res.status + " " + detail + ")";
}

function showError(res) {
  const box = $("error");
  if (!res) { box.hidden = true; box.replaceChildren(); return; }
  box.replaceChildren(el("strong", {}, res.status === 503 ? "Unavailable. " : "Error. "), describe(res));
  box.hidden = false;
}

// An optional route answering 404 is a feature this app does not have: its panel goes away for the visit.
function switchOff(name, res) {
  if (res.status === 404) { state.off[name] = true; return true; }
  return false;
}

// ------------------------------------------------------------------ results

function card(r, extra) {
  const photo = localPath(r.image_url) ? el("img", {src: localPath(r.image_url), alt: "", loading: "lazy"})
                                      : el("span", {class: "nophoto"}, "no photo");
  const open = el("button", {type: "button", class: "card-open"}, photo, el("span", {class: "card-title"}, String(r.title)));
  open.addEventListener("click", () => openProduct(r, open));
  const meta = el("div", {class: "card-meta"});
  if (money(r.price)) meta.append(el("span", {class: "price"}, money(r.price)));
  if (typeof r.score === "number") meta.append(el("span", {class: "score", title: "relevance score"}, "score " + r.score.toFixed(3)));
  const node = el("li", {class: "card"}, open, meta);
  if (Array.isArray(r.retrievers) && r.retrievers.length) {
    node.append(el("ul", {class: "retrievers", "aria-label": "found by"},
      ...r.retrievers.map((name) => el("li", {class: "badge badge-" + String(name).replace(/[^a-z]/g, "")}, String(name)))));
  }
  const matched = matchedOf(r);
  if (matched.length) node.append(el("p", {class: "why"}, "matches " + matched.map((m) => m.attribute + " " + m.value).join(", ")));
  if (extra) node.append(extra);
  return node;
}

function matchedOf(r) {
  const ex = r && r.explanation;
  return ex && Array.isArray(ex.matched) ? ex.matched.filter((m) => m && m.attribute != null)
    .map((m) => ({attribute: String(m.attribute), value: String(m.value)})) : [];
}

function showResults(res, seq, what) {
  if (seq !== state.seq) return;  // a newer search has started
  if (!res.ok || !Array.isArray(res.data.results)) {
    showError(res.ok ? {status: 502, error: {code: "bad_response", message: "unexpected answer from the server"}} : res);
    $("status").textContent = "Search failed.";
    $("results").replaceChildren();
    return;
  }
  showError(null);
  const d = res.data;
  const n = d.results.length;
  const parts = [n === 0 ? "No results" : n + (n === 1 ? " result" : " results"), "for " + what];
  const f = filterText();
  if (f) parts.push("(" + f + ")");
  if (d.reranked) parts.push("· reranked");
  parts.push("· index " + String(d.index_version) + " · " + String(d.took_ms) + " ms");
  $("status").textContent = parts.join(" ");
  $("results").replaceChildren(...d.results.map((r) => card(r)));
}

// ------------------------------------------------------------------ search

function filters() {
  const f = {};
  for (const [key, id] of [["category", "f-category"], ["gender", "f-gender"], ["color", "f-color"]]) {
    if ($(id).value) f[key] = $(id).value;
  }
  for (const [key, id] of [["min_price", "f-min"], ["max_price", "f-max"]]) {
    const v = $(id).value.trim();
    if (v !== "" && isFinite(Number(v))) f[key] = Number(v);
  }
  return f;
}

function filterText() {
  return Object.entries(filters()).map(([k, v]) => k.replace("_", " ") + " " + v).join(", ");
}

async function searchText(query) {
  state.last = {kind: "text", query};
  const seq = ++state.seq;
  $("status").textContent = "Searching\u2026";
  const body = {query, k: K};
  const f = filters();
  if (Object.keys(f).length) body.filters = f;
  showResults(await api("POST", "/v1/search", body), seq, "\u201c" + query + "\u201d");
}

async function searchImage(file) {
  if (!file || !/^image\//.test(file.type || "image/")) {
    showError({status: 415, error: {code: "not_an_image", message: "choose a JPEG, PNG or WebP image"}});
    return;
  }
  state.last = {kind: "image", file};
  const seq = ++state.seq;
  const preview = $("query-photo");
  if (preview.dataset.url) URL.revokeObjectURL(preview.dataset.url);
  preview.dataset.url = URL.createObjectURL(file);
  preview.src = preview.dataset.url;
  preview.hidden = false;
  $("status").textContent = "Searching by photo\u2026";
  const fd = new FormData();
  fd.append("image", file, file.name || "photo");
  fd.append("k", String(K));
  const f = filters();
  if (Object.keys(f).length) fd.append("filters", JSON.stringify(f));
  showResults(await api("POST", "/v1/search/image", fd), seq, "your photo");
}

function rerun() {
  if (!state.last) return;
  if (state.last.kind === "text") searchText(state.last.query);
  else searchImage(state.last.file);
}

// ------------------------------------------------------------------ facets (filter values)

async function loadFacets(attempt) {
  const res = await api("GET", "/v1/facets");
  if (!res.ok) {
    if (res.status === 503 && attempt < 20) { setTimeout(() => loadFacets(attempt + 1), 1500); return; }
    if (res.status === 404) $("filters").classList.add("no-facets");  // still usable as free price filters
    return;
  }
  const d = res.data;
  const fill = (id, values, label) => {
    const select = $(id);
    const keep = select.value;
    select.replaceChildren(select.options[0], ...(values || []).map((v) => {
      const value = String(v.value);
      return el("option", {value}, label(value) + " (" + v.products + ")");
    }));
    select.value = keep;
  };
  fill("f-category", d.category, (v) => "\u2003".repeat(v.split("/").length - 1) + v.split("/").pop());
  fill("f-gender", d.gender, (v) => v);
  fill("f-color", d.color, (v) => v);
  if (d.price && typeof d.price.min === "number") {
    for (const id of ["f-min", "f-max"]) { $(id).min = String(Math.floor(d.price.min)); $(id).max = String(Math.ceil(d.price.max)); }
    $("f-min").placeholder = money(d.price.min);
    $("f-max").placeholder = money(d.price.max);
  }
}

// ------------------------------------------------------------------ product view

async function openProduct(r, opener) {
  const dialog = $("product");
  state.current = r;
  if (!dialog.open) state.opener = opener || document.activeElement;
  $("pv-title").textContent = String(r.title);
  $("pv-price").textContent = money(r.price);
  $("pv-facts").replaceChildren();
  $("pv-description").textContent = "";
  $("pv-variants").replaceChildren();
  $("pv-error").hidden = true;
  setPhoto(r.image_url, true);
  showExplanation(r);
  resetCopy();
  resetCreatives();
  if (!dialog.open) dialog.showModal();
  $("pv-close").focus();
  dialog.scrollTop = 0;

  const pid = encodeURIComponent(String(r.product_id));
  loadSimilar(pid, r);
  loadComplements(pid, r);
  recordClick(r);
  const res = await api("GET", "/v1/products/" + pid);
  if (state.current !== r) return;
  if (!res.ok) {
    $("pv-error").replaceChildren(describe(res));
    $("pv-error").hidden = false;
    return;
  }
  showProduct(res.data, r);
}

function showProduct(p, r) {
  const items = Array.isArray(p.items) ? p.items : [];
  const item = items.find((it) => it.id === r.id) || items[0];
  if (!item) return;
  const facts = $("pv-facts");
  const fact = (name, value) => { if (value) facts.append(el("dt", {}, name), el("dd", {}, String(value))); };
  fact("Category", item.category);
  fact("For", item.gender);
  fact("Colour", item.color);
  fact("Item", item.id);
  try {
    const attrs = item.attributes_json ? JSON.parse(item.attributes_json) : {};
    for (const [name, values] of Object.entries(attrs || {})) fact(name, Array.isArray(values) ? values.join(", ") : values);
  } catch (e) { /* attributes are optional */ }
  $("pv-description").textContent = item.description ? String(item.description) : "";
  if (typeof item.price === "number") $("pv-price").textContent = money(item.price);
  if (items.length > 1) {
    $("pv-variants").replaceChildren(...items.map((it) => {
      const b = el("button", {type: "button", class: "variant", "aria-pressed": String(it.id === item.id)},
        localPath(it.image_url) ? el("img", {src: localPath(it.image_url), alt: ""}) : null,
        el("span", {}, String(it.color || it.id)));
      b.addEventListener("click", () => {
        for (const other of $("pv-variants").querySelectorAll("button")) other.setAttribute("aria-pressed", "false");
        b.setAttribute("aria-pressed", "true");
        setPhoto(it.image_url, it.image_url === r.image_url);
      });
      return el("li", {}, b);
    }));
  }
}

function setPhoto(url, withAttention) {
  const img = $("pv-image");
  const src = localPath(url);
  img.hidden = !src;
  if (src) img.src = src; else img.removeAttribute("src");
  const canvas = $("pv-attention");
  canvas.dataset.allowed = withAttention ? "1" : "";
  canvas.hidden = !(withAttention && $("pv-attention-toggle").getAttribute("aria-pressed") === "true");
}

// The reranker's explanation: matched attributes, and its attention grid over the product photo.
function showExplanation(r) {
  const matched = matchedOf(r);
  const ex = r.explanation;
  const grid = ex && Array.isArray(ex.attention) && ex.attention.length && Array.isArray(ex.attention[0]) ? ex.attention : null;
  $("pv-explain").hidden = !matched.length && !grid;
  $("pv-matched").replaceChildren(...matched.map((m) => el("li", {class: "chip"}, el("span", {class: "chip-name"}, m.attribute), " " + m.value)));
  const toggle = $("pv-attention-toggle");
  toggle.hidden = !grid;
  toggle.setAttribute("aria-pressed", "false");
  toggle.textContent = "Show where the model looked";
  const canvas = $("pv-attention");
  canvas.hidden = true;
  if (grid) drawAttention(canvas, grid);
}

function drawAttention(canvas, grid) {
  const h = grid.length, w = grid[0].length;
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, w, h);
  let max = 0;
  for (const row of grid) for (const v of row) if (typeof v === "number" && v > max) max = v;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const v = typeof grid[y][x] === "number" && max > 0 ? grid[y][x] / max : 0;
      ctx.fillStyle = "rgba(255, 64, 0, " + (0.65 * v).toFixed(3) + ")";
      ctx.fillRect(x, y, 1, 1);
    }
  }
}

function closeProduct() {
  const dialog = $("product");
  if (dialog.open) dialog.close();
}

// ------------------------------------------------------------------ similar, goes with

function miniList(target, results) {
  target.replaceChildren(...results.map((r) => card(r)));
}

async function loadSimilar(pid, r) {
  $("similar").replaceChildren();
  $("similar-note").textContent = "Loading similar products\u2026";
  const res = await api("GET", "/v1/products/" + pid + "/similar?k=8");
  if (state.current !== r) return;
  if (!res.ok) { $("similar-note").textContent = describe(res); return; }
  $("similar-note").textContent = res.data.results.length ? "" : "No similar products.";
  miniList($("similar"), res.data.results);
}

async function loadComplements(pid, r) {
  const panel = $("complements-panel");
  panel.hidden = true;
  $("complements").replaceChildren();
  if (state.off.complements) return;
  const res = await api("GET", "/v1/products/" + pid + "/complements?k=6");
  if (state.current !== r) return;
  if (!res.ok) { switchOff("complements", res); return; }
  if (!Array.isArray(res.data.results) || !res.data.results.length) return;
  miniList($("complements"), res.data.results);
  panel.hidden = false;
}

// ------------------------------------------------------------------ events, recommendations

async function recordClick(r) {
  const event = {type: "click", item_id: String(r.id), ts: Date.now() / 1000};
  state.clicks.push({item_id: event.item_id, type: event.type});
  if (!state.off.events) {
    const res = await api("POST", "/v1/events", {user_id: state.visitor, events: [event]});
    if (!res.ok) switchOff("events", res);
  }
  await loadRecommendations();
}

async function loadRecommendations() {
  const panel = $("recs-panel");
  if (state.off.recommendations || !state.clicks.length) { panel.hidden = true; return; }
  const res = await api("POST", "/v1/recommendations", {
    user_id: state.visitor, history: state.clicks.slice(-20), k: 8, filters: null, context_product_id: null});
  if (!res.ok) {
    if (switchOff("recommendations", res)) { panel.hidden = true; return; }
    $("recs-note").textContent = describe(res);
    panel.hidden = false;
    return;
  }
  const results = Array.isArray(res.data.results) ? res.data.results : [];
  $("recs-note").textContent = results.length ? "From the products you opened in this visit"
    + (res.data.source ? " (" + String(res.data.source) + ")" : "") + "." : "Nothing to recommend yet.";
  $("recs").replaceChildren(...results.map((r) => {
    const because = r.explanation && Array.isArray(r.explanation.because) ? r.explanation.because : [];
    const why = because.length ? el("p", {class: "because"}, "because you viewed " +
      because.map((b) => String(b.title != null ? b.title : b.id)).join(", ")) : null;
    return card(r, why);
  }));
  panel.hidden = false;
}

// ------------------------------------------------------------------ write copy

function resetCopy() {
  $("copy-panel").hidden = !!state.off.copy;
  $("copy-out").replaceChildren();
  $("copy-status").textContent = "";
  $("copy-button").disabled = false;
}

async function writeCopy() {
  const r = state.current;
  if (!r) return;
  const kinds = [...document.querySelectorAll("#copy-form input[name=kind]:checked")].map((i) => i.value);
  if (!kinds.length) { $("copy-status").textContent = "Pick at least one kind."; return; }
  const n = Math.max(1, Math.min(3, Number($("copy-n").value) || 1));
  $("copy-button").disabled = true;
  $("copy-status").textContent = "Writing\u2026";
  const res = await api("POST", "/v1/copy", {product_id: String(r.product_id), kinds, tone: $("copy-tone").value || null,
                                              channel: null, n_variants: n, engine: null});
  $("copy-button").disabled = false;
  if (state.current !== r) return;
  if (!res.ok) {
    if (switchOff("copy", res)) {
      $("copy-status").textContent = "";
      $("copy-panel").hidden = true;
      return;
    }
    $("copy-status").textContent = describe(res);
    return;
  }
  const d = res.data;
  $("copy-status").textContent = "Written by " + String(d.engine) + ".";
  $("copy-out").replaceChildren(...(d.outputs || []).map((out) => el("section", {class: "copy-kind"},
    el("h4", {}, String(out.kind)),
    el("ol", {class: "copy-variants"}, ...(out.variants || []).map(copyVariant)))));
}

function copyVariant(v) {
  const verdict = v.passed ? el("span", {class: "verdict pass"}, "\u2713 passed guardrails")
                           : el("span", {class: "verdict fail"}, "\u2717 blocked by guardrails");
  const node = el("li", {class: "copy-variant " + (v.passed ? "passed" : "failed")},
    el("p", {class: "copy-text"}, String(v.text)), verdict);
  if (Array.isArray(v.reasons) && v.reasons.length) {
    node.append(el("ul", {class: "reasons", "aria-label": "guardrail reasons"}, ...v.reasons.map((x) => el("li", {}, String(x)))));
  }
  if (Array.isArray(v.removed) && v.removed.length) {
    node.append(el("ul", {class: "removed", "aria-label": "removed claims"}, ...v.removed.map((x) =>
      el("li", {}, el("del", {}, String(x.text)), " \u2014 " + String(x.reason)))));
  }
  return node;
}

// ------------------------------------------------------------------ ad creatives

function resetCreatives() {
  $("creative-panel").hidden = !!state.off.creatives;
  $("creative-out").replaceChildren();
  $("creative-status").textContent = "";
  $("creative-button").disabled = false;
}

async function makeCreatives() {
  const r = state.current;
  if (!r) return;
  const formats = [...document.querySelectorAll("#creative-form input[name=format]:checked")].map((i) => i.value);
  if (!formats.length) { $("creative-status").textContent = "Pick at least one format."; return; }
  $("creative-button").disabled = true;
  $("creative-status").textContent = "Composing\u2026";
  const res = await api("POST", "/v1/creatives", {product_id: String(r.product_id), formats, with_copy: true});
  $("creative-button").disabled = false;
  if (state.current !== r) return;
  if (!res.ok) {
    if (switchOff("creatives", res)) {
      $("creative-status").textContent = "";
      $("creative-panel").hidden = true;
      return;
    }
    $("creative-status").textContent = describe(res);
    return;
  }
  const list = res.data.creatives || [];
  const passed = list.filter((c) => c.passed).length;
  $("creative-status").textContent = passed + " of " + list.length + " passed their checks.";
  $("creative-out").replaceChildren(...list.map(creativeFigure));
}

function creativeFigure(c) {
  const src = localPath(c.url);
  const photo = src ? el("img", {src, alt: "creative " + String(c.format), width: c.width, height: c.height, loading: "lazy"})
                    : el("span", {class: "nophoto"}, "no image");
  const checks = Object.entries(c.checks || {}).map(([name, v]) => {
    const verdict = v && v.passed === true ? "passed" : v && v.passed === false ? "failed" : "skipped";
    return el("li", {class: "check " + verdict}, String(name) + ": " + verdict);
  });
  return el("figure", {class: "creative " + (c.passed ? "passed" : "failed")},
    src ? el("a", {href: src, target: "_blank", rel: "noopener"}, photo) : photo,
    el("figcaption", {}, el("strong", {}, String(c.format)), " ",
       el("span", {class: "verdict " + (c.passed ? "pass" : "fail")}, c.passed ? "\u2713 checks passed" : "\u2717 a check failed"),
       el("ul", {class: "checks", "aria-label": "checks"}, ...checks)));
}

// ------------------------------------------------------------------ wiring

function firstImage(list) {
  for (const f of list || []) if (f && /^image\//.test(f.type)) return f;
  return null;
}

function init() {
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = $("q").value.trim();
    if (q) searchText(q); else $("q").focus();
  });
  $("file").addEventListener("change", () => { const f = $("file").files[0]; if (f) searchImage(f); });
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    document.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) drop.classList.remove("over"); });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const f = firstImage(e.dataTransfer && e.dataTransfer.files);
    if (f) searchImage(f);
  });
  document.addEventListener("paste", (e) => {
    const items = e.clipboardData ? [...e.clipboardData.items].filter((i) => i.kind === "file").map((i) => i.getAsFile()) : [];
    const f = firstImage(items);
    if (f) { e.preventDefault(); searchImage(f); }
  });
  const form = $("filters");
  form.addEventListener("change", rerun);
  form.addEventListener("submit", (e) => { e.preventDefault(); rerun(); });
  form.addEventListener("reset", () => setTimeout(rerun, 0));
  $("pv-close").addEventListener("click", closeProduct);
  $("product").addEventListener("close", () => {
    state.current = null;
    if (state.opener && document.contains(state.opener)) state.opener.focus();
  });
  $("product").addEventListener("click", (e) => { if (e.target === $("product")) closeProduct(); });  // the backdrop
  $("pv-attention-toggle").addEventListener("click", () => {
    const t = $("pv-attention-toggle");
    const on = t.getAttribute("aria-pressed") !== "true";
    t.setAttribute("aria-pressed", String(on));
    t.textContent = on ? "Hide where the model looked" : "Show where the model looked";
    $("pv-attention").hidden = !(on && $("pv-attention").dataset.allowed);
  });
  $("copy-form").addEventListener("submit", (e) => { e.preventDefault(); writeCopy(); });
  $("creative-form").addEventListener("submit", (e) => { e.preventDefault(); makeCreatives(); });
  loadFacets(0);
  $("q").focus();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init); else init();
