"""Validate and clean a catalog into training/serving Parquet with Ray Data.

    python -m jobs.preprocess --config configs/local.yaml [--set data.catalog=path/to/catalog.jsonl]
    ray job submit --working-dir . -- python -m jobs.preprocess --config configs/local.yaml
"""
from __future__ import annotations

import argparse
import json

from mmray.catalog import CatalogError
from mmray.config import ConfigError, load_config
from mmray.runtime import run_job, setup_logging, start_job
from mmray.storage import ArtifactError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.preprocess", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/local.yaml", help="YAML config file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. data.catalog=x")
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        from mmray.catalog import list_catalog_files
        from mmray.preprocess import run_preprocess

        cfg = load_config(args.config, args.set)
        list_catalog_files(cfg.data.catalog)  # a missing catalog fails here, before Ray starts
        cfg = start_job(cfg)
        report = run_preprocess(cfg)
        print(json.dumps(report, indent=2))
        return 0

    return run_job(body, (ConfigError, CatalogError, ArtifactError))


if __name__ == "__main__":
    raise SystemExit(main())
