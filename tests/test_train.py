"""End-to-end Ray Train runs of the tiny model on a slice of the shipped catalog: two workers,
checkpoints that rebuild the model, and resume after a worker dies."""
from __future__ import annotations

import functools
import json
import os
import sys
import time

import numpy as np
import pytest
import torch
from conftest import LUMA_CATALOG

from mmray.config import load_config
from mmray.dataset import current_dataset, load_items
from mmray.embedder import Embedder
from mmray.model import load_checkpoint


@pytest.fixture(scope="module")
def small_storage(tmp_path_factory, ray_session):
    """The first 90 Luma rows preprocessed at 64 px into a fresh storage root."""
    from mmray.preprocess import run_preprocess

    root = tmp_path_factory.mktemp("train")
    catalog = root / "catalog.jsonl"
    lines = LUMA_CATALOG.read_text().splitlines()[:90]
    rows = [json.loads(line) for line in lines]
    for r in rows:
        r["images"] = [str(LUMA_CATALOG.parent / p) for p in r["images"]]
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [f"data.catalog={catalog}", f"storage.root={root / 'artifacts'}", "data.image_size=64",
                             "data.holdout_fraction=0.3", f"data.image_root={LUMA_CATALOG.parent}"])
    report = run_preprocess(cfg)
    assert report["rows_out"] == 90, report["quarantined_by_reason"]
    return root / "artifacts"


def tiny_config(storage, *extra):
    return load_config(None, [f"storage.root={storage}", "data.image_size=64", "model.kind=tiny",
                              "model.image_size=64", "model.embed_dim=32", "train.num_workers=2",
                              "train.cpus_per_worker=0.5", "train.batch_size=16", "train.epochs=2",
                              "train.lr=3e-3", "train.warmup_steps=1", *extra])


def test_two_worker_tiny_run_publishes_a_loadable_model(small_storage):
    from mmray.training.trainer import run_training

    cfg = tiny_config(small_storage)
    summary = run_training(cfg)
    folder = os.path.join(str(small_storage), "models", "dual_encoder", summary["version"])
    current = json.load(open(os.path.join(str(small_storage), "models", "dual_encoder", "current.json")))
    assert current["version"] == summary["version"]
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    assert all(np.isfinite(h["loss"]) for h in summary["history"])
    assert summary["cached_features"] is False and summary["workers"] == 2
    for key in ("t2i_R@1", "i2t_R@10", "t2i_MRR", "zeroshot_acc", "query_R@10", "query_nDCG@10"):
        assert 0.0 <= summary["held_out"][key] <= 1.0
    assert set(summary["bm25"]) >= {"query_R@10", "query_nDCG@10"}

    # The checkpoint folder rebuilds the model by itself, and it is the trained one: evaluating it
    # again reproduces the metrics recorded at the last epoch.
    model, extra = load_checkpoint(folder)
    assert extra["epoch"] == 2 and extra["step"] == summary["history"][-1]["step"] > 0
    test_items = load_items(current_dataset(cfg), split="test")
    from mmray.training.evaluate import build_eval_inputs, evaluate

    again = evaluate(model, build_eval_inputs(test_items, None, cfg.index.image_weight))
    assert again["t2i_MRR"] == pytest.approx(summary["history"][-1]["t2i_MRR"], abs=1e-6)
    vecs = Embedder(model).embed_texts(["a red jacket", "blue pants"])
    assert vecs.shape == (2, 32) and np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def kill_rank0_once(*, epoch: int, rank: int, metrics: dict, at_epoch: int, marker: str) -> None:
    """epoch_callback: the first time only (`marker` absent), rank 0 dies after reporting `at_epoch`.

    The wait lets the controller register that report's checkpoint first (it polls), as it
    would have for any worker that dies some time after reporting."""
    if rank != 0 or epoch != at_epoch or os.path.exists(marker):
        return
    open(marker, "w").close()
    time.sleep(3)
    os._exit(1)


def test_a_killed_worker_resumes_from_the_last_checkpoint(small_storage, tmp_path):
    import ray.cloudpickle

    from mmray.training.trainer import run_training

    cfg = tiny_config(small_storage, "train.epochs=3", "train.max_failures=1")
    marker = tmp_path / "killed"
    kill = functools.partial(kill_rank0_once, at_epoch=1, marker=str(marker))
    this_module = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(this_module)  # Ray's workers cannot import a test module
    try:
        summary = run_training(cfg, epoch_callback=kill)  # rank 0 exits after epoch 1 of the first attempt
    finally:
        ray.cloudpickle.unregister_pickle_by_value(this_module)
    assert marker.exists()
    epochs = [h["epoch"] for h in summary["history"]]
    assert epochs == [1, 2, 3]  # epoch 1 from the first attempt, 2-3 after the restart
    assert summary["history"][0]["resumed_from_epoch"] == 0
    assert summary["history"][-1]["resumed_from_epoch"] == 1
    steps = [h["step"] for h in summary["history"]]
    assert steps[1] - steps[0] == steps[2] - steps[1] == steps[0]  # no step lost or repeated


def test_batch_size_is_clamped_to_the_data():
    from mmray.training.trainer import fit_batch_size

    assert fit_batch_size(128, 1000, 2) == 128
    assert fit_batch_size(128, 67, 2) == 66  # the largest multiple of the workers that fits
    assert fit_batch_size(128, 20, 4) == 20 and fit_batch_size(128, 3, 1) == 3
    with pytest.raises(ValueError, match="at least 2 rows per worker"):
        fit_batch_size(128, 3, 2)
    with pytest.raises(ValueError, match="smaller than train.num_workers"):
        fit_batch_size(2, 100, 4)


def _thin_items(n: int) -> list[dict]:
    from conftest import jpeg_bytes

    return [{"id": f"i{k}", "title": f"Apples {k}", "description": "", "category": "Fruit/Apples", "gender": "",
             "color": "", "attributes_json": json.dumps({"origin": ["Spain"]}), "captions": [f"an apple {k}"],
             "text": f"Apples {k}. apple", "images": [jpeg_bytes(seed=k)]} for k in range(n)]


@pytest.mark.parametrize("cached", [False, True])
def test_thin_held_out_data_skips_metrics_instead_of_crashing(cached):
    from mmray.config import ModelConfig
    from mmray.model import build_model
    from mmray.training.evaluate import build_eval_inputs, evaluate
    from mmray.training.trainer import bm25_baseline

    model = build_model(ModelConfig(kind="tiny", image_size=64, embed_dim=32), pretrained=False)
    embedder = Embedder(model) if cached else None
    items = _thin_items(4)  # one query ("apple spain origin"): fewer than MIN_QUERIES
    ev = build_eval_inputs(items, embedder, 0.5)
    metrics = evaluate(model, ev)
    assert metrics["query_skipped"].startswith("1 held-out queries")
    assert "query_R@10" not in metrics and 0.0 <= metrics["t2i_R@1"] <= 1.0
    assert bm25_baseline(items, ev) == {"query_skipped": metrics["query_skipped"]}
    empty = evaluate(model, build_eval_inputs([], embedder, 0.5))
    assert set(empty) == {"skipped"}


def test_tiny_loss_decreases_without_ray(small_storage):
    """The worker loop's pieces, run in-process: a few epochs lower the loss on the same data."""
    from mmray.training.data import explode_images
    from mmray.training.loop import TrainState, run_epoch

    cfg = tiny_config(small_storage, "train.num_workers=1", "train.epochs=6")
    items = [r for r in load_items(current_dataset(cfg)) if r["split"] == "train"]
    batch = explode_images({"group": np.array([r["group"] for r in items], dtype=object),
                            "images": np.array([r["images"] for r in items], dtype=object),
                            "captions": np.array([r["captions"] for r in items], dtype=object)})
    n = len(batch["group"]) // 16 * 16
    batches = [{k: v[i:i + 16] for k, v in batch.items()} for i in range(0, n, 16)]
    state = TrainState(cfg, len(batches))
    torch.manual_seed(0)
    losses = [run_epoch(state, batches, 0, 1, cached=False, epoch=e) for e in range(6)]
    assert losses[-1] < losses[0]


def test_a_small_grocery_catalog_trains_with_the_batch_clamped(tmp_path, ray_session):
    """20 one-image products without colour or audience, batch_size 128: the batch is clamped to the
    data, and the 2 held-out products give too few queries: the query metrics are skipped, not a crash."""
    from PIL import Image, ImageDraw

    from jobs.train import format_summary
    from mmray.preprocess import run_preprocess
    from mmray.training.trainer import run_training

    kinds = [("Fruit/Apples", "red"), ("Fruit/Bananas", "yellow"), ("Vegetables/Carrots", "orange"),
             ("Dairy/Milk", "white")]
    (tmp_path / "images").mkdir()
    rows = []
    for k in range(20):
        category, paint = kinds[k % 4]
        image = Image.new("RGB", (64, 64), "gray")
        ImageDraw.Draw(image).ellipse((8 + k % 5, 8, 56, 56 - k % 5), fill=paint)
        image.save(tmp_path / "images" / f"p{k}.jpg")
        rows.append({"id": f"p{k}", "title": f"{category.split('/')[1]} no. {k}", "category": category,
                     "attributes": {"origin": [["Spain", "Italy"][k % 2]]}, "images": [f"images/p{k}.jpg"]})
    (tmp_path / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_config(tmp_path / "artifacts", f"data.catalog={tmp_path / 'catalog.jsonl'}", "data.name=grocery",
                      "data.holdout_fraction=0.1", "train.batch_size=128", "train.epochs=1")
    assert run_preprocess(cfg)["rows_out"] == 20
    summary = run_training(cfg)
    # 18 training rows (2 products held out, seed 0): one batch of 18 per epoch
    assert summary["train_rows"] == 18 and summary["history"][0]["step"] == 1
    assert np.isfinite(summary["history"][0]["loss"])
    # 2 held-out queries ("banana italy origin", "apple spain origin"): fewer than MIN_QUERIES
    skipped = summary["held_out"]["query_skipped"]
    assert skipped.startswith("2 held-out queries") and "query_R@10" not in summary["held_out"]
    assert summary["bm25"] == {"query_skipped": skipped} and summary["untrained_projections"]["query_skipped"] == skipped
    assert 0.0 <= summary["held_out"]["t2i_R@1"] <= 1.0
    report = format_summary(summary)
    assert "n/a" in report and skipped in report


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_step_on_gpu(small_storage):
    """bf16 autocast path: one epoch on the GPU gives a finite loss (skipped on CPU machines)."""
    from mmray.training.data import explode_images
    from mmray.training.loop import TrainState, run_epoch

    cfg = tiny_config(small_storage, "train.num_workers=1", "train.precision=bf16")
    items = [r for r in load_items(current_dataset(cfg)) if r["split"] == "train"][:32]
    batch = explode_images({"group": np.array([r["group"] for r in items], dtype=object),
                            "images": np.array([r["images"] for r in items], dtype=object),
                            "captions": np.array([r["captions"] for r in items], dtype=object)})
    state = TrainState(cfg, 1)
    state.model.cuda()
    loss = run_epoch(state, [{k: v[:16] for k, v in batch.items()}], 0, 1, cached=False, epoch=0)
    assert np.isfinite(loss)
