"""The filter planner's broad-filter plans against the selector-only planner, in one process.

    python -m benchmarks.index_filtered_ab [--n 50000] [--rounds 7]

Same data, filters and Retriever as `benchmarks.index_filtered` (20 % and 60 % filters only), one
index per spec; the Retriever's planner is swapped between a `FilterPlanner` with `post_margin=0`
and `trial_queries=0` (the selector search with efSearch / nprobe raised 1/share, as on main
before issue 19's second pass) and the default one (`post` on HNSW, the timed choice of selector
or exact scan). Rounds alternate the two; each figure is the fastest round's per-query time, so a
shared machine's load, which only adds time, falls out of the comparison as far as it can.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.index_filtered_ab", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--clusters", type=int, default=250)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--specs", default="HNSW32;IVF512,Flat/nprobe=8")
    args = p.parse_args(argv)
    import faiss

    from benchmarks import index_filtered as bench
    from benchmarks.index import synthetic
    from mmray.index.planner import FilterPlanner

    labels = np.empty(args.n, dtype=np.int64)
    data, queries = synthetic(args.n, 256, args.queries, args.clusters, 0, labels=labels)
    meta = bench.catalog_meta(labels, args.clusters, 0)
    filters = bench.choose_filters(meta)
    faiss.omp_set_num_threads(1)
    print("load", os.getloadavg())
    bench_args = argparse.Namespace(exact_share=None)
    for spec in args.specs.split(";"):
        system = bench.RetrieverSystem(spec, bench_args)
        system.build(data, meta)
        retr = system.retriever
        new = retr.planner
        old = FilterPlanner(retr.meta, retr.ann, retr.vectors, new.exact_share, new.max_effort, new.cache_size,
                            post_margin=0.0, trial_queries=0)
        for label, f, mask in filters[3:]:
            exact = bench.exact_filtered(data, queries, mask)
            flt = system.prepare(f)
            best, rec = {}, {}
            for _ in range(args.rounds):
                for name, planner in (("main (selector)", old), ("branch", new)):
                    retr.planner = planner
                    t0 = time.perf_counter()
                    found = [system.single(q, flt) for q in queries]
                    dt = (time.perf_counter() - t0) / len(queries)
                    best[name], rec[name] = min(best.get(name, 1e9), dt), bench.recall(found, exact)
            retr.planner = new
            plan = new.plan(flt)
            print(f"{spec:22} {label:4} " + "  ".join(f"{k}: {v * 1e6:7.0f} us ({1 / v:6.0f} q/s, R {rec[k]:.3f})"
                                                    for k, v in best.items())
                  + f"  [{plan.strategy}, fallback way {plan.choice}, speed-up "
                    f"{best['main (selector)'] / best['branch']:.2f}x]", flush=True)
    print("load", os.getloadavg())
    return 0


if __name__ == "__main__":
    sys.exit(main())
