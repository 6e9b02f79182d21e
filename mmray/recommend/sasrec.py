"""A SASRec-style sequence ranker over the multimodal item vectors (`recommend.ranker: sasrec`).

- `SASRec`: an item's embedding is `proj(item vector) + offset[item]`, the offset learned (zero at the start)
  for items seen in training and zero for every other item, so an item nobody has interacted with yet is
  still embedded, and scored, from its vector. A causal `nn.TransformerEncoder` (position t attends to
  positions <= t) turns the history's embeddings into one state per position; the score of an item after
  position t is `state_t . embedding(item)`.
- `fit`: next-item objective with a full softmax over the training items (every position of every
  sequence predicts the item that follows it); sequences are right-padded, so the causal mask alone keeps
  padding out of every real position.
- `SequenceRanker`: a trained model with the ids of its training items and the item vectors it was
  trained on (`item_vectors`: width, and the dual encoder version where known); `mismatch` says why it
  cannot rank a given `ItemSpace`. `load_sequence_ranker` reads the current published version.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from mmray.config import SasrecConfig
from mmray.storage import model_kind

log = logging.getLogger("mmray.recommend")
SASREC_KIND = model_kind("sasrec")
MODEL_FILE = "sasrec.pt"
INFO_FILE = "sasrec.json"
ITEMS_FILE = "items.json"
SHAPE_FIELDS = ("dim", "layers", "heads", "max_len", "dropout", "item_offsets")


class SASRec(nn.Module):
    def __init__(self, item_dim: int, n_known: int, dim: int, layers: int, heads: int, max_len: int,
                 dropout: float, item_offsets: bool = True):
        super().__init__()
        self.n_known, self.max_len = n_known, max_len
        self.proj = nn.Linear(item_dim, dim)
        # row n_known is the "unknown item" offset: padding_idx keeps it zero and untrained
        self.offsets = nn.Embedding(n_known + 1, dim, padding_idx=n_known) if item_offsets else None
        if self.offsets is not None:
            nn.init.zeros_(self.offsets.weight)
        self.pos = nn.Embedding(max_len, dim)
        nn.init.normal_(self.pos.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def item_table(self, vectors: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """(N, dim) item embeddings from (N, item_dim) vectors and (N,) offset indices (-1: not seen in training)."""
        table = self.proj(vectors)
        if self.offsets is not None:
            table = table + self.offsets(torch.where(known < 0, self.n_known, known))
        return table

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, T, dim) item embeddings, oldest first, T <= max_len -> (B, T, dim) causal states."""
        t = seq.shape[1]
        x = self.drop(seq * math.sqrt(seq.shape[-1]) + self.pos.weight[:t])
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=seq.device)
        return self.norm(self.encoder(x, mask=mask, is_causal=True))

    def forward(self, table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(B, T) rows of `table` -> (B, T, N) scores of every table item after each position."""
        return self.encode(table[rows]) @ table.T

    @classmethod
    def from_info(cls, info: dict) -> SASRec:
        m = info["model"]
        return cls(m["item_dim"], m["n_known"], m["dim"], m["layers"], m["heads"], m["max_len"], m["dropout"],
                   m["item_offsets"])


def build_model(item_dim: int, n_known: int, cfg: SasrecConfig) -> tuple[SASRec, dict]:
    """A fresh model and the `model` part of its info (what `SASRec.from_info` rebuilds it from)."""
    shape = {"item_dim": item_dim, "n_known": n_known, **{f: getattr(cfg, f) for f in SHAPE_FIELDS}}
    torch.manual_seed(cfg.seed)
    return SASRec.from_info({"model": shape}), shape


def training_windows(sequences: Sequence[Sequence[int]], max_len: int) -> list[list[int]]:
    """Each sequence (rows, oldest first) cut into windows of max_len + 1 from its newest end (inputs are a
    window's first max_len items, targets its last max_len); windows of one item are dropped."""
    out = []
    for s in sequences:
        s = list(s)
        end = len(s)
        while end >= 2:
            out.append(s[max(0, end - max_len - 1):end])
            end -= max_len
    return out


def fit(model: nn.Module, vectors: np.ndarray, sequences: Sequence[Sequence[int]], cfg: SasrecConfig,
        report: Callable[[int, float], None] | None = None, rank: int = 0, world: int = 1) -> list[float]:
    """Train `model` in place: `vectors` (N, item_dim) are the training items (row i has offset i),
    `sequences` lists of their rows, oldest first. Returns the mean loss of each epoch.

    With `world` > 1 (Ray Train, `model` wrapped in DDP) every rank shuffles the same way and takes every
    world-th batch, the same number of batches on every rank, so the gradient all-reduces line up."""
    core: SASRec = getattr(model, "module", model)  # DDP keeps the SASRec in .module
    v = torch.tensor(np.asarray(vectors, dtype=np.float32))  # a copy: Ray hands read-only arrays
    known = torch.arange(len(v))
    windows = training_windows(sequences, core.max_len)
    if not windows:
        raise ValueError("no training sequence of two or more items")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    starts = list(range(0, len(windows), cfg.batch_size))
    per_rank = max(1, len(starts) // world)
    losses = []
    model.train()
    for epoch in range(cfg.epochs):
        total, steps = 0.0, 0
        order = rng.permutation(len(windows))
        for b in range(per_rank):
            start = starts[(b * world + rank) % len(starts)]
            batch = [windows[i] for i in order[start:start + cfg.batch_size]]
            t = max(len(w) for w in batch) - 1
            rows = torch.zeros((len(batch), t), dtype=torch.long)  # right padding: row 0, never a target
            targets = torch.full((len(batch), t), -100, dtype=torch.long)
            for i, w in enumerate(batch):
                rows[i, :len(w) - 1] = torch.tensor(w[:-1])
                targets[i, :len(w) - 1] = torch.tensor(w[1:])
            logits = model(core.item_table(v, known), rows)  # (B, T, N)
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                               ignore_index=-100)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
        losses.append(total / max(steps, 1))
        if report is not None:
            report(epoch, losses[-1])
    model.eval()
    return losses


# ---------------------------------------------------------------------- serving
def item_vectors_info(space) -> dict:
    """What a model trained on `space` depends on: the vector width and, where known, the dual encoder
    version and the index that made the vectors."""
    src = getattr(space, "source", None) or {}
    return {"dim": int(space.vectors.shape[1]), "model_version": src.get("model_version"), "index": src.get("index")}


class SequenceRanker:
    """A trained `SASRec` with the ids of its training items, ranking the rows of an `ItemSpace`."""

    def __init__(self, model: SASRec, info: dict, item_ids: Sequence[str], version: str | None = None):
        self.model, self.info, self.version = model.eval(), info, version
        self.offset_of = {item: i for i, item in enumerate(item_ids)}
        self._table: tuple[int, torch.Tensor] | None = None

    @classmethod
    def from_folder(cls, folder: str, version: str | None = None) -> SequenceRanker:
        with open(os.path.join(folder, INFO_FILE), encoding="utf-8") as f:
            info = json.load(f)
        with open(os.path.join(folder, ITEMS_FILE), encoding="utf-8") as f:
            item_ids = json.load(f)
        model = SASRec.from_info(info)
        model.load_state_dict(torch.load(os.path.join(folder, MODEL_FILE), map_location="cpu", weights_only=True))
        return cls(model, info, item_ids, version)

    def mismatch(self, space) -> str | None:
        """Why this model cannot rank `space` (None: it can)."""
        want, have = self.info["item_vectors"], item_vectors_info(space)
        name = self.version or "the sequence model"
        if want["dim"] != have["dim"]:
            return f"{name} was trained on {want['dim']}-d item vectors, the index has {have['dim']}-d ones"
        if want.get("model_version") and want["model_version"] != have.get("model_version"):
            return (f"{name} was trained on item vectors of model {want['model_version']}, the index was built "
                    f"with {have.get('model_version')}")
        return None

    def table(self, space) -> torch.Tensor:
        """(N, dim) embeddings of every row of `space` (built once per space)."""
        if self._table is None or self._table[0] != id(space):
            known = [self.offset_of.get(i, self.offset_of.get(p, -1)) for i, p in zip(space.ids, space.products)]
            with torch.no_grad():
                t = self.model.item_table(torch.from_numpy(space.vectors), torch.tensor(known, dtype=torch.long))
            self._table = (id(space), t)
        return self._table[1]

    def scores(self, space, history_ids: Sequence[str]) -> np.ndarray | None:
        """(N,) score of every row of `space` as the next item after `history_ids` (oldest first;
        unknown ids skipped); None when nothing of the history is in `space`."""
        table = self.table(space)
        rows = []
        for item in history_ids[-self.model.max_len:]:
            r = space.rows_for(item)
            if r:
                rows.append(r)
        if not rows:
            return None
        with torch.no_grad():
            seq = torch.stack([table[r].mean(0) for r in rows])[None]  # (1, T, dim); a product: its rows' mean
            state = self.model.encode(seq)[0, -1]
            return (table @ state).numpy()


def load_sequence_ranker(store) -> tuple[SequenceRanker | None, str | None]:
    """(the current published model, None) or (None, why it could not be loaded); whether it matches
    `space` is the Recommender's check (`SequenceRanker.mismatch`)."""
    try:
        if store is None:
            return None, "no artifact store"
        if store.current(SASREC_KIND) is None:
            return None, f"no published {SASREC_KIND} (run `python -m jobs.train_recommender`)"
        version = store.resolve(SASREC_KIND)
        ranker = SequenceRanker.from_folder(store.local_dir(version), version.ref)
    except Exception as e:  # noqa: BLE001 - a broken artifact means the user vector, not an error page
        return None, f"the published {SASREC_KIND} could not be loaded ({type(e).__name__}: {e})"
    return ranker, None


def save_model(folder: str, model: SASRec, info: dict, item_ids: Sequence[str]) -> None:
    """The checkpoint: weights, the info it is rebuilt from, and its training items' ids."""
    torch.save(model.state_dict(), os.path.join(folder, MODEL_FILE))
    with open(os.path.join(folder, INFO_FILE), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    with open(os.path.join(folder, ITEMS_FILE), "w", encoding="utf-8") as f:
        json.dump(list(item_ids), f)
