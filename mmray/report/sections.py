"""The report's sections, gathered from what earlier runs published or wrote: the models' own held-out
metrics (`metrics.json` of every model version the store keeps), the index evaluation of `jobs.evaluate`,
result files of the recommendation and copy evaluations and of the serve benchmark. A section whose
inputs do not exist says so (`not_run`) instead of showing anything made up."""
from __future__ import annotations

import datetime as dt
import glob
import json
import logging
import os
import re
from collections import Counter

import numpy as np

from mmray.config import MmrayConfig
from mmray.storage import REPORT_KIND, ArtifactError, ArtifactStore, Version, model_kind

log = logging.getLogger(__name__)
KS = ("1", "5", "10")
NO_RERANKER = "not run: no reranker was evaluated with this index (rerank.enabled and `python -m jobs.train_reranker`)"


# --------------------------------------------------------------------------- retrieval and training


def _model_metrics(store: ArtifactStore, version: str) -> dict | None:
    """metrics.json of one model version (only that file's hash is checked), None if it has none."""
    kind = model_kind()
    try:
        found = Version(store, kind, version, store.read_manifest(kind, version))
        return found.read_json("metrics.json") if "metrics.json" in found.files else None
    except (ArtifactError, OSError, ValueError) as e:
        log.warning("model %s: no readable metrics.json (%s)", version, e)
        return None


def _curve(metrics: dict, direction: str) -> dict[str, float] | None:
    points = {k: metrics[f"{direction}_R@{k}"] for k in KS if isinstance(metrics.get(f"{direction}_R@{k}"), (int, float))}
    return points or None


def retrieval_section(store: ArtifactStore, served_model: str) -> dict:
    """Recall@K (K = 1, 5, 10) text->image and image->text on held-out items, for each kept model version
    and the served model's untrained-projections baseline (the towers before training)."""
    out: dict = {"t2i": {}, "i2t": {}, "models": []}
    for version in store.versions(model_kind()):
        metrics = _model_metrics(store, version)
        if metrics is None:
            continue
        out["models"].append(version)
        name = f"model {version}" + (" (served)" if version == served_model else "")
        for direction in ("t2i", "i2t"):
            if (curve := _curve(metrics.get("held_out", {}), direction)) is not None:
                out[direction][name] = curve
            if version == served_model and (base := _curve(metrics.get("untrained_projections", {}), direction)):
                out[direction]["baseline: untrained projections"] = base
    if not out["t2i"] and not out["i2t"]:
        out["not_run"] = "no model version carries held-out image-text metrics (text-only catalog, or no test split)"
    return out


def training_section(store: ArtifactStore, served_model: str) -> dict:
    """Per-epoch metrics of the served model's training run (what each Ray Train report carried)."""
    metrics = _model_metrics(store, served_model) or {}
    history = [{k: v for k, v in h.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
               for h in metrics.get("history", [])]
    if not history:
        return {"not_run": f"model {served_model} has no training history"}
    return {"model": served_model, "run_name": metrics.get("run_name"), "workers": metrics.get("workers"),
            "history": history}


# --------------------------------------------------------------------------- search quality and exposure


def search_section(evaluation: dict) -> dict:
    """The nDCG@10 table: BM25, vector, hybrid (and reranked, once a reranker exists) on the held-out queries."""
    if "query_skipped" in evaluation:
        return {"not_run": evaluation["query_skipped"]}
    modes = {}
    for mode in ("bm25", "vector", "hybrid", "reranked"):
        if mode in evaluation:
            m = evaluation[mode]
            modes[mode] = {"R@10": m["query_R@10"], "nDCG@10": m["query_nDCG@10"], "MRR": m["query_MRR"]}
    out = {"query_set": f"held-out queries ({evaluation['queries']} over {evaluation['test_items']} items)",
           "query_runtime": evaluation.get("query_runtime"), "modes": modes}
    if "reranked" not in modes:
        why = evaluation.get("rerank_skipped")
        out["reranked"] = f"not run: {why}" if why else NO_RERANKER
    else:
        out["reranker"] = evaluation.get("reranker")
    return out


def category_group(path: str, depth: int) -> str:
    parts = [p for p in (path or "").strip("/").split("/") if p]
    return "/".join(parts[:depth]) if parts else "(none)"


def exposure_by_category(retriever, query_texts: list[str], vectors: np.ndarray, k: int, depth: int,
                         hybrid: bool) -> dict:
    """Which categories the ranking favours: each category group's share of all top-k slots (one result
    per product, as the app answers) across the queries, beside its share of the catalog's products."""
    slots: Counter = Counter()
    for text, vector in zip(query_texts, vectors):
        for hit in retriever.search(vector, k=k, query_text=text, hybrid=hybrid, collapse=True):
            slots[category_group(retriever.meta["category"][hit.row], depth)] += 1
    products: dict[str, str] = {}
    for pid, category in zip(retriever.meta["product_id"], retriever.meta["category"]):
        products.setdefault(pid, category_group(category, depth))
    catalog = Counter(products.values())
    total_slots, total_products = max(1, sum(slots.values())), max(1, len(products))
    groups = [{"category": c, "exposure": slots[c] / total_slots, "catalog_share": catalog[c] / total_products,
               "slots": slots[c], "products": catalog[c]} for c in sorted(set(catalog) | set(slots))]
    groups.sort(key=lambda g: (-g["exposure"], -g["catalog_share"], g["category"]))
    return {"k": k, "queries": len(query_texts), "depth": depth, "hybrid": hybrid, "groups": groups}


# --------------------------------------------------------------------------- files of other runs


def results_file(path: str) -> dict:
    """`{"metrics": {name: {metric: number}}}` from a results file, numbers only; not_run when absent."""
    if not os.path.exists(path):
        return {"not_run": f"not run: no results file {path}"}
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        metrics = {str(name): {str(m): float(v) for m, v in values.items() if isinstance(v, (int, float))}
                   for name, values in raw["metrics"].items()}
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        return {"not_run": f"not run: {path} is unreadable ({type(e).__name__}: {e})"}
    return {"source": path, "metrics": metrics, **({"notes": str(raw["notes"])} if "notes" in raw else {})}


_ROW = re.compile(r"^(?:r\d+ )?(?P<name>in-process SearchService|Serve HTTP /v1/search)\s+(?P<conc>\d+)\s+\d+\s+\d+"
                  r"\s+(?P<p50>[\d.]+)\s+(?P<p95>[\d.]+)\s+(?P<p99>[\d.]+)\s+(?P<qps>[\d.]+)")
_MEDIAN_ROW = re.compile(r"^(?P<name>in-process SearchService|Serve HTTP /v1/search)\s+(?P<conc>\d+)"
                         r"\s+(?P<p50>[\d.]+)\s+(?P<p95>[\d.]+)\s+(?P<p99>[\d.]+)\s+(?P<qps>[\d.]+)\s*$")


def _label(name: str, conc: int | str) -> str:
    return f"{'HTTP' if name.startswith('Serve') else 'in-process'} c={conc}"


def _serve_json(path: str) -> dict | None:
    """Raw latencies of `benchmarks/serve.py --json`: every round's levels that recorded them."""
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    series: dict[str, list[float]] = {}
    for rnd in raw.get("rounds", []):
        for side, label in (("http", "Serve HTTP"), ("inproc", "in-process SearchService")):
            for level in rnd.get(side, []):
                if level.get("latencies_ms"):
                    series.setdefault(_label(label, level["concurrency"]), []).extend(level["latencies_ms"])
    return {"kind": "histogram", "series": series} if series else None


def _serve_text(path: str) -> dict | None:
    """Percentiles of a serve benchmark report: its median-over-rounds table, else its last row per level."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    median_at = next((i for i, line in enumerate(lines) if line.startswith("median over rounds")), None)
    pattern, body = (_MEDIAN_ROW, lines[median_at + 1:]) if median_at is not None else (_ROW, lines)
    series = {}
    for line in body:
        if m := pattern.match(line):
            series[_label(m["name"], m["conc"])] = {"p50_ms": float(m["p50"]), "p95_ms": float(m["p95"]),
                                                    "p99_ms": float(m["p99"]), "qps": float(m["qps"])}
    return {"kind": "percentiles", "series": series} if series else None


def _run_date(path: str) -> str:
    """The benchmark's own `date` line (ISO), else the file's modification time."""
    try:
        if path.endswith(".json"):
            with open(path, encoding="utf-8") as f:
                date = json.load(f).get("date")
            if date:
                return str(date)
        else:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.startswith("date"):
                        return line.split()[1]
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    return dt.datetime.fromtimestamp(os.path.getmtime(path), dt.timezone.utc).isoformat()


def latency_section(folder: str) -> dict:
    """The newest serve benchmark in `folder`: raw latencies (histograms) where a JSON result has them,
    else the percentiles of its text report."""
    found = sorted(glob.glob(os.path.join(folder, "serve-*.json")) + glob.glob(os.path.join(folder, "serve-*.txt")),
                   key=lambda p: (_run_date(p), p.endswith(".json")), reverse=True)
    for path in found:
        try:
            parsed = _serve_json(path) if path.endswith(".json") else _serve_text(path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("serve benchmark result %s unreadable: %s", path, e)
            continue
        if parsed:
            return {**parsed, "source": os.path.basename(path), "date": _run_date(path)}
    return {"not_run": f"not run: no serve benchmark result in {folder} (python -m benchmarks.serve --json ...)"}


# --------------------------------------------------------------------------- the whole report


def build_report(cfg: MmrayConfig, evaluation: dict, store: ArtifactStore) -> dict:
    """Every section of the report for the evaluated index (`jobs.evaluate`'s evaluation)."""
    r = cfg.report
    return {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "index": evaluation["index"], "model": evaluation["model"], "dataset": evaluation["dataset"],
        "retrieval": retrieval_section(store, evaluation["model"]),
        "search": search_section(evaluation),
        "recommendation": results_file(r.recommend_results),
        "copy": results_file(r.copy_results),
        "latency": latency_section(r.benchmarks_dir),
        "training": training_section(store, evaluation["model"]),
        "exposure": evaluation.get("exposure") or {"not_run": evaluation.get("query_skipped", "no held-out queries")},
    }


def publish_report(store: ArtifactStore, report: dict, plots: dict[str, bytes], page: str, parents: dict[str, str],
                   config: dict | None = None) -> Version:
    """report.json, index.html and the plots as a new, current `reports/evaluation` version."""
    with store.begin(REPORT_KIND, config=config, parents=parents) as writer:
        writer.write_json("report.json", report)
        for rel, data in sorted(plots.items()):
            writer.write_bytes(rel, data)
        writer.write_text("index.html", page)
        return writer.commit(extra={"plots": sorted(plots)})
