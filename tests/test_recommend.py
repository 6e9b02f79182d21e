"""The user-vector recommender, MMR, cold start and complements on toy vectors, against hand-computed
values and brute-force references; and the /v1 event and recommendation routes through a small Serve app."""
from __future__ import annotations

import itertools
import json
import time

import numpy as np
import pytest

from mmray.config import RecommendConfig
from mmray.index.filters import SearchFilters
from mmray.recommend.recommender import (
    CategoryRules,
    HistoryEvent,
    ItemSpace,
    Recommender,
    event_weights,
    mmr,
    user_vector,
)


def _space(vectors, products, categories, prices=None) -> ItemSpace:
    n = len(vectors)
    meta = {"id": [f"i{r}" for r in range(n)], "product_id": products, "title": [f"title {r}" for r in range(n)],
            "category": categories, "price": np.array(prices or [10.0] * n, dtype=np.float64)}
    for col in ("category", "gender", "color"):
        meta[f"{col}_lc"] = np.array([(v or "").lower() for v in meta.get(col, [""] * n)], dtype=object)
    meta["available"] = np.ones(n, dtype=bool)
    return ItemSpace(np.array(vectors, dtype=np.float32), meta)


def _cfg(**kw) -> RecommendConfig:
    return RecommendConfig(**({"diversity": 0.0, "recency_decay": 0.5, "half_life_days": 10.0, "exclude_seen": True} | kw))


def test_event_weights_by_type_rank_and_age():
    cfg = _cfg()
    now = 1_000_000.0
    hist = [HistoryEvent("a", "purchase", now), HistoryEvent("b", "view", now - 10 * 86400), HistoryEvent("c", "click")]
    # purchase 8 x 0.5^0 x 1; view 1 x 0.5^1 x 0.5 (one half-life old); click 2 x 0.5^2 x 1 (no ts: now)
    assert event_weights(hist, cfg, now) == pytest.approx([8.0, 0.25, 0.5])


def test_user_vector_matches_the_hand_computed_mean():
    s = _space([[1, 0], [0, 1], [1, 1]], ["A", "B", "C"], ["x", "x", "y"])
    u, weights, kinds = user_vector(s, [HistoryEvent("i0", "view"), HistoryEvent("i1", "add_to_cart")], _cfg())
    # weights: view 1 x 1 = 1 on i0, add_to_cart 4 x 0.5 = 2 on i1 -> (1, 2) / sqrt(5)
    assert u == pytest.approx(np.array([1, 2]) / np.sqrt(5))
    assert weights == {0: 1.0, 1: 2.0} and kinds == {0: "view", 1: "add_to_cart"}
    # a product id stands for the mean of its items
    s2 = _space([[1, 0], [0, 1], [1, 1]], ["A", "A", "C"], ["x", "x", "y"])
    u2, w2, _ = user_vector(s2, [HistoryEvent("A", "view")], _cfg())
    assert u2 == pytest.approx(np.array([1, 1]) / np.sqrt(2)) and w2 == {0: 0.5, 1: 0.5}


def _brute_mmr(vectors, rel, k, lam):
    """Every sequence of k picks scored greedily one by one, the naive way."""
    chosen = []
    for _ in range(min(k, len(rel))):
        best, best_val = None, -float("inf")
        for i in range(len(rel)):
            if i in chosen:
                continue
            pen = max((float(np.dot(vectors[i], vectors[j])) for j in chosen), default=0.0)
            val = (1 - lam) * rel[i] - lam * pen
            if val > best_val + 1e-12:
                best, best_val = i, val
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("seed,lam", itertools.product(range(6), [0.0, 0.3, 0.7, 1.0]))
def test_mmr_matches_the_naive_greedy_loop(seed, lam):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(15, 4)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    rel = rng.uniform(size=15)
    assert mmr(list(range(15)), rel, v, 6, lam) == _brute_mmr(v, rel, 6, lam)


def test_mmr_diversity_by_hand():
    # two near-duplicates at the top: with diversity the second pick is the different one
    v = np.array([[1, 0], [0.99, 0.141], [0, 1]], dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    rel = [0.9, 0.89, 0.5]
    assert mmr([0, 1, 2], rel, v, 3, 0.0) == [0, 1, 2]
    # second pick: item 1 -> 0.5*0.89 - 0.5*0.99 < 0; item 2 -> 0.5*0.5 - 0 = 0.25
    assert mmr([0, 1, 2], rel, v, 3, 0.5) == [0, 2, 1]


def test_recommendations_follow_history_exclude_purchases_and_explain():
    # products A (x-ish), B (near x), C (y), D (near y), E (between)
    s = _space([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.7, 0.7]], list("ABCDE"), ["c1", "c1", "c2", "c2", "c3"])
    rec = Recommender(s, _cfg())
    out, source = rec.recommend([HistoryEvent("i0", "view")], k=4)
    assert source == "user_vector"
    # brute force: cosine to (1, 0) over the unseen products, best first
    sims = {r: float(s.vectors[r] @ np.array([1, 0])) for r in (1, 2, 3, 4)}
    assert [r.row for r in out] == sorted(sims, key=lambda r: -sims[r])
    assert out[0].because == [(0, "view")]
    # a purchase of B: B never returns, even though it is the closest
    out, _ = rec.recommend([HistoryEvent("i1", "purchase"), HistoryEvent("i0", "view")], k=5)
    assert 1 not in [r.row for r in out] and 0 not in [r.row for r in out]
    # the history item that contributed most is named first: D's explanation names C (y), not A
    out, _ = rec.recommend([HistoryEvent("i2", "click"), HistoryEvent("i0", "view")], k=3)
    d = next(r for r in out if r.row == 3)
    assert d.because[0] == (2, "click")
    # filters apply
    out, _ = rec.recommend([HistoryEvent("i0", "view")], k=5, filters=SearchFilters(category="c2"))
    assert {r.row for r in out} == {2, 3}


@pytest.mark.parametrize("seed", range(20))
def test_purchased_products_never_come_back(seed):
    rng = np.random.default_rng(seed)
    n = 40
    products = [f"P{r // 2}" for r in range(n)]  # two variants per product
    s = _space(rng.normal(size=(n, 8)), products, [f"c{r % 4}" for r in range(n)])
    rec = Recommender(s, _cfg(diversity=float(rng.uniform()), exclude_seen=False))
    items = rng.choice(n, size=12, replace=False)
    kinds = rng.choice(["view", "click", "add_to_cart", "purchase"], size=12)
    hist = [HistoryEvent(f"i{i}", str(t)) for i, t in zip(items, kinds)]
    out, _ = rec.recommend(hist, k=15)
    bought = {products[i] for i, t in zip(items, kinds) if t == "purchase"}
    assert len(out) == min(15, 20 - len(bought)) and not bought & {products[r.row] for r in out}
    assert len({products[r.row] for r in out}) == len(out)  # one result per product


def test_cold_start_is_popular_in_the_context_category_then_overall():
    s = _space([[1, 0], [0.9, 0.1], [0.8, 0.2], [0, 1], [0.1, 0.9]], list("ABCDE"), ["c1", "c1", "c1", "c2", "c2"])
    rec = Recommender(s, _cfg())
    popularity = {"i3": 100.0, "i2": 5.0, "i1": 1.0}
    out, source = rec.recommend([], k=4, context_product_id="A", popularity=popularity)
    assert source == "popular"
    assert [r.row for r in out] == [2, 1, 3, 4]  # c1 by popularity (A itself excluded), then overall
    out, _ = rec.recommend([], k=3, popularity=popularity)
    assert [r.row for r in out] == [3, 2, 1]
    out, _ = rec.recommend([], k=2, context_product_id="A", popularity={})  # no events: nearest in the category
    assert [r.row for r in out] == [1, 2]


def test_complements_co_purchase_then_rules_then_nearest_other_category():
    s = _space([[1, 0], [0.9, 0.1], [0, 1], [0.2, 0.8], [0.6, 0.4]], list("ABCDE"),
               ["top", "top", "bag", "bag", "shoe"])
    links = [{"source": "A", "target": "C", "type": "crosssell"}, {"source": "B", "target": "D", "type": "crosssell"},
             {"source": "A", "target": "E", "type": "crosssell"}, {"source": "A", "target": "B", "type": "related"}]
    rules = CategoryRules.learn(links, s)
    assert rules.targets("top") == pytest.approx({"bag": 2 / 3, "shoe": 1 / 3})
    rec = Recommender(s, _cfg(), rules)
    out, source = rec.complements("A", k=2, co_purchase={"i4": 3, "i2": 1})
    assert source == "co-purchase" and [r.row for r in out] == [4, 2]
    out, source = rec.complements("A", k=3)
    # score = share x (1 + cos)/2: D 2/3 x (1 + 0.243)/2, C 2/3 x 0.5, E 1/3 x (1 + 0.832)/2
    cos = s.vectors @ s.vectors[0]
    share = {2: 2 / 3, 3: 2 / 3, 4: 1 / 3}
    expected = sorted(share, key=lambda r: -share[r] * (1 + cos[r]) / 2)
    assert source == "catalog-rules" and [r.row for r in out] == expected
    out, source = Recommender(s, _cfg()).complements("C", k=2)  # no rules: nearest items of another category
    assert source == "nearest-other-category" and [r.row for r in out] == [4, 1]
    assert rec.complements("nope") is None


# --------------------------------------------------------------------------- HTTP, through a small Serve app


@pytest.fixture(scope="module")
def rec_app(tmp_path_factory, ray_session):
    """12 Luma rows, an untrained tiny model, an index and the app on a free loopback port."""
    import socket

    import httpx
    import yaml
    from conftest import LUMA_CATALOG, deploy_app, publish_model
    from ray import serve

    from mmray.config import ModelConfig, load_config
    from mmray.index.build import build_index
    from mmray.model import build_model
    from mmray.preprocess import run_preprocess
    from mmray.storage import ArtifactStore

    tmp = tmp_path_factory.mktemp("rec")
    rows = [json.loads(line) for line in LUMA_CATALOG.read_text().splitlines()[:12]]
    for r in rows:
        r["images"] = [str(LUMA_CATALOG.parent / p) for p in r["images"]]
    (tmp / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    db = tmp / "events.sqlite"
    raw = {"data": {"catalog": str(tmp / "catalog.jsonl"), "name": "luma", "image_size": 64, "holdout_fraction": 0.0,
                    "image_root": str(LUMA_CATALOG.parent)},
           "model": {"kind": "tiny", "image_size": 64, "embed_dim": 32},
           "index": {"embed_batch_size": 16, "embed_concurrency": 1},
           "serve": {"host": "127.0.0.1", "port": port, "request_timeout_s": 20, "ingress": {"num_cpus": 0.5}},
           "recommend": {"event_store": f"sqlite:///{db}", "max_batch": 5, "diversity": 0.0,
                         "links": str(LUMA_CATALOG.parent / "links.jsonl")},
           "storage": {"root": str(tmp / "artifacts")}}
    cfg_path = tmp / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    cfg = load_config(cfg_path)
    run_preprocess(cfg)
    publish_model(ArtifactStore.from_config(cfg.storage),
                  build_model(ModelConfig(kind="tiny", image_size=64, embed_dim=32), pretrained=False))
    build_index(cfg)
    base = deploy_app(str(cfg_path), port, name="rec")
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            yield client, rows, db
    finally:
        serve.shutdown()  # the next module's serve.start binds its own port


@pytest.mark.slow
def test_http_events_recommendations_complements_and_erasure(rec_app):
    client, rows, db = rec_app
    ids = [r["id"] for r in rows]
    products = {r["id"]: r["product_id"] for r in rows}
    viewed, bought = ids[0], ids[-1]
    r = client.post("/v1/events", json={"user_id": "shopper@example.com", "events": [
        {"type": "view", "item_id": viewed}, {"type": "purchase", "item_id": bought}]})
    assert r.status_code == 200 and r.json() == {"accepted": 2}

    for bad, status, code in [({"type": "like", "item_id": viewed}, 422, "unknown_event_type"),
                              ({"type": "view", "item_id": "NOPE-1"}, 422, "unknown_item"),
                              ({"type": "view", "item_id": viewed, "ts": time.time() + 3600}, 422, "future_timestamp")]:
        r = client.post("/v1/events", json={"user_id": "shopper@example.com",
                                            "events": [{"type": "click", "item_id": viewed}, bad]})
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    r = client.post("/v1/events", json={"user_id": "x", "events": [{"type": "view", "item_id": viewed}] * 6})
    assert (r.status_code, r.json()["error"]["code"]) == (413, "batch_too_large")

    r = client.post("/v1/recommendations", json={"user_id": "shopper@example.com", "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["source"] == "user_vector" and body["history_used"] == 2 and len(body["results"]) >= 1
    got = {h["product_id"] for h in body["results"]}
    assert products[bought] not in got and products[viewed] not in got
    assert all(h["explanation"]["because"] and h["explanation"]["text"].startswith("because you") for h in body["results"])
    assert {b["id"] for h in body["results"] for b in h["explanation"]["because"]} <= {viewed, bought}

    r = client.post("/v1/recommendations", json={"history": [{"item_id": "NOPE"}], "k": 3, "context_product_id": viewed})
    assert r.status_code == 200 and r.json()["source"] == "popular"
    r = client.get(f"/v1/products/{products[viewed]}/complements", params={"k": 3})
    assert r.status_code == 200 and r.json()["source"] in ("catalog-rules", "nearest-other-category")
    assert products[viewed] not in {h["product_id"] for h in r.json()["results"]}
    assert client.get("/v1/products/NOPE/complements").status_code == 404

    r = client.delete("/v1/users/shopper@example.com")
    assert r.status_code == 200 and r.json() == {"deleted": 2}  # the refused batches wrote nothing
    blob = b"".join(p.read_bytes() for p in db.parent.glob("events.sqlite*") if not p.name.endswith(".key"))
    assert b"shopper@example.com" not in blob
    assert client.delete("/v1/users/shopper@example.com").json() == {"deleted": 0}


def test_co_purchase_blend_is_the_reciprocal_rank_fusion_of_both_lists():
    rng = np.random.default_rng(3)
    vecs = rng.normal(size=(8, 4))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    s = _space(vecs.tolist(), [f"P{r}" for r in range(8)], ["x"] * 8)
    hist = [HistoryEvent("i0", "purchase")]
    co = {"i6": 3, "i2": 3, "i7": 1, "i0": 9}  # i0 is the history itself: never recommended
    cfg = _cfg(ranker="user_vector")
    # reference, the naive way: the user vector is i0's vector; rank 1.. in each list; 1 / (60 + rank) summed
    scores = vecs[1:] @ vecs[0]
    by_vector = [r + 1 for r in sorted(range(7), key=lambda r: (-scores[r], r))]
    by_co = [2, 6, 7]  # count desc, then id
    fused = {}
    for ranking in (by_vector, by_co):
        for rank, row in enumerate(ranking, start=1):
            fused[row] = fused.get(row, 0.0) + 1 / (60 + rank)
    want = sorted(fused, key=lambda r: (-fused[r], (by_vector + by_co).index(r)))[:5]
    got, source = Recommender(s, cfg).recommend(hist, k=5, co_purchase=co)
    assert [r.row for r in got] == want and source == "user_vector+co_purchase"
    assert all(r.source == "user_vector" for r in got)  # every co-purchased row is in the vector's list too here
    # blend off, or nobody bought with the history: the ranker's list alone
    alone, src = Recommender(s, cfg.model_copy(update={"co_purchase_blend": False})).recommend(hist, k=5, co_purchase=co)
    assert [r.row for r in alone] == by_vector[:5] and src == "user_vector"
    assert [r.row for r in Recommender(s, cfg).recommend(hist, k=5, co_purchase={})[0]] == by_vector[:5]
    # a co-purchased product outside the ranker's pool (50 products) comes in, marked as such
    many = rng.normal(size=(60, 4))
    many /= np.linalg.norm(many, axis=1, keepdims=True)
    big = _space(many.tolist(), [f"P{r}" for r in range(60)], ["x"] * 60)
    order = [r + 1 for r in np.argsort(-(many[1:] @ many[0]), kind="stable")]
    far = order[-1]  # rank 59 by the vector: not in the top-50 pool
    out, _ = Recommender(big, cfg).recommend(hist, k=2, co_purchase={f"i{far}": 5})
    # fused: vector rank 1 -> 1/61, `far` co-purchase rank 1 -> 1/61 (tie: first appearance), vector rank 2 -> 1/62
    assert [(r.row, r.source) for r in out] == [(order[0], "user_vector"), (far, "co_purchase")]
