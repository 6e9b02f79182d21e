"""Shared fixtures: one Ray session for the whole run, synthetic images, small catalogs in tmp_path.

Run inside a network namespace with only loopback up, e.g.
    ip netns add mmA; ip netns exec mmA ip link set lo up
    ip netns exec mmA .venv/bin/pytest -q tests/
"""
from __future__ import annotations

import atexit
import csv
import io
import json
import os
import shutil
import socket
import struct
import tempfile
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmray.config.serve import REPLICA_ENV

ROOT = Path(__file__).resolve().parents[1]
LUMA_CATALOG = ROOT / "data" / "luma" / "catalog.jsonl"
LOCAL_CONFIG = ROOT / "configs" / "local.yaml"


# --------------------------------------------------------------------------- S3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A real S3-compatible server (moto's, on loopback) reached exactly as users reach S3 or MinIO:
# through the standard AWS_* variables. It starts here, at import, bound to its port before any Ray
# process can take that port, and the variables are set before Ray starts, so Ray workers and Serve
# replicas inherit them.
def _start_s3_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    atexit.register(server.stop)
    host, port = server.get_host_and_port()
    return f"http://{host}:{port}"


S3_ENDPOINT = _start_s3_server()
os.environ.update(AWS_ENDPOINT_URL=S3_ENDPOINT, AWS_ACCESS_KEY_ID="mmray-test",
                  AWS_SECRET_ACCESS_KEY="mmray-test-secret", AWS_DEFAULT_REGION="us-east-1",
                  AWS_EC2_METADATA_DISABLED="true")
# Serve replicas run as `make serve` runs them (user code on the replica's own event loop, ...):
# Ray's processes inherit this environment.
os.environ.update(REPLICA_ENV)
os.environ.setdefault("MMRAY_CACHE_DIR", tempfile.mkdtemp(prefix="mmray-test-cache-"))


@pytest.fixture(scope="session")
def s3_server() -> str:
    """moto's S3 server on 127.0.0.1 for the whole run; its endpoint URL."""
    return S3_ENDPOINT


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A new, empty bucket; yields its name."""
    import boto3

    name = f"mmray-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


def publish_model(store, model) -> str:
    """Publish `model` (e.g. an untrained tiny one) as the current dual encoder; returns its version."""
    from mmray.model import save_checkpoint
    from mmray.storage import model_kind

    with tempfile.TemporaryDirectory() as folder, store.begin(model_kind(), config={"test": True}) as writer:
        save_checkpoint(model, folder)
        writer.upload_dir(folder)
        return writer.commit().name


# --------------------------------------------------------------------------- Ray


# A job run as a subprocess starts its own Ray unless a test names a cluster (RAY_ADDRESS=<gcs>): a plain
# ray.init() would join whatever head /tmp/ray/ray_current_cluster names, e.g. `make quickstart`'s app
# still serving on this machine, whose CPUs it holds (that made a CI run wait out its timeouts).
os.environ["RAY_ADDRESS"] = "local"

# Where that Ray instance's metrics agent serves Prometheus text (http://127.0.0.1:<port>/metrics).
METRICS_PORT = _free_port()


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance (2 CPUs, no dashboard) shared by every test that runs a pipeline."""
    import ray

    if not ray.is_initialized():  # address="local": never a head a `ray start` on this machine left running
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _metrics_export_port=METRICS_PORT)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    yield ray
    ray.shutdown()


# --------------------------------------------------------------------------- images


def deploy_app(cfg_path: str, port: int, name: str = "mmray", ready_s: float = 120) -> str:
    """Start Serve on 127.0.0.1:`port`, run the app of `cfg_path` and wait for /readyz; its base URL.
    Not ready in `ready_s`: Serve is shut down and the test fails with the last answer."""
    import time

    import httpx
    from ray import serve

    from deployments.app import build_app

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"config": str(cfg_path)}), name=name, route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    deadline, last = time.time() + ready_s, None
    while time.time() < deadline:
        try:
            r = httpx.get(base + "/readyz", timeout=10)
            if r.status_code == 200:
                return base
            last = r.text
        except httpx.HTTPError as e:
            last = repr(e)
        time.sleep(0.5)
    serve.shutdown()
    pytest.fail(f"app not ready: {last}")


def jpeg_bytes(width: int = 64, height: int = 48, seed: int = 0, quality: int = 90) -> bytes:
    """A noisy RGB JPEG (noise, so truncating it cuts real scan data)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of width x height zeros: a few KB on disk, width*height pixels decoded.

    Written chunk by chunk so building it never allocates the decoded image.
    """
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    row = 1 + (width + 7) // 8  # filter byte + packed bits
    rows_per_piece = 512
    comp = zlib.compressobj(9)
    piece = bytes(row * rows_per_piece)
    parts = [comp.compress(piece) for _ in range(height // rows_per_piece)]
    parts.append(comp.compress(bytes(row * (height % rows_per_piece))))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def bad_images() -> dict[str, bytes]:
    """Synthetic bad image files, built once per session."""
    good = jpeg_bytes(320, 240, seed=1)
    return {
        "truncated.jpg": good[: len(good) // 2],
        "not_image.jpg": b"<html><body>404 Not Found</body></html>\n",
        "bomb.png": bomb_png(20_000, 20_000),      # 400 Mpx: over the configured cap
        "bomb_huge.png": bomb_png(30_000, 30_000),  # 900 Mpx: over Pillow's own hard cap too
    }


# --------------------------------------------------------------------------- catalogs


def luma_rows(n: int | None = None) -> list[dict]:
    """The first `n` rows of the shipped catalog."""
    with open(LUMA_CATALOG, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows if n is None else rows[:n]


def copy_luma_images(rows: list[dict], folder: Path) -> None:
    """Copy the images `rows` reference next to a catalog written in `folder`."""
    for row in rows:
        for ref in row["images"]:
            dst = folder / ref
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(LUMA_CATALOG.parent / ref, dst)


def write_jsonl(path: Path, rows: list[dict | bytes | str]) -> Path:
    """Rows as JSON lines; a bytes item is written verbatim (for broken lines), a str as its own line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for row in rows:
            if isinstance(row, bytes):
                f.write(row.rstrip(b"\n") + b"\n")
            elif isinstance(row, str):
                f.write(row.encode("utf-8") + b"\n")
            else:
                f.write(json.dumps(row).encode("utf-8") + b"\n")
    return path


CSV_COLUMNS = ["id", "product_id", "title", "description", "category", "gender", "color", "sizes", "tags",
               "attributes", "price", "images"]


def write_csv(path: Path, rows: list[dict], bom: bool = False) -> Path:
    """Rows as CSV: sizes and images as `a|b` pipe lists, tags and attributes as JSON."""
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            cells = {}
            for key in CSV_COLUMNS:
                value = row.get(key)
                if value is None:
                    cells[key] = ""
                elif key in ("sizes", "images"):
                    cells[key] = "|".join(value)
                elif key in ("tags", "attributes"):
                    cells[key] = json.dumps(value)
                else:
                    cells[key] = value
            writer.writerow(cells)
    return path
