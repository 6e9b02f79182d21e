"""Driver side of training: data, Ray Train `TorchTrainer`, publishing the model, baselines.

A finished run is copied to `<storage.root>/models/dual_encoder/<version>/` (weights, model
config, the full config that made it, per-epoch history, held-out metrics beside the
baselines) and `current.json` in that folder is pointed at it.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time

import numpy as np
import yaml

from mmray.config import MmrayConfig
from mmray.embedder import Embedder
from mmray.evalset import build_queries, relevance_matrix
from mmray.metrics import retrieval_report
from mmray.model import build_model, load_checkpoint
from mmray.storage import new_version, set_current
from mmray.training.data import items_dir, load_items, train_dataset
from mmray.training.evaluate import EvalInputs, build_eval_inputs, evaluate
from mmray.training.loop import train_loop_per_worker

log = logging.getLogger(__name__)


def run_training(cfg: MmrayConfig, run_name: str | None = None, fail_at_epoch: int | None = None) -> dict:
    """Train, publish the model, and return its summary (also `metrics.json` in the model folder)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    start = time.time()
    model0 = build_model(cfg.model)
    cached = bool(model0.image_cacheable and model0.text_cacheable)
    ds = train_dataset(cfg, cached)
    rows, world = ds.count(), cfg.train.num_workers
    local_batch = cfg.train.batch_size // world
    steps_per_epoch = rows // (local_batch * world) if local_batch else 0
    if steps_per_epoch == 0:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} is larger than the {rows} training rows")
    test_items = load_items(items_dir(cfg), split="test")
    ev = build_eval_inputs(test_items, Embedder(model0), cfg.index.image_weight)
    untrained = evaluate(model0, ev)
    t_data = time.time()
    log.info("training on %d rows (%s), %d steps/epoch, %d workers", rows,
             "cached tower features" if cached else "images end to end", steps_per_epoch, world)

    version = new_version()
    run_name = run_name or f"dual_encoder-{version}"
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "cached": cached, "eval": ev,
                           "steps_per_epoch": steps_per_epoch, "fail_at_epoch": fail_at_epoch,
                           "fail_marker": os.path.abspath(cfg.storage.path(f".fail-{run_name}"))},
        scaling_config=ray.train.ScalingConfig(num_workers=world, use_gpu=cfg.train.use_gpu,
                                               resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=os.path.abspath(cfg.storage.path("ray_results")),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
        datasets={"train": ds})
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint: {result.error}")
    t_train = time.time()

    folder = cfg.storage.path("models", "dual_encoder", version)
    with result.checkpoint.as_directory() as ckpt:
        shutil.copytree(ckpt, folder)
    model, extra = load_checkpoint(folder)
    history = extra.get("history", [])
    summary = {
        "version": version, "run_name": run_name, "cached_features": cached, "train_rows": rows,
        "test_items": len(test_items), "epochs": cfg.train.epochs, "workers": world,
        "timings_s": {"data": round(t_data - start, 1), "train": round(t_train - t_data, 1),
                      "total": round(time.time() - start, 1)},
        "held_out": evaluate(model, ev), "untrained_projections": untrained,
        "bm25": bm25_baseline(test_items, ev), "history": history,
    }
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(folder, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg.model_dump(mode="json"), f, sort_keys=False)
    set_current(cfg.storage.path("models", "dual_encoder"), version)
    return summary


def bm25_baseline(test_items: list[dict], ev: EvalInputs) -> dict[str, float]:
    """BM25 over title + description of the held-out items, on the same queries."""
    from mmray.index.lexical import LexicalIndex

    lexical = LexicalIndex.build([f"{it['title']}. {it.get('description') or ''}" for it in test_items])
    queries = build_queries(test_items)
    scores = np.stack([lexical.scores(q.text) for q in queries])
    rel = relevance_matrix(queries, [it["id"] for it in test_items])
    return retrieval_report(scores, rel, "query_", ks=(10,))
