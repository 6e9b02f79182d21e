"""Creatives as versioned artifacts: one version per request under `creatives/product/<key>`
(retention keeps the newest `storage.keep_versions` per product), one per batch run under
`creatives/batch`; each holds the images and `creatives.json` (formats, sizes, checks)."""
from __future__ import annotations

import hashlib
import re

from mmray.creative.studio import Creative
from mmray.storage import ArtifactError, ArtifactStore

BATCH_KIND = "creatives/batch"
RECORDS = "creatives.json"
FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\.(png|jpg)")
KEY_RE = re.compile(r"[A-Za-z0-9_.-]{0,40}-[0-9a-f]{10}")
MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg"}


def product_key(product_id: str) -> str:
    """A path-safe, unique folder name for any product id: its safe characters + a hash."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", product_id)[:40].strip("_") or "p"
    return f"{safe}-{hashlib.sha256(product_id.encode()).hexdigest()[:10]}"


def product_kind(key: str) -> str:
    return f"creatives/product/{key}"


def file_name(fmt: str, image_format: str) -> str:
    return f"{fmt}.{'jpg' if image_format == 'JPEG' else 'png'}"


def record(creative: Creative, name: str) -> dict:
    return {"format": creative.format, "file": name, "width": creative.image.width,
            "height": creative.image.height, "style": creative.style, "checks": creative.checks,
            "passed": creative.passed}


def publish(store: ArtifactStore, product_id: str, creatives: list[Creative], image_format: str, quality: int,
            config: dict, parents: dict[str, str]) -> tuple[str, str, list[dict]]:
    """Write one version of the product's creatives; returns (key, version, records)."""
    key = product_key(product_id)
    with store.begin(product_kind(key), config=config, parents=parents) as writer:
        records = []
        for c in creatives:
            name = file_name(c.format, image_format)
            writer.write_bytes(name, c.encode(image_format, quality))
            records.append(record(c, name))
        writer.write_json(RECORDS, {"product_id": product_id, "creatives": records})
        version = writer.commit()
    return key, version.name, records


def read_creative(store: ArtifactStore, key: str, version: str, name: str) -> bytes | None:
    """The bytes of one published creative (hash-checked); None when there is no such file."""
    if not KEY_RE.fullmatch(key) or not FILE_RE.fullmatch(name):
        return None
    try:
        return store.resolve(product_kind(key), version, verify=False).read_bytes(name)
    except (ArtifactError, FileNotFoundError, OSError):
        return None
