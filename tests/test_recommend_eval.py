"""Offline recommender evaluation: metrics against hand-computed values, the leave-last-basket-out split,
the baselines and RRF on toy baskets, the link split and /similar against brute force (no Ray, no model)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mmray.config import RecommendConfig, SasrecConfig
from mmray.recommend.evaluation import (
    Basket,
    BasketStats,
    basket_sequences,
    cooccurrence_ranking,
    hit_rate_at_k,
    leave_last_basket_out,
    ndcg_at_k,
    popularity_ranking,
    read_baskets,
    recall_at_k,
    rrf,
    similar_ranking,
    split_products,
    user_vector_ranking,
)
from mmray.recommend.recommender import ItemSpace, Recommender


def test_metrics_hand_computed():
    ranked = ["a", "b", "c", "d"]
    assert hit_rate_at_k(ranked, {"c"}, 10) == 1.0
    assert hit_rate_at_k(ranked, {"c"}, 2) == 0.0
    assert hit_rate_at_k(ranked, {"z"}, 10) == 0.0
    # hits at ranks 2 and 4 of 2 targets: (1/log2(3) + 1/log2(5)) / (1 + 1/log2(3))
    want = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(ranked, {"b", "d"}, 10) == pytest.approx(want)
    assert ndcg_at_k(ranked, {"a"}, 10) == pytest.approx(1.0)
    # 3 targets, k=2: ideal DCG counts only 2 positions; one hit at rank 1 -> 1 / (1 + 1/log2(3))
    assert ndcg_at_k(ranked, {"a", "x", "y"}, 2) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(ranked, set(), 10) == 0.0
    assert recall_at_k(ranked, {"a", "d", "z"}, 10) == pytest.approx(2 / 3)
    assert recall_at_k(ranked, {"a", "d", "z"}, 3) == pytest.approx(1 / 3)


def _b(inv, cust, ts, *items):
    return Basket(inv, cust, float(ts), tuple(items))


def test_leave_last_basket_out_and_baselines():
    baskets = [_b("1", "u", 1, "a", "b"), _b("2", "v", 2, "a", "c"), _b("3", "u", 3, "a", "c", "d"),
               _b("4", None, 4, "b", "c"), _b("5", "w", 5, "a"), _b("6", "w", 6, "a")]
    cases, train, dropped = leave_last_basket_out(baskets)
    assert dropped == 1  # w's last basket is only a re-buy of a
    assert [c.customer for c in cases] == ["u"]
    assert cases[0].target == {"c", "d"}  # a is in u's history
    assert [b.invoice for b in cases[0].history] == ["1"]
    assert sorted(b.invoice for b in train) == ["1", "2", "4", "5"]  # held-out baskets 3 and 6 never counted
    stats = BasketStats(train)
    assert stats.pop == {"a": 3, "b": 2, "c": 2}
    assert stats.co["a"] == {"b": 1, "c": 1}
    # history {a, b}: c co-occurs with a (basket 2) and b (basket 4) -> 2; then popularity fills (nothing left)
    assert cooccurrence_ranking(stats, ["a", "b"], 10) == ["c"]
    assert popularity_ranking(stats, {"a"}, 10) == ["b", "c"]  # ties by id


def test_sasrec_sequences_come_from_the_training_baskets_only():
    baskets = [_b("1", "u", 1, "a", "b"), _b("2", "v", 2, "a", "c"), _b("3", "u", 3, "a", "c", "d"),
               _b("4", None, 4, "b", "c"), _b("5", "w", 5, "a"), _b("6", "w", 6, "a")]
    _, train, _ = leave_last_basket_out(baskets)
    # u's held-out basket 3 (its targets c, d) is not appended to u's sequence; the anonymous basket stands alone
    assert basket_sequences(train) == [["a", "b"], ["a", "c"], ["a"], ["b", "c"]]


def test_read_baskets_orders_and_filters():
    inv = [{"invoice_no": "9", "customer_id": 2, "invoice_date": "2010-12-02T10:00:00", "is_cancellation": False,
            "items": [{"stock_code": "x"}, {"stock_code": "POST"}, {"stock_code": "x"}]},
           {"invoice_no": "C1", "customer_id": 2, "invoice_date": "2010-12-01T10:00:00", "is_cancellation": True,
            "items": [{"stock_code": "x"}]},
           {"invoice_no": "8", "customer_id": None, "invoice_date": "2010-12-01T09:00:00", "is_cancellation": False,
            "items": [{"stock_code": "y"}]}]
    got = read_baskets(inv, {"x", "y"})
    assert [(b.invoice, b.customer, b.items) for b in got] == [("8", None, ("y",)), ("9", "2", ("x",))]


def test_rrf_hand_computed():
    # a: 1/61 + 1/62, b: 1/62 + 1/61 (tie, a first seen), c: 1/63, d: 1/63 -> c before d (first seen)
    assert rrf([["a", "b", "c"], ["b", "a", "d"]], 10) == ["a", "b", "c", "d"]
    assert rrf([["a", "b"], ["c"]], 2) == ["a", "c"]  # c: 1/61 > b: 1/62


def _space(vectors, products, categories):
    n = len(vectors)
    return ItemSpace(np.asarray(vectors, dtype=np.float32),
                     {"id": [f"i{r}" for r in range(n)], "product_id": products, "title": [""] * n,
                      "category": categories})


def test_similar_ranking_matches_brute_force():
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(30, 8))
    products = [f"p{r // 2}" for r in range(30)]  # two variants each
    space = _space(vecs, products, [""] * 30)
    for pid in ("p0", "p7"):
        got = similar_ranking(space, pid, 5)
        q = space.vectors[space.rows_for(pid)].mean(0)
        q /= np.linalg.norm(q)
        best: dict[str, float] = {}
        for r in range(30):
            if products[r] != pid:
                best[products[r]] = max(best.get(products[r], -9), float(space.vectors[r] @ q))
        assert got == sorted(best, key=lambda p: -best[p])[:5]


def test_user_vector_ranking_excludes_history():
    space = _space(np.eye(4) + 0.1, ["a", "b", "c", "d"], [""] * 4)
    baskets = [_b("1", "u", 1, "a"), _b("2", "u", 2, "b")]
    cases, _, _ = leave_last_basket_out(baskets)
    got = user_vector_ranking(Recommender(space, RecommendConfig()), cases[0], 10)
    assert "a" not in got and sorted(got) == ["b", "c", "d"]


def test_split_products_deterministic_disjoint():
    ids = [f"p{i}" for i in range(200)]
    a, b = split_products(ids)
    assert a.isdisjoint(b) and a | b == set(ids)
    assert (a, b) == split_products(reversed(ids))
    assert 60 < len(a) < 140


def test_job_baskets_on_toy_files(tmp_path, monkeypatch):
    """The job's UCI path end to end on toy files, with fixed vectors in place of the text tower."""
    from jobs import evaluate_recommender as job

    items = [{"stock_code": s, "title": s, "is_product": True} for s in "abcd"]
    inv = [("1", 1, "2010-12-01T08:00:00", "ab"), ("2", 2, "2010-12-01T09:00:00", "ac"),
           ("3", 1, "2010-12-02T08:00:00", "cd"), ("4", 3, "2010-12-02T09:00:00", "bd")]
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(i) for i in items))
    (tmp_path / "invoices.jsonl").write_text("\n".join(json.dumps(
        {"invoice_no": n, "customer_id": c, "invoice_date": d, "is_cancellation": False,
         "items": [{"stock_code": s} for s in its]}) for n, c, d, its in inv))
    monkeypatch.setattr(job, "text_vectors", lambda texts: np.eye(4)[["abcd".index(t) for t in texts]] + 0.01)
    out = job.evaluate_baskets(str(tmp_path), RecommendConfig())
    assert out["customers_evaluated"] == 1 and out["training_baskets"] == 3
    m = out["methods"]
    # customer 1: history {a, b}, target {c, d}; training baskets 1, 2, 4: c co-occurs with a, d with b -> both hit
    assert m["co-occurrence"]["NDCG@10"] == pytest.approx(1.0)
    assert m["popularity"]["HR@10"] == 1.0  # only c and d are left to rank
    # past baskets only: basket 4 (ts after customer 1's held-out basket 3) is not counted -> d never co-occurs
    # with the history and is in no counted basket, so only c (with a, basket 2) is ranked: 1 / (1 + 1/log2(3))
    assert m["co-occurrence (past baskets only)"]["NDCG@10"] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert m["co-occurrence (past baskets only)"]["customers_hit"] == 1
    # 3 training sequences are below recommend.sasrec.min_sequences (10): no SASRec rows, and the report says why
    assert "SASRec (ours)" not in m and "min_sequences" in out["sasrec"]["skipped"]
    small = SasrecConfig(dim=16, layers=1, heads=2, max_len=4, epochs=3, min_sequences=1)
    out = job.evaluate_baskets(str(tmp_path), RecommendConfig(sasrec=small))
    # trained on the 3 training sequences; the job's loop raises if any ranking holds a history item
    assert out["sasrec"]["epochs"] == 3 and out["sasrec"]["training_items"] == 4
    assert out["methods"]["SASRec (ours)"]["HR@10"] == 1.0  # only c and d are left to rank
