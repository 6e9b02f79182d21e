"""Build a versioned index: embed every item with Ray Data, FAISS + BM25 + metadata, manifest last.

    <storage.root>/indexes/<version>/
      shard_000.faiss ...   FAISS index (one file per shard), ids = row numbers
      vectors.npy           (N, E) fused item vectors, unit norm (exact search, `similar`)
      metadata.parquet      row -> id, product_id, title, category, gender, color, price, available, text
      lexical/              bm25s index over title, description and attributes
      images/<row>.jpg      the item's first (resized) image, served by the app
      config.yaml           the config that built it
      manifest.json         written last: model, counts, spec, timings, recall self-check, file sizes + sha256
`indexes/current.json` moves to the new version only after it has been loaded back and searched once.
"""
from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from mmray.config import MmrayConfig
from mmray.embedder import Embedder, fuse
from mmray.index.ann import build_ann, recall_at_k, save_ann
from mmray.index.lexical import LexicalIndex
from mmray.storage import current_path, file_sha256, new_version, remove_tree, set_current, staging_dir
from mmray.training.evaluate import item_image_vectors

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
META_COLUMNS = ["id", "product_id", "title", "category", "gender", "color", "price", "text", "description",
                "attributes_json"]


class ItemEmbedder:
    """Ray Data actor: items (images + product text) -> image, text and fused vectors."""

    def __init__(self, model_dir: str, batch_size: int, image_weight: float, text_tokens: int = 128):
        self.embedder = Embedder.from_checkpoint(model_dir, batch_size)
        self.image_weight, self.text_tokens = image_weight, text_tokens

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        owner, images = [], []
        for i, item_images in enumerate(batch["images"]):
            for image in item_images:
                owner.append(i)
                images.append(bytes(image))
        image_vecs = item_image_vectors(self.embedder.embed_images(images), np.array(owner), len(batch["id"]))
        text_vecs = self.embedder.embed_texts(list(batch["text"]), self.text_tokens)
        return {"id": batch["id"], "vector": fuse(image_vecs, text_vecs, self.image_weight),
                "first_image": np.array([bytes(imgs[0]) for imgs in batch["images"]], dtype=object)}


def current_model_dir(cfg: MmrayConfig) -> str:
    root = cfg.storage.path("models", "dual_encoder")
    folder = current_path(root)
    if folder is None:
        raise FileNotFoundError(f"no trained model at {root}: run `python -m jobs.train` first")
    return folder


def build_index(cfg: MmrayConfig, model_dir: str | None = None) -> dict:
    """Embed the preprocessed catalog and publish a new index version; returns its manifest."""
    import ray

    from mmray.index.retriever import Retriever

    start = time.time()
    model_dir = model_dir or current_model_dir(cfg)
    items_path = cfg.storage.path("datasets", cfg.data.name, "items")
    if not os.path.exists(items_path):
        raise FileNotFoundError(f"no preprocessed dataset at {items_path}: run `python -m jobs.preprocess` first")
    meta = pq.read_table(items_path, columns=META_COLUMNS).to_pydict()
    n = len(meta["id"])
    log.info("embedding %d items with %s", n, model_dir)
    # Materialised before the actor stage: actors holding every CPU would starve the read tasks.
    ds = (ray.data.read_parquet(items_path, columns=["id", "images", "text"])
          .repartition(target_num_rows_per_block=cfg.index.embed_batch_size)).materialize()
    embedded = ds.map_batches(
        ItemEmbedder, batch_size=cfg.index.embed_batch_size, batch_format="numpy",
        fn_constructor_args=(model_dir, cfg.index.embed_batch_size, cfg.index.image_weight),
        compute=ray.data.ActorPoolStrategy(size=cfg.index.embed_concurrency), num_gpus=cfg.index.embed_num_gpus)
    by_id = {}
    for batch in embedded.iter_batches(batch_format="numpy", batch_size=None):
        for item_id, vec, image in zip(batch["id"], batch["vector"], batch["first_image"]):
            by_id[str(item_id)] = (vec, image)
    vectors = np.stack([by_id[i][0] for i in meta["id"]]).astype(np.float32)
    t_embed = time.time()

    version = new_version()
    final = cfg.storage.path("indexes", version)
    folder = staging_dir(final)
    try:  # a failed build removes its half-written folder
        os.makedirs(os.path.join(folder, "images"))
        ann = build_ann(vectors, cfg.index.factory, cfg.index.num_shards, seed=cfg.train.seed,
                        nprobe=cfg.index.nprobe, ef_search=cfg.index.ef_search)
        shard_files = save_ann(ann, folder)
        np.save(os.path.join(folder, "vectors.npy"), vectors)
        meta["available"] = [True] * n
        meta["image"] = [f"images/{row}.jpg" for row in range(n)]
        pq.write_table(pa.table(meta), os.path.join(folder, "metadata.parquet"))
        LexicalIndex.build(lexical_texts(meta)).save(os.path.join(folder, "lexical"))
        for row, item_id in enumerate(meta["id"]):
            with open(os.path.join(folder, "images", f"{row}.jpg"), "wb") as f:
                f.write(by_id[item_id][1])
        with open(os.path.join(folder, "config.yaml"), "w") as f:
            yaml.safe_dump(cfg.model_dump(mode="json"), f, sort_keys=False)
        rng = np.random.default_rng(0)
        probe = vectors[rng.choice(n, size=min(n, 200), replace=False)]
        manifest = {
            "format": 1, "version": version, "model_path": os.path.abspath(model_dir),
            "model_version": os.path.basename(model_dir.rstrip("/")), "count": n,
            "products": len(set(meta["product_id"])), "dim": int(vectors.shape[1]),
            "factory": ann_description(cfg, n, vectors.shape[1]), "num_shards": len(shard_files),
            "shards": shard_files, "image_weight": cfg.index.image_weight,
            "recall_at_10_self_check": recall_at_k(ann, vectors, probe, 10),
            "timings_s": {"embed": round(t_embed - start, 2), "build": round(time.time() - t_embed, 2)},
        }
        manifest["files"] = file_digests(folder)
        with open(os.path.join(folder, MANIFEST), "w") as f:  # last: its presence marks a complete index
            json.dump(manifest, f, indent=2)
        os.rename(folder, final)
    except BaseException:
        remove_tree(folder)
        raise

    retriever = Retriever.load(final)  # loaded and searched once before it may serve
    hits = retriever.search(vectors[0], k=1, collapse=False)
    if not hits or hits[0].id != meta["id"][0]:
        raise RuntimeError(f"index {final} failed its load check: item 0 does not find itself")
    set_current(cfg.storage.path("indexes"), version)
    manifest["path"] = final
    return manifest


def ann_description(cfg: MmrayConfig, n: int, dim: int) -> str:
    from mmray.index.ann import auto_factory

    return auto_factory(n, dim) if cfg.index.factory == "auto" else cfg.index.factory


def lexical_texts(meta: dict[str, list]) -> list[str]:
    """What BM25 sees per item: title, colour, gender, category, attributes, description."""
    out = []
    for i in range(len(meta["id"])):
        attrs = json.loads(meta["attributes_json"][i] or "{}")
        parts = [meta["title"][i], meta["color"][i] or "", meta["gender"][i] or "",
                 (meta["category"][i] or "").replace("/", " "), " ".join(" ".join(v) for v in attrs.values()),
                 meta["description"][i] or ""]
        out.append(" ".join(p for p in parts if p))
    return out


def file_digests(folder: str) -> dict[str, dict]:
    """Size and SHA-256 of every file under `folder` (relative paths), for the load-time check."""
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in sorted(names):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, folder)
            if rel == MANIFEST:
                continue
            out[rel] = {"bytes": os.path.getsize(path), "sha256": file_sha256(path)}
    return out


