"""A published reranker, checked against the index it reranks, and the scoring of one query's candidates.

    rerankers/<head>/<version>/
      head.pt          the fusion head's weights
      reranker.json    head, hidden, query_tokens, item_tokens, scalar features, the dual encoder
                       version (and ref) it was trained against, the held-out metrics
      manifest.json    (the artifact layer's) config, parents: model, index, dataset

A reranker scores tower features of the dual encoder it was trained with; the index's stored item
features come from the index's model. `Reranker.check` refuses an index built with another model
version (`RerankerMismatch`, naming both), and an index built without item features.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from mmray.config import RerankConfig
from mmray.rerank.explain import SCALAR_FEATURES, FactMatcher, attention_grid
from mmray.rerank.features import ItemFeatures, query_tokens
from mmray.rerank.heads import build_head
from mmray.storage import ArtifactError, ArtifactStore

log = logging.getLogger(__name__)

HEAD_FILE, INFO_FILE = "head.pt", "reranker.json"


def reranker_kind(head: str) -> str:
    return f"rerankers/{head}"


class RerankerMismatch(ArtifactError):
    """A reranker that cannot rerank this index (another model version, or no item features)."""


@dataclass
class Reranked:
    """One query's candidates in the reranker's order."""

    order: list[int]            # positions into the candidate list, best first
    scores: np.ndarray          # (K,) head scores, candidate order
    grids: np.ndarray           # (K, G) region weights, each row sums to 1
    matched: list[list[dict]]   # (K,) the facts the query matched
    grid: tuple[int, int]

    def explanation(self, j: int) -> dict:
        """Candidate j's explanation: {"matched": [...], "attention": [[...]] (sums to 1), "grid": [h, w]}."""
        return {"matched": self.matched[j], "attention": attention_grid(self.grids[j], self.grid),
                "grid": list(self.grid)}


class Reranker:
    """A fusion head and what it was trained against."""

    def __init__(self, head: torch.nn.Module, info: dict, version: str = ""):
        self.head, self.info, self.version = head.eval(), info, version
        self.model_version = info["model_version"]
        self._item_kv: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (id(features), keys, values)
        self._query: tuple[int, object] | None = None  # (id(model), QueryEncoder)
        self._query_lock = threading.Lock()

    def query_encoder(self, model, runtime: str = "onnx"):
        """The query side for `model` (a `features.QueryEncoder`, exported on first use and kept)."""
        from mmray.rerank.features import QueryEncoder

        with self._query_lock:
            if self._query is None or self._query[0] != id(model):
                self._query = (id(model), QueryEncoder(model, runtime))
            return self._query[1]

    @torch.no_grad()
    def item_kv(self, features: ItemFeatures, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The cross-attention head's keys/values of `rows`, from a per-index cache built on first use."""
        if not hasattr(self.head, "item_keys"):
            return None
        if self._item_kv is None or self._item_kv[0] != id(features):
            every = features.take(np.arange(len(features)))
            keys, values = self.head.item_keys(every["regions"], every["tokens"])
            self._item_kv = (id(features), keys, values)
        idx = torch.as_tensor(rows)
        return self._item_kv[1][idx].unsqueeze(0), self._item_kv[2][idx].unsqueeze(0)

    @classmethod
    def from_folder(cls, folder: str, version: str = "") -> Reranker:
        with open(os.path.join(folder, INFO_FILE)) as f:
            info = json.load(f)
        head = build_head(info["head"], info["embed_dim"], len(info["scalar_features"]), info["hidden"])
        head.load_state_dict(torch.load(os.path.join(folder, HEAD_FILE), map_location="cpu", weights_only=True))
        return cls(head, info, version)

    @classmethod
    def load_current(cls, store: ArtifactStore, head: str) -> Reranker:
        version = store.resolve(reranker_kind(head), hint="run `python -m jobs.train_reranker` first")
        return cls.from_folder(version.local_dir(), version.name)

    def check(self, index_manifest: dict) -> None:
        """Raise RerankerMismatch unless this reranker fits the index (same model version, features stored)."""
        want, have = self.model_version, index_manifest.get("model_version")
        if want != have:
            raise RerankerMismatch(
                f"reranker {self.info['head']}/{self.version or '?'} was trained against model {want}, but index "
                f"{index_manifest.get('version')} was built with model {have}: retrain it with "
                "`python -m jobs.train_reranker` (serving without reranking)")
        if not index_manifest.get("rerank_features"):
            raise RerankerMismatch(f"index {index_manifest.get('version')} has no reranker item features: rebuild "
                                   "it with rerank.enabled (or rerank.index_features) true (serving without reranking)")

    @torch.no_grad()
    def rerank(self, model, query: str, rows: list[int], vectors: np.ndarray, features: ItemFeatures,
               facts: FactMatcher, q_tokens: tuple[torch.Tensor, torch.Tensor] | None = None) -> Reranked:
        """Score the candidate `rows` of an index for `query` with the index's own `model` (torch);
        `q_tokens`: the query's (tokens, mask) when the caller has them already (`query_tokens`)."""
        inputs, matched = prepare(model, [query], [rows], vectors, features, facts, self.info["query_tokens"],
                                  q_tokens)
        scores, grids = self.head(**inputs, item_kv=self.item_kv(features, rows))
        scores, grids = scores[0].numpy(), grids[0].numpy()
        order = sorted(range(len(rows)), key=lambda j: (-float(scores[j]), j))  # ties: the retriever's order
        return Reranked(order, scores, grids, matched[0], features.grid)


def query_vector(q_tokens: torch.Tensor, q_mask: torch.Tensor) -> torch.Tensor:
    """The bi-encoder's query embedding from its projected token states (their masked mean, normalised)."""
    return torch.nn.functional.normalize(
        (q_tokens * q_mask.unsqueeze(-1)).sum(1) / q_mask.sum(1, keepdim=True).clamp(min=1), dim=-1)


def prepare(model, queries: list[str], rows: list[list[int]], vectors: np.ndarray, features: ItemFeatures,
            facts: FactMatcher, max_query_tokens: int, q_tokens=None
            ) -> tuple[dict[str, torch.Tensor], list[list[list[dict]]]]:
    """The heads' inputs for B queries with K candidate rows each (equal K), and the matched facts."""
    q_tokens, q_mask = q_tokens if q_tokens is not None else query_tokens(model, queries, max_query_tokens)
    q_vec = query_vector(q_tokens, q_mask)
    flat = [r for rs in rows for r in rs]
    b, k = len(queries), len(rows[0])
    item = features.take(flat)
    cos = (vectors[flat].reshape(b, k, -1) @ q_vec.numpy()[:, :, None])[..., 0]  # (B, K)
    scalars, matched = [], []
    for i, q in enumerate(queries):
        s, m = facts.features(q, rows[i], cos[i])
        scalars.append(s)
        matched.append(m)
    inputs = {"q_tokens": q_tokens, "q_mask": q_mask, "q_vec": q_vec,
              "regions": item["regions"].view(b, k, *item["regions"].shape[1:]),
              "has_image": item["has_image"].view(b, k),
              "tokens": item["tokens"].view(b, k, *item["tokens"].shape[1:]),
              "token_mask": item["token_mask"].view(b, k, -1),
              "scalars": torch.from_numpy(np.stack(scalars)).float()}
    return inputs, matched


class RerankerPool:
    """The served reranker (`rerank.head`'s current version, its pointer re-read every `poll_s`) and,
    per index version, its item features and facts, loaded on first use. A reranker that cannot serve
    an index is refused once per (reranker, index) pair (logged); `get` then raises RerankerMismatch
    with the same message, and searches are served without reranking."""

    def __init__(self, store: ArtifactStore, cfg: RerankConfig, poll_s: float = 10.0):
        self.store, self.cfg, self.poll_s = store, cfg, poll_s
        self._lock = threading.Lock()
        self._reranker: Reranker | None = None
        self._error: str | None = None
        self._checked_at = -float("inf")
        self._by_index: dict[str, tuple[ItemFeatures, FactMatcher] | str] = {}

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < self.poll_s:
            return
        self._checked_at = now
        kind = reranker_kind(self.cfg.head)
        try:
            name = self.store.current(kind)
            if name is None:
                raise ArtifactError(f"no {kind} has been published: run `python -m jobs.train_reranker`")
            if self._reranker is None or self._reranker.version != name:
                version = self.store.resolve(kind, name)
                self._reranker = Reranker.from_folder(version.local_dir(), version.name)
                self._by_index.clear()
                log.info("serving reranker %s/%s (model %s)", kind, name, self._reranker.model_version)
            self._error = None
        except (ArtifactError, OSError, KeyError, RuntimeError) as e:
            if self._reranker is None:
                self._error = f"no reranker to serve: {e}"
                log.error("%s", self._error)

    def get(self, retriever) -> tuple[Reranker, ItemFeatures, FactMatcher]:
        with self._lock:
            self._refresh()
            if self._reranker is None:
                raise RerankerMismatch(self._error or "no reranker loaded")
            entry = self._by_index.get(retriever.version)
            if entry is None:
                try:
                    self._reranker.check(retriever.manifest)
                    # float32 once (a request gathers 50 rows of it): about 2x the fp16 file in memory
                    entry = (ItemFeatures.load(retriever.folder).as_float32(), FactMatcher(retriever.meta))
                except (RerankerMismatch, OSError, KeyError) as e:
                    entry = str(e)
                    log.error("reranker refused for index %s: %s", retriever.version, entry)
                self._by_index[retriever.version] = entry
                for old in list(self._by_index)[:-2]:
                    del self._by_index[old]
            if isinstance(entry, str):
                raise RerankerMismatch(entry)
            return self._reranker, entry[0], entry[1]


__all__ = ["SCALAR_FEATURES", "Reranked", "Reranker", "RerankerMismatch", "RerankerPool", "prepare", "reranker_kind"]
