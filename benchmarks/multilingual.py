"""English-Chinese query matching of the text towers, on shopper queries for the shipped Luma catalog.

    python -m benchmarks.multilingual [--catalog data/luma/catalog.jsonl]

QUERIES: 20 English shopper queries written for the Luma catalog and their Chinese (Simplified)
translations, written by hand (no translation service). Each tower embeds both sides (tower
features, no trained heads: what a locked tower hands the projection), and the script reports:
  matched     mean cosine of the 20 translation pairs (English i, Chinese i)
  mismatched  mean cosine of the 380 other (English i, Chinese j) pairs
  ratio       matched / mismatched: the headline, >> 1 when translations land together
  top-1       English queries whose nearest Chinese query is their translation, and back
  overlap@10  share of the 10 nearest Luma products (title, category, colour, by cosine) that an
              English query and its translation have in common: do they reach the same items
  speed       sentences/s embedding the catalog's product texts (title + description, cut at 64
              tokens: the index build) and its titles (a few words: the length of a query)
for `use-multilingual` and, as the baseline, the default `minilm` (English only: Chinese
characters fall to [UNK] in its vocabulary). Speed is on this machine's CPUs, shared with
whatever else runs: a rough figure.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

QUERIES = [
    ("red jacket for women", "女士红色夹克"),
    ("black yoga pants", "黑色瑜伽裤"),
    ("men's running shorts", "男士跑步短裤"),
    ("gray hoodie for men", "男士灰色连帽衫"),
    ("blue t-shirt", "蓝色T恤"),
    ("waterproof rain jacket", "防水雨衣"),
    ("sports bra", "运动文胸"),
    ("women's tank top", "女士背心"),
    ("gym bag", "健身包"),
    ("fitness watch", "健身手表"),
    ("organic cotton tee", "有机棉T恤"),
    ("warm fleece jacket for winter", "冬季保暖抓绒夹克"),
    ("lightweight breathable shirt", "轻薄透气衬衫"),
    ("green shorts for women", "女士绿色短裤"),
    ("purple sweatshirt", "紫色卫衣"),
    ("yoga mat", "瑜伽垫"),
    ("backpack for hiking", "登山背包"),
    ("orange sleeveless top", "橙色无袖上衣"),
    ("men's workout pants", "男士运动裤"),
    ("dumbbells", "哑铃"),
]


def build_tower(name: str):
    """(tokenize(texts) -> dict, text tower) of the lite model with text tower `name`."""
    from mmray.config import ModelConfig
    from mmray.model import build_model

    model = build_model(ModelConfig(kind="lite", text_tower=name))
    return model.tokenize, model.text_tower


@torch.no_grad()
def embed(tokenize, tower, texts: list[str]) -> np.ndarray:
    """(N, D) unit-norm tower features."""
    feats = torch.cat([tower(**tokenize(texts[i:i + 256])) for i in range(0, len(texts), 256)])
    return torch.nn.functional.normalize(feats.float(), dim=-1).numpy()


def measure(name: str, products: list[str], descriptions: list[str]) -> dict[str, float]:
    tokenize, tower = build_tower(name)
    en, zh = embed(tokenize, tower, [q for q, _ in QUERIES]), embed(tokenize, tower, [q for _, q in QUERIES])
    sim = en @ zh.T  # (20, 20): row English i, column Chinese j
    n = len(QUERIES)
    matched, mismatched = float(np.diag(sim).mean()), float(sim[~np.eye(n, dtype=bool)].mean())
    items = embed(tokenize, tower, products)
    top_en, top_zh = np.argsort(-(en @ items.T), axis=1)[:, :10], np.argsort(-(zh @ items.T), axis=1)[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_en, top_zh)])
    embed(tokenize, tower, descriptions[:32])  # warm-up
    speed = {}
    for key, texts in (("speed", descriptions), ("speed_short", [p.split(",")[0] for p in products])):
        t0 = time.perf_counter()
        embed(tokenize, tower, texts)
        speed[key] = len(texts) / (time.perf_counter() - t0)
    return {"matched": matched, "mismatched": mismatched, "ratio": matched / mismatched if mismatched > 0 else float("inf"),
            "top1_en_zh": int((sim.argmax(1) == np.arange(n)).sum()), "top1_zh_en": int((sim.argmax(0) == np.arange(n)).sum()),
            "overlap10": float(overlap), **speed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.multilingual", description=__doc__.split("\n")[0])
    p.add_argument("--catalog", default=str(Path(__file__).resolve().parents[1] / "data" / "luma" / "catalog.jsonl"))
    p.add_argument("--towers", nargs="+", default=["use-multilingual", "minilm"])
    args = p.parse_args(argv)
    rows = [json.loads(line) for line in open(args.catalog, encoding="utf-8")]
    products = [f"{r['title']}, {r.get('color') or ''} {r['category'].replace('/', ' ')}" for r in rows]
    descriptions = [f"{r['title']}. {r.get('description') or ''}" for r in rows]
    n = len(QUERIES)
    print(f"{n} English/Chinese query pairs; {len(rows)} catalog rows ({args.catalog})")
    print(f"{'tower':<18}{'matched':>9}{'mismatch':>10}{'ratio':>8}{'top1 en>zh':>12}{'top1 zh>en':>12}"
          f"{'overlap@10':>12}{'texts/s':>9}{'titles/s':>10}")
    for name in args.towers:
        m = measure(name, products, descriptions)
        print(f"{name:<18}{m['matched']:>9.3f}{m['mismatched']:>10.3f}{m['ratio']:>8.2f}{m['top1_en_zh']:>9}/{n}"
              f"{m['top1_zh_en']:>9}/{n}{m['overlap10']:>12.2f}{m['speed']:>9.0f}{m['speed_short']:>10.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
