"""Sweep learning rate, initial temperature and unlocked image blocks with Ray Tune + ASHA.

    python -m jobs.tune --config configs/local.yaml [--lr 3e-4,1e-3,3e-3] [--temperature 0.05,0.1]
                        [--unlocked-blocks 0] [--set train.epochs=10]
    ray job submit --working-dir . -- python -m jobs.tune --config configs/local.yaml

Prints every trial (stopped early or not) and the best configuration by held-out nDCG@10.
"""
from __future__ import annotations

import argparse

from mmray.config import ConfigError, load_config
from mmray.runtime import run_job, setup_logging, start_job


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.tune", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/local.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--lr", type=_floats, default=[3e-4, 1e-3, 3e-3])
    parser.add_argument("--temperature", type=_floats, default=[0.05, 0.1])
    parser.add_argument("--unlocked-blocks", type=lambda s: [int(x) for x in s.split(",")], default=[0],
                        help="comma list; values > 0 train image blocks end to end (slow on CPU)")
    parser.add_argument("--max-concurrent", type=int, default=1)
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        from mmray.training.tune import METRIC, run_sweep

        cfg = start_job(load_config(args.config, args.set))
        results = run_sweep(cfg, args.lr, args.temperature, args.unlocked_blocks, args.max_concurrent)
        print(f"{'lr':>8} {'temp':>6} {'unlocked':>8} {'epochs':>6} {METRIC:>14}")
        for r in results:
            c, m = r.config, r.metrics or {}
            print(f"{c['lr']:>8.0e} {c['init_temperature']:>6.2f} {c['unlocked_image_blocks']:>8d} "
                  f"{m.get('epoch', 0):>6} {m.get(METRIC, float('nan')):>14.4f}")
        best = results.get_best_result(metric=METRIC, mode="max")
        print(f"best: {best.config} -> {METRIC} {best.metrics[METRIC]:.4f}")
        return 0

    return run_job(body, (ConfigError, FileNotFoundError, ValueError))


if __name__ == "__main__":
    raise SystemExit(main())
