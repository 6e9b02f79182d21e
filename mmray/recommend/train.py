"""Training the SASRec sequence ranker with Ray Train and publishing it (`jobs.train_recommender`).

- `training_data`: the event store's per-user item sequences (oldest first) mapped onto the current index:
  events of items the index does not hold are skipped, repeats of the same item in a row (a view, then a
  click, then an add-to-cart) count once, and sequences shorter than `recommend.sasrec.min_events` are
  dropped. The training items are the items that occur in what is left; their embeddings start from the
  index's multimodal item vectors (a product id: the mean of its rows), so an item that never occurred is
  still scored from its vector when the model serves.
- `train_loop_per_worker`: the Ray Train loop (`sasrec.fit`, DDP across workers), the loss reported per
  epoch, rank 0's model in the final checkpoint with the info it is rebuilt from.
- `run_recommender_training`: data, `TorchTrainer`, then the checkpoint published as a new version of
  `models/sasrec` (the kind `load_sequence_ranker` reads), its parents the index and its dual encoder.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mmray.config import MmrayConfig, SasrecConfig
from mmray.training.fit import fit_on_workers

log = logging.getLogger("mmray.recommend")


class TrainingDataError(ValueError):
    """Nothing (or too little) to train on; the job prints it and exits non-zero."""


def training_data(sequences: Sequence[Sequence[str]], space, cfg: SasrecConfig
                  ) -> tuple[list[str], np.ndarray, list[list[int]]]:
    """(training item ids, (V, d) their unit vectors, the sequences as rows of those), from item-id
    sequences (oldest first) over `space` (an `ItemSpace`)."""
    kept: list[list[str]] = []
    for seq in sequences:
        s: list[str] = []
        for item in seq:
            if space.knows(item) and (not s or s[-1] != item):
                s.append(item)
        if len(s) >= cfg.min_events:
            kept.append(s)
    if len(kept) < cfg.min_sequences:
        raise TrainingDataError(
            f"{len(kept)} training sequences (users with >= {cfg.min_events} events of items in the index), "
            f"recommend.sasrec.min_sequences is {cfg.min_sequences}: record events first (POST /v1/events)")
    ids = sorted({i for s in kept for i in s})
    offset = {item: i for i, item in enumerate(ids)}
    vectors = np.stack([space.item_vector(i) for i in ids]).astype(np.float32)
    return ids, vectors, [[offset[i] for i in s] for s in kept]


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: fit a fresh SASRec (DDP when there are several workers; every rank sees every
    sequence and takes its own share of the batches), report the loss per epoch; rank 0 saves the model,
    its info and its item ids in the final checkpoint."""
    import tempfile

    import ray.train
    import ray.train.torch
    import torch

    from mmray.recommend.sasrec import build_model, fit, save_model
    from mmray.runtime import setup_logging

    setup_logging()  # the epoch lines below reach the driver's log (Ray forwards worker output)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, config["threads"]))
    cfg: SasrecConfig = config["sasrec"]
    vectors = config["vectors"]
    model, shape = build_model(vectors.shape[1], len(vectors), cfg)
    wrapped = ray.train.torch.prepare_model(model) if world > 1 else model
    losses: list[float] = []

    def report(epoch: int, loss: float) -> None:
        losses.append(loss)
        log.info("sasrec epoch %d/%d: loss %.4f", epoch + 1, cfg.epochs, loss)
        if epoch < cfg.epochs - 1:
            ray.train.report({"epoch": epoch, "loss": loss})
    fit(wrapped, vectors, config["sequences"], cfg, report, rank=rank, world=world)
    with tempfile.TemporaryDirectory() as folder:
        if rank == 0:
            save_model(folder, model, {**config["info"], "model": shape, "history": losses}, config["item_ids"])
        ray.train.report({"epoch": cfg.epochs - 1, "loss": losses[-1], "history": losses},
                         checkpoint=ray.train.Checkpoint.from_directory(folder) if rank == 0 else None)


@dataclass
class TrainingData:
    """What one training run reads: the index, its item space and the sequences as training-item rows."""

    index: object  # the index `Version`
    space: object  # its `ItemSpace`
    item_ids: list[str]
    vectors: np.ndarray  # (V, d)
    rows: list[list[int]]


def load_training_data(cfg: MmrayConfig) -> TrainingData:
    """The current index and the event store's sequences over it (TrainingDataError: none, or too few)."""
    from mmray.index.retriever import Retriever
    from mmray.recommend.events import EventStore
    from mmray.recommend.recommender import ItemSpace
    from mmray.storage import INDEX_KIND, ArtifactStore

    store = ArtifactStore.from_config(cfg.storage)
    index = store.resolve(INDEX_KIND, hint="run `python -m jobs.build_index` first")
    space = ItemSpace.from_retriever(Retriever.load(index, cfg.index))
    events = EventStore.from_config(cfg.recommend)
    try:
        sequences = events.sequences()
    finally:
        events.close()
    if not sequences:
        raise TrainingDataError(f"the event store {cfg.recommend.event_store} holds no events within retention: "
                                "record events first (POST /v1/events)")
    item_ids, vectors, rows = training_data(sequences, space, cfg.recommend.sasrec)
    return TrainingData(index, space, item_ids, vectors, rows)


def run_recommender_training(cfg: MmrayConfig, data: TrainingData | None = None) -> dict:
    """Train SASRec with Ray Train on `data` (default: `load_training_data(cfg)`); publish it; its summary."""
    import json
    import os
    import shutil
    import tempfile

    from mmray.recommend.sasrec import INFO_FILE, ITEMS_FILE, MODEL_FILE, SASREC_KIND, item_vectors_info, load_sequence_ranker
    from mmray.storage import ArtifactStore, new_version

    start = time.time()
    sc = cfg.recommend.sasrec
    store = ArtifactStore.from_config(cfg.storage)
    data = data or load_training_data(cfg)
    index, space, item_ids, vectors, rows = data.index, data.space, data.item_ids, data.vectors, data.rows
    n_events = sum(len(s) for s in rows)
    log.info("sasrec: %d sequences, %d events, %d training items of %d in index %s", len(rows), n_events,
             len(item_ids), len(space), index.name)
    info = {"item_vectors": item_vectors_info(space),
            "training": {"sequences": len(rows), "events": n_events, "items": len(item_ids), "index": index.ref,
                         "config": sc.model_dump(mode="json")}}
    t_data = time.time()
    result = fit_on_workers(
        train_loop_per_worker,
        {"sasrec": sc, "vectors": vectors, "sequences": rows, "item_ids": item_ids, "info": info,
         "threads": int(cfg.train.cpus_per_worker)},
        num_workers=sc.num_workers, cpus_per_worker=cfg.train.cpus_per_worker, store=store,
        run_name=f"sasrec-{new_version()}", what="sasrec")
    t_train = time.time()
    history = result.metrics.get("history", [])
    with result.checkpoint.as_directory() as ckpt, tempfile.TemporaryDirectory() as folder:
        for name in (MODEL_FILE, INFO_FILE, ITEMS_FILE):  # the checkpoint folder may hold Ray's own files too
            shutil.copy(os.path.join(ckpt, name), os.path.join(folder, name))
        with open(os.path.join(folder, INFO_FILE), encoding="utf-8") as f:
            shape = json.load(f)["model"]
        with store.begin(SASREC_KIND, config=cfg.model_dump(mode="json"),
                         parents={"index": index.ref, "model": index.manifest["parents"]["model"]}) as writer:
            writer.upload_dir(folder)
            version = writer.commit(extra={"model_version": index.manifest.get("model_version"),
                                           "sequences": len(rows), "items": len(item_ids),
                                           "final_loss": history[-1] if history else None})
    ranker, why = load_sequence_ranker(store)  # what the app will load: refuse to report success otherwise
    if ranker is None:
        raise RuntimeError(f"the published {SASREC_KIND} {version.name} does not load: {why}")
    return {"version": version.name, "index": index.name, "model_version": index.manifest.get("model_version"),
            "sequences": len(rows), "events": n_events, "items": len(item_ids), "index_items": len(space),
            "model": shape, "history": history, "final_loss": history[-1] if history else None,
            "timings_s": {"data": round(t_data - start, 1), "train": round(t_train - t_data, 1),
                          "total": round(time.time() - start, 1)}}
