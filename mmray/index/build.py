"""Build a versioned index: embed every item with Ray Data, FAISS + BM25 + metadata, manifest last.

    a new version of `indexes` in the artifact layer (mmray.storage):
      shard_000.faiss ...   FAISS index (one file per shard), ids = row numbers
      vectors.npy           (N, E) fused item vectors, unit norm (exact search, `similar`)
      metadata.parquet      row -> id, product_id, title, category, gender, color, price, available, text
      lexical/              bm25s index over title, description and attributes
      rerank_features.npz   only with rerank.enabled / rerank.index_features: the reranker's item side
                            (first image's projected regions, text tokens; fp16, mmray.rerank.features)
      images/<row>.jpg      the item's first (resized) image, served by the app (none for a
                            text-only item, whose metadata `image` is "")
      manifest.json         written last: parents (model, dataset), config, counts, spec, timings,
                            recall self-check, file sizes + sha256
`indexes/current.json` moves to the new version only after it has been loaded back and searched once.
FAISS and bm25s write local files, so a remote index is built in a local temporary folder and
uploaded; a local one is built in its version folder.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmray.catalog import INDEX_META_COLUMNS as META_COLUMNS
from mmray.config import MmrayConfig
from mmray.dataset import current_dataset, item_paths
from mmray.embedder import Embedder, fuse, item_image_vectors
from mmray.index.ann import build_ann, recall_at_k, save_ann
from mmray.index.lexical import LexicalIndex
from mmray.storage import INDEX_KIND, ArtifactError, ArtifactStore, Version, model_kind

log = logging.getLogger(__name__)


class ItemEmbedder:
    """Ray Data actor: items (images + product text) -> fused vectors and each item's first image.

    A text-only item (no images) gets its text vector, renormalised, and an empty `first_image`."""

    def __init__(self, model: Version, batch_size: int, image_weight: float, text_tokens: int = 128,
                 runtime: str = "torch", rerank_tokens: int = 0):
        self.embedder = Embedder.from_version(model, batch_size, runtime)  # ONNX towers: compiled by the driver
        self.image_weight, self.text_tokens, self.rerank_tokens = image_weight, text_tokens, rerank_tokens

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        owner, images = [], []
        for i, item_images in enumerate(batch["images"]):
            for image in item_images:
                owner.append(i)
                images.append(bytes(image))
        text_vecs = self.embedder.embed_texts(list(batch["text"]), self.text_tokens)  # (B, E)
        image_vecs = np.zeros_like(text_vecs)  # rows of text-only items stay zero: fused = their text vector
        if images:
            image_vecs = item_image_vectors(self.embedder.embed_images(images), np.array(owner), len(batch["id"]))
        first = [bytes(imgs[0]) if len(imgs) else b"" for imgs in batch["images"]]
        out = {"id": batch["id"], "vector": fuse(image_vecs, text_vecs, self.image_weight),
               "first_image": np.array(first, dtype=object)}
        if self.rerank_tokens:  # the reranker's item side (mmray.rerank.features), from the first image only
            from mmray.rerank.features import item_features

            f = item_features(self.embedder, list(batch["text"]), first, self.rerank_tokens)
            pad = self.rerank_tokens - f.tokens.shape[1]
            out.update(rr_regions=f.regions, rr_tokens=np.pad(f.tokens, [(0, 0), (0, pad), (0, 0)]),
                       rr_mask=np.pad(f.token_mask, [(0, 0), (0, pad)]), rr_has_image=f.has_image,
                       rr_grid=np.tile(np.array(f.grid, dtype=np.int64), (len(first), 1)))
        return out


CALIBRATION_IMAGES = 64


def compile_once(model: Version, runtime: str, ds) -> str:
    """Export the model's ONNX towers here, once, before the actor pool starts (each actor then
    loads the published `compiled/...` artifact instead of exporting it again); an int8 image
    tower is calibrated on up to CALIBRATION_IMAGES catalog photos. Returns the runtime to use:
    `torch` when nothing could be compiled."""
    from mmray.model import load_checkpoint

    net = load_checkpoint(model.local_dir())[0]  # one load serves the calibration and the export
    calibration = None
    if runtime == "onnx-int8":
        photos = []
        for batch in ds.iter_batches(batch_size=64, batch_format="numpy"):
            photos += [bytes(imgs[0]) for imgs in batch["images"] if len(imgs)]
            if len(photos) >= CALIBRATION_IMAGES:
                break
        calibration = Embedder(net).pixels(photos[:CALIBRATION_IMAGES]).numpy() if photos else None
    embedder = Embedder(net, runtime=runtime, store=model.store, model_ref=model.ref, calibration=calibration)
    log.info("embedding on %s: image tower %s, text tower %s (%s)", runtime, embedder.image_runtime,
             embedder.text_runtime, embedder.compiled_from or "not compiled")
    return runtime if "onnx" in (embedder.image_runtime + embedder.text_runtime) else "torch"


def current_model(cfg: MmrayConfig, version: str | None = None) -> Version:
    """The model to embed with: `version` of models/dual_encoder, or the current one; verified."""
    store = ArtifactStore.from_config(cfg.storage)
    return store.resolve(model_kind(), version, hint="run `python -m jobs.train` first")


def build_index(cfg: MmrayConfig, model_version: str | None = None) -> dict:
    """Embed the preprocessed catalog and publish a new index version; returns its manifest."""
    import ray

    from mmray.index.retriever import Retriever

    start = time.time()
    model = current_model(cfg, model_version)
    dataset = current_dataset(cfg)
    store = dataset.store
    paths = item_paths(dataset)
    if not paths:
        raise ArtifactError(f"{dataset.ref} has no items (every row was quarantined: see its report.json)")
    meta = pq.read_table(paths, filesystem=store.fs, columns=META_COLUMNS).to_pydict()
    n = len(meta["id"])
    log.info("embedding %d items of %s with %s", n, dataset.ref, model.ref)
    # Materialised before the actor stage: actors holding every CPU would starve the read tasks.
    ds = (ray.data.read_parquet(paths, filesystem=store.fs, columns=["id", "images", "text"])
          .repartition(target_num_rows_per_block=cfg.index.embed_batch_size)).materialize()
    runtime = cfg.index.embed_runtime
    if runtime != "torch":
        runtime = compile_once(model, runtime, ds)
    rerank_tokens = cfg.rerank.item_tokens if (cfg.rerank.enabled or cfg.rerank.index_features) else 0
    embedded = ds.map_batches(
        ItemEmbedder, batch_size=cfg.index.embed_batch_size, batch_format="numpy",
        fn_constructor_args=(model, cfg.index.embed_batch_size, cfg.index.image_weight, 128, runtime, rerank_tokens),
        compute=ray.data.ActorPoolStrategy(size=cfg.index.embed_concurrency), num_gpus=cfg.index.embed_num_gpus)
    by_id, rerank_rows = {}, {}
    for batch in embedded.iter_batches(batch_format="numpy", batch_size=None):
        for j, (item_id, vec, image) in enumerate(zip(batch["id"], batch["vector"], batch["first_image"])):
            by_id[str(item_id)] = (vec, image)
            if rerank_tokens:
                rerank_rows[str(item_id)] = tuple(batch[c][j] for c in RERANK_COLUMNS)
    vectors = np.stack([by_id[i][0] for i in meta["id"]]).astype(np.float32)
    rerank_features = _rerank_features(rerank_rows, meta["id"]) if rerank_tokens else None
    t_embed = time.time()

    with store.begin(INDEX_KIND, config=cfg.model_dump(mode="json"),
                     parents={"model": model.ref, "dataset": dataset.ref}) as writer:
        folder = writer.path() if store.local else tempfile.mkdtemp(prefix="mmray-index-")
        try:
            extra = _write_index_files(folder, cfg, meta, vectors, by_id)
            if rerank_features is not None:
                extra["rerank_features"] = {"file": rerank_features.save(folder), "grid": list(rerank_features.grid),
                                            "item_tokens": rerank_tokens, "dtype": "float16"}
            extra.update(model_version=model.name, timings_s={"embed": round(t_embed - start, 2),
                                                              "build": round(time.time() - t_embed, 2)})
            if not store.local:
                writer.upload_dir(folder)
            version = writer.commit(extra=extra, make_current=False)
            retriever = Retriever.from_folder(folder, version.manifest, cfg.index)  # searched once before it may serve
        finally:
            if not store.local:
                shutil.rmtree(folder, ignore_errors=True)
    hits = retriever.search(vectors[0], k=1, collapse=False)
    if not hits or hits[0].id != meta["id"][0]:
        raise RuntimeError(f"index {version.ref} failed its load check: item 0 does not find itself")
    store.set_current(INDEX_KIND, version.name)
    store.prune(INDEX_KIND)
    return {**version.manifest, "path": version.uri}


RERANK_COLUMNS = ("rr_regions", "rr_tokens", "rr_mask", "rr_has_image", "rr_grid")


def _rerank_features(rows: dict, ids: list[str]):
    """The items' reranker features in index row order (`mmray.rerank.features.ItemFeatures`)."""
    from mmray.rerank.features import ItemFeatures

    cols = [np.stack([rows[i][c] for i in ids]) for c in range(4)]
    return ItemFeatures(cols[0].astype(np.float16), cols[1].astype(np.float16), cols[2].astype(bool),
                        cols[3].astype(bool), tuple(int(v) for v in rows[ids[0]][4]))


def _write_index_files(folder: str, cfg: MmrayConfig, meta: dict, vectors: np.ndarray, by_id: dict) -> dict:
    """FAISS shards, vectors, metadata, lexical index and images into a local `folder`; returns
    the manifest fields that describe them."""
    n = len(meta["id"])
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    ann = build_ann(vectors, cfg.index.factory, cfg.index.num_shards, seed=cfg.train.seed,
                    nprobe=cfg.index.nprobe, ef_search=cfg.index.ef_search)
    shard_files = save_ann(ann, folder)
    np.save(os.path.join(folder, "vectors.npy"), vectors)
    meta["available"] = [True] * n
    # "" for a text-only item: it has no image file
    meta["image"] = [f"images/{row}.jpg" if len(by_id[item_id][1]) else "" for row, item_id in enumerate(meta["id"])]
    pq.write_table(pa.table(meta), os.path.join(folder, "metadata.parquet"))
    LexicalIndex.build(lexical_texts(meta)).save(os.path.join(folder, "lexical"))
    for item_id, name in zip(meta["id"], meta["image"]):
        if name:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(by_id[item_id][1])
    rng = np.random.default_rng(0)
    probe = vectors[rng.choice(n, size=min(n, 200), replace=False)]
    return {"count": n, "products": len(set(meta["product_id"])), "dim": int(vectors.shape[1]),
            "factory": ann_description(cfg, n, vectors.shape[1]), "num_shards": len(shard_files),
            "shards": shard_files, "image_weight": cfg.index.image_weight,
            "recall_at_10_self_check": recall_at_k(ann, vectors, probe, 10)}


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
