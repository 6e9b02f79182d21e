"""Train the dual encoder on the preprocessed catalog with Ray Train; print held-out metrics.

    python -m jobs.train --config configs/local.yaml [--set train.epochs=5] [--run-name NAME]
    ray job submit --working-dir . -- python -m jobs.train --config configs/local.yaml

Re-running with the same --run-name resumes from that run's latest checkpoint.
"""
from __future__ import annotations

import argparse
import json

from mmray.config import ConfigError, load_config
from mmray.runtime import run_job, setup_logging, start_job
from mmray.storage import ArtifactError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/local.yaml", help="YAML config file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=1e-3")
    parser.add_argument("--run-name", help="Ray Train run name (resume an interrupted run by passing its name)")
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        from mmray.training.trainer import run_training

        cfg = start_job(load_config(args.config, args.set))
        summary = run_training(cfg, args.run_name)
        print(format_summary(summary))
        return 0

    return run_job(body, (ConfigError, ArtifactError, FileNotFoundError, ValueError))


def format_summary(s: dict) -> str:
    rows = [("trained", s["held_out"]), ("untrained projections", s["untrained_projections"]), ("BM25", s["bm25"])]
    lines = [f"model {s['version']}: {s['train_rows']} training rows, {s['epochs']} epochs, "
             f"{s['workers']} workers, {s['timings_s']['total']} s",
             f"held-out queries ({s['test_items']} items):  {'Recall@10':>9}  {'nDCG@10':>8}"]
    lines += [f"  {name:<28}{_metric(m, 'query_R@10'):>9}  {_metric(m, 'query_nDCG@10'):>8}" for name, m in rows]
    h = s["held_out"]
    if h.get("query_skipped"):
        lines.append(f"  skipped: {h['query_skipped']}")
    t2i, i2t = ("/".join(_metric(h, f"{d}_R@{k}") for k in (1, 5, 10)) for d in ("t2i", "i2t"))
    lines.append(f"held-out pairs: t2i R@1/5/10 {t2i}  i2t R@1/5/10 {i2t}  "
                 f"zero-shot category acc {_metric(h, 'zeroshot_acc')}")
    for key in ("image_skipped", "skipped"):
        if h.get(key):
            lines.append(f"  skipped: {h[key]}")
    return "\n".join(lines) + "\n" + json.dumps({"model": s["version"], "held_out": h})


def _metric(m: dict, key: str) -> str:
    """A metric to 3 decimals, or n/a where thin data left it out."""
    return f"{m[key]:.3f}" if isinstance(m.get(key), (int, float)) else "n/a"


if __name__ == "__main__":
    raise SystemExit(main())
