"""Search a published index with the held-out queries, as the app searches it, print their metrics, and
publish the evaluation report (served by the app at /report).

    python -m jobs.evaluate --config configs/local.yaml [--index v20261202-053100-123-9f3a1c] [--no-report]
    ray job submit --working-dir . -- python -m jobs.evaluate --config configs/local.yaml

The queries are those training reports (`mmray.evalset` over the test split of the dataset the index
was built from); the index's own model embeds them with `index.query_runtime`, and each query ranks
the held-out items of the index (every other row excluded, variants not collapsed), by vector alone
and hybrid (vector + BM25). Vector search over a `Flat` index with the torch runtime reproduces the
training job's held-out query metrics; the gap to them is what the index (ANN, fusion, runtime) adds
or costs. BM25 alone ranks the same held-out items by the index's lexical scores. Exposure: the app's
own answers (top `report.exposure_k`, one per product) to the same queries, counted by category.

The report (`mmray.report`): report.json, index.html and PNG plots as a new `reports/evaluation`
version; the index itself is never changed.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from mmray.config import ConfigError, MmrayConfig, load_config
from mmray.runtime import run_job, setup_logging
from mmray.storage import ArtifactError


def evaluate_index(cfg: MmrayConfig, version: str | None = None) -> dict:
    """Held-out query metrics of index `version` (default: the current one): BM25, vector, hybrid and, with a
    reranker for this index, reranked."""
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
    lexical_mask = np.zeros(len(retriever), dtype=bool)
    lexical_mask[list(column)] = True
    bm25 = np.full(relevance.shape, -np.inf)  # (Q, N held-out items): BM25 over the held-out rows only
    for qi, query in enumerate(queries):
        row_scores = retriever.lexical.scores(query.text, lexical_mask)
        for row, j in column.items():
            bm25[qi, j] = row_scores[row]
    out["bm25"] = retrieval_report(bm25, relevance, "query_", ks=(10,))
    from mmray.report.sections import exposure_by_category

    out["exposure"] = exposure_by_category(retriever, [q.text for q in queries], vectors, cfg.report.exposure_k,
                                           cfg.report.category_depth, cfg.index.hybrid)
    for mode, hybrid in (("vector", False), ("hybrid", True)):
        scores = np.full(relevance.shape, -np.inf)  # (Q, N held-out items): rank order as score
        for qi, (query, vector) in enumerate(zip(queries, vectors)):
            hits = retriever.search(vector, k=len(ids), query_text=query.text, hybrid=hybrid, collapse=False,
                                    exclude_rows=others)
            for rank, hit in enumerate(hits):
                scores[qi, column[hit.row]] = len(ids) - rank
        out[mode] = retrieval_report(scores, relevance, "query_", ks=(10,))
    reranked = _reranked_scores(cfg, store, retriever, embedder, queries, vectors, ids, column, others)
    if isinstance(reranked, str):
        out["rerank_skipped"] = reranked
    else:
        out["reranked"] = retrieval_report(reranked, relevance, "query_", ks=(10,))
        out["reranker"] = cfg.rerank.head
    return out


def _reranked_scores(cfg: MmrayConfig, store, retriever, embedder, queries, vectors, ids, column, others):
    """(Q, N held-out items) rank scores of the served path: hybrid's top `rerank.top_k` over the held-out
    rows reordered by the current reranker, hybrid's order after them; or why there are none."""
    if not cfg.rerank.enabled:
        return "rerank.enabled is false"
    from mmray.rerank.reranker import RerankerMismatch, RerankerPool

    try:
        reranker, features, facts = RerankerPool(store, cfg.rerank).get(retriever)
    except RerankerMismatch as e:
        return str(e)
    scores = np.full((len(queries), len(ids)), -np.inf)
    for qi, (query, vector) in enumerate(zip(queries, vectors)):
        hits = retriever.search(vector, k=len(ids), query_text=query.text, hybrid=True, collapse=False,
                                exclude_rows=others)
        rows = [h.row for h in hits]
        head = rows[:cfg.rerank.top_k]
        if head:
            order = reranker.rerank(embedder.model, query.text, head, retriever.vectors, features, facts).order
            rows = [head[j] for j in order] + rows[len(head):]
        for rank, row in enumerate(rows):
            scores[qi, column[row]] = len(ids) - rank
    return scores


def format_evaluation(e: dict, trained: dict | None = None) -> str:
    """The evaluation as a small table; `trained`: the training job's held-out metrics, beside it."""
    head = f"index {e['index']} (model {e['model']}): {e['queries']} held-out queries over {e['test_items']} items"
    if "query_skipped" in e:
        return f"{head}\n  skipped: {e['query_skipped']}"
    lines = [head, f"  {'':<24}{'Recall@10':>9}  {'nDCG@10':>8}"]
    rows = [(f"{mode} search ({e['query_runtime']})" if mode == "vector" else f"{mode} search", e[mode])
            for mode in ("bm25", "vector", "hybrid", "reranked") if mode in e]
    if trained and "query_R@10" in trained:
        rows.append(("training's held-out", trained))
    lines += [f"  {name:<24}{m['query_R@10']:>9.3f}  {m['query_nDCG@10']:>8.3f}" for name, m in rows]
    if e.get("rerank_skipped"):
        lines.append(f"  reranked: not run ({e['rerank_skipped']})")
    return "\n".join(lines)


def publish_evaluation_report(cfg: MmrayConfig, evaluation: dict) -> str:
    """The report of `evaluation` (and of the artifacts and result files around it), published; its ref."""
    from mmray.report import build_report, draw_plots, publish_report, render_html
    from mmray.storage import ArtifactStore

    store = ArtifactStore.from_config(cfg.storage)
    report = build_report(cfg, evaluation, store)
    plots = draw_plots(report, cfg.report)
    page = render_html(report, sorted(plots), cfg.report.plot_width_px, cfg.report.plot_height_px)
    parents = {"index": f"indexes/{evaluation['index']}", "dataset": evaluation["dataset"]}
    return publish_report(store, report, plots, page, parents, config=cfg.report.model_dump(mode="json")).ref


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/local.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--index", help="index version to evaluate (default: the current one)")
    parser.add_argument("--no-report", action="store_true", help="print the metrics only; publish no report")
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        cfg = load_config(args.config, args.set)
        evaluation = evaluate_index(cfg, args.index)
        print(format_evaluation(evaluation))
        print(json.dumps({k: v for k, v in evaluation.items() if k != "exposure"}))
        if not args.no_report:
            ref = publish_evaluation_report(cfg, evaluation)
            print(f"report {ref} published: {cfg.storage.root}/{ref}/index.html (served at /report/)")
        return 0

    return run_job(body, (ConfigError, ArtifactError, FileNotFoundError, ValueError))


if __name__ == "__main__":
    raise SystemExit(main())
