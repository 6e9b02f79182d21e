"""Catalog preprocessing on Ray: parse and validate rows, decode and resize images, dedupe.

Stages: one Ray task per catalog file parses its rows into chunks left in the object store;
the driver finds duplicate ids from each row's key; one streaming Ray Data pass processes the
images, each chunk's task writing its own Parquet shard; the driver builds groups, quarantine
and report from the short columns the chunks return. No image bytes or long text reach it.

Output: a new version of `datasets/<data.name>` in the artifact layer (mmray.storage):
  items/         Parquet shards: one row per usable item, resized images as encoded bytes
  quarantine/    Parquet: every rejected row, with `reason` and `detail` (also quarantine.jsonl)
  report.json    rows in / out / quarantined by reason, duplicates, timings
  manifest.json  every file with its SHA-256, and the config that made it (written last)
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
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mmray.catalog import (
    ITEM_SCHEMA,
    KEY_SCHEMA,
    QUARANTINE_DROP,
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
from mmray.storage import ArtifactStore, dataset_kind
from mmray.storage.fs import write_bytes

log = logging.getLogger(__name__)

BLOCKS_PER_CPU = 1


# --------------------------------------------------------------------------- stage 1: rows


def parse_file(path: str, file_index: int, cfg: DataConfig) -> pa.Table:
    """One catalog file -> a validated record per row (an unreadable file is one quarantined record)."""
    records = []
    name = path.rsplit("/", 1)[-1]
    try:
        rows = list(iter_raw_rows(path, cfg.max_field_chars))
    except Exception as e:  # e.g. a corrupt Parquet file  # noqa: BLE001
        rec = empty_record()
        rec.update(pos=file_index << 32, source=name, status="quarantined", reason="unreadable_file",
                   detail=f"{type(e).__name__}: {e}"[:500], raw="")
        return pa.Table.from_pylist([rec], schema=RECORD_SCHEMA)
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


def parse_chunks(path: str, file_index: int, cfg: DataConfig, min_chunks: int = 1):
    """`parse_file`'s records in chunks of at most cfg.rows_per_shard rows, and at least
    `min_chunks` of them (a Ray streaming-generator task: each chunk becomes one image block)."""
    table = parse_file(path, file_index, cfg)
    size = max(1, min(cfg.rows_per_shard, -(-table.num_rows // max(1, min_chunks))))
    for start in range(0, table.num_rows, size):
        # `take` copies: a serialised slice could carry its parent's whole buffers along
        yield table.take(pa.array(range(start, min(start + size, table.num_rows))))


# --------------------------------------------------------------------------- stage 2: images


def process_images(batch: pa.Table, cfg: DataConfig, image_root: str, duplicate_ids: dict[str, int]) -> pa.Table:
    """Ray Data UDF: read, check, decode, resize and hash every image of every ok record.

    Only the columns that change are rebuilt; the text columns pass through untouched (zero-copy).
    """
    status, reason, detail = (batch[c].to_pylist() for c in ("status", "reason", "detail"))
    images: list[list[bytes]] = [[] for _ in status]
    hashes: list[list[str]] = [[] for _ in status]
    for i, (rid, pos, refs) in enumerate(zip(batch["id"].to_pylist(), batch["pos"].to_pylist(),
                                              batch["image_refs"].to_pylist())):
        if status[i] != "ok":
            continue
        if rid in duplicate_ids and duplicate_ids[rid] != pos:
            status[i], reason[i], detail[i] = "quarantined", "duplicate_id", f"id {rid!r} already used by an earlier row"
            continue
        for ref in refs:
            try:
                encoded, sha = process_image_ref(resolve_image_ref(ref, image_root, cfg.allowed_image_uris), cfg)
            except ImageRejected as e:
                status[i], reason[i], detail[i] = "quarantined", e.reason, f"{ref}: {e.detail}"[:500]
                images[i], hashes[i] = [], []
                break
            images[i].append(encoded)
            hashes[i].append(sha)
    out = batch
    for name, values in (("status", status), ("reason", reason), ("detail", detail)):
        out = out.set_column(out.schema.get_field_index(name), name, pa.array(values, pa.string()))
    out = out.append_column(ITEM_SCHEMA.field("images"), pa.array(images, pa.list_(pa.binary())))
    return out.append_column(ITEM_SCHEMA.field("image_sha256"), pa.array(hashes, pa.list_(pa.string())))


def process_image_ref(ref: str, cfg: DataConfig) -> tuple[bytes, str]:
    """One image reference -> (resized encoded bytes, SHA-256 of the original file)."""
    data = read_image_bytes(ref, cfg.max_image_bytes, cfg.image_read_timeout_s)
    decoded = decode_image(data, max_side=cfg.image_size, allowed_formats=list(cfg.allowed_image_formats),
                           max_pixels=cfg.max_image_pixels, max_bytes=cfg.max_image_bytes)
    return encode_image(decoded.image, cfg.image_format, cfg.image_quality), content_hash(data)


# --------------------------------------------------------------------------- groups


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


def run_preprocess(cfg: MmrayConfig) -> dict[str, Any]:
    """Run the whole pipeline and publish a new dataset version; returns the report (also
    report.json in the version). See the module docstring for the stages.
    """
    start = time.time()
    data = cfg.data
    files = list_catalog_files(data.catalog)
    image_root = data.image_root or catalog_folder(data.catalog)
    store = ArtifactStore.from_config(cfg.storage)
    kind = dataset_kind(data.name)
    log.info("preprocess: %d catalog file(s) from %s -> %s", len(files), data.catalog, store.uri(kind))

    chunks, keys = parse_catalog(files, data)
    if keys.num_rows == 0:
        raise CatalogError(f"catalog is empty: no rows in {data.catalog}")
    duplicate_ids = _first_position_of_duplicates(keys)
    t_rows = time.time()

    # A failed run removes its version folder; the current version stays as it was.
    with store.begin(kind, config=cfg.model_dump(mode="json")) as writer:
        report = {"catalog": data.catalog, "files": len(files), "version": writer.name,
                  **_images_and_outputs(cfg, chunks, keys.num_rows, image_root, duplicate_ids, store, writer.path(),
                                        start, t_rows),
                  "output": writer.uri()}
        writer.write_json("report.json", report)
        writer.commit(extra={"rows": report["rows_out"], "shards": report["shards"]})
    log.info("preprocess: %d rows in, %d out, %d quarantined in %.1f s", report["rows_in"], report["rows_out"],
             report["rows_quarantined"], report["timings_s"]["total"])
    return report


def parse_catalog(files: list[str], data: DataConfig) -> tuple[list, pa.Table]:
    """Parse every catalog file with one Ray task each; returns (references to the record chunks,
    which stay in the object store, and the (id, pos, status) of every row, for the driver).

    Plain tasks, not a Ray Data pass: a Ray Data execution costs ~0.1 s more to start and stop,
    and the driver needs every row's key before the image stage anyway (duplicate ids). Files
    are cut into at least one chunk per CPU between them, so the image stage has work for each.
    """
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    per_file = -(-BLOCKS_PER_CPU * cpus // len(files))
    parse, key_of = ray.remote(num_returns="streaming")(parse_chunks), ray.remote(_row_keys)
    generators = [parse.remote(path, i, data, per_file) for i, path in enumerate(files)]
    chunks, keys, last_log = [], [], time.time()
    for done, generator in enumerate(generators, start=1):
        for ref in generator:
            chunks.append(ref)
            keys.append(key_of.remote(ref))
        if time.time() - last_log >= 5.0 and done < len(files):
            log.info("parsed %d/%d catalog files", done, len(files))
            last_log = time.time()
    return chunks, _concat(ray.get(keys), KEY_SCHEMA)


def _row_keys(chunk: pa.Table) -> pa.Table:
    return chunk.select(KEY_SCHEMA.names)


def image_stage(chunks: list, data: DataConfig, image_root: str, duplicate_ids: dict[str, int], store: ArtifactStore,
                shard_dir: str):
    """The Ray Data dataset that processes the images of the record `chunks` (object references;
    lazy: the caller executes it). One call of `process_block` per chunk, one shard per chunk.

    Chunks are one per CPU or smaller, never one per small batch: every block is a task, and
    Ray Data's ~20 ms per task cost more than the images in 16-row blocks.
    """
    import ray

    return ray.data.from_arrow_refs(chunks).map_batches(
        process_block, batch_size=None, batch_format="pyarrow", concurrency=data.concurrency,
        fn_kwargs={"cfg": data, "image_root": image_root, "duplicate_ids": duplicate_ids, "store": store,
                   "shard_dir": shard_dir})


def process_block(block: pa.Table, cfg: DataConfig, image_root: str, duplicate_ids: dict[str, int],
                  store: ArtifactStore, shard_dir: str) -> pa.Table:
    """Ray Data UDF for one block: its images processed, its ok rows written as one Parquet shard.

    Returns the block without image bytes, plus the `shard` each ok row went to. The shard's
    `group` column is the product id; the driver rewrites the few shards whose items it merges.
    A retried task rewrites the same file name, so a retry never duplicates rows.
    """
    items = process_images(block, cfg, image_root, duplicate_ids)
    is_ok = pc.equal(items["status"], "ok")
    ok = items.filter(is_ok)
    shard = ""
    if ok.num_rows:
        shard = f"{shard_dir}/part-{block['pos'][0].as_py():016x}.parquet"
        _write_parquet(store.fs, shard, ok.append_column("group", ok["product_id"]).cast(ITEM_SCHEMA),
                       raw_columns=("images",))
    # What the driver needs: keys, status, hashes, and every field of a quarantined row (to show
    # why); the long text of ok rows is in the shard already and stays out of the driver.
    small = items.drop_columns(["images", "captions", "text"])
    for name in ("description", "attributes_json"):
        small = small.set_column(small.schema.get_field_index(name), name,
                                 pc.if_else(is_ok, pa.scalar("", pa.string()), small[name]))
    return small.append_column("shard", pc.if_else(is_ok, pa.scalar(shard), pa.scalar("")))


def _images_and_outputs(cfg: MmrayConfig, chunks: list, rows_in: int, image_root: str,
                        duplicate_ids: dict[str, int], store: ArtifactStore, out_dir: str, start: float,
                        t_rows: float) -> dict[str, Any]:
    import ray

    data = cfg.data
    stage = image_stage(chunks, data, image_root, duplicate_ids, store, f"{out_dir}/items")
    small = _concat(list(_with_progress(stage, rows_in)))
    t_images = time.time()

    is_ok = pc.equal(small["status"], "ok")
    ok_table = small.filter(is_ok)
    keys = list(zip(ok_table["id"].to_pylist(), ok_table["product_id"].to_pylist(),
                    ok_table["image_sha256"].to_pylist()))
    groups = find_duplicate_groups(keys)
    product_of = {item: product for item, product, _ in keys}
    merged = {item: g for item, g in groups.items() if g != product_of[item]}
    quarantine = small.filter(pc.invert(is_ok)).drop_columns(
        [c for c in [*QUARANTINE_DROP, "shard"] if c in small.column_names])
    q_rows = quarantine.to_pylist()
    rows_out = ok_table.num_rows
    if rows_in != rows_out + len(q_rows):
        raise RuntimeError(f"row accounting failed: {rows_in} in != {rows_out} out + {len(q_rows)} quarantined")

    # Items that share an image with another product join its group: rewrite just their shards.
    shard_of = dict(zip(ok_table["id"].to_pylist(), ok_table["shard"].to_pylist()))
    touched = sorted({shard_of[item] for item in merged})
    if touched:
        regroup, merged_ref = ray.remote(_regroup_shard), ray.put(merged)
        ray.get([regroup.remote(store, path, merged_ref) for path in touched])
    shards = sorted(set(ok_table["shard"].to_pylist()))
    written = _count_rows(store.fs, shards)
    if written != rows_out:
        raise RuntimeError(f"the item shards hold {written} rows, expected {rows_out}")
    if q_rows:
        _write_parquet(store.fs, f"{out_dir}/quarantine/part-00000.parquet", quarantine)
    _write_jsonl(store.fs, f"{out_dir}/quarantine.jsonl", q_rows)

    return {
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_quarantined": len(q_rows),
        "quarantined_by_reason": dict(collections.Counter(r["reason"] for r in q_rows).most_common()),
        "duplicate_ids": sum(1 for r in q_rows if r["reason"] == "duplicate_id"),
        "duplicate_image_items": len(merged),
        "groups": len(set(groups.values())),
        "shards": len(shards),
        **_item_stats(ok_table),
        "timings_s": {"rows": round(t_rows - start, 2), "images": round(t_images - t_rows, 2),
                      "finish": round(time.time() - t_images, 2), "total": round(time.time() - start, 2)},
    }


def _with_progress(ds, rows: int, every_s: float = 10.0):
    """The blocks of `ds` as they finish, with a log line every `every_s` seconds (job logs have
    no progress bar). Streams references, not data: 0.15 s faster than iter_batches here."""
    import ray

    done, t0, last = 0, time.time(), time.time()
    for bundle in ds.iter_internal_ref_bundles():
        done += bundle.num_rows() or 0
        if time.time() - last >= every_s and done < rows:
            rate = done / (time.time() - t0)
            log.info("images: %d/%d rows (%.0f rows/s, about %.0f s left)", done, rows, rate, (rows - done) / rate)
            last = time.time()
        yield from ray.get(list(bundle.block_refs))


def _concat(tables: list[pa.Table], schema: pa.Schema | None = None) -> pa.Table:
    if not tables and schema is not None:
        return schema.empty_table()
    return pa.concat_tables(tables) if len(tables) != 1 else tables[0]


def _first_position_of_duplicates(keys: pa.Table) -> dict[str, int]:
    """id -> position of its first ok row, for ids that more than one ok row uses."""
    table = keys.filter(pc.equal(keys["status"], "ok")).select(["id", "pos"])
    g = table.group_by("id").aggregate([("pos", "count"), ("pos", "min")])
    g = g.filter(pc.greater(g["pos_count"], 1))
    return dict(zip(g["id"].to_pylist(), g["pos_min"].to_pylist()))


def _regroup_shard(store: ArtifactStore, path: str, merged: dict[str, str]) -> None:
    fs = store.fs
    table = pq.read_table(path, filesystem=fs)
    group = pa.array([merged.get(i, g) for i, g in zip(table["id"].to_pylist(), table["group"].to_pylist())],
                     pa.string())
    _write_parquet(fs, path, table.set_column(table.schema.get_field_index("group"), "group", group).cast(ITEM_SCHEMA),
                   raw_columns=("images",))


def _count_rows(fs: pafs.FileSystem, paths: list[str]) -> int:
    """Rows in these Parquet files, from their footers."""
    total = 0
    for path in paths:
        with fs.open_input_file(path) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def _write_parquet(fs: pafs.FileSystem, path: str, table: pa.Table, raw_columns: tuple[str, ...] = ()) -> None:
    """Write `table` as one Parquet file; `raw_columns` (encoded images) skip dictionary and
    compression, which cannot shrink JPEG bytes and cost half the write time."""
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    leaves = {column: _leaf_paths(table.schema.field(column)) for column in table.column_names}
    coded = [leaf for column, paths in leaves.items() if column not in raw_columns for leaf in paths]
    raw = [leaf for column in raw_columns if column in leaves for leaf in leaves[column]]
    pq.write_table(table, path, filesystem=fs, use_dictionary=coded,
                   compression={**dict.fromkeys(coded, "snappy"), **dict.fromkeys(raw, "none")})


def _leaf_paths(field: pa.Field, prefix: str = "") -> list[str]:
    """Parquet's names for the leaf columns of `field` (per-column writer options take these)."""
    name, kind = prefix + field.name, field.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _leaf_paths(pa.field("element", kind.value_type), name + ".list.")
    if pa.types.is_struct(kind):
        return [leaf for child in kind for leaf in _leaf_paths(child, name + ".")]
    if pa.types.is_map(kind):
        return [f"{name}.key_value.key", f"{name}.key_value.value"]
    return [name]


def _item_stats(ok: pa.Table) -> dict[str, Any]:
    unknown = collections.Counter()
    for cols in ok["unknown_columns"].to_pylist():
        unknown.update(cols)
    splits = collections.Counter(ok["split"].to_pylist())
    return {"images_out": int(pc.sum(pc.list_value_length(ok["image_refs"])).as_py() or 0),
            "html_stripped_rows": int(pc.sum(ok["html_stripped"]).as_py() or 0),
            "split": {"train": splits["train"], "test": splits["test"]},
            "unknown_columns": dict(unknown)}


def _write_jsonl(fs: pafs.FileSystem, path: str, rows: list[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
    write_bytes(fs, path, text.encode("utf-8"))
