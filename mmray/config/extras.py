"""Settings of the reranker, recommender and copywriter stages."""
from __future__ import annotations

from typing import Literal  # noqa: F401

from pydantic import Field

from mmray.config.base import StrictConfig


class RerankConfig(StrictConfig):
    """The reranker over retrieved candidates (`mmray.rerank`, `jobs.train_reranker`)."""

    enabled: bool = False
    """Rerank the top candidates of the routes in `routes` (a request may still send `"rerank": false`); the index
    build then also stores the item-side features. Needs a reranker trained against the index's model:
    one trained against another model version is refused (logged, searches served without reranking)."""
    routes: list[Literal["search", "similar"]] = ["search", "similar"]
    """Routes reranked by default when `enabled` (a request still decides with `"rerank"`): `search` is
    `/v1/search`, `similar` is `/v1/products/{id}/similar` (the seed product's text tokens and facts as the
    query; on the Luma merchant links it raises Recall@10 over all links from 0.170 to 0.186, up-sells
    0.749 -> 0.857, and lowers "related" links 0.077 -> 0.063: BENCHMARKS.md, "Reranker"). Image search is
    never reranked: the head reads query text and has no trained image-query path."""
    top_k: int = Field(50, ge=1)
    """Candidates passed to the reranker."""
    head: Literal["cross_attention", "concat_mlp", "weighted_average"] = "cross_attention"
    """The fusion head served (`rerankers/<head>`) and trained by default (BENCHMARKS.md, "Reranker", compares them)."""
    index_features: bool = False
    """Store the item-side features at index build even with `enabled` false (to train a reranker first)."""
    item_tokens: int = Field(32, ge=1)
    """Item text tokens kept per item in the index's features (fp16, embed_dim each)."""
    query_tokens: int = Field(16, ge=1)
    """Query text tokens the reranker reads."""
    hidden: int = Field(64, ge=2)
    """Width of the fusion heads (attention, MLP)."""
    epochs: int = Field(12, ge=1)
    """Training epochs of `jobs.train_reranker`."""
    lr: float = Field(3e-3, gt=0)
    """AdamW learning rate of the head."""
    weight_decay: float = Field(1e-4, ge=0)
    """AdamW weight decay of the head."""
    batch_size: int = Field(32, ge=1)
    """Queries per training step (each with `list_size` candidates)."""
    list_size: int = Field(24, ge=2)
    """Candidates per training query: its positives, mined hard negatives, the rest from the index's top hits."""
    hard_negatives: int = Field(3, ge=0)
    """Mined negatives of each kind per training query: same category other colour, same colour other
    category, near-duplicate images of other products."""
    num_workers: int = Field(1, ge=1)
    """Ray Train workers of `jobs.train_reranker` (the head is small: one is enough on a laptop)."""
    seed: int = 0
    """Seed of the head's initialisation, the query sampling and the shuffling."""


class SasrecConfig(StrictConfig):
    """The trained sequence ranker (`mmray.recommend.sasrec`, `jobs.train_recommender`): causal self-attention
    over the history's item embeddings, each item embedding a projection of its multimodal item vector plus a
    learned offset (zero for items not seen in training, so new items are scored from their vector alone)."""

    dim: int = Field(64, ge=8)
    """Width of the item embeddings and of the transformer."""
    layers: int = Field(2, ge=1)
    """Transformer encoder layers."""
    heads: int = Field(2, ge=1)
    """Attention heads (must divide `dim`)."""
    max_len: int = Field(50, ge=2)
    """Newest history items the model reads (older ones are dropped)."""
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    """Dropout in the transformer and on the input embeddings (training only); 0.5 as the SASRec paper uses
    for sparse data (0.2 overfitted the UCI baskets, BENCHMARKS.md "Recommendations")."""
    item_offsets: bool = True
    """Learn a per-item offset on top of the projected vector for items seen in training (zero-initialised)."""
    epochs: int = Field(60, ge=1)
    """Passes over the training sequences."""
    lr: float = Field(2e-3, gt=0)
    """AdamW learning rate."""
    weight_decay: float = Field(1e-4, ge=0)
    """AdamW weight decay."""
    batch_size: int = Field(64, ge=1)
    """Sequences per training step."""
    min_events: int = Field(2, ge=2)
    """Users with fewer events than this give no training sequence."""
    min_sequences: int = Field(10, ge=1)
    """`jobs.train_recommender` stops with a message (nothing published) below this many training sequences."""
    num_workers: int = Field(1, ge=1)
    """Ray Train workers of `jobs.train_recommender` (the model is small: one is enough on a laptop)."""
    seed: int = 0
    """Seed of the initialisation and the shuffling."""


class RecommendConfig(StrictConfig):
    """Personalised and similar-item recommendation."""

    event_store: str = "sqlite:///artifacts/events.sqlite"
    """Event store URL (SQLite file by default)."""
    diversity: float = Field(0.3, ge=0.0, le=1.0)
    """MMR trade-off between relevance (0) and diversity (1)."""
    events_key_file: str | None = None
    """A mounted secret file holding the HMAC key that pseudonymises user ids. The key itself never goes in a
    config file: `MMRAY_EVENTS_KEY` (environment) wins over this file; with neither, an SQLite store generates
    a random key once into `<db file>.key` (mode 0600) and logs a warning; a PostgreSQL store refuses to start."""
    max_batch: int = Field(100, ge=1)
    """Events per `POST /v1/events` batch at most."""
    trust_client_timestamps: bool = False
    """Store the client's `ts` (else the server's clock). A future `ts` is rejected either way."""
    max_clock_skew_s: float = Field(5.0, ge=0)
    """How far in the future a client `ts` may be before it is rejected."""
    retention_days: float = Field(365.0, gt=0)
    """Events older than this are never read and are deleted by `jobs/prune_events.py`."""
    event_weights: dict[str, float] = {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0}
    """Weight of each event type in the user vector and in popularity."""
    recency_decay: float = Field(0.85, gt=0, le=1)
    """User vector: weight factor per step back in the history (newest event: 1)."""
    half_life_days: float = Field(30.0, gt=0)
    """User vector: the weight of an event halves every this many days of age."""
    history_limit: int = Field(200, ge=1)
    """Newest events of a user read to build the user vector."""
    exclude_seen: bool = True
    """Leave products the user already interacted with out of recommendations (purchased ones always are)."""
    explain_top: int = Field(3, ge=1)
    """History items named in each result's explanation."""
    links: str | None = "data/luma/links.jsonl"
    """Merchant links (JSONL source/target/type) whose cross-sells teach the category rules of "goes with";
    missing file: no rules (nearest items of another category)."""
    ranker: Literal["user_vector", "sasrec"] = "sasrec"
    """What ranks personalised recommendations: `sasrec`, the sequence model published by
    `jobs.train_recommender`, or `user_vector` (no training). Without a published model, or with one trained on
    item vectors of another model or width, `sasrec` falls back to the user vector (the reason is logged), so
    day one works before any training; SASRec fused with co-purchases is what beats the baselines on UCI."""
    sasrec: SasrecConfig = SasrecConfig()
    """The sequence model's shape and training."""
    co_purchase_blend: bool = True
    """Fuse the ranker's list with what buyers of the history's items also bought (the event store's
    co-purchase counts) by reciprocal rank fusion; where nobody bought with the history, the ranker's list
    alone. On UCI Online Retail the fused list beats popularity and co-occurrence where neither ranker alone
    does reliably (BENCHMARKS.md, "Recommendations")."""
    rrf_constant: int = Field(60, ge=1)
    """The reciprocal rank fusion constant of `co_purchase_blend` (score: sum of 1 / (constant + rank))."""


# The copy section has its own file (mmray/config/copy.py); re-exported here for mmray.config.
from mmray.config.copy import CopyConfig  # noqa: E402,F401
