"""Train the SASRec sequence ranker on the event store's histories with Ray Train; publish it.

    python -m jobs.train_recommender --config configs/local.yaml [--set recommend.sasrec.epochs=50]
    ray job submit --working-dir . -- python -m jobs.train_recommender --config configs/local.yaml

Sequences: every user's events within retention (`recommend.event_store`), oldest first, over the
items of the current index; item embeddings start from that index's multimodal item vectors. The
model is published as a new version of `models/sasrec`; the app ranks with it when
`recommend.ranker: sasrec` (it loads the version current when it loads the index).
"""
from __future__ import annotations

import argparse
import json

from mmray.config import ConfigError, load_config
from mmray.runtime import run_job, setup_logging, start_job
from mmray.storage import ArtifactError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.train_recommender", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/local.yaml", help="YAML config file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override, e.g. recommend.sasrec.epochs=50")
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        from mmray.recommend.train import load_training_data, run_recommender_training

        cfg = load_config(args.config, args.set)
        data = load_training_data(cfg)  # no events, too few: a message before Ray starts
        s = run_recommender_training(start_job(cfg), data)
        print(f"sasrec {s['version']} (index {s['index']}, model {s['model_version']}): {s['sequences']} sequences, "
              f"{s['events']} events, {s['items']} training items of {s['index_items']}, "
              f"final loss {s['final_loss']:.4f}, {s['timings_s']['total']} s")
        print(json.dumps({"sasrec": s["version"], "history": s["history"]}))
        return 0

    return run_job(body, (ConfigError, ArtifactError, FileNotFoundError, ValueError))


if __name__ == "__main__":
    raise SystemExit(main())
