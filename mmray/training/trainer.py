"""Driver side of training: data, Ray Train `TorchTrainer`, publishing the model, baselines.

Ray Train keeps its checkpoints under `<storage.root>/ray_results/` (any root: a local folder or
a bucket, through the store's filesystem). A finished run is published as a new version of
`models/dual_encoder` (weights, model config, per-epoch history, held-out metrics beside the
baselines; the manifest carries the config and the dataset version it was trained on).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from mmray.config import MmrayConfig
from mmray.dataset import current_dataset, load_items
from mmray.embedder import Embedder
from mmray.metrics import retrieval_report
from mmray.model import build_model, load_checkpoint
from mmray.storage import ArtifactStore, model_kind, new_version
from mmray.training.data import train_dataset
from mmray.training.evaluate import EvalInputs, build_eval_inputs, evaluate
from mmray.training.loop import train_loop_per_worker

log = logging.getLogger(__name__)


def run_training(cfg: MmrayConfig, run_name: str | None = None, epoch_callback: Callable | None = None) -> dict:
    """Train, publish the model, and return its summary (also `metrics.json` in the model version).

    `epoch_callback(epoch=, rank=, metrics=)`, when given, runs on every worker after each epoch
    (see `train_loop_per_worker`); it must be picklable.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    start = time.time()
    store = ArtifactStore.from_config(cfg.storage)
    dataset = current_dataset(cfg)
    model0 = build_model(cfg.model, seed=cfg.train.seed)  # the workers' starting point
    cached = bool(model0.image_cacheable and model0.text_cacheable)
    ds = train_dataset(cfg, dataset, cached)
    rows, world = ds.count(), cfg.train.num_workers
    batch = fit_batch_size(cfg.train.batch_size, rows, world)
    if batch != cfg.train.batch_size:
        log.warning("train.batch_size=%d is larger than the %d training rows: training with batches of %d",
                    cfg.train.batch_size, rows, batch)
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"batch_size": batch})})
    steps_per_epoch = rows // (batch // world * world)
    test_items = load_items(dataset, split="test")
    ev = build_eval_inputs(test_items, Embedder(model0), cfg.index.image_weight, caption=cfg.data.caption)
    untrained = evaluate(model0, ev)
    t_data = time.time()
    log.info("training on %d rows (%s), %d steps/epoch, %d workers", rows,
             "cached tower features" if cached else "images end to end", steps_per_epoch, world)

    run_name = run_name or f"dual_encoder-{new_version()}"
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "cached": cached, "eval": ev,
                           "steps_per_epoch": steps_per_epoch, "epoch_callback": epoch_callback},
        scaling_config=ray.train.ScalingConfig(num_workers=world, use_gpu=cfg.train.use_gpu,
                                               resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=store.path("ray_results"), storage_filesystem=store.fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
        datasets={"train": ds})
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint: {result.error}")
    t_train = time.time()

    with store.begin(model_kind(), config=cfg.model_dump(mode="json"), parents={"dataset": dataset.ref}) as writer, \
            result.checkpoint.as_directory() as ckpt:
        model, extra = load_checkpoint(ckpt)
        writer.upload_dir(ckpt)
        summary = {
            "version": writer.name, "run_name": run_name, "cached_features": cached, "train_rows": rows,
            "test_items": len(test_items), "epochs": cfg.train.epochs, "workers": world, "dataset": dataset.ref,
            "timings_s": {"data": round(t_data - start, 1), "train": round(t_train - t_data, 1),
                          "total": round(time.time() - start, 1)},
            "held_out": evaluate(model, ev), "untrained_projections": untrained,
            "bm25": bm25_baseline(test_items, ev), "history": extra.get("history", []),
        }
        writer.write_json("metrics.json", summary)
        writer.commit(extra={"held_out": summary["held_out"]})
    return summary


def fit_batch_size(batch_size: int, rows: int, workers: int) -> int:
    """`batch_size`, or where the rows cannot fill one batch, the largest multiple of `workers` they fill.

    Each worker streams an equal share of the rows and drops its last partial batch; a batch needs at
    least 2 rows per worker (a contrastive loss needs a negative)."""
    if batch_size < workers:
        raise ValueError(f"train.batch_size={batch_size} is smaller than train.num_workers={workers}")
    if batch_size // workers * workers <= rows:
        return batch_size
    fitted = rows // workers * workers
    if fitted // workers < 2:
        raise ValueError(f"train.batch_size={batch_size}: the {rows} training rows are too few for "
                         f"train.num_workers={workers} (at least 2 rows per worker)")
    return fitted


def bm25_baseline(test_items: list[dict], ev: EvalInputs) -> dict[str, float | str]:
    """BM25 over title + description of the held-out items, on the same queries."""
    from mmray.index.lexical import LexicalIndex

    if not ev.query_texts:
        return {"query_skipped": ev.query_skipped or "no held-out queries"}
    lexical = LexicalIndex.build([f"{it['title']}. {it.get('description') or ''}" for it in test_items])
    scores = np.stack([lexical.scores(text) for text in ev.query_texts])
    return retrieval_report(scores, ev.relevance, "query_", ks=(10,))
