"""Catalog ingestion and preprocessing settings (`jobs.preprocess`)."""
from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from mmray.config.base import StrictConfig

_URI_PREFIX_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]+")  # scheme://bucket...


class CaptionConfig(StrictConfig):
    """How facets are written as text: training captions, the product text and the held-out queries.

    Every field applies to any catalog: nothing here names a domain except the `nouns` defaults,
    which fix the shipped Luma catalog's awkward leaves."""

    num_variants: int = Field(4, ge=1, le=16)
    """Captions written per item; training samples one per epoch so the text side varies."""
    description_chars: int = Field(160, ge=0, le=2000)
    """Characters of cleaned description appended to the long caption variant (0: none)."""
    attributes: list[str] | None = None
    """Attribute names used in captions and the product text, in this order of priority; None: every
    attribute a row has, in the row's order."""
    max_attribute_values: int = Field(2, ge=0, le=10)
    """Values of each attribute used in one caption."""
    attribute_phrase: str = "{value} {name}"
    """How an attribute is phrased when `attribute_phrases` has no entry for it: `{value}` is its
    values ("cotton and wool"), `{name}` its name with underscores as spaces ("gear type")."""
    attribute_phrases: dict[str, str] = {"material": "made of {value}", "climate": "for {value} weather",
                                         "activity": "for {value}"}
    """Phrasing per attribute name (lower case), e.g. `origin: "from {value}"`; same placeholders."""
    nouns: dict[str, str] = {"tops/tanks": "tank top", "training/video download": "training video",
                             "fitness equipment": "fitness gear"}
    """Noun overrides for category leaves the singular rule words badly: the key is the leaf, or the
    last levels of the path (`"tops/tanks"`), lower case; the longest matching key wins."""
    query_attributes: list[str] | None = None
    """Attributes that write held-out queries (one per item, from its first value in sorted order);
    None: the attribute that most held-out items have."""

    @field_validator("attribute_phrase")
    @classmethod
    def _phrase(cls, phrase: str) -> str:
        return _check_phrase(phrase)

    @field_validator("attribute_phrases")
    @classmethod
    def _phrases(cls, phrases: dict[str, str]) -> dict[str, str]:
        return {name.lower(): _check_phrase(phrase) for name, phrase in phrases.items()}

    @field_validator("nouns")
    @classmethod
    def _nouns(cls, nouns: dict[str, str]) -> dict[str, str]:
        return {"/".join(level.strip() for level in key.lower().split("/")): noun for key, noun in nouns.items()}


def _check_phrase(phrase: str) -> str:
    try:
        phrase.format(value="v", name="n")
    except (KeyError, IndexError, ValueError):
        raise ValueError(f"{phrase!r} is not a phrase template: it may use only {{value}} and {{name}}") from None
    if "{value}" not in phrase:
        raise ValueError(f"{phrase!r} does not name the attribute's values: add {{value}}")
    return phrase


class DataConfig(StrictConfig):
    """Where the catalog is and how rows and images are validated and normalised."""

    catalog: str = "data/luma/catalog.jsonl"
    """Catalog file or folder (JSONL, Parquet or CSV); a local path or s3:// / gs:// URI."""
    image_root: str | None = None
    """Base for relative image references; defaults to the folder that holds the catalog file. References
    must name files inside it (after `..` and symbolic links are resolved) or match `allowed_image_uris`."""
    allowed_image_uris: list[str] = []
    """URI prefixes image references may name besides the image root, e.g. `["s3://shop-images/",
    "gs://bucket/photos/"]`. Any other URI, `file://`, or a URI with a ?query or #fragment quarantines its row."""
    name: str = "luma"
    """Dataset name; each run publishes a new version of `<storage.root>/datasets/<name>/`."""
    image_size: int = Field(256, ge=32, le=2048)
    """Longest side, in pixels, of the stored (resized) images; aspect ratio is kept."""
    image_format: Literal["JPEG", "PNG", "WEBP"] = "JPEG"
    """Encoding of the stored resized images."""
    image_quality: int = Field(90, ge=50, le=100)
    """JPEG/WebP quality of the stored images."""
    allowed_image_formats: list[Literal["JPEG", "PNG", "WEBP", "GIF", "BMP"]] = ["JPEG", "PNG", "WEBP"]
    """Image formats accepted, recognised by magic bytes (never by file name)."""
    max_image_pixels: int = Field(40_000_000, ge=1)
    """Width x height cap checked from the header before decoding (decompression-bomb guard)."""
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1)
    """Image files larger than this are quarantined without being read whole."""
    image_read_timeout_s: float = Field(30.0, gt=0)
    """Seconds one request to object storage may take when reading an image (s3:// connect and request
    timeouts, gs:// retry time limit); a read that runs out quarantines its row."""
    require_images: bool = True
    """Quarantine rows without images (`no_images`). False keeps them as text-only items: they train
    nothing, get text-side vectors in the index (no image file) and are found by text search."""
    max_images_per_item: int = Field(8, ge=1, le=64)
    """Image references past this count are ignored."""
    max_text_chars: int = Field(20_000, ge=100)
    """Descriptions are cut to this many characters after cleaning."""
    max_field_chars: int = Field(131_072, ge=1)
    """Longest CSV field, in characters (csv's own default); a row with a longer one is quarantined
    (`field_too_large`) and the rest of its file still parses."""
    unknown_columns: Literal["keep", "quarantine"] = "keep"
    """Rows with columns outside the schema: keep them (columns dropped, listed in the report) or quarantine."""
    caption: CaptionConfig = CaptionConfig()
    """Training caption recipe."""
    concurrency: int | None = Field(None, ge=1)
    """Parallel image tasks; None lets Ray use every CPU of the cluster."""
    rows_per_shard: int = Field(2000, ge=1, le=20_000)
    """Most rows per output Parquet shard. A shard is one Ray Data block, processed and written by
    one task, so this also bounds a task's memory (rows x stored image size). Catalogs with fewer
    rows than CPUs x this get one block per CPU."""
    holdout_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    """Share of products (never single variants) marked `split=test`."""
    seed: int = 0
    """Seed for the product-level split and caption order."""

    @field_validator("allowed_image_uris")
    @classmethod
    def _uri_prefixes(cls, prefixes: list[str]) -> list[str]:
        for prefix in prefixes:
            if (not _URI_PREFIX_RE.match(prefix) or prefix.lower().startswith("file://") or "?" in prefix
                    or "#" in prefix or ".." in prefix.split("/")):
                raise ValueError(f"{prefix!r} is not a URI prefix such as s3://bucket/ or gs://bucket/photos/ "
                                 "(a scheme and a bucket; no file://, ?query, #fragment or '..')")
        return prefixes
