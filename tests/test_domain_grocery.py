"""A second domain end to end: a synthetic grocery catalog (packshots drawn with Pillow, a shape and
colour per category that the captions name, and text-only items) through preprocess -> train (lite)
-> build_index -> search, against an index built with the same model untrained; and the text-only
pieces (evaluation, the index embedder) on their own."""
from __future__ import annotations

import asyncio
import json
import os

import numpy as np
import pytest
from conftest import jpeg_bytes, publish_model
from PIL import Image, ImageDraw

from mmray.config import ModelConfig, load_config
from mmray.embedder import Embedder
from mmray.model import build_model

# leaf category -> (colour, shape) of its packshot; the colour is the row's `color`, so captions name it
CATEGORIES = {
    "Fruit/Apples": ("red", "circle"), "Fruit/Bananas": ("yellow", "bar"),
    "Vegetables/Carrots": ("orange", "triangle"), "Vegetables/Broccoli": ("green", "circle"),
    "Dairy/Milk": ("white", "box"), "Bakery/Bread": ("brown", "box"),
    "Drinks/Juice": ("purple", "bar"), "Drinks/Water": ("blue", "triangle"),
}
VARIETIES = ["Organic", "Farm", "Value", "Premium", "Family Pack", "Local"]
ORIGINS, SIZES = ["Spain", "Italy", "France", "Kenya"], ["small", "medium", "large"]
TEXT_ONLY = [("Sea Salt Crackers", "Pantry/Crackers"), ("Wildflower Honey Jar", "Pantry/Honey"),
             ("Basmati Rice Sack", "Pantry/Rice"), ("Dark Roast Coffee Beans", "Pantry/Coffee"),
             ("Extra Virgin Olive Oil", "Pantry/Oil")]
QUERIES = {"apples": "Fruit/Apples", "fresh carrots": "Vegetables/Carrots", "milk": "Dairy/Milk",
           "bread": "Bakery/Bread", "juice": "Drinks/Juice", "bananas": "Fruit/Bananas",
           "broccoli": "Vegetables/Broccoli", "bottled water": "Drinks/Water"}
K = 6  # every category has 6 items


def packshot(colour: str, shape: str, k: int) -> Image.Image:
    image = Image.new("RGB", (96, 96), (235, 235, 230))
    draw, o = ImageDraw.Draw(image), k % 4  # a little jitter per product
    box = (16 + o, 16, 80 - o, 80)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(48, 12 + o), (14, 84), (82 - o, 84)], fill=colour)
    elif shape == "bar":
        draw.rectangle((12, 36 + o, 84, 60), fill=colour)
    else:
        draw.rectangle(box, fill=colour, outline="black")
    return image


def grocery_rows(folder) -> list[dict]:
    """48 pictured products (6 per category) and 5 text-only ones (`images: []`)."""
    (folder / "images").mkdir()
    rows = []
    for c, (category, (colour, shape)) in enumerate(CATEGORIES.items()):
        leaf = category.split("/")[1]
        for k, variety in enumerate(VARIETIES):
            pid = f"g{c}{k}"
            packshot(colour, shape, k).save(folder / "images" / f"{pid}.jpg", quality=92)
            rows.append({"id": pid, "title": f"{variety} {leaf}", "category": category, "color": colour,
                         "description": f"{leaf} drawn as a {colour} {shape}.", "price": 1.0 + k,
                         "attributes": {"origin": [ORIGINS[(c + k) % 4]], "size": [SIZES[k % 3]]},
                         "images": [f"images/{pid}.jpg"]})
    rows += [{"id": f"t{k}", "title": title, "category": category, "description": f"{title}, pantry staple.",
              "attributes": {"origin": [ORIGINS[k % 4]]}, "images": []} for k, (title, category) in enumerate(TEXT_ONLY)]
    return rows


def category_precision(svc, rows: list[dict]) -> float:
    """Mean share of the top K vector hits (no BM25) that are of the category the query names."""
    shares = []
    for query, category in QUERIES.items():
        hits = asyncio.run(svc.search_text(query=query, k=K, hybrid=False, collapse=False)).hits
        shares.append(sum(rows[h.row]["category"] == category for h in hits) / K)
    return float(np.mean(shares))


@pytest.mark.slow
def test_a_grocery_catalog_with_text_only_items_end_to_end(tmp_path, ray_session):
    from mmray.index.build import build_index
    from mmray.index.retriever import Retriever
    from mmray.preprocess import run_preprocess
    from mmray.search import SearchService
    from mmray.storage import ArtifactStore
    from mmray.training.trainer import run_training

    rows = grocery_rows(tmp_path)
    (tmp_path / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [
        f"data.catalog={tmp_path / 'catalog.jsonl'}", f"storage.root={tmp_path / 'artifacts'}", "data.name=grocery",
        "data.require_images=false", "data.image_size=64", "data.holdout_fraction=0.2",
        "model.kind=lite", "model.image_size=64", "model.embed_dim=64", "train.num_workers=1",
        "train.batch_size=16", "train.epochs=8", "train.lr=3e-3", "train.warmup_steps=2",
        "index.embed_batch_size=32", "index.embed_concurrency=1"])
    report = run_preprocess(cfg)
    assert report["rows_out"] == len(rows) == 53 and report["images_out"] == 48, report["quarantined_by_reason"]
    store = ArtifactStore.from_config(cfg.storage)

    # The baseline: the same model kind with untrained projections, indexed the same way.
    publish_model(store, build_model(cfg.model, seed=cfg.train.seed))
    build_index(cfg)
    untrained = category_precision(SearchService.local(store, cfg.index), rows)

    summary = run_training(cfg)
    assert summary["train_rows"] < 48 and all(np.isfinite(h["loss"]) for h in summary["history"])
    manifest = build_index(cfg)
    assert manifest["count"] == 53
    svc = SearchService.local(store, cfg.index)
    trained = category_precision(svc, rows)
    chance = K / len(rows)  # 6 relevant items of 53: the expected share of a random top 6
    print(f"grocery category precision@{K}: trained {trained:.3f}, untrained {untrained:.3f}, chance {chance:.3f}; "
          f"held-out {summary['held_out']}; untrained projections {summary['untrained_projections']}")
    assert trained >= 0.6 and trained >= 4 * chance and trained > untrained
    held_out, before = summary["held_out"], summary["untrained_projections"]
    assert held_out["t2i_MRR"] > before["t2i_MRR"] and held_out["i2t_MRR"] > before["i2t_MRR"]

    # Text-only items: found by their title, with text-side vectors, and no image file.
    retriever = Retriever.load_current(store, cfg.index)
    for k, (title, _) in enumerate(TEXT_ONLY):
        row = retriever.row_of[f"t{k}"]
        assert retriever.meta["image"][row] == "" and retriever.image_bytes(row) is None
        assert asyncio.run(svc.image(version=manifest["version"], row=row)) is None
        assert f"images/{row}.jpg" not in manifest["files"]
        assert not os.path.exists(os.path.join(manifest["path"], "images", f"{row}.jpg"))
        for hybrid in (True, False):
            hits = asyncio.run(svc.search_text(query=title, k=3, hybrid=hybrid)).hits
            assert f"t{k}" in [h.id for h in hits], (title, hybrid, [h.title for h in hits])
    pictured = retriever.row_of["g00"]
    assert retriever.image_bytes(pictured)[:2] == b"\xff\xd8"
    with open(tmp_path / "images" / "g00.jpg", "rb") as f:
        hits = asyncio.run(svc.search_image(image=f.read(), k=K, collapse=False)).hits
    apples = sum(rows[h.row]["category"] == "Fruit/Apples" for h in hits) / K
    print(f"a photo of red apples: {apples:.3f} of the top {K} are apples")
    assert len(hits) == K and apples >= 0.5


# --------------------------------------------------------------------------- text-only pieces (no Ray)


def _items(n: int, pictured) -> list[dict]:
    return [{"id": f"i{k}", "title": f"Apples {k}", "description": "", "gender": "", "color": "",
             "category": ["Fruit/Apples", "Dairy/Milk"][k % 2], "captions": [f"an apple {k}"],
             "attributes_json": json.dumps({"origin": [["Spain", "Italy", "France"][k % 3]]}),
             "text": f"Apples {k}. apple", "images": [jpeg_bytes(seed=k)] if pictured(k) else []} for k in range(n)]


@pytest.mark.parametrize("cached", [False, True])
def test_evaluation_counts_image_metrics_over_pictured_items_only(cached):
    from mmray.training.evaluate import build_eval_inputs, evaluate

    model = build_model(ModelConfig(kind="tiny", image_size=64, embed_dim=32), pretrained=False)
    embedder = Embedder(model) if cached else None
    none = evaluate(model, build_eval_inputs(_items(8, lambda k: False), embedder, 0.5))
    assert none["image_skipped"].startswith("no held-out item has an image") and "t2i_R@1" not in none
    assert 0.0 <= none["query_R@10"] <= 1.0  # queries still rank the (text-only) items
    some = evaluate(model, build_eval_inputs(_items(8, lambda k: k % 2 == 1), embedder, 0.5))
    pictured = evaluate(model, build_eval_inputs([it for it in _items(8, lambda k: k % 2 == 1) if it["images"]],
                                                 embedder, 0.5))
    for key in ("t2i_R@1", "i2t_R@5", "t2i_MRR", "i2t_MRR", "zeroshot_acc"):  # the text-only items change nothing
        assert some[key] == pytest.approx(pictured[key], abs=1e-6), key
    assert "image_skipped" not in some and 0.0 <= some["query_R@10"] <= 1.0


def test_item_embedder_gives_text_only_items_their_text_vector():
    from mmray.index.build import ItemEmbedder

    model = build_model(ModelConfig(kind="tiny", image_size=64, embed_dim=32), pretrained=False)
    embedder = ItemEmbedder.__new__(ItemEmbedder)  # the actor, with a model in hand instead of a checkpoint
    embedder.embedder, embedder.image_weight, embedder.text_tokens = Embedder(model), 0.5, 128
    embedder.rerank_tokens = 0  # no reranker features (their own test: tests/test_rerank.py)
    items = _items(4, lambda k: k == 2)
    batch = {"id": np.array([it["id"] for it in items], dtype=object), "text": np.array([it["text"] for it in items]),
             "images": np.array([np.array(it["images"], dtype=object) for it in items], dtype=object)}
    out = embedder(batch)
    text = Embedder(model).embed_texts([it["text"] for it in items])
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    assert out["vector"].shape == (4, 32) and np.allclose(np.linalg.norm(out["vector"], axis=1), 1.0, atol=1e-5)
    assert np.allclose(out["vector"][[0, 1, 3]], text[[0, 1, 3]], atol=1e-5)
    assert not np.allclose(out["vector"][2], text[2], atol=1e-3)  # the pictured item fuses its image
    assert [len(b) for b in out["first_image"]] == [0, 0, len(items[2]["images"][0]), 0]
    none = embedder({k: v[[0, 1]] for k, v in batch.items()})  # a batch without any image
    assert np.allclose(none["vector"], text[[0, 1]], atol=1e-5) and list(none["first_image"]) == [b"", b""]
