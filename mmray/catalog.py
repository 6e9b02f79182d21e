"""The catalog schema and its readers: raw files in, one validated record per row out.

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
| images       | list of strings             | yes      | paths relative to the catalog folder or URIs |
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import html
import io
import json
import math
import os
import re
import unicodedata
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from mmray.config import CaptionConfig, DataConfig
from mmray.storage import resolve_filesystem

CATALOG_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".csv": "csv"}
KNOWN_COLUMNS = {"id", "product_id", "title", "description", "category", "gender", "color", "sizes", "tags",
                 "attributes", "price", "images", "url"}
RAW_PREVIEW_CHARS = 2000

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


class CatalogError(Exception):
    """The catalog as a whole cannot be used (missing path, no files, nothing readable)."""


# --------------------------------------------------------------------------- files


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


def resolve_image_ref(ref: str, image_root: str) -> str:
    """An image reference made absolute: URIs and absolute paths pass, the rest join `image_root`."""
    if "://" in ref or ref.startswith("/"):
        return ref
    return f"{image_root.rstrip('/')}/{ref}"


def iter_raw_rows(path: str) -> Iterator[tuple[int, dict[str, Any] | None, str, str | None]]:
    """Yield `(row_number, row, raw_text, error)` for every row of one catalog file.

    `row` is None when the row cannot be parsed; `error` then says why. A bad line never
    stops the file: the next line is read as usual.
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
        return
    # CSV: decode with surrogateescape so one bad byte marks its own row, not the whole file.
    reader = csv.DictReader(io.StringIO(data.decode("utf-8", "surrogateescape"), newline=""))
    for n, row in enumerate(reader, start=1):
        raw = json.dumps(row, ensure_ascii=False, default=str)
        if any(isinstance(v, str) and _has_surrogates(v) for v in row.values()) or any(
                isinstance(k, str) and _has_surrogates(k) for k in row):
            preview = raw.encode("utf-8", "replace").decode("utf-8")[:RAW_PREVIEW_CHARS]
            yield n, None, preview, "invalid_utf8: row has bytes that are not UTF-8"
            continue
        if None in row:
            yield n, None, raw[:RAW_PREVIEW_CHARS], "invalid_csv: more fields than header columns"
            continue
        yield n, {k: _csv_value(k, v) for k, v in row.items()}, raw[:RAW_PREVIEW_CHARS], None


def _has_surrogates(s: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in s)


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


# --------------------------------------------------------------------------- text


class _TextExtractor(HTMLParser):
    """HTML to plain text: block tags become line breaks, <li> a '- ' bullet, script/style vanish."""

    BLOCK = {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table", "section"}
    SKIP = {"script", "style", "noscript", "template", "iframe", "object"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skip_depth += 1
        elif tag in self.BLOCK:
            self.parts.append("\n- " if tag == "li" else "\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skip_depth:
            self.parts.append(data)


_TAG_RE = re.compile(r"<\s*/?\s*[a-zA-Z!][^>]*>")
_CTRL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# what makes ASCII text need the full path: markup or entities, control characters (tabs and
# newlines included), runs of spaces, spaces at either end
_NEEDS_CLEANING_RE = re.compile(r"[<&\x00-\x1f\x7f]|  |^ | $")


def clean_text(value: Any, max_chars: int = 20_000) -> tuple[str, bool]:
    """Plain, NFKC-normalised text with HTML removed; returns (text, whether HTML was found)."""
    if value is None:
        return "", False
    text = value if isinstance(value, str) else str(value)
    if text.isascii() and not _NEEDS_CLEANING_RE.search(text) and text != "-":
        return text[:max_chars], False  # already clean, as most catalog fields are: skip the full path
    return _clean_text_full(text, max_chars)


def _clean_text_full(text: str, max_chars: int) -> tuple[str, bool]:
    if not _TAG_RE.search(text):
        text = html.unescape(text)  # plain text, or markup escaped as entities (&lt;script&gt;)
    had_html = bool(_TAG_RE.search(text))
    if had_html:
        parser = _TextExtractor()
        parser.feed(text)
        parser.close()
        text = "".join(parser.parts)
    text = unicodedata.normalize("NFKC", _CTRL_RE.sub(" ", text))
    lines = [" ".join(line.split()) for line in text.splitlines()]
    text = "\n".join(line for line in lines if line and line != "-")
    return text[:max_chars], had_html


# --------------------------------------------------------------------------- validation


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
    if isinstance(images, str):
        images = [images]
    if not images or not isinstance(images, (list, tuple)) or not all(isinstance(i, str) and i.strip() for i in images):
        return reject("no_images", "images must be a non-empty list of paths")
    out["image_refs"] = [i.strip() for i in images[: cfg.max_images_per_item]]

    if unknown and cfg.unknown_columns == "quarantine":
        return reject("unknown_columns", f"columns outside the schema: {', '.join(unknown)}")
    out["split"] = assign_split(out["product_id"], cfg.holdout_fraction, cfg.seed)
    out["captions"] = build_captions(out, attrs, cfg.caption, cfg.seed)
    out["text"] = build_product_text(out, attrs)
    return out


def assign_split(product_id: str, holdout_fraction: float, seed: int) -> str:
    """Deterministic product-level split: every variant of a product lands on the same side."""
    h = int.from_bytes(hashlib.sha1(f"{seed}:{product_id}".encode()).digest()[:8], "big") / 2**64
    return "test" if h < holdout_fraction else "train"


def empty_record() -> dict[str, Any]:
    """A record with every schema field present (quarantined rows fill only some)."""
    rec = {name: None for name in RECORD_SCHEMA.names}
    rec.update(sizes=[], tags=[], image_refs=[], unknown_columns=[], captions=[], html_stripped=False, price=math.nan)
    return rec


# --------------------------------------------------------------------------- captions

_NOUN_FIXES = {"hoodies": "hoodie", "sweatshirts": "sweatshirt", "tees": "tee", "tanks": "tank top",
               "bras": "bra", "watches": "watch", "video download": "training video", "fitness equipment": "fitness gear"}


def garment_noun(category: str) -> str:
    """A singular noun for the leaf category: 'Men/Tops/Hoodies & Sweatshirts' -> 'hoodie'."""
    leaf = category.rsplit("/", 1)[-1].split("&")[0].strip().lower() if category else ""
    if not leaf:
        return "item"
    if leaf in _NOUN_FIXES:
        return _NOUN_FIXES[leaf]
    if leaf.endswith("s") and leaf not in ("pants", "shorts", "leggings", "glasses") and not leaf.endswith("ss"):
        return leaf[:-1]
    return leaf


def _gender_phrase(gender: str) -> str:
    g = gender.lower()
    return {"men": "for men", "women": "for women", "unisex": "for everyone"}.get(g, f"for {g}" if g else "")


def _join(values: list[str]) -> str:
    values = [v.lower() for v in values]
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]


def build_captions(rec: dict[str, Any], attrs: dict[str, list[str]], cfg: CaptionConfig, seed: int) -> list[str]:
    """Natural-language captions naming colour, garment, gender, material and use.

    Training samples one per epoch: varied wording beats a single terse attribute list.
    """
    noun, color, gender = garment_noun(rec["category"]), rec["color"].lower(), _gender_phrase(rec["gender"])
    article = "an" if (color or noun)[0] in "aeiou" else "a"
    head = " ".join(p for p in (article, color, noun, gender) if p)
    facts = []
    for key in cfg.attributes:
        values = attrs.get(key, [])[: cfg.max_attribute_values]
        if not values or cfg.max_attribute_values == 0:
            continue
        if key == "material":
            facts.append(f"made of {_join(values)}")
        elif key == "climate":
            facts.append(f"for {_join(values)} weather")
        elif key == "activity":
            facts.append(f"for {_join(values)}")
        else:
            facts.append(f"{_join(values)} {key}")
    title = rec["title"]
    candidates = [
        f"{head}: {title}",
        ", ".join([head, *facts[:2]]),
        f"{title}, {color + ' ' if color else ''}{noun} {gender}".strip(),
        ", ".join([f"{title} in {color}" if color else title, *facts[1:3]]),
        "photo of " + ", ".join([head, *facts[2:4]]),
    ]
    if cfg.description_chars and rec["description"]:
        line = rec["description"].split("\n")[0]
        excerpt = line if len(line) <= cfg.description_chars else line[: cfg.description_chars].rsplit(" ", 1)[0]
        candidates.append(f"{title}, {head}. {excerpt}")
    rng = int(hashlib.sha1(f"{seed}:{rec['id']}".encode()).hexdigest(), 16)
    first, rest = candidates[0], candidates[1:]
    rest = [rest[(i + rng) % len(rest)] for i in range(len(rest))]
    return [first, *rest][: cfg.num_variants]


def build_product_text(rec: dict[str, Any], attrs: dict[str, list[str]]) -> str:
    """Rich product text (title, gender, colour, category, attributes, description) for text-side retrieval."""
    parts = [rec["title"]]
    line = " ".join(p for p in (rec["gender"], rec["color"], garment_noun(rec["category"])) if p)
    parts.append(line)
    if rec["category"]:
        parts.append(rec["category"].replace("/", " > "))
    parts.extend(f"{k}: {', '.join(v)}" for k, v in sorted(attrs.items()) if v)
    if rec["description"]:
        parts.append(rec["description"])
    return ". ".join(p for p in parts if p)
