"""The whole pipeline with a bucket as its only storage: catalog, images and every artifact on a
real S3-compatible server (moto on loopback), reached through the standard AWS_* variables.

preprocess -> train (lite model, cached tower features, Ray Train checkpoints in the bucket)
-> build_index -> the Serve app loading the index from the bucket. Nothing may be written to
local disk except the replicas' verified cache; a flipped byte in the published model is refused.
"""
from __future__ import annotations

import json
import os
import time

import httpx
import pytest
from conftest import LUMA_CATALOG, ROOT, _free_port

pytestmark = pytest.mark.slow


def _upload_catalog(bucket: str, n: int) -> list[dict]:
    """The first `n` Luma rows and their images, under s3://<bucket>/catalog/."""
    import boto3

    s3 = boto3.client("s3")
    rows = [json.loads(line) for line in LUMA_CATALOG.read_text().splitlines()[:n]]
    for row in rows:
        for ref in row["images"]:
            s3.upload_file(str(LUMA_CATALOG.parent / ref), bucket, f"catalog/{ref}")
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    s3.put_object(Bucket=bucket, Key="catalog/catalog.jsonl", Body=body)
    return rows


def _keys(bucket: str, prefix: str) -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def _files_under(folder) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files}


def test_the_whole_pipeline_runs_from_a_bucket_root(tmp_path, s3_bucket, ray_session):
    from ray import serve

    from deployments.app import build_app
    from mmray.config import load_config
    from mmray.index.build import build_index
    from mmray.preprocess import run_preprocess
    from mmray.storage import INDEX_KIND, ArtifactError, ArtifactStore, dataset_kind, model_kind
    from mmray.training.trainer import run_training

    rows = _upload_catalog(s3_bucket, 36)
    cache = tmp_path / "cache"
    port = _free_port()
    overrides = [
        f"data.catalog=s3://{s3_bucket}/catalog/catalog.jsonl", "data.name=shop", "data.image_size=64",
        "data.holdout_fraction=0.2", "model.kind=lite", "model.image_size=64", "model.embed_dim=32",
        "train.num_workers=1", "train.epochs=2", "train.batch_size=16", "index.embed_batch_size=16",
        "index.embed_concurrency=1", f"storage.root=s3://{s3_bucket}/mmray", f"storage.cache_dir={cache}",
        f"serve.port={port}", "serve.reload_poll_s=0.5", "serve.embedder.num_cpus=0.5",
        "serve.retriever.num_cpus=0.25", "serve.ingress.num_cpus=0.25",
    ]
    cfg = load_config(None, overrides)
    store = ArtifactStore.from_config(cfg.storage)
    local_before, repo_before = _files_under(tmp_path), _files_under(ROOT / "artifacts")

    report = run_preprocess(cfg)
    assert report["rows_in"] == 36 and report["rows_out"] == 36, report
    dataset = store.resolve(dataset_kind("shop"))
    assert dataset.listing("items/") and "report.json" in dataset.files

    summary = run_training(cfg)
    model = store.resolve(model_kind())
    assert model.name == summary["version"] and model.manifest["parents"] == {"dataset": dataset.ref}
    assert {"weights.pt", "model_config.yaml", "metrics.json"} <= set(model.files)
    assert _keys(s3_bucket, "mmray/ray_results/"), "Ray Train kept no checkpoint in the bucket"
    caches = _keys(s3_bucket, "mmray/cache/features/")
    assert any(k.endswith("/manifest.json") for k in caches) and any(k.endswith("/current.json") for k in caches)

    manifest = build_index(cfg)
    index = store.resolve(INDEX_KIND)
    assert index.name == manifest["version"] and manifest["count"] == 36
    assert index.manifest["parents"] == {"model": model.ref, "dataset": dataset.ref}

    # Nothing but the cache was written locally: no storage folder here, none in the repo.
    new_files = _files_under(tmp_path) - local_before
    assert new_files and all(p.startswith("cache" + os.sep) for p in new_files), sorted(new_files)[:5]
    assert _files_under(ROOT / "artifacts") == repo_before

    # The Serve app is given the bucket root and nothing else.
    cfg_path = tmp_path / "s3.yaml"
    cfg_path.write_text(json.dumps(cfg.model_dump(mode="json")))
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app({"config": str(cfg_path)}), name="mmray-s3", route_prefix="/")
        base, deadline, last = f"http://127.0.0.1:{port}", time.time() + 120, None
        while time.time() < deadline:
            r = httpx.get(base + "/readyz", timeout=10)
            if r.status_code == 200:
                break
            last = r.text
            time.sleep(0.5)
        else:
            pytest.fail(f"app not ready: {last}")
        assert r.json()["index_version"] == index.name and r.json()["model_version"] == model.name
        hits = httpx.post(base + "/v1/search", json={"query": rows[0]["title"], "k": 5}, timeout=30).json()
        assert len(hits["results"]) == 5 and hits["index_version"] == index.name
        image = httpx.get(base + hits["results"][0]["image_url"], timeout=30)
        assert image.status_code == 200 and image.content[:2] == b"\xff\xd8"
    finally:
        serve.shutdown()
    cached = _files_under(cache)
    assert any(INDEX_KIND in p and p.endswith("vectors.npy") for p in cached)
    assert any("models" in p and p.endswith("weights.pt") for p in cached)

    # One flipped byte in the published weights: the next build refuses the model by its hash.
    import boto3

    s3 = boto3.client("s3")
    key = f"mmray/{model.ref}/weights.pt"
    data = bytearray(s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x01
    s3.put_object(Bucket=s3_bucket, Key=key, Body=bytes(data))
    with pytest.raises(ArtifactError, match="weights.pt does not match its SHA-256"):
        build_index(cfg)
    assert store.current(INDEX_KIND) == index.name  # the refused build published nothing
