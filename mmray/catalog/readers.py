"""Catalog files: listing them, the folder images resolve against, and their raw rows.

Every reader yields one entry per row, parsed or not: a bad row never stops its file.
"""
from __future__ import annotations

import codecs
import csv
import io
import json
import os
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from mmray.storage import resolve_filesystem

CATALOG_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".csv": "csv"}
RAW_PREVIEW_CHARS = 2000
# The largest value csv.field_size_limit accepts on every platform (a C long may be 32 bits).
_CSV_NO_LIMIT = 2**31 - 1


class CatalogError(Exception):
    """The catalog as a whole cannot be used (missing path, no files, nothing readable)."""


def list_catalog_files(catalog: str) -> list[str]:
    """Catalog files under `catalog` (a file or a folder), sorted; CatalogError when there are none."""
    try:
        fs, path = resolve_filesystem(catalog)
        info = fs.get_file_info(path)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
        raise CatalogError(f"cannot open catalog {catalog!r}: {e}") from None
    if info.type == pafs.FileType.NotFound:
        raise CatalogError(f"catalog path does not exist: {catalog}")
    if info.type == pafs.FileType.File:
        files = [info.path]
    else:
        entries = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        files = sorted(e.path for e in entries if e.type == pafs.FileType.File and _suffix(e.path) in CATALOG_SUFFIXES)
    if not files:
        raise CatalogError(f"no catalog files (.jsonl, .parquet, .csv) found at {catalog}")
    bad = [f for f in files if _suffix(f) not in CATALOG_SUFFIXES]
    if bad:
        raise CatalogError(f"unsupported catalog file type: {bad[0]} (use .jsonl, .parquet or .csv)")
    scheme = catalog.split("://")[0] + "://" if "://" in catalog else ""
    return [scheme + f if scheme and "://" not in f else f for f in files]


def _suffix(path: str) -> str:
    dot = path.rfind(".")
    return path[dot:].lower() if dot >= 0 else ""


def catalog_folder(catalog: str) -> str:
    """The folder relative image references resolve against: the catalog itself, or its parent."""
    fs, path = resolve_filesystem(catalog)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return catalog.rstrip("/")
    return catalog.rsplit("/", 1)[0] if "://" in catalog else os.path.dirname(os.path.abspath(catalog))


def iter_raw_rows(path: str, max_field_chars: int | None = None
                  ) -> Iterator[tuple[int, dict[str, Any] | None, str, str | None]]:
    """Yield `(row_number, row, raw_text, error)` for every row of one catalog file.

    `row` is None when the row cannot be parsed; `error` then says why. A bad line never
    stops the file: the next line is read as usual. `max_field_chars` (CSV): a row with a
    longer field is an error row (`field_too_large`); None: no cap.
    """
    kind = CATALOG_SUFFIXES[_suffix(path)]
    fs, inner = resolve_filesystem(path)
    if kind == "parquet":
        import pyarrow.parquet as pq
        with fs.open_input_file(inner) as f:
            pf = pq.ParquetFile(f)
            n = 0
            for batch in pf.iter_batches(batch_size=4096):
                for row in batch.to_pylist(maps_as_pydicts="lossy"):  # map columns (attributes) as dicts
                    n += 1
                    yield n, row, _preview(row), None
        return
    with fs.open_input_stream(inner) as f:
        data = f.read()
    data = data.removeprefix(codecs.BOM_UTF8)  # Excel and some exporters start the file with a BOM
    if kind == "jsonl":
        yield from _jsonl_rows(data)
    else:
        yield from _csv_rows(data, max_field_chars)


def _jsonl_rows(data: bytes) -> Iterator[tuple[int, dict[str, Any] | None, str, str | None]]:
    for n, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield n, None, line.decode("utf-8", "replace")[:RAW_PREVIEW_CHARS], f"invalid_utf8: {e.reason} at byte {e.start}"
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            yield n, None, text[:RAW_PREVIEW_CHARS], f"invalid_json: {e.msg} at column {e.colno}"
            continue
        if not isinstance(row, dict):
            yield n, None, text[:RAW_PREVIEW_CHARS], "invalid_json: a row must be a JSON object"
            continue
        yield n, row, text[:RAW_PREVIEW_CHARS], None


def _csv_rows(data: bytes, max_field_chars: int | None) -> Iterator[tuple[int, dict[str, Any] | None, str, str | None]]:
    # csv's own cap (131072 characters) raises mid-file, and the reader cannot resume cleanly
    # after it (a quoted field may span lines), so one long description would lose the whole
    # file. The limit is module-global: we lift it for the process (the data is in memory
    # already, so it bounds nothing) and apply our own cap per row below, which quarantines
    # just that row.
    csv.field_size_limit(_CSV_NO_LIMIT)
    # Decode with surrogateescape so one bad byte marks its own row, not the whole file.
    reader = csv.DictReader(io.StringIO(data.decode("utf-8", "surrogateescape"), newline=""))
    for n, row in enumerate(reader, start=1):
        raw = json.dumps(row, ensure_ascii=False, default=str)
        too_long = [(k, len(v)) for k, v in row.items()
                    if max_field_chars is not None and isinstance(v, str) and len(v) > max_field_chars]
        if too_long:
            (column, size), *_ = too_long
            yield n, None, _printable(raw[:RAW_PREVIEW_CHARS]), \
                f"field_too_large: {column!r} has {size} characters > limit {max_field_chars}"
            continue
        if any(isinstance(v, str) and _has_surrogates(v) for v in row.values()) or any(
                isinstance(k, str) and _has_surrogates(k) for k in row):
            yield n, None, _printable(raw[:RAW_PREVIEW_CHARS]), "invalid_utf8: row has bytes that are not UTF-8"
            continue
        if None in row:
            yield n, None, raw[:RAW_PREVIEW_CHARS], "invalid_csv: more fields than header columns"
            continue
        yield n, {k: _csv_value(k, v) for k, v in row.items()}, raw[:RAW_PREVIEW_CHARS], None


def _has_surrogates(s: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in s)


def _printable(text: str) -> str:
    """`text` with the undecodable bytes (kept as surrogates) shown as '?', safe to store as UTF-8."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _preview(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False, default=str)[:RAW_PREVIEW_CHARS]


def _csv_value(key: str, value: str | None) -> Any:
    if value is None or value == "":
        return None
    if key in ("sizes", "tags", "images"):
        if value.lstrip().startswith("["):
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                return value
        return [v.strip() for v in value.split("|") if v.strip()]
    if key == "attributes":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if key == "price":
        try:
            return float(value)
        except ValueError:
            return value
    return value

