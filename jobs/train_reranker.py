"""Train a reranker head on the current index (and the model it was built with) with Ray Train; publish it.

    python -m jobs.train_reranker --config configs/local.yaml [--head cross_attention] [--all]
    ray job submit --working-dir . -- python -m jobs.train_reranker --config configs/local.yaml

The head is published as a new version of `rerankers/<head>` (head.pt, reranker.json with the
dual encoder version it was trained against and its held-out metrics). `--all` trains the three
heads one after another (the ablation in BENCHMARKS.md); the served one is `rerank.head`.
"""
from __future__ import annotations

import argparse
import json

from mmray.config import ConfigError, load_config
from mmray.runtime import run_job, setup_logging, start_job
from mmray.storage import ArtifactError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.train_reranker", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/local.yaml", help="YAML config file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. rerank.epochs=10")
    parser.add_argument("--head", choices=["cross_attention", "concat_mlp", "weighted_average"],
                        help="the head to train (default: rerank.head)")
    parser.add_argument("--all", action="store_true", help="train all three heads")
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        from mmray.rerank.heads import HEADS
        from mmray.rerank.train import run_reranker_training

        cfg = start_job(load_config(args.config, args.set))
        for head in (HEADS if args.all else [args.head or cfg.rerank.head]):
            summary = run_reranker_training(cfg, head)
            print(format_summary(summary))
        return 0

    return run_job(body, (ConfigError, ArtifactError, FileNotFoundError, ValueError))


def format_summary(s: dict) -> str:
    lines = [f"reranker {s['head']} {s['version']} (model {s['model_version']}, index {s['index']}): "
             f"{s['train_queries']} training lists, final loss {s['final_loss']:.4f}, {s['timings_s']['total']} s"]
    for name, modes in s["held_out"].items():
        if "skipped" in modes:
            lines.append(f"{name}: skipped ({modes['skipped']})")
            continue
        lines.append(f"{name} ({next(iter(modes.values()))['queries']} queries):  nDCG@10  R@1")
        lines += [f"  {mode:<18}{m['nDCG@10']:.3f}  {m['R@1']:.3f}" for mode, m in modes.items()]
    return "\n".join(lines) + "\n" + json.dumps({"reranker": s["version"], "held_out": s["held_out"]})


if __name__ == "__main__":
    raise SystemExit(main())
