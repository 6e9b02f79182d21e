"""One Ray Train fit for the small models trained beside the dual encoder (the reranker heads, SASRec):
CPU workers, checkpoints under the store's `ray_results/`, a run without a checkpoint is an error."""
from __future__ import annotations

from collections.abc import Callable


def fit_on_workers(loop: Callable, config: dict, *, num_workers: int, cpus_per_worker: float, store, run_name: str,
                   what: str):
    """`TorchTrainer(loop, config)` on `num_workers` CPU workers; the `ray.train.Result` with its checkpoint."""
    import ray.train
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        loop, train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, resources_per_worker={"CPU": cpus_per_worker}),
        run_config=ray.train.RunConfig(name=run_name, storage_path=store.path("ray_results"), storage_filesystem=store.fs))
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{what} training produced no checkpoint: {result.error}")
    return result
