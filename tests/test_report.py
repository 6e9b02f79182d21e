"""The evaluation report (mmray/report, jobs/evaluate.py): a small `mmray evaluate` run publishes report.json,
index.html and every plot as PNGs of the configured size; sections without inputs say "not run"; the
figures come from the artifacts and result files (checked against them and against brute-force counts);
the app's /report pages serve the current version and nothing else."""
from __future__ import annotations

import io
import json
import shutil
from collections import Counter

import pytest
import yaml
from conftest import LUMA_CATALOG, ROOT
from PIL import Image

from jobs import cli
from mmray.report.sections import category_group, latency_section
from mmray.storage import REPORT_KIND, ArtifactStore, model_kind

W, H = 640, 400
PLOTS = {"plots/recall_t2i.png", "plots/recall_i2t.png", "plots/ndcg.png", "plots/recommendation.png",
         "plots/copy.png", "plots/latency.png", "plots/training.png", "plots/exposure.png"}


def _metrics(scale: float) -> dict:
    """A model's metrics.json as jobs.train writes it (held-out, baseline, per-epoch history)."""
    curve = {f"{d}_R@{k}": round(scale * r, 3) for d in ("t2i", "i2t") for k, r in ((1, 0.3), (5, 0.6), (10, 0.8))}
    return {"run_name": f"dual_encoder-test-{scale}", "workers": 2, "held_out": curve,
            "untrained_projections": {k: v / 2 for k, v in curve.items()},
            "history": [{"epoch": e, "step": 10 * e, "loss": 3.0 / e, "query_R@10": 0.2 * e, "t2i_R@1": 0.1 * e,
                         "resumed_from_epoch": None} for e in (1, 2, 3)]}


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_session):
    """40 Luma rows with a test split, two published tiny models (each with metrics.json), an index, and
    result files of the serve benchmark and of the recommendation and copy evaluations."""
    from mmray.config import ModelConfig, load_config
    from mmray.index.build import build_index
    from mmray.model import build_model, save_checkpoint
    from mmray.preprocess import run_preprocess

    tmp = tmp_path_factory.mktemp("report")
    lines = LUMA_CATALOG.read_text().splitlines()
    rows = [json.loads(line) for line in lines[::10][:40]]
    for r in rows:
        r["images"] = [str(LUMA_CATALOG.parent / p) for p in r["images"]]
    (tmp / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench = tmp / "bench"
    bench.mkdir()
    latencies = {"c1": [5.0 + i % 7 for i in range(50)], "c16": [40.0 + i % 11 for i in range(50)]}
    (bench / "serve-2026-12-03.json").write_text(json.dumps({"date": "2026-12-03T10:00:00+00:00", "rounds": [
        {"inproc": [], "http": [{"concurrency": 1, "latencies_ms": latencies["c1"]},
                                {"concurrency": 16, "latencies_ms": latencies["c16"]}]}]}))
    shutil.copy(ROOT / "benchmarks" / "results" / "serve-2026-12-02-onnx.txt", bench)  # older: not chosen
    recs = {"metrics": {"sequence": {"HR@10": 0.41, "NDCG@10": 0.22}, "popular": {"HR@10": 0.2, "NDCG@10": 0.1}}}
    copy = {"metrics": {"grounded": {"grounded_rate": 1.0, "pass_rate": 0.9}, "<script>x</script>": {"pass_rate": 0.5}}}
    (tmp / "recommend.json").write_text(json.dumps(recs))
    (tmp / "copy.json").write_text(json.dumps(copy))
    raw = {"data": {"catalog": str(tmp / "catalog.jsonl"), "name": "luma", "image_size": 64, "holdout_fraction": 0.3,
                    "image_root": str(LUMA_CATALOG.parent)},
           "model": {"kind": "tiny", "image_size": 64, "embed_dim": 32},
           "index": {"embed_batch_size": 16, "embed_concurrency": 1, "query_runtime": "torch"},
           "report": {"benchmarks_dir": str(bench), "recommend_results": str(tmp / "recommend.json"),
                      "copy_results": str(tmp / "copy.json"), "plot_width_px": W, "plot_height_px": H},
           "storage": {"root": str(tmp / "artifacts")}}
    cfg_path = tmp / "report.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    cfg = load_config(cfg_path)
    run_preprocess(cfg)
    store = ArtifactStore.from_config(cfg.storage)
    versions = []
    for scale in (0.5, 1.0):  # an older model, then the served one
        model = build_model(ModelConfig(kind="tiny", image_size=64, embed_dim=32), pretrained=False)
        folder = tmp / f"model-{scale}"
        folder.mkdir()
        save_checkpoint(model, str(folder))
        with store.begin(model_kind(), config={"test": True}) as writer:
            writer.upload_dir(str(folder))
            writer.write_json("metrics.json", _metrics(scale))
            versions.append(writer.commit().name)
    build_index(cfg)
    return {"cfg_path": str(cfg_path), "store": store, "rows": rows, "models": versions, "latencies": latencies,
            "recs": recs, "copy": copy, "tmp": tmp}


def _current_report(store):
    return store.resolve(REPORT_KIND)


def _check_png(data: bytes) -> None:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.size == (W, H)
    lo, hi = image.convert("L").getextrema()
    assert hi > lo  # something is drawn, not a blank canvas


def test_evaluate_publishes_every_plot_and_the_figures_it_was_given(built, capsys):
    code = cli.main(["evaluate", "--config", built["cfg_path"]])
    out = capsys.readouterr()
    assert code == 0, out.err
    report = _current_report(built["store"])
    assert f"report {report.ref} published" in out.out
    plots = {rel for rel in report.files if rel.startswith("plots/")}
    assert plots == PLOTS and report.manifest["plots"] == sorted(PLOTS)
    for rel in sorted(plots):
        _check_png(report.read_bytes(rel))
    data = report.read_json("report.json")
    served, older = built["models"][1], built["models"][0]
    assert data["model"] == served
    t2i = data["retrieval"]["t2i"]
    assert t2i[f"model {served} (served)"] == {k: _metrics(1.0)["held_out"][f"t2i_R@{k}"] for k in ("1", "5", "10")}
    assert t2i[f"model {older}"] == {k: _metrics(0.5)["held_out"][f"t2i_R@{k}"] for k in ("1", "5", "10")}
    assert t2i["baseline: untrained projections"]["10"] == _metrics(1.0)["untrained_projections"]["t2i_R@10"]
    assert [h["loss"] for h in data["training"]["history"]] == [3.0, 1.5, 1.0]
    assert set(data["search"]["modes"]) == {"bm25", "vector", "hybrid"} and "rerank.enabled is false" in data["search"]["reranked"]
    assert all(0.0 <= m[key] <= 1.0 for m in data["search"]["modes"].values() for key in ("R@10", "nDCG@10", "MRR"))
    assert data["recommendation"]["metrics"] == built["recs"]["metrics"]
    assert data["copy"]["metrics"] == built["copy"]["metrics"]
    lat = data["latency"]
    assert lat["kind"] == "histogram" and lat["source"] == "serve-2026-12-03.json"
    assert lat["series"] == {"HTTP c=1": built["latencies"]["c1"], "HTTP c=16": built["latencies"]["c16"]}

    # Exposure: catalog shares recounted from the catalog rows; slot shares sum to one.
    exposure = data["exposure"]
    products = {r["product_id"]: category_group(r["category"], 2) for r in built["rows"]}
    catalog = Counter(products.values())
    assert {g["category"]: g["catalog_share"] for g in exposure["groups"] if g["products"]} == pytest.approx(
        {c: n / len(products) for c, n in catalog.items()})
    assert sum(g["exposure"] for g in exposure["groups"]) == pytest.approx(1.0)
    assert sum(g["slots"] for g in exposure["groups"]) == exposure["queries"] * min(10, len(products))

    page = report.read_bytes("index.html").decode()
    assert all(f'src="{rel}"' in page for rel in PLOTS) and "<script" not in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page  # names from result files are escaped


def test_missing_inputs_say_not_run_and_draw_nothing(built, capsys):
    missing = built["tmp"] / "absent.json"
    code = cli.main(["evaluate", "--config", built["cfg_path"], "--set", f"report.recommend_results={missing}",
                     "--set", f"report.copy_results={missing}", "--set", f"report.benchmarks_dir={built['tmp'] / 'none'}"])
    assert code == 0, capsys.readouterr().err
    report = _current_report(built["store"])
    data = report.read_json("report.json")
    for section in ("recommendation", "copy", "latency"):
        assert data[section]["not_run"].startswith("not run"), section
    assert {rel for rel in report.files if rel.startswith("plots/")} == PLOTS - {
        "plots/recommendation.png", "plots/copy.png", "plots/latency.png"}
    assert report.read_bytes("index.html").decode().count('class="notrun"') >= 4  # three sections + reranked


def test_report_pages_serve_only_the_current_reports_files(built, capsys):
    from deployments.pages import ReportPages

    assert cli.main(["evaluate", "--config", built["cfg_path"]]) == 0
    capsys.readouterr()
    report = _current_report(built["store"])
    pages = ReportPages(built["store"])
    assert pages.get("index.html") == (report.read_bytes("index.html"), "text/html; charset=utf-8")
    assert pages.get("plots/exposure.png")[0] == report.read_bytes("plots/exposure.png")
    assert pages.get("report.json")[1] == "application/json"
    for rel in ("manifest.json", "../current.json", "plots/nope.png", "index.htm"):
        assert pages.get(rel) is None, rel
    empty = ReportPages(ArtifactStore(str(built["tmp"] / "empty")))
    assert empty.get("index.html") is None


def test_latency_from_a_text_report_uses_its_median_table(tmp_path):
    shutil.copy(ROOT / "benchmarks" / "results" / "serve-2026-12-02-onnx.txt", tmp_path)
    lat = latency_section(str(tmp_path))
    assert lat["kind"] == "percentiles" and lat["date"] == "2026-12-02T12:59:29+00:00"
    # the file's "median over rounds" rows, read by hand
    assert lat["series"]["HTTP c=1"] == {"p50_ms": 10.3, "p95_ms": 13.4, "p99_ms": 16.5, "qps": 94.5}
    assert lat["series"]["in-process c=16"] == {"p50_ms": 70.1, "p95_ms": 83.5, "p99_ms": 86.9, "qps": 224.6}
    assert latency_section(str(tmp_path / "nothing"))["not_run"].startswith("not run")
