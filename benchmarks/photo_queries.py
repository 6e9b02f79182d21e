"""Search by photo with shopper-style photos: catalog packshots against "in-store" versions of them.

    python -m benchmarks.photo_queries [--config configs/local.yaml] [--n 200] [--seed 0]

Shoppers photograph a product on a shelf or a rail, not on a white studio background. No such
photos of the Luma products exist, so this script makes them from the index's own images, with
PIL only, each step drawn at random per photo (seeded):
  - the packshot's studio background cut away (`mmray.model.transforms.foreground_mask`, the
    cut-out training uses too; the scenes differ: training puts products on other catalog
    photos, this benchmark on drawn clutter), an off-centre crop keeping 65-90 % of each side,
    then a rotation of up to +-12 degrees;
  - pasted at 55-80 % of the frame onto a cluttered background (a random gradient with 12-30
    random coloured blocks: shelves, other products);
  - brightness 0.7-1.3, contrast 0.7-1.2, colour 0.8-1.2, a Gaussian blur of radius 0-1.5 px;
  - saved as JPEG at quality 55.
Each photo is sent through `SearchService.search_image` (the route the Ingress serves, variants
collapsed) against the current index, and counts as found when its own product is in the top k.
Printed: product hit rate @1 and @10 for the clean catalog image and for its in-store version,
and chance (k / products).
"""
from __future__ import annotations

import argparse
import asyncio
import io
import random
import sys

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from mmray.model.transforms import foreground_mask

SIDE = 512


def in_store(image: Image.Image, rng: random.Random) -> bytes:
    """A shopper-style photo of `image` (see the module docstring); JPEG bytes."""
    w, h = image.size
    product = image.convert("RGBA")
    product.putalpha(foreground_mask(image))
    cw, ch = int(w * rng.uniform(0.65, 0.9)), int(h * rng.uniform(0.65, 0.9))
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    product = product.crop((x0, y0, x0 + cw, y0 + ch)).rotate(rng.uniform(-12, 12), expand=True,
                                                              resample=Image.BICUBIC)
    scene = Image.new("RGB", (SIDE, SIDE))
    draw = ImageDraw.Draw(scene)
    top, bottom = [rng.randint(40, 220) for _ in range(3)], [rng.randint(40, 220) for _ in range(3)]
    for y in range(SIDE):
        t = y / (SIDE - 1)
        draw.line([(0, y), (SIDE, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom)))
    for _ in range(rng.randint(12, 30)):
        bx, by = rng.randint(-40, SIDE), rng.randint(-40, SIDE)
        draw.rectangle([bx, by, bx + rng.randint(20, 160), by + rng.randint(20, 160)],
                       fill=tuple(rng.randint(0, 255) for _ in range(3)))
    scale = rng.uniform(0.55, 0.8) * SIDE / max(product.size)
    product = product.resize((max(1, int(product.width * scale)), max(1, int(product.height * scale))), Image.BICUBIC)
    scene.paste(product, (rng.randint(0, SIDE - product.width), rng.randint(0, SIDE - product.height)), product)
    scene = ImageEnhance.Brightness(scene).enhance(rng.uniform(0.7, 1.3))
    scene = ImageEnhance.Contrast(scene).enhance(rng.uniform(0.7, 1.2))
    scene = ImageEnhance.Color(scene).enhance(rng.uniform(0.8, 1.2))
    scene = scene.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5)))
    out = io.BytesIO()
    scene.save(out, "JPEG", quality=55)
    return out.getvalue()


async def hit_rates(svc, photos: list[tuple[str, bytes]], k: int) -> tuple[float, float]:
    at1 = at_k = 0
    for product_id, data in photos:
        ids = [h.product_id for h in (await svc.search_image(image=data, k=k)).hits]
        at1 += ids[:1] == [product_id]
        at_k += product_id in ids
    return at1 / len(photos), at_k / len(photos)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.photo_queries", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/local.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--n", type=int, default=200, help="catalog images to query with (sampled)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", help="write the first 8 in-store photos into this folder (to look at)")
    args = parser.parse_args(argv)

    from mmray.config import load_config
    from mmray.search import SearchService
    from mmray.storage import ArtifactStore

    cfg = load_config(args.config, args.set)
    svc = SearchService.local(ArtifactStore.from_config(cfg.storage), cfg.index)
    retriever = svc.backend.indexes.newest
    rows = [row for row in range(len(retriever)) if retriever.meta["image"][row]]
    rng = random.Random(args.seed)
    rows = rng.sample(rows, min(args.n, len(rows)))
    clean, shop = [], []
    for row in rows:
        data = retriever.image_bytes(row)
        product_id = retriever.item(row)["product_id"]
        clean.append((product_id, data))
        shop.append((product_id, in_store(Image.open(io.BytesIO(data)).convert("RGB"), rng)))
    if args.save:
        import pathlib

        folder = pathlib.Path(args.save)
        folder.mkdir(parents=True, exist_ok=True)
        for i, (_, data) in enumerate(shop[:8]):
            (folder / f"in-store-{i}.jpg").write_bytes(data)
    k = 10
    products = retriever.manifest["products"]
    c1, ck = asyncio.run(hit_rates(svc, clean, k))
    s1, sk = asyncio.run(hit_rates(svc, shop, k))
    print(f"index {retriever.version} ({products} products), model {retriever.manifest['model_version']}; "
          f"{len(rows)} photos, seed {args.seed}")
    print(f"{'query photo':<22} {'hit@1':>7} {'hit@10':>7}")
    print(f"{'catalog image':<22} {c1:>7.3f} {ck:>7.3f}")
    print(f"{'in-store version':<22} {s1:>7.3f} {sk:>7.3f}")
    print(f"{'chance':<22} {1 / products:>7.3f} {k / products:>7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
