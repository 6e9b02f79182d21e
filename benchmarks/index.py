"""Index benchmark: FAISS specs on synthetic vectors, and retrieval quality on the shipped catalog.

    python -m benchmarks.index [--n 1000000] [--dim 256] [--queries 1000] [--quality-only] [--ann-only]

Filtered search (the Retriever's filter planner) against Qdrant Edge, Chroma and LanceDB:
`python -m benchmarks.index_filtered`.

Part 1 (ANN). N synthetic unit vectors (float32, clustered, generated in chunks) and `--queries`
queries, each a data point perturbed by noise and renormalised. Every spec is built with
`mmray.index.ann.build_ann` (the same code path, train sample and search knobs as the index job;
`--nprobe` / `--ef-search` override them) and reports:
  build     wall seconds of build_ann (IVF/PQ training on its sample + adding all N rows)
  QPS       k=10 over the whole query batch in one `index.search` call (repeated until >= 2 s)
  1-query   median latency of single-query searches (the serving pattern: one request, one query),
            with FAISS's default OpenMP threads and with 1 thread (less sensitive to a busy machine)
  R@10      share of Flat's top 10 that the spec also returns (Flat is the exact reference)
  B/vector  serialized index bytes per vector (the index's memory, without the Retriever's copy)
The synthetic set: `--clusters` centres on the sphere with Zipf-like sizes; a point is its centre
plus a low-rank offset (norm 0.4-0.9, in a shared 32-d subspace) plus small isotropic noise,
then normalised, so neighbourhoods look more like embeddings (low intrinsic dimension) than
isotropic Gaussian noise does.

Part 2 (quality). The published index (artifacts/indexes/current.json) loaded by SearchService.local
with the config's index settings; the held-out queries of `mmray.evalset.build_queries` over the
test-split items; each query ranks ONLY the held-out items (every other row excluded), uncollapsed,
three ways:
  vector   Retriever.search(hybrid=False): the query embedding against the stored item vectors
  BM25     the index's lexical scores masked to the held-out rows; rows with score 0 are not
           returned (as in the Retriever's fusion), so a query with fewer than 10 lexical matches
           has empty slots, which count as irrelevant
  hybrid   Retriever.search(hybrid=True): reciprocal rank fusion of the two
nDCG@10 and Recall@10 come from mmray.metrics against mmray.evalset.relevance_matrix.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine_lines

ROOT = Path(__file__).resolve().parent.parent
SPECS = ["Flat", "HNSW32", "IVF4096,Flat", "IVF4096,PQ32", "IVF4096,PQ32,RFlat"]
K = 10


# --------------------------------------------------------------------------- machine


def machine_info() -> list[str]:
    import faiss

    return [*machine_lines(),
            f"python      {platform.python_version()}  numpy {np.__version__}",
            f"faiss       {faiss.__version__}  ({faiss.get_compile_options().strip()}), "
            f"omp threads {faiss.omp_get_max_threads()}"]


# --------------------------------------------------------------------------- synthetic data


def synthetic(n: int, dim: int, n_queries: int, clusters: int, seed: int = 0,
              chunk: int = 100_000, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) clustered unit vectors and (n_queries, dim) perturbed data points, float32; each
    row's cluster is written into `labels` (an (n,) int array) when one is given."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    rank = min(32, dim)
    basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T.astype(np.float32)  # orthonormal rows
    spread = (rng.uniform(0.4, 0.9, clusters) / np.sqrt(rank)).astype(np.float32)  # offset norm ~ 0.4..0.9
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.5
    weights = rng.permutation(weights / weights.sum())
    data = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        r = np.random.default_rng([seed, lo])
        c = r.choice(clusters, size=hi - lo, p=weights)
        if labels is not None:
            labels[lo:hi] = c
        block = centers[c]
        block += (r.standard_normal((hi - lo, rank), dtype=np.float32) * spread[c, None]) @ basis
        block += r.standard_normal((hi - lo, dim), dtype=np.float32) * np.float32(0.15 / np.sqrt(dim))
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        data[lo:hi] = block
    r = np.random.default_rng([seed, n, 1])
    src = r.choice(n, size=n_queries, replace=False)
    queries = data[src] + r.standard_normal((n_queries, dim), dtype=np.float32) * np.float32(0.2 / np.sqrt(dim))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return data, np.ascontiguousarray(queries, dtype=np.float32)


# --------------------------------------------------------------------------- ANN part


def _timed_batch_qps(index, queries: np.ndarray, min_s: float = 2.0) -> tuple[float, np.ndarray]:
    t0, reps, ids = time.perf_counter(), 0, None
    while True:
        _, ids = index.search(queries, K)
        reps += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_s or reps >= 20:
            return reps * len(queries) / elapsed, ids


def _single_latency_ms(index, queries: np.ndarray, max_q: int = 200, max_s: float = 5.0) -> tuple[float, int]:
    times = []
    start = time.perf_counter()
    for q in queries[:max_q]:
        t0 = time.perf_counter()
        index.search(q.reshape(1, -1), K)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start >= max_s:
            break
    return 1000.0 * float(np.median(times)), len(times)


def _recall(approx: np.ndarray, exact: np.ndarray) -> float:
    hits = sum(len(set(a[a >= 0].tolist()) & set(e.tolist())) for a, e in zip(approx, exact))
    return hits / exact.size


def _knobs(index) -> str:
    import faiss

    index = faiss.downcast_index(index)
    parts = []
    if isinstance(index, faiss.IndexRefine):
        parts.append(f"k_factor={index.k_factor:g}")
        index = faiss.downcast_index(index.base_index)
    if isinstance(index, faiss.IndexIVF):
        parts.append(f"nprobe={index.nprobe}")
    if isinstance(index, faiss.IndexHNSW):
        parts.append(f"efSearch={index.hnsw.efSearch}, efConstruction={index.hnsw.efConstruction}")
    return ", ".join(parts) or "-"


def run_ann(args) -> None:
    import faiss

    from mmray.index.ann import build_ann

    specs = [s.strip() for s in args.specs.split(";") if s.strip()]
    if specs[0] != "Flat":
        specs = ["Flat"] + [s for s in specs if s != "Flat"]
    print(f"\n== Part 1: ANN on synthetic vectors: N={args.n:,} x {args.dim}-d float32 "
          f"({args.n * args.dim * 4 / 2**30:.2f} GiB), {args.queries} queries, k={K}")
    if args.n < 1_000_000:
        print(f"   NOTE: N={args.n:,} is below the 1,000,000 target" + (f": {args.n_note}" if args.n_note else "."))
    t0 = time.perf_counter()
    data, queries = synthetic(args.n, args.dim, args.queries, args.clusters, args.seed)
    print(f"   generated in {time.perf_counter() - t0:.1f} s ({args.clusters} clusters); "
          f"build_ann(train_sample={args.train_sample:,}, nprobe={args.nprobe}, ef_search={args.ef_search})")
    rows, exact = [], None
    t_part = time.perf_counter()
    for spec in specs:
        gc.collect()
        t0, c0 = time.perf_counter(), time.process_time()
        index = build_ann(data, spec, train_sample=args.train_sample, seed=args.seed,
                          nprobe=args.nprobe, ef_search=args.ef_search)
        build_s, build_cpu = time.perf_counter() - t0, time.process_time() - c0
        qps, ids = _timed_batch_qps(index, queries)
        lat_ms, lat_n = _single_latency_ms(index, queries)
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            lat1_ms, _ = _single_latency_ms(index, queries)
        finally:
            faiss.omp_set_num_threads(threads)
        if exact is None:
            exact = ids.copy()
            # Flat is the reference: check it against numpy on a slice of the queries
            sl = queries[:50]
            ref = np.argsort(-(sl @ data.T), axis=1, kind="stable")[:, :K]
            flat_check = _recall(ids[:50], ref)
        rec = _recall(ids, exact)
        mem_mb = _index_bytes(index) / 2**20
        rows.append((spec, build_s, build_cpu, qps, lat_ms, lat1_ms, rec, mem_mb, _knobs(index)))
        print(f"   {spec:<20} build {build_s:8.1f} s ({build_cpu:.0f} cpu-s)   QPS {qps:10.0f}   "
              f"1-query p50 {lat_ms:8.3f} ms ({lat1_ms:.3f} ms on 1 thread)   R@10 {rec:.4f}   "
              f"{mem_mb:8.0f} MiB   [{_knobs(index)}]", flush=True)
        del index
    total = time.perf_counter() - t_part
    print(f"\n   ANN results (N={args.n:,}, d={args.dim}, {args.queries} queries, k={K}, "
          f"{faiss.omp_get_max_threads()} threads); recall@10 is against Flat's top 10 "
          f"(Flat vs numpy exact on 50 queries: {flat_check:.4f})")
    head = (f"   {'spec':<20} {'build s':>9} {'cpu-s':>7} {'QPS (batch)':>12} {'1-query ms':>11} {'(1 thread)':>10} "
            f"{'R@10':>7} {'index MiB':>10} {'B/vector':>9}  knobs")
    print(head)
    print("   " + "-" * (len(head) - 3))
    for spec, build_s, build_cpu, qps, lat_ms, lat1_ms, rec, mem_mb, knobs in rows:
        print(f"   {spec:<20} {build_s:9.1f} {build_cpu:7.0f} {qps:12,.0f} {lat_ms:11.3f} {lat1_ms:10.3f} "
              f"{rec:7.4f} {mem_mb:10.0f} {mem_mb * 2**20 / args.n:9.0f}  {knobs}")
    print(f"   (cpu-s: CPU seconds this process used during the build; with {os.cpu_count()} cores, cpu-s well "
          f"below {os.cpu_count()} x build s means other work on the machine took the cores)")
    print(f"   (1-query ms: median over up to 200 single-query searches, capped at 5 s per spec, with "
          f"{faiss.omp_get_max_threads()} OpenMP threads and with 1; "
          f"part 1 took {total:.0f} s after data generation; load avg now "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())})")


def _index_bytes(index) -> int:
    import faiss

    w = faiss.VectorIOWriter()
    try:
        faiss.write_index(index, w)
        return w.data.size()
    except RuntimeError:
        return 0


# --------------------------------------------------------------------------- quality part


def run_quality(args) -> None:
    from mmray.config import load_config
    from mmray.dataset import current_dataset, load_items
    from mmray.evalset import build_queries, relevance_matrix
    from mmray.metrics import ndcg_at_k, recall_at_k
    from mmray.search import NotReady, SearchService
    from mmray.storage import ArtifactError, ArtifactStore

    cfg = load_config(args.config)
    print("\n== Part 2: quality on the shipped catalog's held-out queries")
    t0 = time.perf_counter()
    try:
        service = SearchService.local(ArtifactStore.from_config(cfg.storage), cfg.index)
        dataset = current_dataset(cfg)
    except (ArtifactError, NotReady) as e:
        raise SystemExit(f"error: {e}") from None
    retriever = service.backend.indexes.newest
    embedder = service.backend.models.get(retriever.manifest["parents"]["model"])
    folder = retriever.version
    test_items = load_items(dataset, split="test")
    test_ids = [it["id"] for it in test_items]
    missing = [i for i in test_ids if i not in retriever.row_of]
    if missing:
        raise SystemExit(f"{len(missing)} held-out items are not in index {folder} (e.g. {missing[0]}): rebuild it")
    test_rows = np.array([retriever.row_of[i] for i in test_ids])
    col_of_row = {int(r): j for j, r in enumerate(test_rows)}
    in_test = np.zeros(len(retriever), dtype=bool)
    in_test[test_rows] = True
    exclude = np.flatnonzero(~in_test).tolist()
    queries = build_queries(test_items)
    rel = relevance_matrix(queries, test_ids)
    n = len(test_ids)
    print(f"   index {retriever.version} ({len(retriever)} rows, {retriever.manifest.get('factory')}), "
          f"model {retriever.manifest.get('model_version')}, loaded in {time.perf_counter() - t0:.1f} s")
    print(f"   {n} held-out items ({len(set(it['product_id'] for it in test_items))} products), "
          f"{len(queries)} queries; each query ranks only the held-out rows (collapse=False, k={n})")

    vecs = embedder.embed_texts([q.text for q in queries])
    # Columns n.. are K placeholder rows with relevance 0: they fill top-k slots a ranking leaves
    # empty (BM25 returns only rows that match a query term), without changing recall or ideal DCG.
    pad = K
    rel_p = np.concatenate([rel, np.zeros((len(queries), pad), dtype=rel.dtype)], axis=1)
    scores = {m: np.full((len(queries), n + pad), -np.inf) for m in ("vector", "BM25", "hybrid")}
    for m in scores:
        scores[m][:, n:] = -1e9  # placeholders rank after every returned row, before unreturned ones
    short_lex, t0 = 0, time.perf_counter()
    for qi, (q, v) in enumerate(zip(queries, vecs)):
        for mode, hybrid in (("vector", False), ("hybrid", True)):
            hits = retriever.search(v, k=n, query_text=q.text, hybrid=hybrid, collapse=False, exclude_rows=exclude)
            if len(hits) != n or any(h.row not in col_of_row for h in hits):
                raise SystemExit(f"{mode} search for {q.text!r} returned {len(hits)} rows / rows outside the test set")
            for rank, h in enumerate(hits):
                scores[mode][qi, col_of_row[h.row]] = n - rank  # rank order, ties impossible
        lex = retriever.lexical.scores(q.text, in_test)[test_rows]
        returned = np.isfinite(lex) & (lex > 0)
        short_lex += int(returned.sum() < K)
        scores["BM25"][qi, :n] = np.where(returned, lex, -np.inf)
    search_s = time.perf_counter() - t0

    print(f"\n   {'mode':<8} {'nDCG@10':>8} {'R@10':>7}")
    print("   " + "-" * 25)
    for mode in ("vector", "BM25", "hybrid"):
        print(f"   {mode:<8} {ndcg_at_k(scores[mode], rel_p, K):8.4f} {recall_at_k(scores[mode], rel_p, K):7.4f}")
    mean_lex = np.mean([(np.isfinite(s[:n]) ).sum() for s in scores["BM25"]])
    print(f"   ({len(queries)} queries x 3 modes in {search_s:.1f} s; BM25 matches {mean_lex:.1f} of {n} held-out "
          f"rows per query on average, fewer than {K} for {short_lex} queries; hybrid = RRF k={retriever.rrf_k})")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.index", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="synthetic vectors (default 1,000,000)")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--clusters", type=int, default=2000)
    p.add_argument("--specs", default=";".join(SPECS), help="';'-separated factory strings (Flat always runs first)")
    p.add_argument("--train-sample", type=int, default=100_000, help="build_ann train_sample (index job default)")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists probed (default: the config's, auto: 8 on IVF-Flat, 32 on PQ)")
    p.add_argument("--ef-search", type=int, default=None, help="HNSW efSearch (default: the config's, 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=str(ROOT / "configs" / "local.yaml"))
    p.add_argument("--quality-only", action="store_true")
    p.add_argument("--ann-only", action="store_true")
    p.add_argument("--n-note", default="", help="why --n is below 1M, printed with the results")
    args = p.parse_args(argv)
    if args.quality_only and args.ann_only:
        p.error("--quality-only and --ann-only exclude each other")
    if args.n < 2 * K or args.queries < 1 or args.queries > args.n:
        p.error("need --n >= 20 and 1 <= --queries <= --n")
    os.chdir(ROOT)
    from mmray.config import load_config

    icfg = load_config(args.config).index
    args.nprobe = icfg.nprobe if args.nprobe is None else args.nprobe
    args.ef_search = icfg.ef_search if args.ef_search is None else args.ef_search

    print("== mmray index benchmark: " + " ".join(["python -m benchmarks.index"] + (argv or sys.argv[1:])))
    for line in machine_info():
        print("   " + line)
    if not args.quality_only:
        run_ann(args)
    if not args.ann_only:
        run_quality(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
