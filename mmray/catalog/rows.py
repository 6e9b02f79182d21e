"""Row validation: one parsed row -> one record, ok or quarantined with its reason; the split."""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from mmray.catalog.captions import build_captions, build_product_text
from mmray.catalog.schema import KNOWN_COLUMNS
from mmray.catalog.text import clean_text
from mmray.config import DataConfig


def normalize_row(row: dict[str, Any], cfg: DataConfig) -> dict[str, Any]:
    """Validate one parsed row; the result has `status` ok or quarantined (with `reason`)."""
    out: dict[str, Any] = {"status": "ok", "reason": "", "detail": ""}
    unknown = sorted(str(k) for k in row if k not in KNOWN_COLUMNS)
    out["unknown_columns"] = unknown

    def reject(reason: str, detail: str) -> dict[str, Any]:
        out.update(status="quarantined", reason=reason, detail=detail)
        return out

    rid = row.get("id")
    if isinstance(rid, (int, float)) and not isinstance(rid, bool) and not (isinstance(rid, float) and math.isnan(rid)):
        rid = str(int(rid)) if float(rid).is_integer() else str(rid)
    out["id"] = rid.strip() if isinstance(rid, str) else None
    if not out["id"]:
        return reject("missing_id", "the row has no id")
    pid = row.get("product_id")
    out["product_id"] = str(pid).strip() if pid not in (None, "") else out["id"]

    title, html_t = clean_text(row.get("title"), 1000)
    description, html_d = clean_text(row.get("description"), cfg.max_text_chars)
    out.update(title=title.replace("\n", " "), description=description, html_stripped=html_t or html_d)
    if not out["title"]:
        return reject("empty_title", "title is missing or empty after cleaning")

    for key in ("category", "gender", "color"):
        value = row.get(key)
        out[key] = clean_text(value, 500)[0].replace("\n", " ") if value not in (None, "") else ""
    for key in ("sizes", "tags"):
        value = row.get(key) or []
        if not isinstance(value, (list, tuple)):
            return reject("invalid_field", f"{key} must be a list of strings")
        out[key] = [clean_text(v, 200)[0] for v in value if v not in (None, "")]

    attributes = row.get("attributes") or {}
    if not isinstance(attributes, dict):
        return reject("invalid_field", "attributes must be an object of name -> values")
    attrs = {}
    for k, v in attributes.items():
        if v is None:  # a null field (Parquet structs fill keys a row lacks) is an absent attribute
            continue
        values = v if isinstance(v, (list, tuple)) else [v]
        attrs[clean_text(k, 100)[0]] = [clean_text(x, 200)[0] for x in values if x not in (None, "")]
    out["attributes_json"] = json.dumps(attrs, sort_keys=True, ensure_ascii=False)

    price = row.get("price")
    if price in (None, ""):
        out["price"] = math.nan
    else:
        try:
            out["price"] = float(price)
        except (TypeError, ValueError):
            return reject("invalid_price", f"price {price!r} is not a number")
        if not math.isfinite(out["price"]) or out["price"] < 0:
            return reject("invalid_price", f"price must be finite and >= 0, got {price!r}")

    images = row.get("images")
    if images is None or (isinstance(images, str) and not images.strip()):
        images = []
    elif isinstance(images, str):
        images = [images]
    if not isinstance(images, (list, tuple)) or not all(isinstance(i, str) and i.strip() for i in images):
        return reject("no_images", "images must be a list of paths")
    if not images and cfg.require_images:
        return reject("no_images", "images must be a non-empty list of paths (data.require_images)")
    # Only tidied here: whether a reference may be read is decided where it is resolved (refs.py).
    out["image_refs"] = [i.strip() for i in images[: cfg.max_images_per_item]]

    if unknown and cfg.unknown_columns == "quarantine":
        return reject("unknown_columns", f"columns outside the schema: {', '.join(unknown)}")
    out["split"] = assign_split(out["product_id"], cfg.holdout_fraction, cfg.seed)
    out["captions"] = build_captions(out, attrs, cfg.caption, cfg.seed)
    out["text"] = build_product_text(out, attrs, cfg.caption)
    return out


def assign_split(product_id: str, holdout_fraction: float, seed: int) -> str:
    """Deterministic product-level split: every variant of a product lands on the same side."""
    h = int.from_bytes(hashlib.sha1(f"{seed}:{product_id}".encode()).digest()[:8], "big") / 2**64
    return "test" if h < holdout_fraction else "train"
