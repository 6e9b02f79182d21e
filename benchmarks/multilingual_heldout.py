"""English and Chinese held-out query quality of trained models, side by side.

    python -m benchmarks.multilingual_heldout --root /tmp/ml-artifacts [--root artifacts] [--config configs/local.yaml]

For each storage root (its current model and the dataset it was trained on), the held-out queries
that training reports (`mmray.evalset.build_queries` over the test split: "blue hoodie for men",
"tee for women made of cotton", ...) are scored as they are, and again translated into Simplified
Chinese. The translations are composed from the query's own facets with the hand-written glossary
below (no translation service): audience + colour + noun ("男士蓝色连帽衫"), or material + audience
+ noun ("抓绒材质的男士连帽衫"). Brand-like material names (LumaTech, CoolTech, Cocona®) stay in
Latin letters, as Chinese shops write them. Relevance is the same graded facet match for both
languages, so the two columns differ only by the language of the query.

Printed per root: the text tower, and query R@10 / nDCG@10 for English and for Chinese (the
metrics of `mmray.training.evaluate.evaluate`, the per-epoch report).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

COLOURS = {"black": "黑色", "blue": "蓝色", "gray": "灰色", "green": "绿色", "red": "红色", "white": "白色",
           "purple": "紫色", "orange": "橙色", "yellow": "黄色", "brown": "棕色", "beige": "米色", "pink": "粉色",
           "lavender": "淡紫色"}
NOUNS = {"hoodie": "连帽衫", "jacket": "夹克", "tee": "T恤", "tank top": "背心", "pants": "长裤", "shorts": "短裤",
         "bra": "运动文胸", "fitness gear": "健身器材", "watch": "手表", "training video": "训练视频", "bag": "包",
         "sweatshirt": "卫衣", "top": "上衣"}
AUDIENCE = {"men": "男士", "women": "女士", "": ""}
MATERIALS = {"fleece": "抓绒", "polyester": "涤纶", "nylon": "尼龙", "cotton": "棉", "organic cotton": "有机棉",
             "hemp": "麻", "microfiber": "超细纤维", "plastic": "塑料", "canvas": "帆布", "leather": "皮革",
             "wool": "羊毛", "spandex": "氨纶", "rubber": "橡胶", "metal": "金属", "foam": "泡沫"}
BRANDS = {"lumatechtm": "LumaTech", "cooltechtm": "CoolTech", "evercooltm": "EverCool",
          "cocona® performance fabric": "Cocona®", "lycra®": "Lycra®"}


def to_chinese(facets: dict[str, str]) -> str:
    """A held-out query's facets in Chinese word order; KeyError names a word the glossary lacks."""
    noun, audience = NOUNS[facets["noun"]], AUDIENCE[facets.get("gender") or ""]
    if facets.get("color"):
        return f"{audience}{COLOURS[facets['color']]}{noun}"
    materials = [v for k, v in facets.items() if k not in ("noun", "gender", "color") and v]
    if materials:
        value = materials[0]
        name = MATERIALS.get(value) or BRANDS[value]
        return f"{name}材质的{audience}{noun}" if value in MATERIALS else f"{name}面料{audience}{noun}"
    return f"{audience}{noun}"


def score(root: str, config: str) -> dict:
    from mmray.config import load_config
    from mmray.dataset import current_dataset, load_items
    from mmray.embedder import Embedder
    from mmray.evalset import build_queries
    from mmray.model import load_checkpoint
    from mmray.storage import ArtifactStore, model_kind
    from mmray.training.evaluate import build_eval_inputs, evaluate

    cfg = load_config(config, [f"storage.root={root}"])
    store = ArtifactStore.from_config(cfg.storage)
    model_ref = f"{model_kind()}/{store.current(model_kind())}"
    model, _ = load_checkpoint(store.resolve_ref(model_ref).local_dir())
    items = load_items(current_dataset(cfg), split="test")
    queries = build_queries(items, cfg.data.caption)
    ev = build_eval_inputs(items, Embedder(model), cfg.index.image_weight, caption=cfg.data.caption)
    chinese = [to_chinese(q.facets) for q in queries]
    assert [q.text for q in queries] == ev.query_texts
    zh = dataclasses.replace(ev, queries=chinese, query_texts=chinese)  # strings: embedded by evaluate()
    return {"root": root, "text_tower": model.cfg.text_tower,
            "queries": len(queries), "en": evaluate(model, ev), "zh": evaluate(model, zh),
            "examples": list(zip([q.text for q in queries[:4]], chinese[:4]))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.multilingual_heldout", description=__doc__.split("\n")[0])
    parser.add_argument("--root", action="append", required=True, help="storage root with a trained model")
    parser.add_argument("--config", default="configs/local.yaml")
    args = parser.parse_args(argv)
    rows = [score(root, args.config) for root in args.root]
    print(f"{'root':<22} {'text tower':<17} {'queries':>7} {'EN R@10':>8} {'EN nDCG':>8} {'ZH R@10':>8} {'ZH nDCG':>8}")
    for r in rows:
        en, zh = r["en"], r["zh"]
        print(f"{r['root']:<22} {r['text_tower']:<17} {r['queries']:>7} {en['query_R@10']:>8.3f} "
              f"{en['query_nDCG@10']:>8.3f} {zh['query_R@10']:>8.3f} {zh['query_nDCG@10']:>8.3f}")
    for en, zh in rows[0]["examples"]:
        print(f"  {en!r} -> {zh}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
