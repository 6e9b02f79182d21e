"""Serve benchmark: /v1/search over HTTP beside the same SearchService called in-process.

    python -m benchmarks.serve [--config configs/local.yaml] [--cpus 2] [--requests 300] [--rounds 3]

Needs the built artifacts (a published index and its model under the config's storage root).

What runs:
  1. Serve       a private local Ray (own temp dir, loopback, no dashboard), started with the
                 environment `make serve` gives `ray start` (`ray_start_env`), serve.start on
                 127.0.0.1:<free port>, serve.run(build_app({"config": ...})): the app's own graph
                 and options; waits for /readyz. By default with Serve's direct ingress, as
                 `make serve` runs it (the Ingress replica itself listens on the port); `--proxy`
                 measures the classic path through Serve's HTTP proxy actor instead.
  2. in-process  `SearchService.local(store, cfg.index)` in this process: the class the Ingress
                 uses, with its LocalBackend (the co-located topology), torch/FAISS at
                 --torch-threads threads (1: what a 1-CPU replica gets).
  3. HTTP load   a SEPARATE PROCESS (`--loadgen`, kept for the whole run): an aiohttp session with
                 keep-alive, c workers each sending its next POST /v1/search {"query", "k": 10}
                 when the previous answer is read. Same queries as the in-process side.
  Both sides run closed loops at c=1 and c=16, interleaved: per round in-process c=1, HTTP c=1,
  in-process c=16, HTTP c=16 (--rounds rounds; the other side is idle meanwhile), so a slow
  spell of this shared VM hits both sides alike. Every level is bounded in requests AND wall time.
Printed: every level of every round, then the median over rounds of each side's p50 and QPS,
and the two targets of issue 10 judged on those medians:
  latency     HTTP p50 at c=1  <=  1.15 x in-process p50 + 5 ms
  throughput  HTTP QPS at c=16 >=  0.8 x in-process QPS at c=16
"own/other cores": CPU used by this process tree / by the rest of the machine per wall second;
"self": CPU of the process driving the level (in-process: the search itself; HTTP: the client);
when "other" is not near 0 the machine was shared and the numbers are pessimistic.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
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
    self0 = sum(os.times()[:2])
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    self_cores = round((sum(os.times()[:2]) - self0) / wall, 2) if wall else 0.0
    return {"concurrency": concurrency, "ok": len(lat), "errors": sum(n for c, n in codes.items() if c != "200"),
            "codes": codes, "wall_s": round(wall, 2), "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95),
            "p99_ms": percentile(lat, 99), "qps": len(lat) / wall if wall else 0.0, "self_cores": self_cores,
            "latencies_ms": [round(x, 3) for x in lat]} | meter.stop()  # the report's latency histograms


def inprocess(svc, queries: list[str], concurrency: int, requests: int, cap_s: float) -> dict:
    async def send(i):
        res = await svc.search_text(query=queries[i % len(queries)], k=K)
        return 200 if res.hits else "empty"
    return asyncio.run(closed_loop(send, concurrency, requests, cap_s, warmup=max(concurrency, 5)))


async def _post(session, base: str, queries: list[str], i: int) -> int:
    async with session.post(base + "/v1/search", json={"query": queries[i % len(queries)], "k": K}) as r:
        await r.read()
        return r.status


async def _loadgen() -> None:
    """Read one JSON spec per stdin line ({"base", "queries", "cap_s", "level": [c, n]}), run that
    level over one keep-alive aiohttp session (a cheaper client than httpx: the load generator
    shares the cores with the server), answer one JSON line; until stdin closes."""
    import aiohttp

    session, queries = None, []
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            spec = json.loads(line)
            if session is None:
                session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64), trust_env=False,
                                                timeout=aiohttp.ClientTimeout(total=30))
            queries = spec.get("queries") or queries
            c, n = spec["level"]
            send = functools.partial(_post, session, spec["base"], queries)
            print(json.dumps(await closed_loop(send, c, n, spec["cap_s"], warmup=max(c, 5))), flush=True)
    finally:
        if session is not None:
            await session.close()


def loadgen_main() -> int:
    asyncio.run(_loadgen())
    return 0


class LoadGen:
    """The separate load process: `run(level)` drives one closed-loop level and returns its result."""

    def __init__(self, base: str, queries: list[str], cap_s: float):
        self.base, self.queries, self.cap_s = base, queries, cap_s
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.serve", "--loadgen"], cwd=ROOT, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def run(self, concurrency: int, requests: int) -> dict:
        spec = {"base": self.base, "cap_s": self.cap_s, "level": [concurrency, requests],
                "queries": self.queries}
        self.queries = []  # sent once
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load process ended (exit {self.proc.wait(timeout=10)})")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


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
            f"config      {args.config} {' '.join(args.set)}: topology {s.topology}, ray num_cpus={args.cpus}; "
            f"ingress {s.ingress.num_cpus} CPU (split: embedder {s.embedder.num_cpus}, retriever "
            f"{s.retriever.num_cpus}); max_inflight {s.max_inflight}; index.query_runtime {cfg.index.query_runtime}, "
            f"index.search_threads {cfg.index.search_threads}; serve.tuned_replicas {s.tuned_replicas}",
            f"in-process  torch/FAISS threads {args.torch_threads}"]


def fmt_row(label: str, r: dict) -> str:
    return (f"{label:<24} {r['concurrency']:>4} {r['ok']:>5} {r['errors']:>4} {r['p50_ms']:>7.1f} {r['p95_ms']:>7.1f} "
            f"{r['p99_ms']:>7.1f} {r['qps']:>7.1f} {r['wall_s']:>6.1f} {r['own_cores']:>5.2f} {r['other_cores']:>5.2f} "
            f"{r['self_cores']:>5.2f}")


def median(values: list[float]) -> float:
    return percentile(values, 50)


def report(results: dict) -> str:
    ready = results["ready"]
    head = (f"{'':<28} {'conc':>4} {'ok':>5} {'err':>4} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'QPS':>7} "
            f"{'wall s':>6} {'own':>5} {'other':>5} {'self':>5}")
    out = [*results["machine"],
           f"serving     index {ready['index_version']}, model {ready['model_version']}; Serve up in "
           f"{results['startup_s']} s; {results['same_results']}/{results['checked']} check queries gave the same "
           f"top-{K} product ids over HTTP as in-process",
           f"\n/v1/search, k={K}, {results['queries']} distinct queries (closed loop; HTTP load from a separate process; "
           f"{results['path']}; {len(results['rounds'])} interleaved rounds)",
           head]
    for i, rnd in enumerate(results["rounds"], 1):
        for side, label in (("inproc", "in-process SearchService"), ("http", "Serve HTTP /v1/search")):
            out += [fmt_row(f"r{i} {label}", r) for r in rnd[side]]
    summary = {}
    for side in ("inproc", "http"):
        for j, c in enumerate(LEVELS):
            levels = [rnd[side][j] for rnd in results["rounds"]]
            summary[side, c] = {key: median([r[key] for r in levels]) for key in ("p50_ms", "p95_ms", "p99_ms", "qps")}
    out.append("\nmedian over rounds          conc  p50 ms  p95 ms  p99 ms     QPS")
    for side, label in (("inproc", "in-process SearchService"), ("http", "Serve HTTP /v1/search")):
        for c in LEVELS:
            m = summary[side, c]
            out.append(f"{label:<27} {c:>4} {m['p50_ms']:>7.1f} {m['p95_ms']:>7.1f} {m['p99_ms']:>7.1f} {m['qps']:>7.1f}")
    ip1, sv1 = summary["inproc", LEVELS[0]], summary["http", LEVELS[0]]
    ipn, svn = summary["inproc", LEVELS[-1]], summary["http", LEVELS[-1]]
    ratios = [rnd["http"][-1]["qps"] / max(rnd["inproc"][-1]["qps"], 1e-9) for rnd in results["rounds"]]
    target = 1.15 * ip1["p50_ms"] + 5
    out += [f"latency at c={LEVELS[0]}: HTTP p50 {sv1['p50_ms']:.1f} ms vs target 1.15 x {ip1['p50_ms']:.1f} + 5 = "
            f"{target:.1f} ms -> x{sv1['p50_ms'] / ip1['p50_ms']:.2f} of in-process "
            f"({'met' if sv1['p50_ms'] <= target else 'NOT met'})",
            f"throughput at c={LEVELS[-1]}: HTTP {svn['qps']:.1f} QPS / in-process {ipn['qps']:.1f} QPS = "
            f"x{svn['qps'] / max(ipn['qps'], 1e-9):.2f} (target >= 0.80: "
            f"{'met' if svn['qps'] >= 0.8 * ipn['qps'] else 'NOT met'}); per round "
            + ", ".join(f"x{r:.2f}" for r in ratios)]
    for i, rnd in enumerate(results["rounds"], 1):
        for side in ("inproc", "http"):
            out += [f"errors in r{i} {side} c={r['concurrency']}: {r['codes']}" for r in rnd[side] if r["errors"]]
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
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for both sides (e.g. index.search_threads=1)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of all levels on both sides")
    parser.add_argument("--cap-s", type=float, default=30.0, help="wall-time cap of every timed level")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch/FAISS threads of the in-process side")
    parser.add_argument("--ready-timeout-s", type=float, default=240.0)
    parser.add_argument("--proxy", action="store_true", help="through Serve's HTTP proxy, not direct ingress")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few requests, short caps")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.cap_s, args.rounds = 40, 5.0, 1

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

    cfg = load_config(args.config, args.set)
    queries = search_queries()
    results: dict = {"machine": machine_info(cfg, args), "queries": len(queries), "rounds": []}
    t_start, t_start_wall = time.perf_counter(), time.time()

    def say(what: str) -> None:
        print(f"[{time.perf_counter() - t_start:5.0f}s] {what}", file=sys.stderr, flush=True)

    torch.set_num_threads(args.torch_threads)
    faiss.omp_set_num_threads(args.torch_threads)
    try:
        svc = SearchService.local(ArtifactStore.from_config(cfg.storage), cfg.index)
    except NotReady as e:
        print(f"error: {e} (build the index first)", file=sys.stderr)
        return 2
    check = queries[:5]
    expected = [[h.product_id for h in asyncio.run(svc.search_text(query=q, k=K)).hits] for q in check]

    import httpx
    import ray
    from ray import serve

    from deployments.app import build_app
    from mmray.config.serve import http_options, ray_start_env

    serve_cfg = cfg.serve.model_copy(update={"host": "127.0.0.1", "port": free_port(), "proxy_port": free_port(),
                                             "direct_ingress": not args.proxy})
    base = f"http://127.0.0.1:{serve_cfg.port}"
    results["path"] = "Serve HTTP proxy" if args.proxy else "direct ingress"
    os.environ.update(ray_start_env(serve_cfg))  # read by the Serve processes this Ray starts
    tmp = tempfile.mkdtemp(prefix="rsb-")
    say(f"starting Ray + Serve on {base} ...")
    loadgen = None
    try:
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
                 _temp_dir=tmp, _node_ip_address="127.0.0.1")
        serve.start(http_options=http_options(serve_cfg))
        t0 = time.perf_counter()
        serve.run(build_app({"config": args.config, "overrides": args.set}), name=APP_NAME, route_prefix="/")
        results["ready"] = wait_ready(base, args.ready_timeout_s)
        results["startup_s"] = round(time.perf_counter() - t0, 1)
        got = []
        for q in check:
            r = httpx.post(base + "/v1/search", json={"query": q, "k": K}, timeout=60, trust_env=False)
            got.append([h["product_id"] for h in r.json().get("results", [])] if r.status_code == 200 else r.status_code)
        results["same_results"], results["checked"] = sum(g == e for g, e in zip(got, expected)), len(check)

        loadgen = LoadGen(base, queries, args.cap_s)
        for i in range(args.rounds):
            rnd = {"inproc": [], "http": []}
            for c in LEVELS:
                say(f"round {i + 1}/{args.rounds}, c={c}: in-process, then HTTP ...")
                rnd["inproc"].append(inprocess(svc, queries, c, args.requests, args.cap_s))
                rnd["http"].append(loadgen.run(c, args.requests))
            results["rounds"].append(rnd)
    finally:
        say("shutting down ...")
        if loadgen is not None:
            loadgen.close()
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    results["load_end"] = os.getloadavg()
    print(report(results))
    if args.json:
        results["date"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t_start_wall))
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
