"""The catalog: raw files in, one validated record per row out (see schema.py for the fields).

  schema    the input fields, the record and stored items tables, their column subsets
  readers   listing catalog files and reading their raw rows (JSONL, Parquet, CSV)
  text      HTML and text cleaning
  rows      row validation (ok or quarantined, with a reason) and the product-level split
  captions  training captions and the product text for retrieval
  refs      which image files and objects a row may name
"""
from mmray.catalog.captions import build_captions, build_product_text, category_noun
from mmray.catalog.readers import CATALOG_SUFFIXES, CatalogError, catalog_folder, iter_raw_rows, list_catalog_files
from mmray.catalog.refs import resolve_image_ref
from mmray.catalog.rows import assign_split, normalize_row
from mmray.catalog.schema import (
    INDEX_META_COLUMNS,
    ITEM_SCHEMA,
    KEY_SCHEMA,
    KNOWN_COLUMNS,
    QUARANTINE_DROP,
    RECORD_SCHEMA,
    TRAIN_COLUMNS,
    empty_record,
)
from mmray.catalog.text import clean_text

__all__ = [
    "CATALOG_SUFFIXES", "INDEX_META_COLUMNS", "ITEM_SCHEMA", "KEY_SCHEMA", "KNOWN_COLUMNS", "QUARANTINE_DROP",
    "RECORD_SCHEMA", "TRAIN_COLUMNS", "CatalogError", "assign_split", "build_captions", "build_product_text",
    "catalog_folder", "category_noun", "clean_text", "empty_record", "iter_raw_rows", "list_catalog_files",
    "normalize_row", "resolve_image_ref",
]
