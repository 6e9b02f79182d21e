"""The preprocessed dataset as its consumers read it: the current version, its item shards, rows.

Training, index building, evaluation and benchmarks all read items through these three functions,
so only the files a dataset version's manifest lists are ever read.
"""
from __future__ import annotations

import pyarrow.parquet as pq

from mmray.catalog import TRAIN_COLUMNS
from mmray.config import MmrayConfig
from mmray.storage import ArtifactStore, Version, dataset_kind


def current_dataset(cfg: MmrayConfig) -> Version:
    """The current version of dataset `data.name`, its files verified."""
    store = ArtifactStore.from_config(cfg.storage)
    return store.resolve(dataset_kind(cfg.data.name), hint="run `python -m jobs.preprocess` first")


def item_paths(dataset: Version) -> list[str]:
    """The item shards the dataset's manifest lists (paths inside `dataset.store.fs`)."""
    return [dataset.path(rel) for rel in dataset.listing("items/")]


def load_items(dataset: Version, split: str | None = None, columns: list[str] | None = None) -> list[dict]:
    """Preprocessed items as dicts (driver side; the shipped catalog is small)."""
    table = pq.read_table(item_paths(dataset), filesystem=dataset.store.fs, columns=columns or TRAIN_COLUMNS)
    rows = table.to_pylist()
    return [r for r in rows if split is None or r["split"] == split]
