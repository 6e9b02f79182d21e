"""The whole pipeline as one Ray job with one config: preprocess -> train -> build_index -> evaluate.

    python -m jobs.pipeline --config configs/local.yaml [--set train.epochs=5] [--run-name NAME]
    ray job submit --working-dir . -- python -m jobs.pipeline --config configs/local.yaml

Each step is the job of the same name, run in this one process on one Ray connection: the index is
built with the model this run trained, and the evaluation searches that index with the held-out
queries (`jobs.evaluate`) and publishes the evaluation report. A line per step says when it starts and
how long it took; a failed step stops the run with one `error:` line, and what earlier steps published
stays published.
"""
from __future__ import annotations

import argparse
import json
import time

from jobs.evaluate import evaluate_index, format_evaluation, publish_evaluation_report
from jobs.train import format_summary
from mmray.catalog import CatalogError
from mmray.config import ConfigError, load_config
from mmray.runtime import run_job, setup_logging, start_job
from mmray.storage import ArtifactError

STEPS = ("preprocess", "train", "build_index", "evaluate")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/local.yaml", help="YAML config file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.epochs=5")
    parser.add_argument("--run-name", help="Ray Train run name (resume an interrupted training by passing its name)")
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        from mmray.catalog import list_catalog_files
        from mmray.index.build import build_index
        from mmray.preprocess import run_preprocess
        from mmray.training.trainer import run_training

        cfg = load_config(args.config, args.set)
        list_catalog_files(cfg.data.catalog)  # a missing catalog fails here, before Ray starts
        cfg = start_job(cfg)
        start, timings, out = time.time(), {}, {}

        def step(name: str, run):
            n = STEPS.index(name) + 1
            print(f"[{n}/{len(STEPS)}] {name} ...", flush=True)
            t0 = time.time()
            try:
                result = run()
            except BaseException:
                print(f"[{n}/{len(STEPS)}] {name} failed after {time.time() - t0:.1f} s", flush=True)
                raise
            timings[name] = round(time.time() - t0, 1)
            return result

        report = step("preprocess", lambda: run_preprocess(cfg))
        out["dataset"] = report["version"]
        print(f"  {report['rows_in']} rows in, {report['rows_out']} out, {report['rows_quarantined']} quarantined "
              f"-> {report['output']} ({timings['preprocess']} s)")
        summary = step("train", lambda: run_training(cfg, args.run_name))
        out["model"] = summary["version"]
        print("  " + format_summary(summary).rsplit("\n", 1)[0].replace("\n", "\n  ") + f"  ({timings['train']} s)")
        manifest = step("build_index", lambda: build_index(cfg, summary["version"]))
        out["index"] = manifest["version"]
        print(f"  index {manifest['version']}: {manifest['count']} items, {manifest['factory']}, recall@10 self-check "
              f"{manifest['recall_at_10_self_check']:.3f} ({timings['build_index']} s)")
        evaluation = step("evaluate", lambda: evaluate_index(cfg, manifest["version"]))
        print("  " + format_evaluation(evaluation, summary["held_out"]).replace("\n", "\n  ")
              + f"  ({timings['evaluate']} s)")
        out["report"] = publish_evaluation_report(cfg, evaluation)  # served by the app at /report/
        print(f"  report {out['report']}")
        timings["total"] = round(time.time() - start, 1)
        print(f"pipeline done in {timings['total']} s")
        print(json.dumps({**out, "timings_s": timings, "held_out": summary["held_out"], "evaluation": evaluation}))
        return 0

    return run_job(body, (ConfigError, CatalogError, ArtifactError, FileNotFoundError, ValueError))


if __name__ == "__main__":
    raise SystemExit(main())
