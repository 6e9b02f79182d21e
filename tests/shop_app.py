"""A small served app for the page and CLI tests: ~40 Luma rows at 64 px, an untrained tiny model, an
index, and the Serve app on a free loopback port (the same build as tests/test_serve.py's fixture).

The artifacts are built once per test session and shared; each module deploys the app itself.
"""
from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path

import yaml
from conftest import LUMA_CATALOG, deploy_app, publish_model

_BUILT: dict[str, object] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shop_rows() -> list[dict]:
    """The first 12 rows (several variants of a few products) plus every 15th row after them."""
    lines = LUMA_CATALOG.read_text().splitlines()
    rows = [json.loads(line) for line in lines[:12] + lines[12::15][:28]]
    for r in rows:
        r["images"] = [str(LUMA_CATALOG.parent / p) for p in r["images"]]
    return rows


@dataclass
class ShopApp:
    base: str
    cfg_path: str
    root: str
    rows: list[dict]
    version: str


def build_artifacts(tmp: Path, port: int) -> tuple[str, str, list[dict], str]:
    """(config path, storage root, rows, index version): preprocess, tiny model, index (once per session)."""
    if "built" in _BUILT:
        cfg_path, root, rows, version = _BUILT["built"]
        raw = yaml.safe_load(Path(cfg_path).read_text())
        raw["serve"]["port"] = port
        Path(cfg_path).write_text(yaml.safe_dump(raw))
        return cfg_path, root, rows, version
    from mmray.config import ModelConfig, load_config
    from mmray.index.build import build_index
    from mmray.model import build_model
    from mmray.preprocess import run_preprocess
    from mmray.storage import ArtifactStore

    rows = shop_rows()
    catalog = tmp / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {
        "data": {"catalog": str(catalog), "name": "luma", "image_size": 64, "holdout_fraction": 0.0,
                 "image_root": str(LUMA_CATALOG.parent)},
        "model": {"kind": "tiny", "image_size": 64, "embed_dim": 32},
        "index": {"embed_batch_size": 16, "embed_concurrency": 1},
        "serve": {"host": "127.0.0.1", "port": port, "max_inflight": 8, "request_timeout_s": 30,
                  "retry_after_s": 1, "ingress": {"num_cpus": 0.5}},
        "storage": {"root": str(tmp / "artifacts")},
    }
    cfg_path = tmp / "shop.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    cfg = load_config(cfg_path)
    run_preprocess(cfg)
    publish_model(ArtifactStore.from_config(cfg.storage),
                  build_model(ModelConfig(kind="tiny", image_size=64, embed_dim=32), pretrained=False))
    manifest = build_index(cfg)
    _BUILT["built"] = (str(cfg_path), raw["storage"]["root"], rows, manifest["version"])
    return _BUILT["built"]


def serve_shop(tmp: Path):
    """Deploy the app; yields a ShopApp, shuts Serve down after."""
    from ray import serve

    port = free_port()
    cfg_path, root, rows, version = build_artifacts(tmp, port)
    base = deploy_app(cfg_path, port)
    try:
        yield ShopApp(base, cfg_path, root, rows, version)
    finally:
        serve.shutdown()
