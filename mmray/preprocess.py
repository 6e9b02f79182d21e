"""Catalog preprocessing on Ray Data: parse and validate rows, decode and resize images, dedupe.

Output, under `<storage.root>/datasets/<data.name>/` (written to a staging folder, then moved):
  items/         Parquet shards: one row per usable item, resized images as encoded bytes
  quarantine/    Parquet: every rejected row, with `reason` and `detail` (also quarantine.jsonl)
  report.json    rows in / out / quarantined by reason, duplicates, timings
  config.yaml    the config that made it
Rows in = rows out + rows quarantined, checked before anything is published.
"""
from __future__ import annotations

import collections
import json
import logging
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from mmray.catalog import (
    RECORD_SCHEMA,
    CatalogError,
    catalog_folder,
    empty_record,
    iter_raw_rows,
    list_catalog_files,
    normalize_row,
    resolve_image_ref,
)
from mmray.config import DataConfig, MmrayConfig
from mmray.images import ImageRejected, content_hash, decode_image, encode_image, read_image_bytes
from mmray.storage import publish, staging_dir, write_json

log = logging.getLogger(__name__)

ITEM_SCHEMA = RECORD_SCHEMA.append(pa.field("images", pa.list_(pa.binary()))) \
    .append(pa.field("image_sha256", pa.list_(pa.string())))
QUARANTINE_DROP = ["images", "image_sha256", "captions", "text"]
BLOCKS_PER_CPU = 1
MAX_ROWS_PER_BLOCK = 5000


# --------------------------------------------------------------------------- stage 1: rows


def parse_files(batch: pa.Table, cfg: DataConfig) -> pa.Table:
    """Ray Data UDF: catalog files (one per row of `batch`) -> validated records."""
    records = []
    for path, file_index in zip(batch["path"].to_pylist(), batch["file_index"].to_pylist()):
        name = path.rsplit("/", 1)[-1]
        try:
            rows = list(iter_raw_rows(path))
        except Exception as e:  # an unreadable file (e.g. corrupt Parquet) becomes one quarantined record  # noqa: BLE001
            rec = empty_record()
            rec.update(pos=file_index << 32, source=name, status="quarantined", reason="unreadable_file",
                       detail=f"{type(e).__name__}: {e}"[:500], raw="")
            records.append(rec)
            continue
        for line, row, raw, error in rows:
            rec = empty_record()
            rec.update(pos=(file_index << 32) | line, source=f"{name}:{line}", raw="")
            if error is not None:
                reason, _, detail = error.partition(": ")
                rec.update(status="quarantined", reason=reason, detail=detail, raw=raw)
            else:
                rec.update(normalize_row(row, cfg))
                if rec["status"] != "ok":
                    rec["raw"] = raw
            records.append(rec)
    return pa.Table.from_pylist(records, schema=RECORD_SCHEMA)


# --------------------------------------------------------------------------- stage 2: images


def process_images(batch: pa.Table, cfg: DataConfig, image_root: str, duplicate_ids: dict[str, int]) -> pa.Table:
    """Ray Data UDF: read, check, decode, resize and hash every image of every ok record."""
    rows = batch.to_pylist()
    for rec in rows:
        rec.update(images=[], image_sha256=[])
        if rec["status"] != "ok":
            continue
        if rec["id"] in duplicate_ids and duplicate_ids[rec["id"]] != rec["pos"]:
            rec.update(status="quarantined", reason="duplicate_id",
                       detail=f"id {rec['id']!r} already used by an earlier row", raw="")
            continue
        try:
            for ref in rec["image_refs"]:
                encoded, sha = process_image_ref(resolve_image_ref(ref, image_root), cfg)
                rec["images"].append(encoded)
                rec["image_sha256"].append(sha)
        except ImageRejected as e:
            rec.update(status="quarantined", reason=e.reason, detail=f"{ref}: {e.detail}"[:500],
                       images=[], image_sha256=[])
    return pa.Table.from_pylist(rows, schema=ITEM_SCHEMA)


def process_image_ref(ref: str, cfg: DataConfig) -> tuple[bytes, str]:
    """One image reference -> (resized encoded bytes, SHA-256 of the original file)."""
    data = read_image_bytes(ref, cfg.max_image_bytes)
    decoded = decode_image(data, max_side=cfg.image_size, allowed_formats=list(cfg.allowed_image_formats),
                           max_pixels=cfg.max_image_pixels, max_bytes=cfg.max_image_bytes)
    return encode_image(decoded.image, cfg.image_format, cfg.image_quality), content_hash(data)


# --------------------------------------------------------------------------- stage 3: groups


def find_duplicate_groups(rows: list[tuple[str, str, list[str]]]) -> dict[str, str]:
    """Items that share a product or an identical image file are one group: never each other's negatives.

    `rows` is (id, product_id, image SHA-256s); returns id -> group for every item. Union-find over
    products and image hashes (a few lines; networkx would be a dependency for this alone).
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:  # the root is always a product node, so groups are named by product id
            keep, drop = sorted((ra, rb), key=lambda n: (not n.startswith("p:"), n))
            parent[drop] = keep

    for _, product, hashes in rows:
        for h in hashes:
            union("p:" + product, "h:" + h)
    return {item: find("p:" + product)[2:] for item, product, _ in rows}


# --------------------------------------------------------------------------- the job


def run_preprocess(cfg: MmrayConfig, output: str | None = None) -> dict[str, Any]:
    """Run the whole pipeline; returns the report (also written to report.json)."""
    import ray

    start = time.time()
    data = cfg.data
    files = list_catalog_files(data.catalog)
    image_root = data.image_root or catalog_folder(data.catalog)
    output = output or cfg.storage.path("datasets", data.name)
    log.info("preprocess: %d catalog file(s) from %s -> %s", len(files), data.catalog, output)

    files_ds = ray.data.from_items([{"path": p, "file_index": i} for i, p in enumerate(files)],
                                   override_num_blocks=len(files))
    records = files_ds.map_batches(parse_files, batch_size=1, batch_format="pyarrow",
                                   fn_kwargs={"cfg": data}).materialize()
    rows_in = records.count()
    if rows_in == 0:
        raise CatalogError(f"catalog is empty: no rows in {data.catalog}")
    t_rows = time.time()

    duplicate_ids = _first_position_of_duplicates(records.filter(expr="status == 'ok'").select_columns(["id", "pos"]))

    # Blocks: enough to keep every CPU busy, not one per batch (each block is a task in every
    # later step; 125 blocks of 16 rows cost more in scheduling than the images themselves).
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    wanted = max(BLOCKS_PER_CPU * cpus, -(-rows_in // MAX_ROWS_PER_BLOCK))  # and bounded block memory
    num_blocks = max(1, min(-(-rows_in // data.batch_size), wanted))
    items = records.repartition(num_blocks).map_batches(
        process_images, batch_size=data.batch_size, batch_format="pyarrow", concurrency=data.concurrency,
        fn_kwargs={"cfg": data, "image_root": image_root, "duplicate_ids": duplicate_ids}).materialize()
    t_images = time.time()

    # One pass over the small columns of the materialised blocks (zero-copy reads), instead of
    # re-running filters over the dataset for keys, counts, quarantine and stats.
    small = pa.concat_tables([ray.get(ref).drop_columns(["images"]) for ref in items.to_arrow_refs()])
    is_ok = pc.equal(small["status"], "ok")
    ok_table = small.filter(is_ok)
    keys = list(zip(ok_table["id"].to_pylist(), ok_table["product_id"].to_pylist(),
                    ok_table["image_sha256"].to_pylist()))
    groups = find_duplicate_groups(keys)
    product_of = {item: product for item, product, _ in keys}
    merged = {item: g for item, g in groups.items() if g != product_of[item]}
    quarantine = small.filter(pc.invert(is_ok)).drop_columns([c for c in QUARANTINE_DROP if c in small.column_names])
    q_rows = quarantine.to_pylist()

    staging = staging_dir(output)
    rows_out = ok_table.num_rows
    if rows_out:
        (items.filter(expr="status == 'ok'").map_batches(_add_group, batch_format="pyarrow", fn_kwargs={"merged": merged})
         .write_parquet(f"{staging}/items", min_rows_per_file=data.rows_per_shard))
    if q_rows:
        ray.data.from_arrow(quarantine).write_parquet(f"{staging}/quarantine")
    _write_jsonl(f"{staging}/quarantine.jsonl", q_rows)

    stats = _item_stats(ok_table)
    report = {
        "catalog": data.catalog,
        "files": len(files),
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_quarantined": len(q_rows),
        "quarantined_by_reason": dict(collections.Counter(r["reason"] for r in q_rows).most_common()),
        "duplicate_ids": sum(1 for r in q_rows if r["reason"] == "duplicate_id"),
        "duplicate_image_items": sum(1 for k, _, _ in keys if k in merged),
        "groups": len(set(groups.values())),
        **stats,
        "timings_s": {"rows": round(t_rows - start, 2), "images": round(t_images - t_rows, 2),
                      "total": round(time.time() - start, 2)},
        "output": output,
    }
    if rows_in != rows_out + len(q_rows):
        raise RuntimeError(f"row accounting failed: {rows_in} in != {rows_out} out + {len(q_rows)} quarantined")
    write_json(f"{staging}/report.json", report)
    _write_text(f"{staging}/config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    publish(staging, output)
    return report


def _first_position_of_duplicates(ids_ds) -> dict[str, int]:
    """id -> position of its first row, for ids used more than once.

    Grouped with pyarrow in the driver over the (id, pos) columns only: Ray Data's groupby
    starts a 200-partition hash shuffle that costs ~5 s even for a few thousand ids.
    """
    import ray

    refs = ids_ds.to_arrow_refs()
    if not refs:
        return {}
    table = pa.concat_tables([ray.get(ref) for ref in refs])
    g = table.group_by("id").aggregate([("pos", "count"), ("pos", "min")])
    g = g.filter(pc.greater(g["pos_count"], 1))
    return dict(zip(g["id"].to_pylist(), g["pos_min"].to_pylist()))


def _add_group(batch: pa.Table, merged: dict[str, str]) -> pa.Table:
    ids, products = batch["id"].to_pylist(), batch["product_id"].to_pylist()
    return batch.append_column("group", pa.array([merged.get(i, p) for i, p in zip(ids, products)], pa.string()))


def _item_stats(ok: pa.Table) -> dict[str, Any]:
    unknown = collections.Counter()
    for cols in ok["unknown_columns"].to_pylist():
        unknown.update(cols)
    splits = collections.Counter(ok["split"].to_pylist())
    return {"images_out": int(pc.sum(pc.list_value_length(ok["image_refs"])).as_py() or 0),
            "html_stripped_rows": int(pc.sum(ok["html_stripped"]).as_py() or 0),
            "split": {"train": splits["train"], "test": splits["test"]},
            "unknown_columns": dict(unknown)}


def _write_jsonl(uri: str, rows: list[dict]) -> None:
    _write_text(uri, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))


def _write_text(uri: str, text: str) -> None:
    from mmray.storage import resolve_filesystem

    fs, path = resolve_filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode("utf-8"))
