"""Delete behaviour events older than `recommend.retention_days` from the event store.

    python -m jobs.prune_events --config configs/local.yaml

Reads already ignore expired events; this job removes them from the database (on SQLite the WAL
is checkpointed afterwards, so the deleted rows leave the files too). Run it daily (cron, a Kubernetes
CronJob). Needs the pseudonymisation key like the app does (`MMRAY_EVENTS_KEY` or the secret file).
"""
from __future__ import annotations

import argparse
import json

from mmray.config import ConfigError, load_config
from mmray.runtime import run_job, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.prune_events", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/local.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        from mmray.recommend.events import EventStore

        store = EventStore.from_config(load_config(args.config, args.set).recommend)
        try:
            deleted = store.prune()
            print(json.dumps({"deleted": deleted, "remaining": store.count(),
                              "retention_days": store.cfg.retention_days}))
        finally:
            store.close()
        return 0

    return run_job(body, (ConfigError, ValueError, OSError))


if __name__ == "__main__":
    raise SystemExit(main())
