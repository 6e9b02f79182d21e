"""Embed the preprocessed catalog with the current model and publish a new index version.

    python -m jobs.build_index --config configs/local.yaml [--model artifacts/models/dual_encoder/<v>]
    ray job submit --working-dir . -- python -m jobs.build_index --config configs/local.yaml
"""
from __future__ import annotations

import argparse
import json

from mmray.config import ConfigError, load_config
from mmray.runtime import run_job, setup_logging, start_job
from mmray.storage import ArtifactError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.build_index", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/local.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--model", help="model version to embed with, e.g. v20261202-053100-123-9f3a1c "
                                        "(default: the current one)")
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        from mmray.index.build import build_index

        cfg = start_job(load_config(args.config, args.set))
        manifest = build_index(cfg, args.model)
        manifest.pop("files", None)
        manifest.pop("config", None)
        print(json.dumps(manifest, indent=2))
        return 0

    return run_job(body, (ConfigError, ArtifactError, FileNotFoundError, ValueError))


if __name__ == "__main__":
    raise SystemExit(main())
