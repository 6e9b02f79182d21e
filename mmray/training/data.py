"""Training data: preprocessed items -> (image, caption, group) rows, with tower features cached
when the towers are locked.

With both towers locked (the lite default, LiT-style), tower outputs never change, so each
training image is encoded once in `views` augmented versions and each caption once; the Ray
Train loop then trains only the projections on those features. The cache is an artifact kind
(`cache/features/<key>`) keyed by everything that determines it, the dataset version included,
and published like any other version: a rerun after a crash starts a fresh one, never appends.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random

import numpy as np
import torch
from PIL import Image

from mmray.config import MmrayConfig, ModelConfig
from mmray.dataset import item_paths
from mmray.model.transforms import in_scene
from mmray.storage import Version, feature_cache_kind

log = logging.getLogger(__name__)


def group_id(group: str) -> int:
    """Stable 63-bit integer for a group name (rows with equal ids are never negatives)."""
    return int.from_bytes(hashlib.sha1(group.encode()).digest()[:8], "big") >> 1


def explode_images(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data UDF: one row per (item, image); captions and group travel with each image. A
    text-only item (no images) gives no row; a batch of them gives empty columns."""
    out = {"group": [], "image": [], "captions": []}
    for group, images, captions in zip(batch["group"], batch["images"], batch["captions"]):
        for image in images:
            out["group"].append(group_id(str(group)))
            out["image"].append(bytes(image))
            out["captions"].append(list(captions))
    return {"group": np.array(out["group"], dtype=np.int64), "image": np.array(out["image"], dtype=object),
            "captions": np.array(out["captions"], dtype=object)}


class FeatureEncoder:
    """Ray Data actor: image bytes -> `views` tower features (view 0 unaugmented), captions -> features."""

    def __init__(self, model_cfg: ModelConfig, views: int, captions: int, seed: int, scene_p: float):
        from mmray.model import build_model

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.model = build_model(model_cfg).eval()
        self.plain, self.augment = self.model.image_transform(False), self.model.image_transform(True)
        self.views, self.captions, self.scene_p = views, captions, scene_p
        torch.manual_seed(seed)
        self.rng = random.Random(seed)

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = [Image.open(io.BytesIO(b)).convert("RGB") for b in batch["image"]]
        pixels = torch.stack([self.plain(im) if v == 0 else self.augment(maybe_in_scene(images, i, self.scene_p, self.rng))
                              for i, im in enumerate(images) for v in range(self.views)])  # (B*V, 3, S, S)
        img = self.model.image_features(pixels).reshape(len(images), self.views, -1)
        texts = [_pad(list(c), self.captions)[j] for c in batch["captions"] for j in range(self.captions)]
        txt = self.model.text_features(**self.model.tokenize(texts)).reshape(len(images), self.captions, -1)
        return {"group": batch["group"], "image_feats": img.numpy().astype(np.float32),
                "text_feats": txt.numpy().astype(np.float32)}


def maybe_in_scene(images: list[Image.Image], i: int, p: float, rng: random.Random) -> Image.Image:
    """images[i], or with probability p images[i] placed into another image of the batch."""
    if len(images) < 2 or rng.random() >= p:
        return images[i]
    j = rng.randrange(len(images) - 1)
    return in_scene(images[i], images[j + (j >= i)], rng)


def _pad(captions: list[str], n: int) -> list[str]:
    return [captions[i % len(captions)] for i in range(n)]


def cache_key(cfg: MmrayConfig, dataset: Version, views: int) -> str:
    towers = cfg.model.model_dump(include={"kind", "image_tower", "image_size", "max_text_tokens", "open_clip_model",
                                           "open_clip_pretrained", "text_tower"})
    augment = [cfg.train.augment, cfg.train.scene_share]
    blob = json.dumps([towers, views, cfg.data.caption.num_variants, dataset.ref, cfg.train.seed, augment],
                      sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def train_dataset(cfg: MmrayConfig, dataset: Version, cached: bool, views: int = 3):
    """The Ray Dataset the workers stream: cached features, or raw (image, captions, group) rows."""
    import ray

    store = dataset.store
    # Materialised before the actor stage: actors holding every CPU would starve the read tasks.
    rows = (ray.data.read_parquet(item_paths(dataset), filesystem=store.fs,
                                  columns=["group", "images", "captions", "split"])
            .filter(expr="split == 'train'").map_batches(explode_images, batch_format="numpy")
            .repartition(target_num_rows_per_block=32)).materialize()
    if not cached:
        return rows
    kind = feature_cache_kind(cache_key(cfg, dataset, views))
    cache = store.resolve(kind) if store.current(kind) else None
    if cache is None:
        with store.begin(kind, config={"model": cfg.model.model_dump(mode="json"), "views": views},
                         parents={"dataset": dataset.ref}) as writer:
            log.info("caching tower features (%d views per image) -> %s", views, writer.uri())
            rows.map_batches(FeatureEncoder, batch_size=32, batch_format="numpy",
                             fn_constructor_args=(cfg.model, views, cfg.data.caption.num_variants, cfg.train.seed,
                                                  cfg.train.scene_share),
                             compute=ray.data.ActorPoolStrategy(size=max(1, cfg.train.num_workers))
                             ).write_parquet(writer.path("features"), filesystem=store.fs)
            cache = writer.commit()
    paths = [cache.path(rel) for rel in cache.listing("features/")]
    return ray.data.read_parquet(paths, filesystem=store.fs).materialize()
