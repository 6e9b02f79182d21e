"""Filtered vector search at scale: the Retriever's filter planner against embedded vector stores.

    python -m benchmarks.index_filtered [--n 200000] [--dim 256] [--queries 200]
        [--specs "HNSW32;IVF1024,Flat;IVF1024,Flat/nprobe=32"] [--peers qdrant,chroma,lancedb]

Data: `benchmarks.index.synthetic` (N unit vectors around `--clusters` centres with Zipf-like
sizes, each point its centre plus a low-rank offset of per-cluster spread 0.4-0.9 and small
isotropic noise; queries are perturbed data points), with catalog metadata drawn per row:
a category `D<i>/C<j>` (8 departments of 25 leaves, leaf sizes Zipf-like; a cluster keeps its own
leaf for 70 % of its rows, so categories follow the vectors as real categories do), gender
(tied to the department for 80 % of rows), one of 12 colours, a log-normal price, and
availability (90 %). Five filters, chosen on the data to match about 0.5 %, 2 %, 20 % and 60 % of
the rows, and none:
    0.5 %  category = the leaf whose share is nearest 0.5 %
    2 %    category = the leaf nearest 2 %
    20 %   gender = the commonest gender and price <= the price that brings the share nearest 20 %
    60 %   available_only and price >= the price that brings the share nearest 60 %
For every system and filter:
    build     seconds to load the N rows and build the index (FAISS: `build_ann` + the Retriever
              with its FilterPlanner; peers: insert + index build)
    memory    FAISS: serialized index bytes per vector, plus the planner's columns; every system:
              growth of this process's RSS over the build, per vector (peers keep files on disk
              too: their folder size is printed)
    1-query   queries per second issuing one query at a time (as a replica does): the Retriever's
              public `search(vector, k=10, filters, collapse=False)`, FAISS on 1 OpenMP thread;
              peers with their default threads. `(cold)`: the same with the plan cache off, so
              every query builds its filter's rows and selector from the columns
    batch     queries per second for all queries in one call: `Retriever.search_vectors`, Qdrant
              `query_batch`, Chroma `query` with every embedding; LanceDB has no batch, one by one
    R@10      recall@10 against exact filtered search (numpy brute force over the matching rows)
The ratio column divides the Retriever's 1-query QPS by the best peer's (among those with
R@10 >= 0.95) for the same filter, all measured in this run.

`--sort-by-category` stores the rows in category order first (as a catalog written category by
category is), so each category filter's rows are one run, which the planner scans as a slice of
the vector matrix instead of gathering its rows; the other filters are unchanged.

Peers are optional (`pip install mmray[peers]`); a missing one is skipped and named.
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import machine_lines
from mmray.config import IndexConfig

K = 10
TRIAL_WARMUP = IndexConfig().filter_trial_queries  # a broad plan's timed single queries, each way
DEPTS, LEAVES, COLORS = 8, 25, [f"col{i}" for i in range(12)]
GENDERS = ["women", "men", "unisex"]
TARGETS = [("none", None), ("0.5%", 0.005), ("2%", 0.02), ("20%", 0.20), ("60%", 0.60)]


# --------------------------------------------------------------------------- data


def catalog_meta(labels: np.ndarray, clusters: int, seed: int) -> dict[str, np.ndarray]:
    n = len(labels)
    rng = np.random.default_rng([seed, 7])
    n_leaves = DEPTS * LEAVES
    w = 1.0 / np.arange(1, n_leaves + 1) ** 0.8
    w = rng.permutation(w / w.sum())
    own_leaf = rng.choice(n_leaves, size=clusters, p=w)
    leaf = np.where(rng.random(n) < 0.7, own_leaf[labels], rng.choice(n_leaves, size=n, p=w))
    dept = leaf // LEAVES
    dept_gender = rng.integers(0, 3, DEPTS)
    gender = np.where(rng.random(n) < 0.8, dept_gender[dept], rng.integers(0, 3, n))
    names = np.array([f"d{d}/c{d}-{j}" for d in range(DEPTS) for j in range(LEAVES)], dtype=object)
    return {"leaf": leaf, "dept": dept, "category": names[leaf], "gender": np.array(GENDERS, dtype=object)[gender],
            "color": np.array(COLORS, dtype=object)[rng.integers(0, len(COLORS), n)],
            "price": np.round(np.exp(rng.normal(3.5, 0.8, n)), 2), "available": rng.random(n) < 0.9}


def choose_filters(meta: dict) -> list[tuple[str, dict | None, np.ndarray]]:
    """(label, SearchFilters kwargs, matching mask) per target share."""
    n = len(meta["leaf"])
    out = []
    shares = np.bincount(meta["leaf"], minlength=DEPTS * LEAVES) / n
    for label, target in TARGETS:
        if target is None:
            out.append((label, None, np.ones(n, dtype=bool)))
        elif target <= 0.05:
            leaf = int(np.argmin(np.abs(shares - target)))
            cat = meta["category"][np.flatnonzero(meta["leaf"] == leaf)[0]]
            out.append((label, {"category": cat}, meta["category"] == cat))
        elif target <= 0.3:
            gender = max(GENDERS, key=lambda g: np.count_nonzero(meta["gender"] == g))  # the commonest
            rows_g = meta["gender"] == gender
            prices = np.sort(meta["price"][rows_g])
            cut = float(prices[min(len(prices) - 1, int(target * n))])
            out.append((label, {"gender": gender.title(), "max_price": cut}, rows_g & (meta["price"] <= cut)))
        else:
            avail = meta["available"]
            prices = np.sort(meta["price"][avail])[::-1]
            cut = float(prices[min(len(prices) - 1, int(target * n))])
            out.append((label, {"available_only": True, "min_price": cut}, avail & (meta["price"] >= cut)))
    return out


def exact_filtered(data: np.ndarray, queries: np.ndarray, mask: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(mask)
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for lo in range(0, len(rows), 50_000):
        block = rows[lo:lo + 50_000]
        s = np.concatenate([best_s, queries @ data[block].T], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(block, (len(queries), len(block)))], axis=1)
        top = np.argpartition(-s, K - 1, axis=1)[:, :K]
        best_s, best_i = np.take_along_axis(s, top, axis=1), np.take_along_axis(i, top, axis=1)
    return best_i


def recall(found: list[list[int]], exact: np.ndarray) -> float:
    return sum(len(set(f) & set(e.tolist())) for f, e in zip(found, exact)) / exact.size


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmRSS"))) * 1024


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


# --------------------------------------------------------------------------- systems


class RetrieverSystem:
    def __init__(self, spec: str, args):
        """`spec`: a FAISS factory string, optionally with search knobs: `IVF1024,Flat/nprobe=8`."""
        self.name = f"mmray {spec}"
        spec, *knobs = spec.split("/")
        self.spec, self.knobs = spec, dict(kv.split("=") for kv in knobs)
        self.args = args

    def build(self, data, meta):
        import faiss

        from mmray.config import IndexConfig
        from mmray.index.ann import build_ann
        from mmray.index.retriever import Retriever

        n = len(data)
        ids = np.array([f"i{i}" for i in range(n)], dtype=object)
        m = {"id": ids, "product_id": ids, "title": np.full(n, "", dtype=object), "image": np.full(n, "", dtype=object),
             "category": meta["category"], "gender": meta["gender"], "color": meta["color"],
             "price": meta["price"].astype(np.float64), "available": meta["available"]}
        for col in ("category", "gender", "color"):
            m[f"{col}_lc"] = np.array([v.lower() for v in meta[col]], dtype=object)
        cfg = IndexConfig(**({"filter_exact_share": self.args.exact_share} if self.args.exact_share is not None else {}))
        ann = build_ann(data, self.spec, nprobe=self.knobs.get("nprobe", cfg.nprobe),
                        ef_search=int(self.knobs.get("ef", cfg.ef_search)))
        t0 = time.perf_counter()
        self.retriever = Retriever("<bench>", {"version": "bench"}, ann, data, m, None, cfg.rrf_k, cfg)
        self.planner_s = time.perf_counter() - t0
        self.index_bytes = _index_bytes(ann)
        p = self.retriever.planner
        self.planner_bytes = sum(a.nbytes for a in (p.category.codes, p.category.order, p.gender.codes, p.gender.order,
                                                    p.color.codes, p.color.order, p.price_order, p.price_sorted,
                                                    p.available_rows))
        self.faiss = faiss
        from mmray.index.filters import SearchFilters
        self.SearchFilters = SearchFilters

    def _filters(self, f):
        return None if f is None else self.SearchFilters(**f)

    def single(self, q, f):
        return [h.row for h in self.retriever.search(q, k=K, filters=f, collapse=False)]

    def prepare(self, f):
        return self._filters(f)

    def batch(self, queries, f):
        _, rows = self.retriever.search_vectors(queries, K, f)
        return [r[r >= 0].tolist() for r in rows]

    def describe(self, f) -> str:
        plan = self.retriever.planner.plan(f)
        return f"{plan.strategy}, share {plan.share:.4f}"


class QdrantSystem:
    name = "Qdrant Edge"
    module = "qdrant_edge"

    def build(self, data, meta):
        import qdrant_edge as qe

        self.qe, self.dir = qe, tempfile.mkdtemp(prefix="bench-qdrant-")
        n, dim = data.shape
        cfg = qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Dot))
        self.shard = qe.EdgeShard.create(self.dir, cfg)
        for field, schema in (("cat", qe.PayloadSchemaType.Keyword), ("gender", qe.PayloadSchemaType.Keyword),
                              ("color", qe.PayloadSchemaType.Keyword), ("price", qe.PayloadSchemaType.Float),
                              ("available", qe.PayloadSchemaType.Integer)):
            self.shard.update(qe.UpdateOperation.create_field_index(field, schema))
        for lo in range(0, n, 2000):
            pts = [qe.Point(i, data[i].tolist(), {"cat": meta["category"][i], "gender": meta["gender"][i],
                                                   "color": meta["color"][i], "price": float(meta["price"][i]),
                                                   "available": int(meta["available"][i])})
                   for i in range(lo, min(n, lo + 2000))]
            self.shard.update(qe.UpdateOperation.upsert_points(pts))
        self.shard.optimize()  # builds the HNSW graph and payload indexes

    def prepare(self, f):
        qe = self.qe
        if f is None:
            return None
        must = []
        if "category" in f:
            must.append(qe.FieldCondition(key="cat", match=qe.MatchValue(f["category"])))
        if "gender" in f:
            must.append(qe.FieldCondition(key="gender", match=qe.MatchValue(f["gender"].lower())))
        if "max_price" in f or "min_price" in f:
            must.append(qe.FieldCondition(key="price", range=qe.RangeFloat(gte=f.get("min_price"), lte=f.get("max_price"))))
        if f.get("available_only"):
            # 0/1, not bool: MatchValue(True) matched no stored bool in qdrant-edge-py 0.9
            must.append(qe.FieldCondition(key="available", match=qe.MatchValue(1)))
        return qe.Filter(must=must)

    def _request(self, q, flt):
        return self.qe.QueryRequest(limit=K, query=self.qe.Query.Nearest(q.tolist()), filter=flt,
                                    with_payload=False, with_vector=False)

    def single(self, q, flt):
        return [p.id for p in self.shard.query(self._request(q, flt))]

    def batch(self, queries, flt):
        res = self.shard.query_batch(self.qe.QueryBatchRequest([self._request(q, flt) for q in queries]))
        return [[p.id for p in r] for r in res]

    def close(self):
        self.shard.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class ChromaSystem:
    name = "Chroma"
    module = "chromadb"

    def build(self, data, meta):
        import chromadb

        self.dir = tempfile.mkdtemp(prefix="bench-chroma-")
        self.client = chromadb.PersistentClient(path=self.dir)
        self.col = self.client.create_collection("items", configuration={"hnsw": {"space": "ip"}})
        step = min(5000, self.client.get_max_batch_size())
        n = len(data)
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            self.col.add(ids=[str(i) for i in range(lo, hi)], embeddings=data[lo:hi],
                         metadatas=[{"cat": meta["category"][i], "gender": meta["gender"][i], "color": meta["color"][i],
                                     "price": float(meta["price"][i]), "available": bool(meta["available"][i])}
                                    for i in range(lo, hi)])

    def prepare(self, f):
        if f is None:
            return None
        conds = []
        if "category" in f:
            conds.append({"cat": f["category"]})
        if "gender" in f:
            conds.append({"gender": f["gender"].lower()})
        if "max_price" in f:
            conds.append({"price": {"$lte": f["max_price"]}})
        if "min_price" in f:
            conds.append({"price": {"$gte": f["min_price"]}})
        if f.get("available_only"):
            conds.append({"available": True})
        return conds[0] if len(conds) == 1 else {"$and": conds}

    def single(self, q, where):
        res = self.col.query(query_embeddings=q[None], n_results=K, where=where, include=[])
        return [int(i) for i in res["ids"][0]]

    def batch(self, queries, where):
        res = self.col.query(query_embeddings=queries, n_results=K, where=where, include=[])
        return [[int(i) for i in r] for r in res["ids"]]

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class LanceSystem:
    name = "LanceDB"
    module = "lancedb"

    def build(self, data, meta):
        import lancedb
        import pyarrow as pa

        self.dir = tempfile.mkdtemp(prefix="bench-lance-")
        db = lancedb.connect(self.dir)
        n, dim = data.shape
        table = pa.table({"id": pa.array(np.arange(n)),
                          "vector": pa.FixedSizeListArray.from_arrays(pa.array(data.ravel()), dim),
                          "cat": pa.array(list(meta["category"])), "gender": pa.array(list(meta["gender"])),
                          "color": pa.array(list(meta["color"])), "price": pa.array(meta["price"]),
                          "available": pa.array(meta["available"])})
        self.tbl = db.create_table("items", data=table)
        self.tbl.create_index(metric="dot", vector_column_name="vector", index_type="IVF_HNSW_SQ")
        for col, kind in (("cat", "BITMAP"), ("gender", "BITMAP"), ("color", "BITMAP"), ("price", "BTREE"),
                          ("available", "BITMAP")):
            self.tbl.create_scalar_index(col, index_type=kind)

    def prepare(self, f):
        if f is None:
            return None
        conds = []
        if "category" in f:
            conds.append(f"cat = '{f['category']}'")
        if "gender" in f:
            conds.append(f"gender = '{f['gender'].lower()}'")
        if "max_price" in f:
            conds.append(f"price <= {f['max_price']!r}")
        if "min_price" in f:
            conds.append(f"price >= {f['min_price']!r}")
        if f.get("available_only"):
            conds.append("available = true")
        return " AND ".join(conds)

    def single(self, q, where):
        s = self.tbl.search(q, vector_column_name="vector").distance_type("dot").limit(K).select(["id"])
        if where:
            s = s.where(where, prefilter=True)
        return s.to_arrow()["id"].to_pylist()

    def batch(self, queries, where):
        return [self.single(q, where) for q in queries]

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


PEERS = {"qdrant": QdrantSystem, "chroma": ChromaSystem, "lancedb": LanceSystem}


def _index_bytes(index) -> int:
    import faiss

    w = faiss.VectorIOWriter()
    faiss.write_index(index, w)
    return w.data.size()


# --------------------------------------------------------------------------- measuring


def measure(system, q_all, prepared, exact, single_q: int, min_s: float, cold: bool = False, f=None) -> dict:
    """One system, one filter: 1-query QPS over the first `single_q` queries (repeated until
    `min_s`), batch QPS over all, recall of both."""
    for q in q_all[:2 * TRIAL_WARMUP + 1]:  # warm-up: plan cache, page cache, and the plan's timed trials
        system.single(q, prepared)           # (a one-off per filter, which would otherwise fall in the window)
    found, t0 = [], time.perf_counter()
    for q in q_all[:single_q]:
        found.append(system.single(q, prepared))
        if len(found) >= 30 and time.perf_counter() - t0 > 3 * min_s:
            break  # a slow system: its QPS and recall from the queries done so far
    done, reps = len(found), 1
    while time.perf_counter() - t0 < min_s and reps < 20:
        for q in q_all[:done]:
            system.single(q, prepared)
        reps += 1
    row = {"qps1": reps * done / (time.perf_counter() - t0), "recall": recall(found, exact[:done])}
    if cold:
        row["qps1_cold"] = cold_qps(system, q_all[:done], f)
    t0, reps = time.perf_counter(), 0
    while True:
        got = system.batch(q_all, prepared)  # all queries, however slow (batch recall is over all)
        reps += 1
        if time.perf_counter() - t0 >= min_s or reps >= 10:
            break
    row["qps_batch"] = reps * len(q_all) / (time.perf_counter() - t0)
    row["recall_batch"] = recall(got, exact)
    return row


def cold_qps(system, queries, f) -> float:
    """1-query QPS with the plan cache off: each query's filter is built from the columns."""
    planner = system.retriever.planner
    size, planner.cache_size = planner.cache_size, 0
    planner._cache.clear()
    try:
        prepared = system.prepare(f)
        t0 = time.perf_counter()
        for q in queries:
            system.single(q, prepared)
        return len(queries) / (time.perf_counter() - t0)
    finally:
        planner.cache_size = size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.index_filtered", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--clusters", type=int, default=500)
    p.add_argument("--specs", default="HNSW32;IVF1024,Flat;IVF1024,Flat/nprobe=32",
                   help="';'-separated FAISS factory strings, each with optional /nprobe=N or /ef=N "
                        "(default: the config's index.nprobe / index.ef_search; nprobe `auto` is 8 on IVF-Flat)")
    p.add_argument("--peers", default="qdrant,chroma,lancedb", help="comma-separated, '' for none")
    p.add_argument("--exact-share", type=float, default=None, help="index.filter_exact_share (default: the config's)")
    p.add_argument("--min-seconds", type=float, default=1.0, help="time each measurement at least this long")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each figure is the best round's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sort-by-category", action="store_true",
                   help="store the rows in category order (as a catalog sorted by category would be), so a "
                        "category filter's rows are one run the planner scans as a slice")
    args = p.parse_args(argv)
    import faiss

    from benchmarks.index import synthetic

    print("== mmray filtered-search benchmark: " + " ".join(["python -m benchmarks.index_filtered"] + (argv or sys.argv[1:])))
    for line in machine_lines():
        print("   " + line)
    print(f"   faiss {faiss.__version__}, omp threads {faiss.omp_get_max_threads()}; numpy {np.__version__}")
    t0 = time.perf_counter()
    labels = np.empty(args.n, dtype=np.int64)
    data, queries = synthetic(args.n, args.dim, args.queries, args.clusters, args.seed, labels=labels)
    meta = catalog_meta(labels, args.clusters, args.seed)
    if args.sort_by_category:
        order = np.argsort(meta["category"].astype(str), kind="stable")
        data, labels = np.ascontiguousarray(data[order]), labels[order]
        meta = {key: col[order] for key, col in meta.items()}
    filters = choose_filters(meta)
    exacts = [exact_filtered(data, queries, mask) for _, _, mask in filters]
    print(f"   data: {args.n:,} x {args.dim} float32 ({data.nbytes / 2**20:.0f} MiB), {args.clusters} clusters, "
          f"{args.queries} queries, generated with exact answers in {time.perf_counter() - t0:.1f} s")
    for label, f, mask in filters:
        print(f"   filter {label:>5}: {f}  -> {mask.mean() * 100:.2f} % of rows")

    systems: list = [RetrieverSystem(s.strip(), args) for s in args.specs.split(";") if s.strip()]
    for name in [x.strip() for x in args.peers.split(",") if x.strip()]:
        cls = PEERS[name]
        try:
            __import__(cls.module)
        except ImportError:
            print(f"   SKIPPED peer {cls.name}: `{cls.module}` is not installed (pip install 'mmray[peers]')")
            continue
        systems.append(cls())
    builds = {}
    single_q = min(args.queries, 200)
    for system in systems:
        gc.collect()
        rss0, t0 = rss_bytes(), time.perf_counter()
        system.build(data, meta)
        build_s = time.perf_counter() - t0
        rss = rss_bytes() - rss0
        extra = ""
        if isinstance(system, RetrieverSystem):
            extra = (f"; FAISS index {system.index_bytes / args.n:.0f} B/vector + planner columns "
                     f"{system.planner_bytes / args.n:.0f} B/vector (planner built in {system.planner_s:.2f} s)")
        elif hasattr(system, "dir"):
            extra = f"; on disk {folder_bytes(system.dir) / args.n:.0f} B/vector"
        builds[system.name] = (build_s, rss / args.n, extra)
        print(f"   {system.name}: built in {build_s:.1f} s, RSS +{rss / args.n:.0f} B/vector{extra}", flush=True)
    # Rounds: every system on every filter, interleaved, best of `--rounds` kept, so load from
    # other work on the machine falls on every system alike rather than on whichever ran then.
    results: dict = {s.name: {} for s in systems}
    for rnd in range(args.rounds):
        print(f"   round {rnd + 1}/{args.rounds}, load avg {os.getloadavg()[0]:.2f}", flush=True)
        for (label, f, _), exact in zip(filters, exacts):
            for system in systems:
                ours = isinstance(system, RetrieverSystem)
                threads = faiss.omp_get_max_threads()
                prepared = system.prepare(f)
                if ours:
                    faiss.omp_set_num_threads(1)  # single queries on one thread, as a replica serves them
                try:
                    row = measure(system, queries, prepared, exact, single_q, args.min_seconds,
                                  cold=ours, f=f)
                finally:
                    faiss.omp_set_num_threads(threads)
                if ours:  # the batch on every thread
                    t0, reps = time.perf_counter(), 0
                    while time.perf_counter() - t0 < args.min_seconds and reps < 10:
                        system.batch(queries, prepared)
                        reps += 1
                    row["qps_batch"] = reps * len(queries) / (time.perf_counter() - t0)
                best = results[system.name].get(label)
                if best is not None:
                    for key in ("qps1", "qps1_cold", "qps_batch"):
                        if key in row:
                            row[key] = max(row[key], best[key])
                row["filter"] = label
                if ours:
                    row["plan"] = system.describe(prepared)
                results[system.name][label] = row
                print(f"      {system.name:<26} {label:>5}  1-query {row['qps1']:9.0f} q/s  batch {row['qps_batch']:9.0f} q/s"
                      f"  R@10 {row['recall']:.3f} / {row['recall_batch']:.3f}"
                      + (f"  cold {row['qps1_cold']:8.0f} q/s  [{row['plan']}]" if ours else ""), flush=True)
    for system in systems:
        if hasattr(system, "close"):
            system.close()
    report({name: list(rows.values()) for name, rows in results.items()}, builds, filters, args)
    return 0


def report(results, builds, filters, args) -> None:
    peers = [s for s in results if not s.startswith("mmray")]
    print(f"\n   Filtered search, N={args.n:,} x {args.dim}, k={K}, {args.queries} queries "
          f"(1-query over the first {min(args.queries, 200)}), best of {args.rounds} interleaved rounds; load avg now "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    head = (f"   {'system':<28} {'filter':>6} {'share':>7} {'1-query q/s':>12} {'(cold)':>8} {'batch q/s':>10} "
            f"{'R@10':>6} {'vs best peer':>13}")
    print(head)
    print("   " + "-" * (len(head) - 3))
    shares = {label: mask.mean() for label, _, mask in filters}
    for name, rows in results.items():
        for r in rows:
            ratio = ""
            if name.startswith("mmray"):
                ok = [results[p][i]["qps1"] for p in peers for i, pr in enumerate(results[p])
                      if pr["filter"] == r["filter"] and pr["recall"] >= 0.95]
                ratio = f"{r['qps1'] / max(ok):.2f}x" if ok else "no peer >=0.95"
            cold = f"{r['qps1_cold']:8.0f}" if "qps1_cold" in r else f"{'':>8}"
            print(f"   {name:<28} {r['filter']:>6} {shares[r['filter']] * 100:6.2f}% {r['qps1']:12.0f} {cold} "
                  f"{r['qps_batch']:10.0f} {r['recall']:6.3f} {ratio:>13}")
    print(f"\n   {'system':<28} {'build s':>8} {'RSS B/vector':>13}  notes")
    for name, (build_s, rss, extra) in builds.items():
        print(f"   {name:<28} {build_s:8.1f} {rss:13.0f}  {extra.lstrip('; ')}")


if __name__ == "__main__":
    sys.exit(main())
