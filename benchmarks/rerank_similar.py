"""/v1/products/{id}/similar with and without the reranker, against the Luma merchant links.

    python -m benchmarks.rerank_similar --config configs/local.yaml [--links data/luma/links.jsonl]

For every product of the served index that has merchant links (related, up-sell, cross-sell), the
route's own code (`SearchService.similar`, in process, variants collapsed, k = 10) is asked with
`rerank=False` (the bi-encoder: nearest products by item vector) and `rerank=True` (its top
`rerank.top_k` items reranked with the seed product's text tokens and facts). Recall@10 per link type
(`mmray.recommend.evaluation.recall_at_k`, the measure of `jobs.evaluate_recommender`), over all
products and over the products of the dataset's test split only (the reranker was trained on text
queries written from training products; no link was used by any model), each side's latency, and
the paired difference per product with a 95 % bootstrap interval.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np

KINDS = {"related": ("related",), "upsell": ("upsell",), "crosssell": ("crosssell",),
         "all": ("related", "upsell", "crosssell")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rerank_similar", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/local.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--links", default="data/luma/links.jsonl")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)

    import torch

    from mmray.config import load_config
    from mmray.dataset import load_items
    from mmray.recommend.evaluation import links_by_source, recall_at_k
    from mmray.search import SearchService
    from mmray.storage import INDEX_KIND, ArtifactStore

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [*args.set, "rerank.enabled=true"])
    store = ArtifactStore.from_config(cfg.storage)
    svc = SearchService.local(store, cfg.index, cfg.rerank)
    index = store.resolve(INDEX_KIND)
    items = load_items(store.resolve_ref(index.manifest["parents"]["dataset"]))
    test_products = {it["product_id"] for it in items if it["split"] == "test"}
    with open(args.links, encoding="utf-8") as f:
        links = [json.loads(line) for line in f if line.strip()]
    truth = {name: links_by_source(links, kinds) for name, kinds in KINDS.items()}
    retriever = svc.backend.indexes.newest
    products = sorted(p for p in retriever.rows_of_product if p in truth["all"])

    async def run():
        out = {}
        for rerank in (False, True):
            ranked, ms = {}, []
            for pid in products:
                t0 = time.perf_counter()
                res = await svc.similar(product_id=pid, k=args.k, rerank=rerank)
                ms.append((time.perf_counter() - t0) * 1000)
                if res.reranked != rerank:
                    raise SystemExit(f"reranked={res.reranked}, asked {rerank}: is a reranker published for this index?")
                ranked[pid] = [h.product_id for h in res.hits]
            out[rerank] = (ranked, ms)
        return out
    results = asyncio.run(run())
    rng = np.random.default_rng(0)
    report = {"index": index.name, "products": len(products), "test_products": len(set(products) & test_products),
              "k": args.k, "top_k": cfg.rerank.top_k, "head": cfg.rerank.head, "sides": {}}
    for rerank, (ranked, ms) in results.items():
        side = {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2)}
        for subset, keep in (("all", set(products)), ("test", test_products)):
            for name in KINDS:
                r = [recall_at_k(ranked[p], truth[name][p], args.k) for p in products if p in keep and truth[name].get(p)]
                side[f"{subset}/{name}"] = {"Recall@10": round(float(np.mean(r)), 4) if r else None, "products": len(r)}
        report["sides"]["reranked" if rerank else "bi-encoder"] = side
    # paired difference (reranked - bi-encoder) per product, with a 95 % bootstrap interval over products
    report["difference"] = {}
    for subset, keep in (("all", set(products)), ("test", test_products)):
        for name in KINDS:
            ps = [p for p in products if p in keep and truth[name].get(p)]
            d = np.array([recall_at_k(results[True][0][p], truth[name][p], args.k)
                          - recall_at_k(results[False][0][p], truth[name][p], args.k) for p in ps])
            if len(d):
                boot = d[rng.integers(0, len(d), (2000, len(d)))].mean(1)
                report["difference"][f"{subset}/{name}"] = {
                    "mean": round(float(d.mean()), 4), "ci95": [round(float(np.percentile(boot, 2.5)), 4),
                                                                round(float(np.percentile(boot, 97.5)), 4)],
                    "better": int((d > 0).sum()), "worse": int((d < 0).sum()), "products": len(d)}
    print(f"index {report['index']}: {report['products']} products with links ({report['test_products']} in the test split)")
    cols = [f"{s}/{n}" for s in ("all", "test") for n in KINDS]
    print(f"{'/similar':12s} " + " ".join(f"{c:>20s}" for c in cols) + f" {'p50 ms':>8s} {'p95 ms':>8s}")
    for name, side in report["sides"].items():
        print(f"{name:12s} " + " ".join(f"{side[c]['Recall@10']:11.4f} (n={side[c]['products']:3d})" for c in cols)
              + f" {side['p50_ms']:8.2f} {side['p95_ms']:8.2f}")
    print("reranked - bi-encoder, per product: mean [95 % bootstrap CI] (products better / worse)")
    for c, d in report["difference"].items():
        print(f"  {c:16s} {d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] ({d['better']} / {d['worse']} of {d['products']})")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
