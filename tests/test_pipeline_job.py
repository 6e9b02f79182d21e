"""The laptop flow for real: a Ray head started with `ray start` (loopback, 2 CPUs, dashboard for the
job server), `ray job submit --working-dir .` of `jobs.pipeline` from another process, and the
artifacts it publishes under an absolute storage root.

The catalog is a merchant's first small one: 81 one-photo products, fewer training rows than
`train.batch_size` (128), so training runs with the batch clamped to the data.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from local_cluster import RAY, ROOT, LocalCluster
from PIL import Image, ImageDraw

pytestmark = pytest.mark.slow

KINDS = [("Fruit/Apples", "circle"), ("Fruit/Bananas", "arc"), ("Vegetables/Carrots", "triangle"),
         ("Dairy/Cheese", "square")]
COLORS = {"red": (200, 30, 30), "yellow": (230, 210, 40), "orange": (240, 140, 20), "green": (40, 160, 60),
          "white": (235, 235, 225)}
ORIGINS = ["Spain", "Italy", "France"]
EXCLUDES = ["/.venv/", "/artifacts/", "/bench_data/", "/.git/", "__pycache__/", "/.pytest_cache/", "/.ruff_cache/",
            "/.hypothesis/", "/mmray.egg-info/"]


def draw_product(shape: str, fill: tuple[int, int, int], k: int) -> Image.Image:
    image = Image.new("RGB", (64, 64), (120 + k % 7 * 10, 120, 120))
    draw, box = ImageDraw.Draw(image), (8 + k % 5, 8 + k % 3, 56 - k % 4, 56)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(32, 6 + k % 5), (58, 58), (6, 58)], fill=fill)
    else:
        draw.chord(box, 20, 200, fill=fill)
    return image


def write_catalog(folder: Path, n: int = 81) -> Path:
    """`n` products, one drawn photo each: shape by category, fill by colour, a little offset."""
    (folder / "images").mkdir(parents=True)
    rows = []
    for k in range(n):
        (category, shape), color = KINDS[k % len(KINDS)], list(COLORS)[k // len(KINDS) % len(COLORS)]
        draw_product(shape, COLORS[color], k).save(folder / "images" / f"p{k}.jpg", quality=90)
        rows.append({"id": f"p{k}", "title": f"{color.title()} {category.split('/')[1]} no. {k}", "category": category,
                     "color": color, "price": 1.0 + k % 9, "attributes": {"origin": [ORIGINS[k % 3]]},
                     "images": [f"images/p{k}.jpg"]})
    catalog = folder / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return catalog


def test_the_pipeline_runs_as_one_submitted_ray_job(tmp_path):
    from mmray.config import load_config
    from mmray.dataset import load_items
    from mmray.storage import INDEX_KIND, ArtifactStore, dataset_kind, model_kind

    catalog = write_catalog(tmp_path / "shop")
    root = tmp_path / "artifacts"
    raw = {"data": {"catalog": str(catalog), "name": "shop", "image_size": 64},
           "model": {"kind": "tiny", "image_size": 64, "embed_dim": 32},
           "train": {"num_workers": 2, "epochs": 2, "lr": 3e-3, "warmup_steps": 1},  # batch_size: the default 128
           "index": {"embed_runtime": "torch", "query_runtime": "torch", "embed_batch_size": 32, "embed_concurrency": 1},
           "storage": {"root": str(root)}, "jobs": {"cpus": "free", "resource_wait_s": 120}}
    cfg_path = tmp_path / "pipeline.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    cfg = load_config(cfg_path)
    assert cfg.train.batch_size == 128

    with LocalCluster(num_cpus=2, dashboard=True) as cluster:
        submit = [RAY, "job", "submit", "--address", cluster.dashboard, "--working-dir", str(ROOT),
                  "--runtime-env-json", json.dumps({"excludes": EXCLUDES}), "--",
                  sys.executable, "-m", "jobs.pipeline", "--config", str(cfg_path)]
        job = subprocess.run(submit, env=cluster.env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        log = job.stdout + job.stderr
        assert job.returncode == 0, log[-4000:]
        packages = [p for p in Path(cluster.temp_dir).glob("session_latest/runtime_resources/working_dir_files/*")
                    if p.is_dir()]
        assert len(packages) == 1, packages
        uploaded = {p.relative_to(packages[0]): p.stat().st_size for p in packages[0].rglob("*") if p.is_file()}
    # the job ran the uploaded copy of the repository, without the venv or any artifacts
    top = {p.parts[0] for p in uploaded}
    assert {"jobs", "mmray", "configs"} <= top and not top & {".venv", "artifacts", ".git"}, sorted(top)
    assert sum(uploaded.values()) < 50 * 2**20

    for n, step in enumerate(("preprocess", "train", "build_index", "evaluate"), 1):
        assert f"[{n}/4] {step} ..." in log
    assert "pipeline done in" in log
    result = json.loads(next(line for line in reversed(log.splitlines()) if line.startswith('{"dataset"')))
    print("pipeline step timings (s):", result["timings_s"])

    # every artifact is published under the absolute root, each step built from the one before
    store = ArtifactStore.from_config(cfg.storage)
    assert store.current(dataset_kind("shop")) == result["dataset"]
    assert store.current(model_kind()) == result["model"]
    assert store.current(INDEX_KIND) == result["index"]
    dataset, model, index = (store.resolve(dataset_kind("shop")), store.resolve(model_kind()),
                             store.resolve(INDEX_KIND))
    assert model.manifest["parents"] == {"dataset": dataset.ref}
    assert index.manifest["parents"] == {"model": model.ref, "dataset": dataset.ref}
    assert index.manifest["count"] == 81 and (root / "indexes" / result["index"] / "manifest.json").exists()

    # fewer training rows than train.batch_size: trained with the largest batch the 2 workers fill
    train_rows = sum(len(it["images"]) for it in load_items(dataset, split="train"))
    assert train_rows < 128
    assert model.manifest["config"]["train"]["batch_size"] == train_rows // 2 * 2
    assert f"train.batch_size=128 is larger than the {train_rows} training rows" in log

    # the evaluation searched the published Flat index with the trained model: vector search gives
    # the held-out query metrics training computed in memory; hybrid search its own
    evaluation, held_out = result["evaluation"], result["held_out"]
    assert evaluation["index"] == result["index"] and evaluation["queries"] >= 3
    for key in ("query_R@10", "query_nDCG@10", "query_MRR"):
        assert evaluation["vector"][key] == pytest.approx(held_out[key], abs=1e-6), key
        assert 0.0 <= evaluation["hybrid"][key] <= 1.0
