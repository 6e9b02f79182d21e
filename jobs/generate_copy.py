"""Write product copy for the whole catalog with the Copywriter the server uses (Ray Data) and
publish every output with its guardrail verdict as Parquet in a new version of copy/<dataset>.

    python -m jobs.generate_copy --config configs/local.yaml [--kinds title,description] [--variants 2]
    ray job submit --working-dir . -- python -m jobs.generate_copy --config configs/local.yaml --set copy.engine=transformers

With `copy.engine: vllm` the generation runs on ray.data.llm's vLLM processor, which needs vLLM: run it
with the LLM environment's Python (`make llm-env`; `.llm-venv/bin/python -m jobs.generate_copy ...`).
"""
from __future__ import annotations

import argparse
import json

from mmray.config import ConfigError, load_config
from mmray.copy.engines import EngineError
from mmray.runtime import run_job, setup_logging, start_job
from mmray.storage import ArtifactError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.generate_copy", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/local.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--kinds", default="title,description,bullets,ad")
    parser.add_argument("--variants", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None, help="only the first N products")
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        from mmray.copy.batch import generate_copy

        cfg = start_job(load_config(args.config, args.set))
        manifest = generate_copy(cfg, args.kinds.split(","), args.variants, args.limit)
        manifest.pop("files", None)
        manifest.pop("config", None)
        print(json.dumps(manifest, indent=2))
        return 0

    return run_job(body, (ConfigError, ArtifactError, EngineError, FileNotFoundError, ValueError))


if __name__ == "__main__":
    raise SystemExit(main())
