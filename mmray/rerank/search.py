"""Reranked text search over one loaded index: retrieve the top-K items, rerank them, collapse.

The reranked part comes first (one hit per product, its best-reranked variant, `score` = the head's
score); when it holds fewer than `k` products, the retriever's own (collapsed) order fills the rest,
with its scores and no explanation.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from mmray.index.filters import SearchFilters


def rerank_search(retriever, embedder, pooled, query: str, k: int, filters: SearchFilters | None, hybrid: bool,
                  collapse: bool, top_k: int) -> tuple[list, list[dict | None]]:
    """(hits, explanations) for `query`; `pooled` = (Reranker, ItemFeatures, FactMatcher) of this index."""
    from mmray.rerank.reranker import query_vector

    reranker, features, facts = pooled
    # The text tower runs once: its token states feed the head, their pooled projection is the
    # bi-encoder's query vector (the same as `embed_texts`, to float rounding).
    encoder = reranker.query_encoder(embedder.model, "onnx" if "onnx" in embedder.text_runtime else "torch")
    full, mask = encoder([query], embedder.text_max_tokens)
    vector = query_vector(full, mask)[0].numpy()
    n = reranker.info["query_tokens"]
    tokens = (full[:, :n], mask[:, :n])  # the head reads the first rerank.query_tokens tokens
    candidates = retriever.search(vector, max(top_k, k), filters, query_text=query, hybrid=hybrid, collapse=False)
    head, rest = candidates[:top_k], candidates[top_k:]
    if not head:
        return [], []
    ranked = reranker.rerank(embedder.model, query, [h.row for h in head], retriever.vectors, features, facts, tokens)
    ordered = [(dataclasses.replace(head[j], score=float(ranked.scores[j])), j) for j in ranked.order]
    if not collapse:
        out = ordered + [(h, None) for h in rest]
        return _explained(out[:k], ranked)
    mask = None if filters is None or filters.is_empty() else filters.mask(retriever.meta)
    seen, out = set(), []
    for hit, ex in ordered:
        if hit.product_id in seen:
            continue
        seen.add(hit.product_id)
        sources = {s for h, _ in ordered if h.product_id == hit.product_id for s in h.retrievers}
        rows = retriever.rows_of_product[hit.product_id]
        variants = len(rows) if mask is None else int(np.count_nonzero(mask[rows]))
        out.append((dataclasses.replace(hit, retrievers=sorted(sources), variants=variants), ex))
    if len(out) < k:  # fewer products than asked among the reranked items: the retriever's order after them
        for hit in retriever.search(vector, k + len(out), filters, query_text=query, hybrid=hybrid, collapse=True):
            if hit.product_id not in seen and len(out) < k:
                seen.add(hit.product_id)
                out.append((hit, None))
    return _explained(out[:k], ranked)


def _explained(out: list[tuple], ranked) -> tuple[list, list[dict | None]]:
    """Hits and the explanations of those the reranker scored (built for the returned hits only)."""
    return [h for h, _ in out], [None if j is None else ranked.explanation(j) for _, j in out]
