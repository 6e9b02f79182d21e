"""The filter planner (mmray/index/planner.py) against brute force computed here: the rows each
filter matches, filtered top-10 at about 0.5 %, 2 %, 20 % and 60 % selectivity on Flat (exact),
HNSW and IVF (recall@10 >= 0.95, not below the unfiltered recall), sharded indexes (same answers,
no copy of the vector matrix), the plan chosen at the extremes, and the batch form."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from mmray.config import IndexConfig
from mmray.index.ann import build_ann
from mmray.index.filters import SearchFilters
from mmray.index.planner import _CHUNK, FilterPlanner, decided, effort_boost, exact_among
from mmray.index.retriever import Retriever

N, DIM, K = 20_003, 32, 10  # N not a multiple of 8 (nor of 3): shard bitmaps start mid-byte

# about 0.5 %, 2 %, 20 %, 60 % of the rows, each with a different kind of condition
SELECTIVE = {"0.5%": {"category": "Sale/Rare"}, "2%": {"color": "teal"},
             "20%": {"category": "women"}, "60%": {"max_price": 60.0}}
MORE = [{"category": "Women/Tops"}, {"category": "women/tops/"}, {"category": "Women/Top"},
        {"category": "Women/Topsy"}, {"gender": "MEN", "color": "Teal"}, {"min_price": 20, "max_price": 21},
        {"available_only": True}, {"category": "Women", "available_only": True, "max_price": 80},
        {"color": "Chartreuse"}, {"gender": "men", "min_price": 99.5}, {"category": "Sale/Rare", "max_price": 30}]


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_data(seed=0):
    """Clustered vectors of uneven size and spread; categories follow the clusters (as real ones
    do), so a filter's rows are not spread evenly around a query."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((60, DIM)))
    sizes = rng.dirichlet(np.full(60, 0.7))
    label = rng.choice(60, N, p=sizes)
    spread = rng.uniform(0.3, 1.0, 60)[label, None]
    vectors = unit(centres[label] + spread * rng.standard_normal((N, DIM)) / np.sqrt(DIM))
    u = rng.random(N)
    women = np.isin(label, np.arange(12)) & (rng.random(N) < 0.75) | (rng.random(N) < 0.05)
    women_leaf = np.array(["Women/Tops", "Women/Tops/Jackets", "Women/Shoes", "Women"], dtype=object)
    category = np.where(women, women_leaf[rng.integers(0, 4, N)], np.array("Men/Tops", dtype=object))
    category[(~women) & (rng.random(N) < 0.03)] = "Women/Topsy"
    rare = rng.choice(np.flatnonzero(~women), int(0.005 * N), replace=False)
    category[rare] = "Sale/Rare"
    rows = {
        "id": np.array([f"i{i}" for i in range(N)], dtype=object),
        "product_id": np.array([f"p{i // 2}" for i in range(N)], dtype=object),
        "title": np.full(N, "item", dtype=object), "image": np.full(N, "", dtype=object),
        "category": category,
        "gender": np.where(women, "Women", np.where(u < 0.5, "Men", None)).astype(object),
        "color": np.where(rng.random(N) < 0.02, "Teal", "Black").astype(object),
        "price": np.where(rng.random(N) < 0.02, np.nan, rng.uniform(0, 100, N)),
        "available": rng.random(N) < 0.9,
    }
    queries = unit(vectors[rng.choice(N, 30, replace=False)] + 0.3 * rng.standard_normal((30, DIM)) / np.sqrt(DIM))
    return rows, vectors, queries


def meta_of(rows):
    meta = {k: np.asarray(v, dtype=object) for k, v in rows.items()}
    meta["price"] = np.asarray(rows["price"], dtype=np.float64)
    meta["available"] = np.asarray(rows["available"], dtype=bool)
    for col in ("category", "gender", "color"):
        meta[f"{col}_lc"] = np.array([(v or "").lower() for v in rows[col]], dtype=object)
    return meta


def reference_rows(rows, f: dict) -> np.ndarray:
    """The matching rows by a plain loop over every row (the filter semantics, written here)."""
    out = []
    for i in range(N):
        if f.get("category"):
            p, c = f["category"].strip("/").lower(), (rows["category"][i] or "").lower()
            if not (c == p or c.startswith(p + "/")):
                continue
        if any(f.get(col) and (rows[col][i] or "").lower() != f[col].lower() for col in ("gender", "color")):
            continue
        price = rows["price"][i]
        if f.get("min_price") is not None and not price >= f["min_price"]:
            continue
        if f.get("max_price") is not None and not price <= f["max_price"]:
            continue
        if f.get("available_only") and not rows["available"][i]:
            continue
        out.append(i)
    return np.array(out, dtype=np.int64)


def brute_top(vectors, queries, allowed, k=K):
    scores = queries @ vectors[allowed].T
    return allowed[np.argsort(-scores, axis=1, kind="stable")[:, :k]]


@pytest.fixture(scope="module")
def data():
    rows, vectors, queries = make_data()
    return rows, vectors, queries, {label: reference_rows(rows, f) for label, f in SELECTIVE.items()}


def retriever(data, factory, num_shards=1, **cfg) -> Retriever:
    rows, vectors, _, _ = data
    ann = build_ann(vectors, factory, num_shards, nprobe=8, ef_search=32)
    return Retriever("<memory>", {"version": "t"}, ann, vectors, meta_of(rows), None, 60, IndexConfig(**cfg))


@pytest.fixture(scope="module")
def indexes(data):
    return {"Flat": retriever(data, "Flat"), "HNSW32": retriever(data, "HNSW32"),
            "IVF64,Flat": retriever(data, "IVF64,Flat"), "HNSW32 x3": retriever(data, "HNSW32", num_shards=3),
            "Flat x3": retriever(data, "Flat", num_shards=3)}


def test_the_filters_have_the_intended_selectivity(data):
    *_, ref = data
    shares = {label: len(r) / N for label, r in ref.items()}
    assert 0.004 <= shares["0.5%"] <= 0.006 and 0.015 <= shares["2%"] <= 0.025
    assert 0.15 <= shares["20%"] <= 0.3 and 0.55 <= shares["60%"] <= 0.62


@pytest.mark.parametrize("f", list(SELECTIVE.values()) + MORE)
def test_planner_rows_equal_a_loop_over_every_row(data, indexes, f):
    rows = data[0]
    plan = indexes["HNSW32"].planner.plan(SearchFilters(**f))
    expected = reference_rows(rows, f)
    assert np.array_equal(plan.rows, expected), f
    assert plan.count == len(expected) and plan.share == pytest.approx(len(expected) / N)
    assert np.array_equal(np.flatnonzero(plan.mask()), expected)
    probe = np.random.default_rng(0).integers(0, N, 500)
    assert np.array_equal(plan.contains(probe), np.isin(probe, expected))
    assert np.array_equal(SearchFilters(**f).mask(indexes["HNSW32"].meta), plan.mask())  # the old path agrees


def _recall(retr, queries, f, allowed):
    found = [[h.row for h in retr.search(q, k=K, filters=f, collapse=False)] for q in queries]
    exact = brute_top(retr.vectors, queries, allowed)
    assert all(len(x) == min(K, len(allowed)) for x in found)
    assert all(np.isin(x, allowed).all() for x in found)  # every hit passes the filter
    return sum(len(set(a) & set(e.tolist())) for a, e in zip(found, exact)) / exact.size, found, exact


@pytest.mark.parametrize("name", ["Flat", "Flat x3", "HNSW32", "IVF64,Flat", "HNSW32 x3"])
def test_filtered_top_10_against_brute_force_at_each_selectivity(data, indexes, name):
    _, vectors, queries, ref = data
    retr = indexes[name]
    unfiltered, _, _ = _recall(retr, queries, None, np.arange(N))
    for label, f in SELECTIVE.items():
        rec, found, exact = _recall(retr, queries, SearchFilters(**f), ref[label])
        if name.startswith("Flat"):  # exact: the same rows in the same order (scores tie only by accident)
            for got, want, q in zip(found, exact, queries):
                assert vectors[got] @ q == pytest.approx(vectors[want] @ q, abs=1e-5), label
        else:
            assert rec >= 0.95, (name, label, rec)
            assert rec >= unfiltered - 0.02, (name, label, rec, unfiltered)  # no worse than no filter


def test_refined_ivf_pq_takes_the_selector_in_its_base_search(data):
    """The spec `auto` picks at scale: the selector and raised nprobe go to the IVF inside Refine."""
    _, _, queries, ref = data
    retr = retriever(data, "IVF64,PQ8,Refine(SQ8)")
    unfiltered, _, _ = _recall(retr, queries, None, np.arange(N))
    for label in ("20%", "60%"):
        rec, _, _ = _recall(retr, queries, SearchFilters(**SELECTIVE[label]), ref[label])
        assert rec >= unfiltered - 0.02, (label, rec, unfiltered)


def test_the_plan_at_the_extremes(data, indexes):
    *_, ref = data
    hnsw = indexes["HNSW32"].planner
    assert hnsw.plan(SearchFilters(**SELECTIVE["0.5%"])).strategy == "exact"
    assert hnsw.plan(SearchFilters(**SELECTIVE["2%"])).strategy == "exact"
    assert hnsw.plan(SearchFilters(**SELECTIVE["60%"])).strategy == "post"  # HNSW: unfiltered candidates first
    assert hnsw.plan(SearchFilters(**SELECTIVE["20%"])).strategy == "post"
    ivf = indexes["IVF64,Flat"].planner
    assert ivf.plan(SearchFilters(**SELECTIVE["20%"])).strategy == "ann"  # IVF: the selector search
    assert ivf.plan(SearchFilters(**SELECTIVE["60%"])).strategy == "ann"
    assert hnsw.plan(None).everything and hnsw.plan(SearchFilters()).everything
    assert indexes["Flat"].planner.plan(SearchFilters(**SELECTIVE["60%"])).strategy == "exact"  # Flat is exact anyway
    rows, vectors, _, _ = data
    ann = indexes["HNSW32"].ann
    always_ann = FilterPlanner(meta_of(rows), ann, vectors, exact_share=0.0)
    always_exact = FilterPlanner(meta_of(rows), ann, vectors, exact_share=1.0)
    one_row = {"category": "Sale/Rare", "max_price": float(rows["price"][ref["0.5%"][0]]),
               "min_price": float(rows["price"][ref["0.5%"][0]])}
    assert always_ann.plan(SearchFilters(**one_row)).strategy == "post"
    no_post = FilterPlanner(meta_of(rows), ann, vectors, post_margin=0.0)
    assert no_post.plan(SearchFilters(**SELECTIVE["20%"])).strategy == "ann"
    assert always_exact.plan(SearchFilters(**SELECTIVE["60%"])).strategy == "exact"


def test_the_ann_plan_raises_search_effort_with_one_over_share(data, indexes):
    import faiss

    planner = indexes["HNSW32"].planner
    plan = planner.plan(SearchFilters(**SELECTIVE["20%"]))
    boost = effort_boost(plan.share)
    assert boost == pytest.approx(1 / plan.share) and effort_boost(1.0) == 1.0
    params = planner._params(planner.ann, plan, boost, 0, N)
    assert isinstance(params, faiss.SearchParametersHNSW)
    assert params.efSearch == int(np.ceil(32 * boost))  # the index's efSearch 32, raised
    ivf = indexes["IVF64,Flat"].planner
    params = ivf._params(ivf.ann, plan, boost, 0, N)
    assert params.nprobe == min(64, int(np.ceil(8 * boost)))


def test_sharded_filtered_search_makes_no_copy_of_the_vectors(data, indexes):
    _, vectors, queries, ref = data
    for name in ("HNSW32 x3", "Flat x3"):
        retr = indexes[name]
        for label, f in SELECTIVE.items():
            flt = SearchFilters(**f)
            retr.search(queries[0], k=K, filters=flt, collapse=False)  # plan (rows, bitmap) built and cached
            tracemalloc.start()
            for q in queries[:5]:
                retr.search(q, k=K, filters=flt, collapse=False)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert peak < vectors.nbytes / 20, (name, label, peak, vectors.nbytes)
    # and a plan built during the search (cache off) allocates its rows and bitmap, not vectors
    cold = retriever(data, "HNSW32", num_shards=3, filter_cache=0)
    tracemalloc.start()
    cold.search(queries[0], k=K, filters=SearchFilters(**SELECTIVE["60%"]), collapse=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < vectors.nbytes / 3, peak  # 60 % of the rows as int64 plus N bools: ~0.4 of a 128-byte row


def test_batch_search_equals_single_searches(data):
    """Batches take the selector search for broad filters; a single query takes whichever way its
    plan timed faster. With the timing off (`filter_trial_queries: 0`) both take the selector
    search, so they must agree row for row; with a plan that chose `exact`, a single query must
    give the brute-force top-k (the other way, checked against the reference)."""
    _, vectors, queries, ref = data
    for name, factory, shards in (("HNSW32", "HNSW32", 1), ("IVF64,Flat", "IVF64,Flat", 1), ("Flat x3", "Flat", 3)):
        retr = retriever(data, factory, num_shards=shards, filter_trial_queries=0)
        for f in [None, *SELECTIVE.values()]:
            flt = None if f is None else SearchFilters(**f)
            scores, rows = retr.search_vectors(queries, K, flt)
            for q, s, r in zip(queries, scores, rows):
                hits = retr.search(q, k=K, filters=flt, collapse=False)
                assert [h.row for h in hits] == r.tolist(), (name, f)
                assert [h.score for h in hits] == pytest.approx(s.tolist(), abs=1e-6)
    retr = retriever(data, "IVF64,Flat")  # no `post` plan on IVF: a broad filter goes straight to the chosen way
    for label in ("20%", "60%"):
        flt = SearchFilters(**SELECTIVE[label])
        plan = retr.planner.plan(flt)
        assert plan.strategy == "ann"
        plan.choice = "exact"
        want = brute_top(vectors, queries, ref[label])
        for q, w in zip(queries, want):
            assert [h.row for h in retr.search(q, k=K, filters=flt, collapse=False)] == w.tolist(), label


def test_exact_among_in_blocks_equals_numpy():
    rng = np.random.default_rng(5)
    x = unit(rng.standard_normal((3 * _CHUNK + 17, 8)))
    q = unit(rng.standard_normal((4, 8)))
    rows = np.sort(rng.choice(len(x), 2 * _CHUNK + 5, replace=False)).astype(np.int64)
    for queries in (q, q[:1]):  # blocks of rows for several queries, FAISS in place for one
        s, i = exact_among(x, queries, rows, 7)
        want = brute_top(x, queries, rows, 7)
        assert np.allclose(s, np.take_along_axis(queries @ x.T, want, axis=1), atol=1e-5)
        assert np.allclose(np.take_along_axis(queries @ x.T, i, axis=1), s, atol=1e-5)
    s, i = exact_among(x, q, rows[:3], 10)  # fewer rows than k
    assert s.shape == (4, 3) and set(i[0].tolist()) == set(rows[:3].tolist())


def test_the_post_filter_plan_falls_back_for_queries_whose_neighbourhood_does_not_match(data, indexes):
    """`post` keeps the matching rows of an unfiltered search for k' = margin * k / share; the
    "women" filter (20 %) follows the clusters, so queries in men's clusters find fewer than k
    matching candidates and must go on to the selector search or the exact scan."""
    _, vectors, queries, ref = data
    for name in ("HNSW32", "HNSW32 x3"):
        retr = indexes[name]
        planner = retr.planner
        plan = planner.plan(SearchFilters(**SELECTIVE["20%"]))
        assert plan.strategy == "post"
        scores, rows = planner.post_search(queries, plan, K)
        short = rows[:, -1] < 0
        if name == "HNSW32":  # (3 shards give 3 k' candidates: none falls short here)
            assert short.any() and not short.all(), short  # both paths are exercised
        found = rows[~short]
        assert np.isin(found, ref["20%"]).all()  # every kept candidate matches
        assert np.allclose(np.take_along_axis(queries[~short] @ vectors.T, found, axis=1), scores[~short], atol=1e-5)
        assert (np.diff(scores[~short], axis=1) <= 1e-6).all()  # best first
        exact = brute_top(vectors, queries, ref["20%"])
        for sub in (short, ~short):  # the whole search: recall against brute force on each group
            if not sub.any():
                continue
            got = [[h.row for h in retr.search(q, k=K, filters=SearchFilters(**SELECTIVE["20%"]), collapse=False)]
                   for q in queries[sub]]
            rec = sum(len(set(a) & set(e.tolist())) for a, e in zip(got, exact[sub])) / exact[sub].size
            assert rec >= 0.95, (name, rec, sub.sum())
    # a beam of margin * k above efSearch (32 here) is not worth it: the selector search instead
    planner = indexes["HNSW32"].planner
    plan = planner.plan(SearchFilters(**SELECTIVE["60%"]))
    calls = []
    post, planner.post_search = planner.post_search, lambda *a: calls.append(a) or post(*a)
    try:
        planner.search(queries[:1], plan, 15)  # 2 * 15 < 32
        assert len(calls) == 1
        planner.search(queries[:1], plan, 16)  # 2 * 16 = 32
        assert len(calls) == 1
    finally:
        del planner.post_search


def test_a_broad_plan_keeps_the_way_it_timed_faster(data, monkeypatch):
    """The selector search and the exact scan are each timed on a plan's first single queries;
    the plan then keeps the faster; either way the hits are right (the exact way exactly)."""
    import mmray.index.planner as planner_module

    monkeypatch.setattr(planner_module, "DECISIVE", float("inf"))  # every trial runs (no early decision)
    _, vectors, queries, ref = data
    retr = retriever(data, "IVF64,Flat", filter_trial_queries=2)
    f = SearchFilters(**SELECTIVE["20%"])
    plan = retr.planner.plan(f)
    assert plan.strategy == "ann" and plan.choice is None
    for q in queries[:3]:
        retr.search(q, k=K, filters=f, collapse=False)
    assert plan.choice is None and len(plan.trials["ann"]) == 2 and len(plan.trials["exact"]) == 1
    retr.search(queries[3], k=K, filters=f, collapse=False)
    fastest = {way: min(t) for way, t in plan.trials.items()}
    assert plan.choice == min(fastest, key=fastest.get)
    exact = brute_top(vectors, queries, ref["20%"])
    plan.choice = "exact"
    for q, want in zip(queries, exact):
        got = [h.row for h in retr.search(q, k=K, filters=f, collapse=False)]
        assert vectors[got] @ q == pytest.approx(vectors[want] @ q, abs=1e-5)
    plan.choice = "ann"
    rec, _, _ = _recall(retr, queries, f, ref["20%"])
    assert rec >= 0.95
    untimed = retriever(data, "IVF64,Flat", filter_trial_queries=0)
    untimed.search(queries[0], k=K, filters=f, collapse=False)
    plan = untimed.planner.plan(f)
    assert plan.choice is None and plan.trials == {"ann": [], "exact": []}


def test_a_way_far_slower_on_its_first_trial_is_dropped_at_once():
    assert decided({"ann": [0.001], "exact": []}, 5) is None  # one way timed: undecided
    assert decided({"ann": [0.001], "exact": [0.070]}, 5) == "ann"  # 70x slower: no more exact trials
    assert decided({"ann": [0.050], "exact": [0.002]}, 5) == "exact"
    assert decided({"ann": [0.001, 0.003], "exact": [0.020]}, 5) is None  # under 10x the slowest ann trial
    assert decided({"ann": [0.004, 0.001], "exact": [0.003, 0.002]}, 2) == "ann"  # all trials: the fastest of each


def test_a_run_of_rows_is_scanned_in_place_as_a_slice(data):
    """Rows lo..hi-1 (a catalog stored in category order) take the slice scan: the same top-k as
    the gathered scan and brute force, for one query and a batch, and no copy of the vectors."""
    rows, vectors, queries, _ = data
    ann = build_ann(vectors, "HNSW32", 1, nprobe=8, ef_search=32)
    planner = FilterPlanner(meta_of(rows), ann, vectors)
    lo, hi = 3001, 3001 + 150
    run = np.arange(lo, hi, dtype=np.int64)
    plan = planner.without(planner.plan(None), np.concatenate([np.arange(lo), np.arange(hi, N)]))
    assert plan.strategy == "exact" and plan.run_start == lo and np.array_equal(plan.rows, run)
    assert planner.plan(SearchFilters(**SELECTIVE["2%"])).run_start is None  # scattered rows: the gather
    for qs in (queries[:1], queries):
        s, i = planner.search(qs, plan, K)
        want = brute_top(vectors, qs, run)
        assert np.allclose(np.take_along_axis(qs @ vectors.T, want, axis=1), s, atol=1e-5)
        assert np.isin(i, run).all() and np.allclose(np.take_along_axis(qs @ vectors.T, i, axis=1), s, atol=1e-5)
        s2, _ = exact_among(vectors, qs, run, K)
        assert np.allclose(s, s2, atol=1e-5)
    tracemalloc.start()
    planner.search(queries, plan, K)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < (hi - lo) * vectors.shape[1] * 4 / 2, peak  # less than half the run's own bytes
