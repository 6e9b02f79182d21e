"""Banners and ad creatives for every product of the current index, in every requested format.

    python -m jobs.generate_creatives --config configs/local.yaml [--formats 1200x628,1080x1920] [--limit 20]
    ray job submit --working-dir . -- python -m jobs.generate_creatives --config configs/local.yaml
"""
from __future__ import annotations

import argparse
import json

from mmray.config import ConfigError, load_config
from mmray.runtime import run_job, setup_logging, start_job
from mmray.storage import ArtifactError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.generate_creatives", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/local.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--formats", help="comma-separated formats (default: every creative.formats entry)")
    parser.add_argument("--style", help="gradient, pattern, palette or diffusion (default: creative.style)")
    parser.add_argument("--products", help="comma-separated product or item ids (default: all)")
    parser.add_argument("--limit", type=int, help="at most this many products")
    parser.add_argument("--no-copy", action="store_true", help="no headline (price and button only)")
    parser.add_argument("--concurrency", type=int, default=1, help="rendering actors")
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        from mmray.creative import CreativeRequestError
        from mmray.creative.batch import generate_creatives

        cfg = start_job(load_config(args.config, args.set))
        try:
            manifest = generate_creatives(cfg, args.formats.split(",") if args.formats else None, args.style,
                                          args.products.split(",") if args.products else None, args.limit,
                                          not args.no_copy, args.concurrency)
        except CreativeRequestError as e:
            raise ValueError(f"{e.code}: {e.message}") from None
        print(json.dumps(manifest, indent=2))
        return 0

    return run_job(body, (ConfigError, ArtifactError, FileNotFoundError, ValueError))


if __name__ == "__main__":
    raise SystemExit(main())
