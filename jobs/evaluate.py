"""Search a published index with the held-out queries, as the app searches it, and print their metrics.

    python -m jobs.evaluate --config configs/local.yaml [--index v20261202-053100-123-9f3a1c]
    ray job submit --working-dir . -- python -m jobs.evaluate --config configs/local.yaml

The queries are those training reports (`mmray.evalset` over the test split of the dataset the index
was built from); the index's own model embeds them with `index.query_runtime`, and each query ranks
the held-out items of the index (every other row excluded, variants not collapsed), by vector alone
and hybrid (vector + BM25). Vector search over a `Flat` index with the torch runtime reproduces the
training job's held-out query metrics; the gap to them is what the index (ANN, fusion, runtime) adds
or costs. Nothing is written: an index version, once published, is never changed.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from mmray.config import ConfigError, MmrayConfig, load_config
from mmray.runtime import run_job, setup_logging
from mmray.storage import ArtifactError


def evaluate_index(cfg: MmrayConfig, version: str | None = None) -> dict:
    """Held-out query metrics of index `version` (default: the current one), vector and hybrid."""
    from mmray.dataset import load_items
    from mmray.embedder import Embedder
    from mmray.evalset import build_queries, relevance_matrix
    from mmray.index.retriever import Retriever
    from mmray.metrics import retrieval_report
    from mmray.storage import INDEX_KIND, ArtifactStore
    from mmray.training.evaluate import MIN_QUERIES

    store = ArtifactStore.from_config(cfg.storage)
    index = store.resolve(INDEX_KIND, version, hint="run `python -m jobs.build_index` first")
    parents = index.manifest["parents"]
    test_items = load_items(store.resolve_ref(parents["dataset"]), split="test")
    queries = build_queries(test_items, cfg.data.caption)
    out = {"index": index.name, "model": index.manifest["model_version"], "dataset": parents["dataset"],
           "test_items": len(test_items), "queries": len(queries), "query_runtime": cfg.index.query_runtime}
    if len(queries) < MIN_QUERIES:
        out["query_skipped"] = f"{len(queries)} held-out queries (fewer than {MIN_QUERIES}): no query metrics"
        return out
    retriever = Retriever.load(index, cfg.index)
    embedder = Embedder.from_version(store.resolve_ref(parents["model"]), cfg.index.embed_batch_size,
                                     cfg.index.query_runtime)
    ids = [item["id"] for item in test_items]
    column = {retriever.row_of[item_id]: j for j, item_id in enumerate(ids)}
    others = sorted(set(range(len(retriever))) - set(column))
    relevance = relevance_matrix(queries, ids)
    vectors = embedder.embed_texts([q.text for q in queries])
    for mode, hybrid in (("vector", False), ("hybrid", True)):
        scores = np.full(relevance.shape, -np.inf)  # (Q, N held-out items): rank order as score
        for qi, (query, vector) in enumerate(zip(queries, vectors)):
            hits = retriever.search(vector, k=len(ids), query_text=query.text, hybrid=hybrid, collapse=False,
                                    exclude_rows=others)
            for rank, hit in enumerate(hits):
                scores[qi, column[hit.row]] = len(ids) - rank
        out[mode] = retrieval_report(scores, relevance, "query_", ks=(10,))
    return out


def format_evaluation(e: dict, trained: dict | None = None) -> str:
    """The evaluation as a small table; `trained`: the training job's held-out metrics, beside it."""
    head = f"index {e['index']} (model {e['model']}): {e['queries']} held-out queries over {e['test_items']} items"
    if "query_skipped" in e:
        return f"{head}\n  skipped: {e['query_skipped']}"
    lines = [head, f"  {'':<24}{'Recall@10':>9}  {'nDCG@10':>8}"]
    rows = [(f"{mode} search ({e['query_runtime']})" if mode == "vector" else f"{mode} search", e[mode])
            for mode in ("vector", "hybrid")]
    if trained and "query_R@10" in trained:
        rows.append(("training's held-out", trained))
    lines += [f"  {name:<24}{m['query_R@10']:>9.3f}  {m['query_nDCG@10']:>8.3f}" for name, m in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/local.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--index", help="index version to evaluate (default: the current one)")
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        evaluation = evaluate_index(load_config(args.config, args.set), args.index)
        print(format_evaluation(evaluation))
        print(json.dumps(evaluation))
        return 0

    return run_job(body, (ConfigError, ArtifactError, FileNotFoundError, ValueError))


if __name__ == "__main__":
    raise SystemExit(main())
