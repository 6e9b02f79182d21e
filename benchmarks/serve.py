"""Serve benchmark: /v1/search over HTTP beside the same SearchService called in-process.

    python -m benchmarks.serve [--config configs/local.yaml] [--cpus 2] [--requests 300] [--cap-s 30]

Needs the built artifacts (a published index and its model under the config's storage root).

What runs, in order (every level is bounded in requests AND wall time):
  1. in-process  `SearchService.local(store, cfg.index)`: the class the Ingress uses, with its
                 LocalBackend (the co-located topology), torch/FAISS at --torch-threads threads (1:
                 what a 1-CPU replica gets). c=1 back to back, then c=16 concurrent asyncio tasks.
  2. Serve       a private local Ray (own temp dir, loopback, no dashboard), serve.start on
                 127.0.0.1:<free port>, serve.run(build_app({"config": ...})): the app's own graph
                 and options; waits for /readyz. By default with Serve's direct ingress, as
                 `make serve` runs it (the Ingress replica itself listens on the port); `--proxy`
                 measures the classic path through Serve's HTTP proxy actor instead.
  3. HTTP load   a SEPARATE PROCESS (`--loadgen`): httpx.AsyncClient with keep-alive, closed loop,
                 c workers each sending its next POST /v1/search {"query", "k": 10} when the previous
                 answer is read; c=1, then c=16. Same queries as the in-process side.
Printed: p50/p95/p99 latency and QPS of each side, and the two targets of issue 10:
  latency     HTTP p50 at c=1  <=  1.15 x in-process p50 + 5 ms
  throughput  HTTP QPS at c=16 >=  0.8 x in-process QPS at c=16
"own/other cores": CPU used by this process tree / by the rest of the machine per wall second;
when "other" is not near 0 the machine was shared and the numbers are pessimistic.
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
from pathlib import Path

from benchmarks.common import CpuMeter, machine_lines

ROOT = Path(__file__).resolve().parent.parent
APP_NAME = "mmray-bench"
K = 10
LEVELS = (1, 16)

COLOURS = ["black", "blue", "gray", "green", "red", "white", "purple", "orange", "yellow", "brown", "lavender"]
GARMENTS = ["hoodie", "jacket", "tee", "tank top", "shorts", "pants", "sports bra", "sweatshirt",
            "yoga pants", "backpack", "duffle bag", "watch"]


def search_queries(seed: int = 0) -> list[str]:
    """Shopper queries from colour and garment words, in a fixed order."""
    out = [f"{c} {g}{s}" for c in COLOURS for g in GARMENTS for s in ("", " for women", " for men")]
    random.Random(seed).shuffle(out)
    return out


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


async def closed_loop(send, concurrency: int, total: int, cap_s: float, warmup: int) -> dict:
    """`concurrency` workers, each awaiting send(i) -> status back to back; stops after `total`
    requests or `cap_s` seconds (requests in flight then are finished)."""
    async def safe(i):
        try:
            return await send(i)
        except Exception as e:  # noqa: BLE001 - a failed request is a counted error, never a crash
            return type(e).__name__

    for lo in range(0, warmup, concurrency):  # untimed
        await asyncio.gather(*(safe(i) for i in range(lo, min(warmup, lo + concurrency))))
    lat, codes, state = [], {}, {"next": 0}
    t0 = time.perf_counter()
    deadline = t0 + cap_s

    async def worker():
        while state["next"] < total and time.perf_counter() < deadline:
            i = state["next"]
            state["next"] += 1
            t = time.perf_counter()
            status = await safe(i)
            codes[str(status)] = codes.get(str(status), 0) + 1
            if status == 200:
                lat.append((time.perf_counter() - t) * 1000)

    meter = CpuMeter(int(os.environ.get("MMRAY_BENCH_ROOT_PID", os.getpid()))).start()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "ok": len(lat), "errors": sum(n for c, n in codes.items() if c != "200"),
            "codes": codes, "wall_s": round(wall, 2), "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95),
            "p99_ms": percentile(lat, 99), "qps": len(lat) / wall if wall else 0.0} | meter.stop()


async def inprocess(svc, queries: list[str], levels: list[tuple[int, int]], cap_s: float) -> list[dict]:
    async def send(i):
        res = await svc.search_text(query=queries[i % len(queries)], k=K)
        return 200 if res.hits else "empty"
    return [await closed_loop(send, c, n, cap_s, warmup=max(c, 5)) for c, n in levels]


async def _loadgen(spec: dict) -> list[dict]:
    import httpx

    queries = spec["queries"]
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=spec["base"], timeout=30.0, limits=limits, trust_env=False) as client:
        async def send(i):
            r = await client.post("/v1/search", json={"query": queries[i % len(queries)], "k": K})
            return r.status_code
        return [await closed_loop(send, c, n, spec["cap_s"], warmup=max(c, 5)) for c, n in spec["levels"]]


def loadgen_main() -> int:
    print(json.dumps(asyncio.run(_loadgen(json.loads(sys.stdin.read())))))
    return 0


# --------------------------------------------------------------------------- Serve


def free_port() -> int:
    for _ in range(20):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != 8000:  # where a demo may be running
            return port
    raise RuntimeError("no free port")


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


# --------------------------------------------------------------------------- report


def machine_info(cfg, args) -> list[str]:
    import fastapi
    import ray
    import torch

    s = cfg.serve
    return [*machine_lines(),
            f"versions    python {platform.python_version()}  ray {ray.__version__}  torch {torch.__version__}  "
            f"fastapi {fastapi.__version__}",
            f"config      {args.config}: topology {s.topology}, ray num_cpus={args.cpus}; ingress {s.ingress.num_cpus} "
            f"CPU (split: embedder {s.embedder.num_cpus}, retriever {s.retriever.num_cpus}); max_inflight {s.max_inflight}",
            f"in-process  torch/FAISS threads {args.torch_threads}"]


def fmt_row(label: str, r: dict) -> str:
    return (f"{label:<24} {r['concurrency']:>4} {r['ok']:>5} {r['errors']:>4} {r['p50_ms']:>7.1f} {r['p95_ms']:>7.1f} "
            f"{r['p99_ms']:>7.1f} {r['qps']:>7.1f} {r['wall_s']:>6.1f} {r['own_cores']:>5.2f} {r['other_cores']:>5.2f}")


def report(results: dict) -> str:
    ready = results["ready"]
    head = (f"{'':<24} {'conc':>4} {'ok':>5} {'err':>4} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'QPS':>7} "
            f"{'wall s':>6} {'own':>5} {'other':>5}")
    out = [*results["machine"],
           f"serving     index {ready['index_version']}, model {ready['model_version']}; Serve up in "
           f"{results['startup_s']} s; {results['same_results']}/{results['checked']} check queries gave the same "
           f"top-{K} product ids over HTTP as in-process",
           f"\n/v1/search, k={K}, {results['queries']} distinct queries (closed loop; HTTP load from a separate process; "
           f"{results['path']})",
           head]
    out += [fmt_row("in-process SearchService", r) for r in results["inproc"]]
    out += [fmt_row("Serve HTTP /v1/search", r) for r in results["http"]]
    ip1, sv1 = results["inproc"][0], results["http"][0]
    ipn, svn = results["inproc"][-1], results["http"][-1]
    target = 1.15 * ip1["p50_ms"] + 5
    out += [f"latency at c=1: HTTP p50 {sv1['p50_ms']:.1f} ms vs target 1.15 x {ip1['p50_ms']:.1f} + 5 = {target:.1f} ms "
            f"-> x{sv1['p50_ms'] / ip1['p50_ms']:.2f} of in-process ({'met' if sv1['p50_ms'] <= target else 'NOT met'})",
            f"throughput at c={svn['concurrency']}: HTTP {svn['qps']:.1f} QPS / in-process {ipn['qps']:.1f} QPS = "
            f"x{svn['qps'] / max(ipn['qps'], 1e-9):.2f} (target >= 0.80: "
            f"{'met' if svn['qps'] >= 0.8 * ipn['qps'] else 'NOT met'})"]
    for name in ("inproc", "http"):
        out += [f"errors in {name} c={r['concurrency']}: {r['codes']}" for r in results[name] if r["errors"]]
    out.append(f"\nload avg at end {', '.join(f'{x:.2f}' for x in results['load_end'])}; total {results['total_s']} s")
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--loadgen"]:
        return loadgen_main()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/local.yaml")
    parser.add_argument("--cpus", type=int, default=2, help="num_cpus of the private local Ray")
    parser.add_argument("--requests", type=int, default=300, help="timed /v1/search requests per level and side")
    parser.add_argument("--cap-s", type=float, default=30.0, help="wall-time cap of every timed level")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch/FAISS threads of the in-process side")
    parser.add_argument("--ready-timeout-s", type=float, default=240.0)
    parser.add_argument("--proxy", action="store_true", help="through Serve's HTTP proxy, not direct ingress")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few requests, short caps")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.cap_s = 40, 5.0

    os.chdir(ROOT)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["RAY_worker_niceness"] = "0"  # like the in-process side (Ray's default is 15)
    os.environ.pop("RAY_ADDRESS", None)  # always a private cluster, never someone else's
    os.environ["MMRAY_BENCH_ROOT_PID"] = str(os.getpid())

    import faiss
    import torch

    from mmray.config import load_config
    from mmray.search import NotReady, SearchService
    from mmray.storage import ArtifactStore

    cfg = load_config(args.config)
    queries = search_queries()
    levels = [(c, args.requests) for c in LEVELS]
    results: dict = {"machine": machine_info(cfg, args), "queries": len(queries)}
    t_start = time.perf_counter()

    # 1. in-process baseline ------------------------------------------------------------------
    print(f"[{time.perf_counter() - t_start:5.0f}s] in-process SearchService ...", file=sys.stderr, flush=True)
    torch.set_num_threads(args.torch_threads)
    faiss.omp_set_num_threads(args.torch_threads)
    try:
        svc = SearchService.local(ArtifactStore.from_config(cfg.storage), cfg.index)
    except NotReady as e:
        print(f"error: {e} (build the index first)", file=sys.stderr)
        return 2
    results["inproc"] = asyncio.run(inprocess(svc, queries, levels, args.cap_s))
    check = queries[:5]
    expected = [[h.product_id for h in asyncio.run(svc.search_text(query=q, k=K)).hits] for q in check]
    del svc

    # 2. Serve ---------------------------------------------------------------------------------
    import httpx
    import ray
    from ray import serve

    from deployments.app import build_app
    from mmray.config.serve import direct_ingress_env, http_options

    serve_cfg = cfg.serve.model_copy(update={"host": "127.0.0.1", "port": free_port(), "proxy_port": free_port(),
                                             "direct_ingress": not args.proxy})
    base = f"http://127.0.0.1:{serve_cfg.port}"
    results["path"] = "Serve HTTP proxy" if args.proxy else "direct ingress"
    os.environ.update(direct_ingress_env(serve_cfg))  # read by the Serve controller this Ray starts
    tmp = tempfile.mkdtemp(prefix="rsb-")
    print(f"[{time.perf_counter() - t_start:5.0f}s] starting Ray + Serve on {base} ...", file=sys.stderr, flush=True)
    try:
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
                 _temp_dir=tmp, _node_ip_address="127.0.0.1")
        serve.start(http_options=http_options(serve_cfg))
        t0 = time.perf_counter()
        serve.run(build_app({"config": args.config}), name=APP_NAME, route_prefix="/")
        results["ready"] = wait_ready(base, args.ready_timeout_s)
        results["startup_s"] = round(time.perf_counter() - t0, 1)
        got = []
        for q in check:
            r = httpx.post(base + "/v1/search", json={"query": q, "k": K}, timeout=60, trust_env=False)
            got.append([h["product_id"] for h in r.json().get("results", [])] if r.status_code == 200 else r.status_code)
        results["same_results"], results["checked"] = sum(g == e for g, e in zip(got, expected)), len(check)

        # 3. HTTP load from a separate process ---------------------------------------------------
        print(f"[{time.perf_counter() - t_start:5.0f}s] HTTP load (separate process) ...", file=sys.stderr, flush=True)
        spec = {"base": base, "queries": queries, "cap_s": args.cap_s, "levels": levels}
        proc = subprocess.run([sys.executable, "-m", "benchmarks.serve", "--loadgen"], input=json.dumps(spec),
                              capture_output=True, text=True, timeout=len(levels) * (args.cap_s + 60), cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"load process failed ({proc.returncode}): {proc.stderr[-2000:]}")
        results["http"] = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        print(f"[{time.perf_counter() - t_start:5.0f}s] shutting down ...", file=sys.stderr, flush=True)
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    results["load_end"] = os.getloadavg()
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
