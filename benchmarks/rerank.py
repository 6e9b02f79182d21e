"""Added latency of reranking: the same /v1/search request (SearchService, in process) with and
without the reranker, interleaved, one request at a time, over the published index and reranker.

    python -m benchmarks.rerank --config configs/local.yaml [--requests 200] [--top-k 50]

Prints p50/p95 of both sides and of the difference per query pair; the baseline is the same request
with `"rerank": false`, measured in the same run. torch/FAISS threads are limited to --threads
(2 = the two cores of the laptop target).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rerank", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/local.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per side")
    parser.add_argument("--top-k", type=int, default=50, help="candidates reranked (rerank.top_k)")
    parser.add_argument("--head", help="reranker head (default: rerank.head)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from mmray.config import load_config
    from mmray.rerank.queries import shopper_queries
    from mmray.search import SearchService
    from mmray.storage import ArtifactStore

    torch.set_num_threads(args.threads)
    overrides = [*args.set, "rerank.enabled=true", f"rerank.top_k={args.top_k}"]
    if args.head:
        overrides.append(f"rerank.head={args.head}")
    cfg = load_config(args.config, overrides)
    store = ArtifactStore.from_config(cfg.storage)
    svc = SearchService.local(store, cfg.index, cfg.rerank)
    from mmray.dataset import load_items
    from mmray.storage import INDEX_KIND

    index = store.resolve(INDEX_KIND)
    items = load_items(store.resolve_ref(index.manifest["parents"]["dataset"]))
    queries = [q.text for q in shopper_queries(items)]
    rng = np.random.default_rng(0)
    queries = [queries[i] for i in rng.permutation(len(queries))]

    async def one(q: str, rerank: bool) -> float:
        t0 = time.perf_counter()
        res = await svc.search_text(query=q, k=10, rerank=rerank)
        if res.reranked != rerank:
            raise SystemExit(f"reranked={res.reranked}, asked {rerank}: is a reranker published for this index?")
        return (time.perf_counter() - t0) * 1000

    async def run():
        for q in queries[:10]:  # warm-up: models, features, first FAISS calls
            await one(q, True)
            await one(q, False)
        on, off = [], []
        for i in range(args.requests):
            q = queries[i % len(queries)]
            first = i % 2 == 0  # alternate which side goes first
            a = await one(q, first)
            b = await one(q, not first)
            on.append(a if first else b)
            off.append(b if first else a)
        return np.array(on), np.array(off)
    load0 = open("/proc/loadavg").read().split()[:3]
    on, off = asyncio.run(run())
    load1 = open("/proc/loadavg").read().split()[:3]
    diff = on - off
    p = lambda a, q: float(np.percentile(a, q))  # noqa: E731
    print(f"rerank latency, head {cfg.rerank.head}, K={args.top_k}, k=10, {args.requests} request pairs, "
          f"{args.threads} threads, {os.cpu_count()} CPUs, load {' '.join(load0)} -> {' '.join(load1)}")
    print(f"  without reranking (baseline): p50 {p(off, 50):7.2f} ms  p95 {p(off, 95):7.2f} ms")
    print(f"  with reranking:               p50 {p(on, 50):7.2f} ms  p95 {p(on, 95):7.2f} ms")
    print(f"  added (per pair):             p50 {p(diff, 50):7.2f} ms  p95 {p(diff, 95):7.2f} ms  "
          f"ratio of p50s {p(on, 50) / p(off, 50):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
