"""Jobs beside a serving app, the everyday workflow on a 2-core laptop: `ray start --head --num-cpus=2`
as `make serve` starts it, the Serve app deployed by `deployments.launch` (its Ingress holds
`serve.ingress.num_cpus` = 1 of the 2 CPUs), then the catalog refreshed, the model retrained and the index
rebuilt by `jobs.pipeline` in a process that joins that cluster while a client searches without
pause: the job fits into the CPU the app leaves (`jobs.cpus: free`), the app moves to the new index
and model, and no request fails.

A job that cannot get its CPUs stops within `jobs.resource_wait_s`, exit code 3, with one line that
says what it waits for and names what holds the cluster's CPUs (the Serve replica among them).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import LUMA_CATALOG, publish_model
from local_cluster import ROOT, LocalCluster, free_port

pytestmark = pytest.mark.slow

JOB_TIMEOUT_S = 240
WAIT_S = 6  # jobs.resource_wait_s of the jobs that cannot get their CPUs


def write_catalog(path: Path, n: int) -> None:
    rows = [json.loads(line) for line in LUMA_CATALOG.read_text().splitlines()[:n]]
    for r in rows:
        r["images"] = [str(LUMA_CATALOG.parent / p) for p in r["images"]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def run_job(cluster: LocalCluster, *args: str, timeout_s: float = JOB_TIMEOUT_S) -> subprocess.CompletedProcess:
    """`python -m jobs.<...>` as a separate process joining the cluster (RAY_ADDRESS); killed at the timeout."""
    proc = subprocess.Popen([sys.executable, "-m", *args], env=cluster.job_env(), cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(args[:1])} still running after {timeout_s} s: {err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


class App:
    def __init__(self, cluster: LocalCluster, cfg_path: Path, cfg, base: str, catalog: Path):
        self.cluster, self.cfg_path, self.cfg, self.base, self.catalog = cluster, cfg_path, cfg, base, catalog

    def job(self, name: str, *overrides: str, timeout_s: float = JOB_TIMEOUT_S) -> subprocess.CompletedProcess:
        args = [f"jobs.{name}", "--config", str(self.cfg_path)]
        for o in overrides:
            args += ["--set", o]
        return run_job(self.cluster, *args, timeout_s=timeout_s)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from mmray.config import ModelConfig, load_config
    from mmray.config.serve import ray_start_env
    from mmray.model import build_model
    from mmray.storage import ArtifactStore

    tmp = tmp_path_factory.mktemp("beside")
    catalog = tmp / "catalog.jsonl"
    write_catalog(catalog, 24)
    raw = {"data": {"catalog": str(catalog), "image_size": 64, "image_root": str(LUMA_CATALOG.parent)},
           "model": {"kind": "tiny", "image_size": 64, "embed_dim": 32},
           "index": {"embed_runtime": "torch", "query_runtime": "torch", "embed_batch_size": 16},  # 2 embedder actors
           "train": {"num_workers": 2, "batch_size": 16, "epochs": 1, "warmup_steps": 1},
           "serve": {"port": free_port(), "proxy_port": free_port(), "direct_ingress": False, "reload_poll_s": 0.5},
           "storage": {"root": str(tmp / "artifacts")},
           "jobs": {"cpus": "free", "resource_wait_s": 60}}
    cfg_path = tmp / "app.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    cfg = load_config(cfg_path)
    assert cfg.serve.ingress.num_cpus == 1.0  # the default: the app holds half of the 2 CPUs
    publish_model(ArtifactStore.from_config(cfg.storage),
                  build_model(ModelConfig(kind="tiny", image_size=64, embed_dim=32), pretrained=False))
    with LocalCluster(num_cpus=2, env=ray_start_env(cfg.serve)) as cluster:
        a = App(cluster, cfg_path, cfg, f"http://127.0.0.1:{cfg.serve.port}", catalog)
        for name in ("preprocess", "build_index"):  # before the app: the whole cluster is free
            done = a.job(name)
            assert done.returncode == 0, done.stderr[-3000:]
        launch = run_job(cluster, "deployments.launch", "--config", str(cfg_path), "--address", cluster.address)
        assert launch.returncode == 0, launch.stderr[-3000:]
        yield a


def cpus_free(app: App) -> float:
    code = "import ray; ray.init(log_to_driver=False); print(ray.available_resources().get('CPU', 0.0))"
    done = subprocess.run([sys.executable, "-c", code], env=app.cluster.job_env(), capture_output=True, text=True,
                          timeout=60)
    return float(done.stdout.strip().splitlines()[-1])


def waited_s(error: str) -> int:
    match = re.match(r"error: waited (\d+) s for ", error)
    assert match, error
    return int(match.group(1))


def test_the_pipeline_refreshes_catalog_model_and_index_beside_the_app_failing_no_request(app):
    """The merchant's catalog grew: `jobs.pipeline` preprocesses it, trains, rebuilds the index and
    evaluates it in the CPU the app leaves, while a client searches; the app moves to the new index
    and model without a failed request."""
    client = httpx.Client(base_url=app.base, timeout=30)
    old = client.get("/v1/index").json()
    assert cpus_free(app) == 2.0 - app.cfg.serve.ingress.num_cpus  # what the jobs may take
    outcomes: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def traffic():
        with httpx.Client(base_url=app.base, timeout=30) as c:
            while not stop.is_set():
                try:
                    r = c.post("/v1/search", json={"query": "jacket", "k": 3})
                    outcomes.append((r.status_code, r.json().get("index_version") if r.status_code == 200 else r.text))
                except httpx.HTTPError as e:
                    outcomes.append((0, repr(e)))
                time.sleep(0.05)

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        write_catalog(app.catalog, 30)
        done = app.job("pipeline")
        assert done.returncode == 0, done.stderr[-3000:]
        # it fitted itself into the 1 CPU the app leaves: as written, its 2 Ray Train workers would wait forever
        assert ("job budget 1 CPUs: data.concurrency None -> 1, index.embed_concurrency 2 -> 1, "
                "train.num_workers 2 -> 1") in done.stderr
        result = json.loads(next(line for line in reversed(done.stdout.splitlines()) if line.startswith('{"dataset"')))
        deadline = time.time() + 60
        while time.time() < deadline and client.get("/v1/index").json()["version"] != result["index"]:
            time.sleep(0.2)
        info = client.get("/v1/index").json()
        n_after = len(outcomes)
        while len(outcomes) < n_after + 5 and worker.is_alive():
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join(35)
        client.close()
    assert info["version"] == result["index"] != old["version"] and info["model_version"] == result["model"], info
    assert info["count"] == 30 and old["count"] == 24, info
    failed = [o for o in outcomes if o[0] != 200]
    assert not failed, failed[:5]
    versions = [v for _, v in outcomes]
    assert versions[0] == old["version"] and versions[-1] == result["index"]
    assert all(v == result["index"] for v in versions[versions.index(result["index"]):]), "went back to the old index"


def test_a_job_that_asks_for_more_cpus_than_are_free_stops_and_names_the_app(app):
    """jobs.cpus=2 beside an app holding 1: Ray Train's 2 workers (a placement group of 2 CPUs) wait."""
    from mmray.storage import ArtifactStore, model_kind

    store = ArtifactStore.from_config(app.cfg.storage)
    before = store.current(model_kind())
    start = time.time()
    done = app.job("train", "jobs.cpus=2", f"jobs.resource_wait_s={WAIT_S}")
    took = time.time() - start
    assert done.returncode == 3, done.stderr[-3000:]
    error = done.stderr.strip().splitlines()[-1]
    assert WAIT_S <= waited_s(error) <= WAIT_S + 3
    assert " s for {CPU: 2}, which the cluster does not give this job: 1 of 2 CPUs free" in error, error
    assert re.search(r"holding CPUs: SERVE_REPLICA::mmray#Ingress#\w+ \(CPU 1\)", error), error
    assert "make stop" in error and "serve.ingress.num_cpus" in error
    assert took < WAIT_S + 90, took  # start-up and the data stage, then the wait: not forever
    assert store.current(model_kind()) == before  # nothing was published
    assert cpus_free(app) == 1.0  # its Ray work went with it


def test_a_job_finding_less_than_one_cpu_free_stops_and_names_what_holds_them(app):
    """Another driver's actor takes half of the CPU the app leaves: `jobs.cpus: free` finds 0.5 CPU."""
    from mmray.storage import INDEX_KIND, ArtifactStore

    hold = ("import ray, time\nray.init(log_to_driver=False)\n"
            "@ray.remote(num_cpus=0.5)\nclass Blocker:\n    def ping(self): return 1\n"
            "b = Blocker.options(name='cpu-blocker').remote(); ray.get(b.ping.remote()); print('ready', flush=True)\n"
            "time.sleep(600)\n")
    blocker = subprocess.Popen([sys.executable, "-c", hold], env=app.cluster.job_env(), stdout=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        assert blocker.stdout.readline().strip() == "ready"
        store = ArtifactStore.from_config(app.cfg.storage)
        before = store.current(INDEX_KIND)
        start = time.time()
        done = app.job("build_index", f"jobs.resource_wait_s={WAIT_S}")
        took = time.time() - start
        assert done.returncode == 3, done.stderr[-3000:]
        assert "waiting up to 6 s for 1 free CPU (jobs.cpus=free): 0.5 of 2 CPUs free" in done.stderr  # said at once
        error = done.stderr.strip().splitlines()[-1]
        assert WAIT_S <= waited_s(error) <= WAIT_S + 3
        assert (" s for 1 free CPU (jobs.cpus=free), which the cluster does not give this job: 0.5 of 2 CPUs free"
                in error), error
        assert re.search(r"holding CPUs: SERVE_REPLICA::mmray#Ingress#\w+ \(CPU 1\), cpu-blocker \(CPU 0.5\)", error)
        assert "make stop" in error
        assert took < WAIT_S + 60, took
        assert store.current(INDEX_KIND) == before
    finally:
        os.killpg(blocker.pid, signal.SIGKILL)
        blocker.wait(30)
