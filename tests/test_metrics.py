"""Ranking metrics against hand-computed numbers on tiny score matrices."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mmray.metrics import (
    hit_rate_at_k,
    mrr,
    ndcg_at_k,
    rankings,
    recall_at_k,
    retrieval_report,
)

# 3 queries x 4 items.
SCORES = np.array([[0.9, 0.1, 0.5, 0.3],   # ranking: 0, 2, 3, 1
                   [0.2, 0.8, 0.8, 0.1],   # tie 1/2 kept in index order: 1, 2, 0, 3
                   [0.1, 0.2, 0.3, 0.4]])  # ranking: 3, 2, 1, 0
RELEVANCE = np.array([[0, 2, 1, 0],        # relevant at ranks 4 (grade 2) and 2 (grade 1)
                      [1, 0, 0, 1],        # relevant at ranks 3 and 4
                      [0, 0, 0, 0]])       # nothing relevant
L3, L5 = math.log2(3), math.log2(5)


def test_rankings_best_first_and_stable():
    assert rankings(SCORES).tolist() == [[0, 2, 3, 1], [1, 2, 0, 3], [3, 2, 1, 0]]
    assert rankings(SCORES, 2).tolist() == [[0, 2], [1, 2], [3, 2]]


def test_hit_rate_at_k_counts_every_query():
    assert hit_rate_at_k(SCORES, RELEVANCE, 1) == pytest.approx(0.0)
    assert hit_rate_at_k(SCORES, RELEVANCE, 2) == pytest.approx(1 / 3)
    assert hit_rate_at_k(SCORES, RELEVANCE, 3) == pytest.approx(2 / 3)
    assert hit_rate_at_k(SCORES, RELEVANCE, 10) == pytest.approx(2 / 3)


def test_recall_at_k_skips_queries_without_relevant():
    assert recall_at_k(SCORES, RELEVANCE, 1) == pytest.approx(0.0)
    assert recall_at_k(SCORES, RELEVANCE, 2) == pytest.approx((1 / 2 + 0) / 2)
    assert recall_at_k(SCORES, RELEVANCE, 3) == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert recall_at_k(SCORES, RELEVANCE, 4) == pytest.approx(1.0)
    assert recall_at_k(SCORES[2:], RELEVANCE[2:], 3) == 0.0


def test_mrr_first_relevant_rank():
    assert mrr(SCORES, RELEVANCE) == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)
    assert mrr(np.array([[0.5, 0.5]]), np.array([[0, 1]])) == pytest.approx(1 / 2)  # tie: index order
    assert mrr(np.array([[0.1, 0.9, 0.5]]), np.array([[1, 1, 1]])) == pytest.approx(1.0)


def test_ndcg_at_k_graded_gains():
    # q0: top 3 = items 0, 2, 3 with grades 0, 1, 0; ideal grades 2, 1, 0 -> gains 3, 1, 0
    q0 = (1 / L3) / (3 / 1 + 1 / L3)
    # q1: top 3 = items 1, 2, 0 with grades 0, 0, 1 (rank 3: discount 1/log2(4) = 1/2); ideal 1, 1, 0
    q1 = (1 / 2) / (1 / 1 + 1 / L3)
    assert ndcg_at_k(SCORES, RELEVANCE, 3) == pytest.approx((q0 + q1) / 2)  # q2 (no relevant) skipped
    # k past the number of items: every item counts
    q0_all = (1 / L3 + 3 / L5) / (3 + 1 / L3)
    q1_all = (1 / 2 + 1 / L5) / (1 + 1 / L3)
    assert ndcg_at_k(SCORES, RELEVANCE, 10) == pytest.approx((q0_all + q1_all) / 2)
    assert ndcg_at_k(SCORES, RELEVANCE, 1) == pytest.approx(0.0)
    assert ndcg_at_k(SCORES[2:], RELEVANCE[2:], 3) == 0.0


def test_perfect_ranking_scores_one():
    rel = np.array([[2, 1, 0, 0], [0, 0, 1, 2]])
    scores = np.array([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    assert ndcg_at_k(scores, rel, 2) == pytest.approx(1.0)
    assert mrr(scores, rel) == pytest.approx(1.0)
    assert recall_at_k(scores, rel, 2) == pytest.approx(1.0)
    assert hit_rate_at_k(scores, rel, 1) == pytest.approx(1.0)
    # swapping the two relevant items keeps recall and MRR but costs nDCG: (1 + 3/log2(3)) / (3 + 1/log2(3))
    swapped = np.array([[3.0, 4.0, 2.0, 1.0]])
    assert ndcg_at_k(swapped, rel[:1], 2) == pytest.approx((1 + 3 / L3) / (3 + 1 / L3))


def test_retrieval_report_keys_and_values():
    out = retrieval_report(SCORES, RELEVANCE, "q_", ks=(1, 3))
    assert set(out) == {"q_R@1", "q_R@3", "q_MRR", "q_nDCG@10"}
    assert out["q_R@3"] == pytest.approx(0.5)
    assert out["q_MRR"] == pytest.approx((1 / 2 + 1 / 3) / 3)
    assert all(isinstance(v, float) for v in out.values())
