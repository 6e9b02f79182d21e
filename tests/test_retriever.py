"""Retriever search semantics on synthetic catalogs, checked against brute force computed here:
exact metadata filters (with and without variant collapsing, Flat / sharded Flat / HNSW with a
FAISS IDSelector), hybrid reciprocal-rank fusion against hand-computed scores, and `similar`."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from mmray.index.ann import build_ann
from mmray.index.filters import SearchFilters
from mmray.index.lexical import LexicalIndex
from mmray.index.retriever import Retriever

# --------------------------------------------------------------------------- helpers


def make_retriever(rows: list[dict], vectors: np.ndarray, factory: str = "Flat", num_shards: int = 1,
                   texts: list[str] | None = None, rrf_k: int = 60) -> Retriever:
    """A Retriever over in-memory data; `meta` is built the way `Retriever.load` builds it from
    metadata.parquet."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    table = {col: [r.get(col) for r in rows]
             for col in ("id", "product_id", "title", "category", "gender", "color", "price", "available", "image")}
    meta = {k: np.array(v, dtype=object) for k, v in table.items()}
    meta["price"] = np.array([np.nan if p is None else p for p in table["price"]], dtype=np.float64)
    meta["available"] = np.array(table["available"], dtype=bool)
    for col in ("category", "gender", "color"):
        meta[f"{col}_lc"] = np.array([(v or "").lower() for v in table[col]], dtype=object)
    ann = build_ann(vectors, factory, num_shards)
    lexical = LexicalIndex.build(texts or [r["title"] for r in rows])
    return Retriever("<memory>", {"version": "test"}, ann, vectors, meta, lexical, rrf_k)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def matches(row: dict, f: dict) -> bool:
    """The filter semantics, written independently of SearchFilters.mask."""
    if f.get("category"):
        prefix = f["category"].strip("/").lower()
        cat = (row["category"] or "").lower()
        if not (cat == prefix or cat.startswith(prefix + "/")):
            return False
    for key in ("gender", "color"):
        if f.get(key) and (row[key] or "").lower() != f[key].lower():
            return False
    if f.get("min_price") is not None and (row["price"] is None or row["price"] < f["min_price"]):
        return False
    if f.get("max_price") is not None and (row["price"] is None or row["price"] > f["max_price"]):
        return False
    return not (f.get("available_only") and not row["available"])


def brute_force(rows, vectors, query, f, k, collapse, exclude=()):
    """(rows, scores) of the exact top-k items, or of each top-k product's best item."""
    ok = [i for i, r in enumerate(rows) if matches(r, f) and i not in exclude]
    scores = vectors[ok] @ query
    order = [ok[j] for j in np.argsort(-scores, kind="stable")]
    if collapse:
        seen, best = set(), []
        for i in order:
            if rows[i]["product_id"] not in seen:
                seen.add(rows[i]["product_id"])
                best.append(i)
        order = best
    top = order[:k]
    return top, [float(vectors[i] @ query) for i in top]


def assert_top_k(hits, expected, vectors, query):
    """`hits` are the brute-force top-k `expected` (rows, scores), position by position; rows whose
    scores tie to float precision may trade places (FAISS and numpy round differently)."""
    exp_rows, exp_scores = expected
    rows = [h.row for h in hits]
    assert len(rows) == len(exp_rows) and len(set(rows)) == len(rows)
    true = [float(vectors[r] @ query) for r in rows]
    assert true == pytest.approx(exp_scores, abs=1e-5), (rows, exp_rows)
    assert [h.score for h in hits] == pytest.approx(true, abs=1e-5)


# --------------------------------------------------------------------------- a synthetic catalog

CATEGORIES = ["Women/Tops/Jackets", "Women/Tops/Tees", "Women/Tops", "Women/Topsy", "Women/Bottoms/Pants",
              "Men/Tops/Jackets", "Men/Tops/Hoodies & Sweatshirts", "Men/Bottoms/Shorts", "Gear/Bags"]
GENDERS = ["Women", "Men", "Unisex", None]
COLORS = ["Black", "Blue", "Red", "Gray", "Green", "White"]
DIM = 32


def synthetic_catalog(n_products: int = 600, seed: int = 0) -> tuple[list[dict], np.ndarray]:
    """Products with 1-5 colour variants near a product centre, plus rare colours: `Teal` on the
    7 variants of 2 products, `Mauve` on 3 items of 3 products."""
    rng = np.random.default_rng(seed)
    rows, vecs = [], []

    def add(pid, category, gender, color, price, centre, available=True):
        rows.append({"id": f"{pid}-{len(rows)}", "product_id": pid, "title": f"{category} item {pid}",
                     "category": category, "gender": gender, "color": color, "price": price,
                     "available": available, "image": f"images/{len(rows)}.jpg"})
        vecs.append(unit(centre + 0.25 * rng.standard_normal(DIM) / np.sqrt(DIM)))

    for p in range(n_products):
        centre = unit(rng.standard_normal(DIM))
        category, gender = CATEGORIES[rng.integers(len(CATEGORIES))], GENDERS[rng.integers(len(GENDERS))]
        base = float(rng.uniform(10, 200))
        for color in rng.choice(COLORS, size=rng.integers(1, 6), replace=False):
            price = None if rng.random() < 0.05 else round(base + float(rng.uniform(-3, 3)), 2)
            add(f"P{p:04d}", category, gender, str(color), price, centre, available=bool(rng.random() < 0.9))
    for pid, n in (("TEAL1", 4), ("TEAL2", 3)):
        centre = unit(rng.standard_normal(DIM))
        for _ in range(n):
            add(pid, "Women/Tops/Jackets", "Women", "Teal", 80.0, centre)
    for i in range(3):
        add(f"MAUVE{i}", "Men/Tops/Jackets", "Men", "Mauve", 30.0 + i, unit(rng.standard_normal(DIM)))
    return rows, np.stack(vecs)


FILTERS = [
    {},
    {"category": "Women/Tops"},          # also matches the exact category `Women/Tops`, not `Women/Topsy`
    {"category": "/women/TOPS/"},        # case and slashes do not matter
    {"category": "Men"},
    {"category": "Women/Top"},           # whole segments only: matches nothing
    {"gender": "unisex"},
    {"color": "BLUE"},
    {"min_price": 50, "max_price": 60},
    {"max_price": 15},
    {"category": "Women", "color": "Red", "max_price": 100},
    {"category": "Gear/Bags", "gender": "Men", "color": "Green"},
    {"category": "Men/Tops/Jackets", "available_only": True},
    {"color": "Teal"},                   # 7 items, 2 products
    {"color": "Mauve"},                  # 3 items, 3 products
    {"color": "Mauve", "min_price": 31}, # 2 items
]


@pytest.fixture(scope="module")
def catalog():
    rows, vectors = synthetic_catalog()
    rng = np.random.default_rng(1)
    # random directions, and queries near existing items (where the unfiltered neighbours are dense)
    queries = np.concatenate([unit(rng.standard_normal((6, DIM))),
                              unit(vectors[rng.choice(len(vectors), 6)] + 0.1 * rng.standard_normal((6, DIM)))])
    return rows, vectors, queries


@pytest.fixture(scope="module")
def flat(catalog):
    rows, vectors, _ = catalog
    return make_retriever(rows, vectors, "Flat")


@pytest.fixture(scope="module")
def sharded(catalog):
    rows, vectors, _ = catalog
    return make_retriever(rows, vectors, "Flat", num_shards=3)


@pytest.fixture(scope="module")
def hnsw(catalog):
    rows, vectors, _ = catalog
    return make_retriever(rows, vectors, "HNSW32")


def test_synthetic_catalog_covers_the_filter_cases(catalog):
    rows, _, _ = catalog
    counts = {i: sum(matches(r, f) for r in rows) for i, f in enumerate(FILTERS)}
    assert counts[0] == len(rows)
    assert counts[FILTERS.index({"category": "Women/Top"})] == 0
    assert counts[FILTERS.index({"color": "Mauve"})] == 3
    assert counts[FILTERS.index({"color": "Mauve", "min_price": 31})] == 2
    assert counts[FILTERS.index({"color": "Teal"})] == 7
    assert any(r["category"] == "Women/Tops" for r in rows) and any(r["category"] == "Women/Topsy" for r in rows)
    assert 3 <= counts[FILTERS.index({"category": "Gear/Bags", "gender": "Men", "color": "Green"})] < 10


def test_filter_mask_matches_reference(catalog, flat):
    rows, _, _ = catalog
    for f in FILTERS:
        expected = np.array([matches(r, f) for r in rows])
        assert np.array_equal(SearchFilters(**f).mask(flat.meta), expected), f


@pytest.mark.parametrize("which", ["flat", "sharded"])
@pytest.mark.parametrize("collapse", [False, True])
def test_filtered_search_equals_brute_force(catalog, request, which, collapse):
    rows, vectors, queries = catalog
    retriever = request.getfixturevalue(which)
    n_products = {f_i: len({r["product_id"] for r in rows if matches(r, f)}) for f_i, f in enumerate(FILTERS)}
    n_items = {f_i: sum(matches(r, f) for r in rows) for f_i, f in enumerate(FILTERS)}
    for f_i, f in enumerate(FILTERS):
        for k in (1, 5, 10):
            for q in queries:
                hits = retriever.search(q, k=k, filters=SearchFilters(**f), collapse=collapse)
                assert_top_k(hits, brute_force(rows, vectors, q, f, k, collapse), vectors, q)
                available = n_products[f_i] if collapse else n_items[f_i]
                assert len(hits) == min(k, available), (f, k)  # k whenever k match
                for h in hits:
                    assert matches(rows[h.row], f)
                    assert h.id == rows[h.row]["id"] and h.product_id == rows[h.row]["product_id"]
                if collapse:
                    assert len({h.product_id for h in hits}) == len(hits)


def test_collapse_returns_one_result_per_product(catalog, flat):
    rows, vectors, _ = catalog
    teal1 = [i for i, r in enumerate(rows) if r["product_id"] == "TEAL1"]
    query = unit(vectors[teal1].mean(axis=0))  # every TEAL1 variant is closer than anything else
    hits = flat.search(query, k=5, filters=SearchFilters(color="teal"), collapse=True)
    assert [h.product_id for h in hits] == ["TEAL1", "TEAL2"]  # 7 items, 2 products: 2 results
    assert hits[0].variants == 4 and hits[1].variants == 3
    items = flat.search(query, k=5, filters=SearchFilters(color="teal"), collapse=False)
    assert [h.product_id for h in items][:4] == ["TEAL1"] * 4 and len(items) == 5
    # unfiltered: the variants of TEAL1 fill the item ranking, but collapse gives k distinct products
    unfiltered = flat.search(query, k=10, collapse=True)
    assert unfiltered[0].product_id == "TEAL1" and len({h.product_id for h in unfiltered}) == 10
    per_product = collections.Counter(r["product_id"] for r in rows)
    assert all(h.variants == per_product[h.product_id] for h in unfiltered)  # every item, ranked or not


@pytest.mark.parametrize("factory,shards", [("Flat", 1), ("Flat", 3), ("HNSW32", 1)])
def test_collapse_fetches_more_when_variants_crowd_the_candidates(factory, shards):
    """12 near-identical variants per product: the first 4k candidate items hold fewer than k
    products, so the search must widen until it has k products."""
    rng = np.random.default_rng(3)
    rows, vecs = [], []
    for p in range(60):
        centre = unit(rng.standard_normal(DIM))
        for v in range(12):
            rows.append({"id": f"c{p}-{v}", "product_id": f"c{p}", "title": "tee", "category": "Men/Tops",
                         "gender": "Men", "color": COLORS[v % len(COLORS)], "price": float(v),
                         "available": True, "image": ""})
            vecs.append(unit(centre + 0.05 * rng.standard_normal(DIM) / np.sqrt(DIM)))
    vectors = np.stack(vecs)
    r = make_retriever(rows, vectors, factory, shards)
    for q in unit(rng.standard_normal((5, DIM))):
        for f in ({}, {"color": "Black"}, {"max_price": 5}):
            hits = r.search(q, k=10, filters=SearchFilters(**f), collapse=True)
            exp_rows, _ = brute_force(rows, vectors, q, f, 10, True)
            assert len({h.product_id for h in hits}) == len(hits) == 10, f
            if factory == "Flat":
                assert_top_k(hits, brute_force(rows, vectors, q, f, 10, True), vectors, q)
            else:  # approximate: most of the exact top-10 products
                assert len({h.product_id for h in hits} & {rows[i]["product_id"] for i in exp_rows}) >= 8


def test_nothing_matches_and_bad_filters(flat):
    assert flat.search(np.ones(DIM, np.float32), k=10, filters=SearchFilters(color="Chartreuse")) == []
    assert flat.search(np.ones(DIM, np.float32), k=0) == []
    with pytest.raises(ValueError, match="min_price must not exceed max_price"):
        SearchFilters(min_price=10, max_price=5)
    with pytest.raises(ValueError):
        SearchFilters(colour="Blue")  # unknown field


def test_hnsw_filtered_search_uses_the_id_selector_and_agrees_with_brute_force(catalog, hnsw):
    rows, vectors, queries = catalog
    calls = []
    original = hnsw.planner.ann_search

    def spy(*args):
        scores, ids = original(*args)
        calls.append(ids.shape[1])
        return scores, ids

    hnsw.planner.ann_search = spy
    found = expected = exact = total = 0
    for f in FILTERS:
        n_items = sum(matches(r, f) for r in rows)
        n_products = len({r["product_id"] for r in rows if matches(r, f)})
        for collapse in (False, True):
            for q in queries:
                hits = hnsw.search(q, k=10, filters=SearchFilters(**f), collapse=collapse)
                exp_rows, _ = brute_force(rows, vectors, q, f, 10, collapse)
                assert len(hits) == min(10, n_products if collapse else n_items), f
                assert all(matches(rows[h.row], f) for h in hits), f
                scores = [h.score for h in hits]
                assert scores == sorted(scores, reverse=True)
                assert scores == pytest.approx([float(vectors[h.row] @ q) for h in hits], abs=1e-5)
                if collapse:
                    assert len({h.product_id for h in hits}) == len(hits)
                found += len({h.row for h in hits} & set(exp_rows))
                expected += len(exp_rows)
                exact += [h.row for h in hits] == exp_rows
                total += 1
    assert any(n > 0 for n in calls), "the FAISS IDSelector path never ran"
    assert found / expected >= 0.95
    assert exact / total >= 0.9


# --------------------------------------------------------------------------- hybrid fusion


def fusion_corpus():
    """6 items: the vector ranking for `e0` is 0,1,2,3,4,5; BM25 for `red jacket` ranks 3,5,1."""
    texts = ["blue denim shorts", "jacket in blue denim", "black leather boots", "red jacket",
             "green wool scarf", "red jacket for winter hiking trips"]
    cos = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    vectors = np.zeros((6, 8), np.float32)
    for i, c in enumerate(cos):
        vectors[i, 0], vectors[i, i + 1] = c, np.sqrt(1 - c * c)
    rows = [{"id": f"i{i}", "product_id": f"p{i}", "title": t, "category": "Women/Tops" if i != 3 else "Men/Tops",
             "gender": None, "color": None, "price": 10.0 + i, "available": True, "image": ""}
            for i, t in enumerate(texts)]
    query = np.zeros(8, np.float32)
    query[0] = 1.0
    return rows, vectors, texts, query


def test_hybrid_fusion_matches_hand_computed_rrf():
    rows, vectors, texts, query = fusion_corpus()
    r = make_retriever(rows, vectors, "Flat", texts=texts)
    lex = r.lexical.scores("red jacket")
    assert list(np.argsort(-lex)[:3]) == [3, 5, 1] and np.all(lex[[0, 2, 4]] == 0)  # the corpus is as designed

    hits = r.search(query, k=6, query_text="red jacket", hybrid=True, collapse=False)
    # vector ranks: row0..row5 -> 1..6; lexical ranks: row3 -> 1, row5 -> 2, row1 -> 3
    expected = [(3, 1 / 64 + 1 / 61), (1, 1 / 62 + 1 / 63), (5, 1 / 66 + 1 / 62),
                (0, 1 / 61), (2, 1 / 63), (4, 1 / 65)]
    assert [h.row for h in hits] == [row for row, _ in expected]
    assert [h.score for h in hits] == pytest.approx([s for _, s in expected], rel=1e-9)
    assert [h.retrievers for h in hits] == [["lexical", "vector"], ["lexical", "vector"], ["lexical", "vector"],
                                            ["vector"], ["vector"], ["vector"]]

    # ranks are taken within the filtered rows: without row 3, row 5 is lexical rank 1 (vector rank 5),
    # row 1 lexical rank 2, row 4 vector rank 4
    hits = r.search(query, k=6, query_text="red jacket", hybrid=True, collapse=False,
                    filters=SearchFilters(category="Women"))
    expected = [(1, 1 / 62 + 1 / 62), (5, 1 / 65 + 1 / 61), (0, 1 / 61), (2, 1 / 63), (4, 1 / 64)]
    assert [h.row for h in hits] == [row for row, _ in expected]
    assert [h.score for h in hits] == pytest.approx([s for _, s in expected], rel=1e-9)

    # the rrf constant is honoured
    r10 = make_retriever(rows, vectors, "Flat", texts=texts, rrf_k=10)
    hits = r10.search(query, k=2, query_text="red jacket", hybrid=False, collapse=False)
    assert [h.row for h in hits] == [0, 1]  # hybrid off: plain vector scores
    assert hits[0].score == pytest.approx(0.9)
    hits = r10.search(query, k=6, query_text="red jacket", hybrid=True, collapse=False)
    assert hits[0].row == 3 and hits[0].score == pytest.approx(1 / 14 + 1 / 11)


def test_hybrid_with_no_known_query_term_is_the_vector_ranking():
    rows, vectors, texts, query = fusion_corpus()
    r = make_retriever(rows, vectors, "Flat", texts=texts)
    hits = r.search(query, k=6, query_text="zzzz qqqq", hybrid=True, collapse=False)
    assert [h.row for h in hits] == [0, 1, 2, 3, 4, 5]
    assert [h.score for h in hits] == pytest.approx([1 / (60 + i) for i in range(1, 7)])
    assert all(h.retrievers == ["vector"] for h in hits)


# --------------------------------------------------------------------------- similar


def test_similar_excludes_the_query_product(catalog, flat):
    rows, vectors, _ = catalog
    multi = [pid for pid in dict.fromkeys(r["product_id"] for r in rows)
             if sum(r["product_id"] == pid for r in rows) >= 3][:5]
    for pid in multi:
        own = [i for i, r in enumerate(rows) if r["product_id"] == pid]
        query = unit(vectors[own].mean(axis=0))
        for collapse in (True, False):
            hits = flat.similar(pid, k=10, collapse=collapse)
            assert len(hits) == 10 and all(h.product_id != pid for h in hits)
            assert_top_k(hits, brute_force(rows, vectors, query, {}, 10, collapse, exclude=set(own)), vectors, query)
        # by item id: that item's vector is the query, and every variant of its product is excluded
        item = own[1]
        hits = flat.similar(rows[item]["id"], k=10, collapse=False)
        assert all(h.product_id != pid for h in hits)
        assert_top_k(hits, brute_force(rows, vectors, vectors[item], {}, 10, False, set(own)), vectors, vectors[item])
        # with a filter
        f = {"category": "Men"}
        hits = flat.similar(pid, k=5, filters=SearchFilters(**f))
        assert_top_k(hits, brute_force(rows, vectors, query, f, 5, True, set(own)), vectors, query)
    # a product whose nearest neighbours are its own variants still gets k other products
    hits = flat.similar("TEAL1", k=3, filters=SearchFilters(color="Teal"))
    assert [h.product_id for h in hits] == ["TEAL2"]
    with pytest.raises(KeyError):
        flat.similar("no-such-item")
