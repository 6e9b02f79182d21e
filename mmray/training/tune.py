"""Hyper-parameter sweep with Ray Tune and ASHA early stopping.

Each trial trains in one process (world size 1) with the same `TrainState` / `run_epoch` as
the Ray Train loop and reports held-out metrics every epoch; ASHA stops the weak trials early.
Trials with locked towers share the cached tower features; unlocking image blocks trains end
to end on images (much slower on CPUs).
"""
from __future__ import annotations

import logging

from mmray.config import MmrayConfig
from mmray.dataset import current_dataset, load_items
from mmray.embedder import Embedder
from mmray.model import build_model
from mmray.storage import ArtifactStore
from mmray.training.data import train_dataset
from mmray.training.evaluate import build_eval_inputs, evaluate
from mmray.training.loop import TrainState, run_epoch
from mmray.training.trainer import fit_batch_size

log = logging.getLogger(__name__)
METRIC = "query_nDCG@10"


def trial(params: dict, cfg_json: dict, datasets: dict, eval_inputs: dict) -> None:
    """One Tune trial: apply `params` to the config, train, report per epoch."""
    from ray import tune

    cfg = MmrayConfig.model_validate(cfg_json)
    cfg.train.lr = params["lr"]
    cfg.model.init_temperature = params["init_temperature"]
    cfg.model.unlocked_image_blocks = params["unlocked_image_blocks"]
    cached = params["unlocked_image_blocks"] == 0
    ds = datasets["cached" if cached else "raw"]
    steps = max(1, ds.count() // cfg.train.batch_size)
    state = TrainState(cfg, steps)
    ev = eval_inputs["cached" if cached else "raw"]
    for epoch in range(cfg.train.epochs):
        batches = ds.iter_batches(batch_size=cfg.train.batch_size, drop_last=True, batch_format="numpy",
                                  local_shuffle_buffer_size=4 * cfg.train.batch_size, local_shuffle_seed=epoch)
        loss = run_epoch(state, batches, 0, 1, cached, epoch)
        tune.report({"epoch": epoch + 1, "loss": loss, **evaluate(state.model, ev)})


def run_sweep(cfg: MmrayConfig, lrs: list[float], temperatures: list[float], unlocked: list[int],
              max_concurrent: int = 1):
    """Grid over the three axes with ASHA on held-out nDCG@10; returns the Tune ResultGrid."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    store = ArtifactStore.from_config(cfg.storage)
    dataset = current_dataset(cfg)
    model0 = build_model(cfg.model)
    test_items = load_items(dataset, split="test")
    datasets, evals = {}, {}
    if 0 in unlocked:
        datasets["cached"] = train_dataset(cfg, dataset, cached=True)
        evals["cached"] = build_eval_inputs(test_items, Embedder(model0), cfg.index.image_weight,
                                            caption=cfg.data.caption)
    if any(u > 0 for u in unlocked):
        datasets["raw"] = train_dataset(cfg, dataset, cached=False)
        evals["raw"] = build_eval_inputs(test_items, None, cfg.index.image_weight, caption=cfg.data.caption)
    skipped = {name: ev.query_skipped for name, ev in evals.items() if ev.query_skipped or not ev.query_texts}
    if skipped:  # the sweep ranks trials by held-out query nDCG: without queries there is nothing to rank
        raise ValueError(f"cannot tune: {next(iter(skipped.values())) or 'no held-out queries'} "
                         "(raise data.holdout_fraction or use a larger catalog)")
    rows = min(ds.count() for ds in datasets.values())
    batch = fit_batch_size(cfg.train.batch_size, rows, workers=1)  # each trial trains on one worker
    if batch != cfg.train.batch_size:
        log.warning("train.batch_size=%d is larger than the %d training rows: trials use %d",
                    cfg.train.batch_size, rows, batch)
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"batch_size": batch})})
    space = {"lr": tune.grid_search(lrs), "init_temperature": tune.grid_search(temperatures),
             "unlocked_image_blocks": tune.grid_search(unlocked)}
    trainable = tune.with_resources(
        tune.with_parameters(trial, cfg_json=cfg.model_dump(mode="json"), datasets=datasets, eval_inputs=evals),
        {"cpu": 1})
    scheduler = ASHAScheduler(time_attr="epoch", max_t=cfg.train.epochs, grace_period=max(1, cfg.train.epochs // 4),
                              reduction_factor=2)
    tuner = tune.Tuner(trainable, param_space=space,
                       tune_config=tune.TuneConfig(metric=METRIC, mode="max", scheduler=scheduler,
                                                   max_concurrent_trials=max_concurrent),
                       run_config=tune.RunConfig(name="tune-dual_encoder", verbose=0,
                                                 storage_path=store.path("ray_results"), storage_filesystem=store.fs))
    return tuner.fit()

