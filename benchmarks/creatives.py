"""Creatives: render time per product (every default format) and how well the product check
separates a creative's own product from other catalog products (cosine of the image embedding of
the lite dual encoder: pretrained towers, untrained heads).

    python -m benchmarks.creatives [--products 40]
"""
from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np
from PIL import Image

from mmray.config import CreativeConfig, ModelConfig
from mmray.creative import CreativeStudio, Product
from mmray.creative.checks import product_region
from mmray.creative.cutout import cut_out
from mmray.creative.studio import reference_region


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--products", type=int, default=40)
    parser.add_argument("--catalog", default="data/luma/catalog.jsonl")
    args = parser.parse_args(argv)
    from mmray.embedder import Embedder
    from mmray.model import build_model

    cfg = CreativeConfig()
    rows = [json.loads(line) for line in open(args.catalog, encoding="utf-8")]
    rows = random.Random(0).sample(rows, args.products)
    studio = CreativeStudio(cfg)
    refs, regions, pids, took = [], [], [], []
    for r in rows:
        photo = Image.open(f"{args.catalog.rsplit('/', 1)[0]}/{r['images'][0]}").convert("RGB")
        p = Product(r["id"], r["product_id"], r["title"], photo, r.get("price"), r.get("category"), r.get("color"))
        start = time.perf_counter()
        creatives = studio.render_all(p, list(cfg.formats))
        took.append(time.perf_counter() - start)
        for c in creatives:
            refs.append(reference_region(photo, cut_out(photo, cfg.mask_threshold)))
            regions.append(product_region(c.image, c.product_box, c.product_mask, c.backdrop))
            pids.append(r["product_id"])
    print(f"render, {len(cfg.formats)} formats per product: median {np.median(took) * 1000:.0f} ms, "
          f"p90 {np.percentile(took, 90) * 1000:.0f} ms")
    embedder = Embedder(build_model(ModelConfig(kind="lite", embed_dim=256)), batch_size=32)
    sims = embedder.embed_images(regions) @ embedder.embed_images(refs).T
    own = np.diag(sims)
    pid = np.array(pids)
    other = sims[pid[:, None] != pid[None, :]]
    hardest = np.where(pid[:, None] != pid[None, :], sims, -1).max(axis=1)
    print(f"own product:    min {own.min():.3f}  p5 {np.percentile(own, 5):.3f}  median {np.median(own):.3f}")
    print(f"other products: median {np.median(other):.3f}  p99 {np.percentile(other, 99):.3f}  max {other.max():.3f}")
    print(f"creatives whose own product beats every other product: {np.mean(own > hardest):.3f}; "
          f"threshold {cfg.min_similarity}: own passing {np.mean(own >= cfg.min_similarity):.3f}, "
          f"other pairs passing {np.mean(other >= cfg.min_similarity):.5f}")


if __name__ == "__main__":
    main()
