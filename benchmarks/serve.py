"""Serve benchmark: /v1/search latency and QPS under load, beside the same library calls in-process,
and @serve.batch on vs off for image embedding.

    python -m benchmarks.serve [--config configs/local.yaml] [--cpus 2] [--cap-s 20] [--quick]

Needs the built artifacts: a published index (artifacts/indexes/current.json) and its model.

What runs, in order (every phase is bounded in requests AND wall time):
  1. in-process  `mmray.search.SearchService.load(current index, cfg.index).search_text(q, k=10)`
                 in this process: sequentially (c=1), then from a thread pool of 8. torch and FAISS
                 get --torch-threads threads (default 1: what Ray gives the Embedder replica, whose
                 num_cpus is 1 -> OMP_NUM_THREADS=1; the Retriever's 0.25 CPU also gets 1).
  2. Serve       a private local Ray (ray.init(address="local", num_cpus=--cpus), own temp dir,
                 no dashboard) + serve.start on 127.0.0.1 and a free port (never 8000, where a
                 demo may be running) + serve.run(build_app({"config": ...}), route_prefix="/"),
                 the app's Embedder being `unbatched_embedder()` (the library's EmbedderDeployment
                 plus the phase-4 baseline method, same options); waits for /readyz (which also
                 loads the model into the Embedder).
  3. HTTP load   a SEPARATE PROCESS (`python -m benchmarks.serve --loadgen`, a child of this one)
                 with httpx.AsyncClient: closed loop, c workers each sending its next request when
                 the previous answer is read. Per level: max(c, 5) untimed warm-up requests, then at most
                 --requests-c1 / --requests (c=8, 32) requests or --cap-s seconds, whichever
                 ends first. POST /v1/search {"query", "k": 10} with queries built from the
                 catalog's colours x garments (x gender), the same list the in-process side uses.
                 Latency is client-side (send -> body read); `took_ms` is what the Ingress itself
                 measured (embed + retrieve, without HTTP proxy and routing). Then the /v1/embed
                 image route (multipart, catalog photos) at c=32: the route always takes the
                 batched path.
  4. batch on/off EmbedderDeployment.embed_image (@serve.batch, max batch serve.embed_max_batch,
                 wait serve.embed_batch_wait_s) vs embed_image_unbatched (one image per call, a
                 method only this benchmark's subclass has), called through DeploymentHandles
                 from this process (not HTTP: the route has no unbatched switch), at c=1 and
                 c=32, same images and bounds. Note the unbatched method runs each call in
                 asyncio.to_thread, so concurrent calls overlap on threads.

"own cores" is CPU used by this process tree (driver, Ray, the replicas, the load process) per
wall second; "other cores" is what the rest of the machine used meanwhile. When "other" is not
near 0 the machine was shared and the absolute numbers (less so the ratios) are pessimistic.
"CPU ms" is that tree's CPU per answered request, less the caller's own CPU (the load process's,
or this process's for handle calls): the cost of a request, which sharing disturbs less than latency.
Background work of an idle Ray/Serve (controller, proxy, Retriever's index poller) is in it too.
Ray workers run at nice 0 here (--worker-niceness; Ray's default is 15), like the in-process side.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

from benchmarks.common import CpuMeter, machine_lines

ROOT = Path(__file__).resolve().parent.parent
APP_NAME = "mmray-bench"
K = 10

COLOURS = ["black", "blue", "gray", "green", "red", "white", "purple", "orange", "yellow", "brown", "lavender"]
GARMENTS = ["hoodie", "jacket", "tee", "tank top", "shorts", "pants", "sports bra", "sweatshirt",
            "yoga pants", "backpack", "duffle bag", "watch"]


def search_queries(seed: int = 0) -> list[str]:
    """Realistic shopper queries from the catalog's colours and garment words, in a fixed order."""
    out = []
    for c in COLOURS:
        for g in GARMENTS:
            out += [f"{c} {g}", f"{c} {g} for women", f"{c} {g} for men"]
    random.Random(seed).shuffle(out)
    return out


def catalog_images(limit: int) -> list[tuple[str, bytes]]:
    folder = ROOT / "data" / "luma" / "images"
    files = sorted(p for p in folder.glob("*.jpg"))[:limit]
    if not files:
        raise FileNotFoundError(f"no catalog images under {folder}")
    return [(p.name, p.read_bytes()) for p in files]


# --------------------------------------------------------------------------- measuring


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not values:
        return float("nan")
    v = sorted(values)
    pos = (len(v) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def summarize(lat_s: list[float], wall: float, codes: dict, extra: list[float] | None = None) -> dict:
    ok = len(lat_s)
    ms = [x * 1000 for x in lat_s]
    out = {"ok": ok, "errors": sum(n for c, n in codes.items() if str(c) != "200"),
           "codes": {str(c): n for c, n in codes.items()}, "wall_s": round(wall, 2),
           "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "qps": ok / wall if wall else 0.0}
    if extra:
        out["took_p50_ms"] = percentile(extra, 50)
    return out


async def closed_loop(send, concurrency: int, total: int, cap_s: float, warmup: int) -> dict:
    """`concurrency` workers; each awaits send(i) -> (status, server_ms|None) back to back.
    Stops after `total` requests or `cap_s` seconds (requests in flight then are finished)."""
    async def safe(i):
        try:
            return await send(i)
        except Exception as e:  # noqa: BLE001 - a failed request is a counted error, never a crash
            return type(e).__name__, None

    for lo in range(0, warmup, concurrency):  # untimed
        await asyncio.gather(*(safe(i) for i in range(lo, min(warmup, lo + concurrency))))
    lat, took, codes = [], [], {}
    state = {"next": 0}
    t0 = time.perf_counter()
    deadline = t0 + cap_s

    async def worker():
        while state["next"] < total and time.perf_counter() < deadline:
            i = state["next"]
            state["next"] += 1
            t = time.perf_counter()
            status, server_ms = await safe(i)
            dt = time.perf_counter() - t
            codes[status] = codes.get(status, 0) + 1
            if status == 200:
                lat.append(dt)
                if server_ms is not None:
                    took.append(server_ms)

    meter = CpuMeter(int(os.environ.get("MMRAY_BENCH_ROOT_PID", os.getpid()))).start()
    cpu0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    client = time.process_time() - cpu0  # the caller's own CPU (load process / handle caller), not the server's
    return summarize(lat, wall, codes, took) | meter.stop() | {"concurrency": concurrency,
                                                                "client_cpu_s": round(client, 3)}


# --------------------------------------------------------------------------- load process (child)


async def _loadgen(spec: dict) -> dict:
    import httpx

    base, queries = spec["base"], spec["queries"]
    images = catalog_images(spec["images"])
    out: dict = {"search": [], "embed_http": None}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, timeout=30.0, limits=limits, trust_env=False) as client:
        async def search(i):
            r = await client.post("/v1/search", json={"query": queries[i % len(queries)], "k": K})
            return r.status_code, (r.json().get("took_ms") if r.status_code == 200 else None)

        async def embed(i):
            name, data = images[i % len(images)]
            r = await client.post("/v1/embed", files={"image": (name, data, "image/jpeg")})
            if r.status_code == 200 and r.json().get("dim", 0) <= 0:
                return "bad_body", None
            return r.status_code, None

        for c, total in spec["levels"]:
            out["search"].append(await closed_loop(search, c, total, spec["cap_s"], warmup=max(c, 5)))
            print(f"  [load] search c={c}: done", file=sys.stderr, flush=True)
        c, total = spec["embed_level"]
        out["embed_http"] = await closed_loop(embed, c, total, spec["cap_s"], warmup=c)
    return out


def loadgen_main() -> int:
    spec = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(_loadgen(spec))))
    return 0


# --------------------------------------------------------------------------- in-process baseline


def inprocess(svc, queries: list[str], concurrency: int, total: int, cap_s: float) -> dict:
    for q in queries[-3:]:  # warm-up, untimed
        svc.search_text(q, k=K)
    lat: list[float] = []
    deadline = time.perf_counter() + cap_s
    state = {"next": 0}

    def one(i):
        t = time.perf_counter()
        svc.search_text(queries[i % len(queries)], k=K)
        return time.perf_counter() - t

    meter = CpuMeter().start()
    t0 = time.perf_counter()
    if concurrency == 1:
        for i in range(total):
            if time.perf_counter() >= deadline:
                break
            lat.append(one(i))
    else:
        import threading
        lock = threading.Lock()

        def worker():
            while True:
                with lock:
                    if state["next"] >= total or time.perf_counter() >= deadline:
                        return
                    i = state["next"]
                    state["next"] += 1
                d = one(i)
                with lock:
                    lat.append(d)

        with ThreadPoolExecutor(concurrency) as pool:
            for f in [pool.submit(worker) for _ in range(concurrency)]:
                f.result()
    wall = time.perf_counter() - t0
    return summarize(lat, wall, {200: len(lat)}) | meter.stop() | {"concurrency": concurrency}


# --------------------------------------------------------------------------- Serve


def free_port() -> int:
    for _ in range(20):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != 8000:
            return port
    raise RuntimeError("no free port")


def unbatched_embedder():
    """The library's EmbedderDeployment plus `embed_image_unbatched` (one image per call, the
    baseline for @serve.batch), under the same deployment name; the library has no such method."""
    from ray import serve

    from deployments.replicas import EmbedderDeployment

    class UnbatchedEmbedder(EmbedderDeployment.func_or_class):
        async def embed_image_unbatched(self, image: bytes, model_ref: str):
            return await asyncio.to_thread(lambda: self._model(model_ref).embed_images([image])[0])

    return serve.deployment(UnbatchedEmbedder, name=EmbedderDeployment.name)


def wait_ready(base: str, timeout_s: float) -> dict:
    import httpx

    deadline, last = time.time() + timeout_s, None
    while time.time() < deadline:
        try:
            r = httpx.get(base + "/readyz", timeout=60, trust_env=False)
            if r.status_code == 200:
                return r.json()
            last = r.text[:200]
        except httpx.HTTPError as e:
            last = repr(e)
        time.sleep(1)
    raise TimeoutError(f"app not ready after {timeout_s} s: {last}")


async def handle_embed(handle, images, model_path: str, batched: bool, c: int, total: int, cap_s: float) -> dict:
    async def send(i):
        data = images[i % len(images)][1]
        if batched:
            v = await handle.embed_image.remote((data, model_path))
        else:
            v = await handle.embed_image_unbatched.remote(data, model_path)
        return (200 if len(v) > 0 else "empty"), None
    return await closed_loop(send, c, total, cap_s, warmup=min(c, 4))


# --------------------------------------------------------------------------- report


def machine_info(cfg, args) -> list[str]:
    import faiss
    import fastapi
    import httpx
    import numpy as np
    import ray
    import torch

    s = cfg.serve
    return [
        *machine_lines(),
        f"versions    python {platform.python_version()}  ray {ray.__version__}  torch {torch.__version__}  "
        f"faiss {faiss.__version__}  numpy {np.__version__}  fastapi {fastapi.__version__}  httpx {httpx.__version__}",
        f"config      {args.config}: ray num_cpus={args.cpus}, worker nice {args.worker_niceness}; "
        f"ingress {s.ingress.num_cpus} CPU, embedder {s.embedder.num_cpus} CPU, retriever {s.retriever.num_cpus} CPU; "
        f"max_inflight {s.max_inflight}; embed batch <= {s.embed_max_batch}, wait {s.embed_batch_wait_s * 1000:g} ms",
        f"in-process  torch/FAISS threads {args.torch_threads}",
    ]


def fmt_row(label: str, r: dict) -> str:
    took = r.get("took_p50_ms")
    return (f"{label:<28} {r['concurrency']:>4} {r['ok']:>5} {r['errors']:>4} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
            f"{r['qps']:>7.1f} {f'{took:.1f}' if took is not None else '-':>8} {r['wall_s']:>6.1f} "
            f"{r['own_cores']:>5.2f} {r['other_cores']:>5.2f} {cpu_per_req(r):>7.1f}")


def cpu_per_req(r: dict) -> float:
    """CPU ms per answered request of this process tree, less the caller's own (load process / handle caller)."""
    return (r["own_cpu_s"] - r.get("client_cpu_s", 0.0)) / max(r["ok"], 1) * 1000


def header(rate: str = "QPS") -> str:
    return (f"{'':<28} {'conc':>4} {'ok':>5} {'err':>4} {'p50 ms':>8} {'p99 ms':>8} {rate:>7} {'took p50':>8} "
            f"{'wall s':>6} {'own':>5} {'other':>5} {'CPU ms':>7}")


def report(results: dict) -> str:
    ready = results["ready"]
    out = [*results["machine"],
           f"serving     index {ready['index_version']}, model {ready['model_version']}; Serve up in "
           f"{results['startup_s']} s; {results['same_results']}/{results['checked']} check queries gave the same "
           f"top-{K} product ids over HTTP as in-process",
           f"\n/v1/search, k={K}, {results['queries']} distinct queries (closed loop; HTTP load from a separate process)",
           header()]
    for r in results["inproc"]:
        out.append(fmt_row("in-process search_text" if r["concurrency"] == 1 else "in-process (thread pool)", r))
    for r in results["search"]:
        out.append(fmt_row("Serve HTTP /v1/search", r))
    ip1, sv1 = results["inproc"][0], results["search"][0]
    best_ip = max(results["inproc"], key=lambda r: r["qps"])
    best_sv = max(results["search"], key=lambda r: r["qps"])
    out += [f"Serve overhead at c=1: p50 {sv1['p50_ms']:.1f} / {ip1['p50_ms']:.1f} ms = "
            f"x{sv1['p50_ms'] / ip1['p50_ms']:.2f} (+{sv1['p50_ms'] - ip1['p50_ms']:.1f} ms; of the Serve p50, "
            f"{sv1.get('took_p50_ms', float('nan')):.1f} ms is inside the Ingress: embed + retrieve via handles)",
            f"QPS, best level each: Serve {best_sv['qps']:.1f} (c={best_sv['concurrency']}) / in-process "
            f"{best_ip['qps']:.1f} (c={best_ip['concurrency']}) = x{best_sv['qps'] / best_ip['qps']:.2f}",
            f"CPU per request at c=1: Serve {cpu_per_req(sv1):.1f} ms / in-process {cpu_per_req(ip1):.1f} ms = "
            f"x{cpu_per_req(sv1) / max(cpu_per_req(ip1), 1e-9):.2f}",
            "\n/v1/embed image and EmbedderDeployment.embed_image (catalog photos, 256 px JPEG)",
            header("img/s"),
            fmt_row("HTTP /v1/embed (batched)", results["embed_http"])]
    for r in results["embed_handles"]:
        out.append(fmt_row(f"handle {'embed_image (batch)' if r['batched'] else 'embed_image_unbatched'}", r))
    for c in sorted({r["concurrency"] for r in results["embed_handles"]}):
        on = next(r for r in results["embed_handles"] if r["concurrency"] == c and r["batched"])
        off = next(r for r in results["embed_handles"] if r["concurrency"] == c and not r["batched"])
        out.append(f"@serve.batch on/off at c={c}: {on['qps']:.1f} vs {off['qps']:.1f} img/s = "
                   f"x{on['qps'] / max(off['qps'], 1e-9):.2f}; p50 {on['p50_ms']:.0f} vs {off['p50_ms']:.0f} ms; "
                   f"CPU/img {cpu_per_req(on):.0f} vs {cpu_per_req(off):.0f} ms")
    for name in ("inproc", "search", "embed_handles"):
        out += [f"errors in {name} c={r['concurrency']}: {r['codes']}" for r in results[name] if r["errors"]]
    if results["embed_http"]["errors"]:
        out.append(f"errors in /v1/embed: {results['embed_http']['codes']}")
    out.append(f"\ntook p50: server-side ms measured by the Ingress. own/other: cores used by this process tree / "
               f"by the rest of the machine. CPU ms: CPU per answered request used by this process tree, less the "
               f"caller's own (the load process, or this process for handle calls). load avg at end "
               f"{', '.join(f'{x:.2f}' for x in results['load_end'])}; total {results['total_s']} s")
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--loadgen"]:
        return loadgen_main()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/local.yaml")
    parser.add_argument("--cpus", type=int, default=2, help="num_cpus of the private local Ray")
    parser.add_argument("--requests-c1", type=int, default=200, help="timed /v1/search requests at c=1")
    parser.add_argument("--requests", type=int, default=400, help="timed /v1/search requests at c=8 and c=32")
    parser.add_argument("--inproc-requests", type=int, default=100, help="timed in-process searches per level")
    parser.add_argument("--embed-requests", type=int, default=128, help="images per embed run at c=32 (c=1: a quarter)")
    parser.add_argument("--cap-s", type=float, default=20.0, help="wall-time cap of every timed level")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch/FAISS threads of the in-process side")
    parser.add_argument("--worker-niceness", type=int, default=0, help="nice of the Ray workers (Ray's default 15)")
    parser.add_argument("--ready-timeout-s", type=float, default=240.0)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few requests, short caps")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests_c1, args.requests, args.inproc_requests, args.embed_requests, args.cap_s = 20, 40, 10, 32, 5.0

    os.chdir(ROOT)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["RAY_worker_niceness"] = str(args.worker_niceness)
    os.environ.pop("RAY_ADDRESS", None)  # always a private cluster, never someone else's
    os.environ["MMRAY_BENCH_ROOT_PID"] = str(os.getpid())

    import faiss
    import torch

    from mmray.config import load_config
    from mmray.search import SearchService
    from mmray.storage import INDEX_KIND, ArtifactError, ArtifactStore

    cfg = load_config(args.config)
    try:
        index_version = ArtifactStore.from_config(cfg.storage).resolve(INDEX_KIND, hint="build one first")
    except ArtifactError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    queries = search_queries()
    info = machine_info(cfg, args)
    t_start = time.perf_counter()
    results: dict = {"machine": info}

    # 1. in-process baseline ------------------------------------------------------------------
    print(f"[{time.perf_counter() - t_start:5.0f}s] in-process SearchService ...", file=sys.stderr, flush=True)
    torch.set_num_threads(args.torch_threads)
    faiss.omp_set_num_threads(args.torch_threads)
    svc = SearchService.load(index_version, cfg.index)
    results["inproc"] = [inprocess(svc, queries, 1, args.inproc_requests, args.cap_s),
                         inprocess(svc, queries, 8, args.inproc_requests * 2, args.cap_s)]
    check_queries = queries[:5]
    expected = [[h.product_id for h in svc.search_text(q, k=K)] for q in check_queries]
    del svc

    # 2. Serve ---------------------------------------------------------------------------------
    import httpx
    import ray
    from ray import serve

    import deployments.app

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    tmp = tempfile.mkdtemp(prefix="rsb-")
    print(f"[{time.perf_counter() - t_start:5.0f}s] starting Ray + Serve on {base} ...", file=sys.stderr, flush=True)
    try:
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
                 _temp_dir=tmp, _node_ip_address="127.0.0.1")
        serve.start(http_options={"host": "127.0.0.1", "port": port,
                                  "request_timeout_s": cfg.serve.request_timeout_s * 2})
        t0 = time.perf_counter()
        with mock.patch.object(deployments.app, "EmbedderDeployment", unbatched_embedder()):
            app = deployments.app.build_app({"config": args.config})  # the app's own graph and options
        serve.run(app, name=APP_NAME, route_prefix="/")
        ready = wait_ready(base, args.ready_timeout_s)
        results["startup_s"] = round(time.perf_counter() - t0, 1)
        got = []
        for q in check_queries:
            r = httpx.post(base + "/v1/search", json={"query": q, "k": K}, timeout=60, trust_env=False)
            got.append([h["product_id"] for h in r.json().get("results", [])] if r.status_code == 200 else r.status_code)
        results["same_results"] = sum(g == e for g, e in zip(got, expected))

        # 3. HTTP load from a separate process ---------------------------------------------------
        print(f"[{time.perf_counter() - t_start:5.0f}s] HTTP load (separate process) ...", file=sys.stderr, flush=True)
        spec = {"base": base, "queries": queries, "cap_s": args.cap_s, "images": args.embed_requests,
                "levels": [[1, args.requests_c1], [8, args.requests], [32, args.requests]],
                "embed_level": [32, args.embed_requests]}
        budget = 5 * (args.cap_s + 30) + 60  # 4 levels + warm-ups, each request <= 30 s
        proc = subprocess.run([sys.executable, "-m", "benchmarks.serve", "--loadgen"], input=json.dumps(spec),
                              capture_output=True, text=True, timeout=budget, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"load process failed ({proc.returncode}): {proc.stderr[-2000:]}")
        results |= json.loads(proc.stdout.strip().splitlines()[-1])

        # 4. @serve.batch on vs off, through handles -----------------------------------------------
        print(f"[{time.perf_counter() - t_start:5.0f}s] embed_image batched vs unbatched (handles) ...",
              file=sys.stderr, flush=True)
        embedder = serve.get_deployment_handle("EmbedderDeployment", app_name=APP_NAME)
        retriever = serve.get_deployment_handle("RetrieverDeployment", app_name=APP_NAME)
        model_path = retriever.info.remote().result()["model"]
        images = catalog_images(args.embed_requests)

        async def batch_runs():
            out = []
            for c, n in [(1, max(4, args.embed_requests // 4)), (32, args.embed_requests)]:
                for batched in (True, False):
                    r = await handle_embed(embedder, images, model_path, batched, c, n, args.cap_s)
                    out.append(r | {"batched": batched})
            return out
        results["embed_handles"] = asyncio.run(batch_runs())
    finally:
        print(f"[{time.perf_counter() - t_start:5.0f}s] shutting down ...", file=sys.stderr, flush=True)
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    results["load_end"] = os.getloadavg()

    results |= {"ready": ready, "checked": len(check_queries), "queries": len(queries)}
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
