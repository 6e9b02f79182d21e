"""Reranked search over one loaded index: retrieve the top-K items, rerank them, collapse.

Two routes rerank (`rerank.routes`):
- text search (`rerank_search`): the query's own text tokens against each candidate;
- similar products (`rerank_similar`): the seed product's stored item tokens (the first
  `query_tokens` of its product text, from the index's reranker features, so no model runs) and its
  facts (title, gender, category) stand in for the query; the candidates are /similar's own (nearest
  by item vector, the product itself excluded).
Image search is not reranked: the head reads query *text* tokens, and no image-query path has been
trained (a photo's regions fed to a head trained on words would be an untested guess).

The reranked part comes first (one hit per product, its best-reranked variant, `score` = the head's
score); when it holds fewer than `k` products, the retriever's own (collapsed) order fills the rest,
with its scores and no explanation.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from mmray.index.filters import SearchFilters


def query_encoder_for(embedder, reranker):
    """The reranker's query side over the embedder's text tower, on its runtime (ONNX where the tower runs
    on ONNX); built, and exported, on first use."""
    return reranker.query_encoder(embedder.model, "onnx" if "onnx" in embedder.text_runtime else "torch")


def warm_reranker(indexes, models, rerankers, model: str) -> None:
    """Load the model and the reranker for the newest index, and build the reranker's query side, before
    traffic (an ONNX export takes seconds); a reranker that cannot serve that index is left alone (the pool
    logs why)."""
    from mmray.rerank.reranker import RerankerMismatch

    embedder = models.get(model)
    if indexes.newest is None:
        return
    try:
        reranker = rerankers.get(indexes.newest)[0]
    except RerankerMismatch:
        return
    query_encoder_for(embedder, reranker)


def encode_queries(embedder, reranker, queries: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each query's projected token states and mask, (1, T_i, E) and (1, T_i), from one run of the
    text tower over all of them (the batch is padded to its longest query; each is cut back to its own length)."""
    encoder = query_encoder_for(embedder, reranker)
    full, mask = encoder(list(queries), embedder.text_max_tokens)
    out = []
    for i in range(len(queries)):
        n = max(int(mask[i].sum()), 1)
        out.append((full[i:i + 1, :n], mask[i:i + 1, :n]))
    return out


def rerank_search(retriever, embedder, pooled, query: str, k: int, filters: SearchFilters | None, hybrid: bool,
                  collapse: bool, top_k: int, encoded: tuple[torch.Tensor, torch.Tensor] | None = None
                  ) -> tuple[list, list[dict | None]]:
    """(hits, explanations) for `query`; `pooled` = (Reranker, ItemFeatures, FactMatcher) of this index;
    `encoded`: the query's (tokens, mask) from `encode_queries` when the caller batched them."""
    from mmray.rerank.reranker import query_vector

    reranker, features, facts = pooled
    # The text tower runs once: its token states feed the head, their pooled projection is the
    # bi-encoder's query vector (the same as `embed_texts`, to float rounding).
    full, mask = encoded if encoded is not None else encode_queries(embedder, reranker, [query])[0]
    vector = query_vector(full, mask)[0].numpy()
    n = reranker.info["query_tokens"]
    tokens = (full[:, :n], mask[:, :n])  # the head reads the first rerank.query_tokens tokens
    candidates = retriever.search(vector, max(top_k, k), filters, query_text=query, hybrid=hybrid, collapse=False)

    def fill(m: int) -> list:
        return retriever.search(vector, m, filters, query_text=query, hybrid=hybrid, collapse=True)
    return _reranked(retriever, reranker, features, facts, query, tokens, candidates, k, filters, collapse, top_k, fill)


def similar_query(retriever, features, product_id: str, max_tokens: int
                  ) -> tuple[str, tuple[torch.Tensor, torch.Tensor]] | None:
    """What stands in for the query of /similar: (facts text, (tokens, mask)) of the seed (an item id, or
    a product's first variant); None for an unknown id. The facts text names the seed's title, gender
    and category (and its colour when the seed is one item: a product's variants differ in colour)."""
    rows = retriever.rows_for(product_id)
    if not rows:
        return None
    seed, meta = rows[0], retriever.meta
    parts = [meta["title"][seed], meta["gender"][seed], (meta["category"][seed] or "").split("/")[-1]]
    if product_id in retriever.row_of:
        parts.append(meta["color"][seed])
    text = " ".join(p for p in parts if p)
    item = features.take([seed])
    mask = item["token_mask"][:, :max_tokens]
    n = max(int(mask.sum()), 1)
    return text, (item["tokens"][:, :max_tokens][:, :n], mask[:, :n])


def rerank_similar(retriever, pooled, product_id: str, k: int, filters: SearchFilters | None, top_k: int
                   ) -> tuple[list, list[dict | None]] | None:
    """(hits, explanations) of products like `product_id`, reranked; None if the id is unknown."""
    reranker, features, facts = pooled
    found = similar_query(retriever, features, product_id, reranker.info["query_tokens"])
    if found is None:
        return None
    text, tokens = found
    candidates = retriever.similar(product_id, max(top_k, k), filters, collapse=False)

    def fill(m: int) -> list:
        return retriever.similar(product_id, m, filters, collapse=True)
    return _reranked(retriever, reranker, features, facts, text, tokens, candidates, k, filters, True, top_k, fill)


def _reranked(retriever, reranker, features, facts, text, tokens, candidates, k, filters, collapse, top_k, fill):
    head, rest = candidates[:top_k], candidates[top_k:]
    if not head:
        return [], []
    ranked = reranker.rerank(None, text, [h.row for h in head], retriever.vectors, features, facts, tokens)
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
        for hit in fill(k + len(out)):
            if hit.product_id not in seen and len(out) < k:
                seen.add(hit.product_id)
                out.append((hit, None))
    return _explained(out[:k], ranked)


def _explained(out: list[tuple], ranked) -> tuple[list, list[dict | None]]:
    """Hits and the explanations of those the reranker scored (built for the returned hits only)."""
    return [h for h, _ in out], [None if j is None else ranked.explanation(j) for _, j in out]
