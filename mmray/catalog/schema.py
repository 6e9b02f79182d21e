"""The catalog's tables, written once: the input fields, the parsed record, the stored items.

A catalog is one file or a folder of files (JSONL, Parquet or CSV), local or on object
storage (s3://, gs:// through pyarrow.fs). Each row is one sellable item (a colour variant);
`product_id` groups the variants of one product. Rows that cannot be used are not dropped:
they come out with `status="quarantined"` and a `reason`, so rows in = rows out + quarantined.

| field        | type                        | required | notes                                        |
| ------------ | --------------------------- | -------- | -------------------------------------------- |
| id           | string                      | yes      | unique across the catalog                    |
| product_id   | string                      | no       | groups variants; defaults to `id`            |
| title        | string                      | yes      | non-empty after HTML is stripped             |
| description  | string                      | no       | HTML allowed; stripped and normalised        |
| category     | string                      | no       | path with `/`, e.g. `Men/Tops/Jackets`       |
| gender       | string                      | no       | `Men`, `Women`, `Unisex`, ...                |
| color        | string                      | no       | the variant's colour                         |
| sizes, tags  | list of strings             | no       | CSV: `a|b|c` or a JSON array                 |
| attributes   | map string -> list[string]  | no       | CSV: a JSON object                           |
| price        | number                      | no       | finite and >= 0                              |
| images       | list of strings             | yes      | paths inside the catalog folder (or          |
|              |                             |          | `data.image_root`), or URIs under a prefix   |
|              |                             |          | of `data.allowed_image_uris` (see refs.py)   |
"""
from __future__ import annotations

import math
from typing import Any

import pyarrow as pa

KNOWN_COLUMNS = {"id", "product_id", "title", "description", "category", "gender", "color", "sizes", "tags",
                 "attributes", "price", "images", "url"}

# One schema for every block, so Ray Data never has to guess types from a block of nulls.
RECORD_SCHEMA = pa.schema([
    ("pos", pa.int64()), ("source", pa.string()), ("status", pa.string()), ("reason", pa.string()),
    ("detail", pa.string()), ("raw", pa.string()),
    ("id", pa.string()), ("product_id", pa.string()), ("title", pa.string()), ("description", pa.string()),
    ("category", pa.string()), ("gender", pa.string()), ("color", pa.string()),
    ("sizes", pa.list_(pa.string())), ("tags", pa.list_(pa.string())), ("attributes_json", pa.string()),
    ("price", pa.float64()), ("image_refs", pa.list_(pa.string())), ("unknown_columns", pa.list_(pa.string())),
    ("html_stripped", pa.bool_()), ("split", pa.string()), ("captions", pa.list_(pa.string())), ("text", pa.string()),
])

# The stored items table (`datasets/<name>/items/*.parquet`): a record, its resized encoded
# images and the SHA-256 of each original file, and the group it is never a negative within.
# Every shard is cast to it, so all shards of a version have the same types.
ITEM_SCHEMA = pa.schema([
    *RECORD_SCHEMA,
    ("images", pa.list_(pa.binary())), ("image_sha256", pa.list_(pa.string())), ("group", pa.string()),
])

# What the driver keeps of every row to find duplicate ids.
KEY_SCHEMA = pa.schema([RECORD_SCHEMA.field(name) for name in ("id", "pos", "status")])
# Columns a quarantined row leaves out of `quarantine/` (bytes and derived text, never the why).
QUARANTINE_DROP = ["images", "image_sha256", "captions", "text"]
# The item columns training reads (mmray.training.data) and the index stores beside its vectors.
TRAIN_COLUMNS = ["id", "product_id", "group", "title", "description", "category", "gender", "color",
                 "attributes_json", "price", "split", "captions", "text", "images"]
INDEX_META_COLUMNS = ["id", "product_id", "title", "category", "gender", "color", "price", "text", "description",
                      "attributes_json"]


def empty_record() -> dict[str, Any]:
    """A record with every schema field present (quarantined rows fill only some)."""
    rec = {name: None for name in RECORD_SCHEMA.names}
    rec.update(sizes=[], tags=[], image_refs=[], unknown_columns=[], captions=[], html_stripped=False, price=math.nan)
    return rec
