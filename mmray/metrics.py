"""Ranking metrics over a dense score matrix: Recall@k, hit rate, MRR, nDCG@k.

numpy in, floats out; every function is checked against a hand-computed example in tests.
"""
from __future__ import annotations

import numpy as np


def rankings(scores: np.ndarray, k: int | None = None) -> np.ndarray:
    """(Q, N) scores -> (Q, k) column indices, best first (stable for ties)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return order if k is None else order[:, :k]


def hit_rate_at_k(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Share of queries with at least one relevant item in the top k (CLIP-style R@k)."""
    top = rankings(scores, k)
    return float(np.mean(np.take_along_axis(relevant > 0, top, axis=1).any(axis=1)))


def recall_at_k(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Mean over queries of |relevant in top k| / |relevant| (queries with no relevant item skipped)."""
    rel = relevant > 0
    n_rel = rel.sum(axis=1)
    keep = n_rel > 0
    top = rankings(scores, k)
    found = np.take_along_axis(rel, top, axis=1).sum(axis=1)
    return float(np.mean(found[keep] / n_rel[keep])) if keep.any() else 0.0


def mrr(scores: np.ndarray, relevant: np.ndarray) -> float:
    """Mean reciprocal rank of the first relevant item (0 for a query with none)."""
    order = rankings(scores)
    rel_sorted = np.take_along_axis(relevant > 0, order, axis=1)
    first = rel_sorted.argmax(axis=1)
    has = rel_sorted.any(axis=1)
    return float(np.mean(np.where(has, 1.0 / (first + 1), 0.0)))


def ndcg_at_k(scores: np.ndarray, relevance: np.ndarray, k: int) -> float:
    """Mean nDCG@k with graded gains 2^rel - 1 and log2 discounts (queries with no relevant skipped)."""
    top = rankings(scores, k)
    gains = (2.0 ** np.take_along_axis(relevance.astype(float), top, axis=1)) - 1.0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (gains * discounts[: gains.shape[1]]).sum(axis=1)
    ideal = -np.sort(-relevance.astype(float), axis=1)[:, :k]
    idcg = (((2.0 ** ideal) - 1.0) * discounts[: ideal.shape[1]]).sum(axis=1)
    keep = idcg > 0
    return float(np.mean(dcg[keep] / idcg[keep])) if keep.any() else 0.0


def retrieval_report(scores: np.ndarray, relevance: np.ndarray, prefix: str, ks=(1, 5, 10)) -> dict[str, float]:
    out = {f"{prefix}R@{k}": recall_at_k(scores, relevance, k) for k in ks}
    out[f"{prefix}MRR"] = mrr(scores, relevance)
    out[f"{prefix}nDCG@10"] = ndcg_at_k(scores, relevance, 10)
    return out
