"""The `vllm` copy engine for real: `jobs.serve_llm` builds the ray.serve.llm application from our
config in the LLM environment (`make llm-env`: vLLM's CPU build, its own torch), serves the shipped
SmolLM2-135M-Instruct on 127.0.0.1, and the Copywriter in this environment writes copy through it,
guardrails included. Skipped where the LLM environment is not installed.
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from test_copy import catalog, naive_colour_audience_check, variant  # noqa: F401 - `catalog` is a fixture

from mmray.config.copy import CopyConfig
from mmray.copy import CopyRequest, Copywriter

REPO = Path(__file__).resolve().parents[1]
LLM_PYTHON = Path(os.environ.get("MMRAY_LLM_PYTHON", REPO / ".llm-venv" / "bin" / "python"))
START_S = 600  # conversion of the GGUF, a fresh Ray, vLLM's start: about 2-3 min on 2 shared cores

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not LLM_PYTHON.exists(), reason=f"no LLM environment at {LLM_PYTHON} (make llm-env)")]

VLLM = {"accelerator": "cpu", "ingress_num_cpus": 0,
        "engine_kwargs": {"max_model_len": 2048, "enforce_eager": True, "dtype": "bfloat16"},
        "runtime_env": {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving_llm(root: Path, vllm: dict, python: Path = LLM_PYTHON):
    """Run `jobs.serve_llm` with `python` until its app is ready; yields its base URL, stops it after."""
    port = free_port()
    cfg = {"storage": {"root": str(root / "artifacts")}, "serve": {"host": "127.0.0.1", "port": port},
           "copy": {"engine": "vllm", "vllm": vllm}}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": env.get("RAY_AUTH_MODE", "token"),
            "RAY_ADDRESS": "local"}  # its own Ray, never a head left running on this machine
    proc = subprocess.Popen([str(python), "-m", "jobs.serve_llm", "--config", str(root / "config.yaml")],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace")
    tail, ready = collections.deque(maxlen=60), threading.Event()

    def pump():
        for line in proc.stdout:
            tail.append(line)
            if line.startswith("ready:"):
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + START_S
    while not ready.is_set() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(1)
    try:
        if not ready.is_set():
            pytest.fail(f"jobs.serve_llm not ready (exit {proc.poll()}) after {time.monotonic() - deadline + START_S:.0f} s:\n"
                        + "".join(tail), pytrace=False)
        yield f"http://127.0.0.1:{port}/llm/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def llm_url(tmp_path_factory):
    """`jobs.serve_llm` in the LLM environment on CPU (SmolLM2), for the module's tests."""
    with serving_llm(tmp_path_factory.mktemp("llm"), VLLM) as url:
        yield url


def write_through(catalog, url: str, monkeypatch, vllm: dict) -> None:  # noqa: F811
    """The Copywriter writes a title and a description (2 variants) through the LLM app at `url`: the model
    answered, and whatever passed holds no colour or audience the facts lack."""
    monkeypatch.setenv("MMRAY_VLLM_BASE_URL", url)
    cw = Copywriter(catalog, CopyConfig(engine="vllm", max_tokens=160, vllm=vllm))
    out = cw.write(CopyRequest(product_id="MH01-Black", kinds=["title", "description"], n_variants=2))
    assert out["engine"] == "vllm"
    assert len(out["raw"]) == 2 and all(isinstance(r, str) and r.strip() for r in out["raw"])  # the model answered
    facts = catalog.facts("MH01-Black")
    for kind in ("title", "description"):
        for i in range(2):
            v = variant(out, kind, i)
            if v["passed"]:  # what passed holds no colour or audience the facts do not support
                assert v["text"] and not naive_colour_audience_check(v["text"], facts), v
            else:
                assert v["text"] == "" and v["reasons"], v


def test_vllm_engine_end_to_end_through_ray_serve_llm(catalog, llm_url, monkeypatch):  # noqa: F811
    write_through(catalog, llm_url, monkeypatch, VLLM)


GPU_PYTHON = os.environ.get("MMRAY_LLM_GPU_PYTHON")


@pytest.mark.gpu
@pytest.mark.skipif(not GPU_PYTHON or shutil.which("nvidia-smi") is None,
                    reason="needs a CUDA GPU and $MMRAY_LLM_GPU_PYTHON: a Python with ray[llm] and vLLM's CUDA build")
def test_vllm_engine_on_gpu(catalog, tmp_path, monkeypatch):  # noqa: F811
    """The same, with ray.serve.llm's GPU default (`copy.vllm.accelerator: gpu`). Not run here: no GPU."""
    gpu = {"engine_kwargs": {"max_model_len": 2048, "gpu_memory_utilization": 0.3}, "ingress_num_cpus": 0}
    with serving_llm(tmp_path, gpu, Path(GPU_PYTHON)) as url:
        write_through(catalog, url, monkeypatch, gpu)


def test_generate_copy_job_with_ray_data_llm(catalog, tmp_path):  # noqa: F811
    """jobs.generate_copy with the vllm engine in the LLM environment: Ray Data prompts, ray.data.llm's
    vLLM processor (CPU, schema-constrained decoding), guardrails; every output lands with its verdict."""
    import pyarrow.parquet as pq
    from conftest import LUMA_CATALOG

    rows = [line for line in LUMA_CATALOG.read_text().splitlines() if line.strip()][:4]  # 2 products, 4 colours
    (tmp_path / "catalog.jsonl").write_text("\n".join(rows) + "\n")
    cfg = {"data": {"catalog": str(tmp_path / "catalog.jsonl"), "name": "tiny", "image_size": 64, "holdout_fraction": 0.0,
                    "image_root": str(LUMA_CATALOG.parent)},
           "storage": {"root": str(tmp_path / "artifacts")},
           "copy": {"engine": "vllm", "max_tokens": 160, "vllm": {**VLLM, "batch_size": 4}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": env.get("RAY_AUTH_MODE", "token"),
            "RAY_ADDRESS": "local"}  # its own Ray, never a head left running on this machine
    pre = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "jobs.preprocess", "--config",
                          str(tmp_path / "config.yaml")], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert pre.returncode == 0, pre.stderr[-3000:]
    job = subprocess.run([str(LLM_PYTHON), "-m", "jobs.generate_copy", "--config", str(tmp_path / "config.yaml"),
                          "--kinds", "title,description", "--variants", "2"],
                         cwd=REPO, env=env, capture_output=True, text=True, errors="replace", timeout=START_S + 300)
    assert job.returncode == 0, (job.stdout + job.stderr)[-4000:]
    manifest = json.loads(job.stdout[job.stdout.index("{\n"):])
    assert manifest["engine"] == "vllm" and manifest["products"] == 2
    out = pq.read_table(Path(manifest["path"]) / "outputs").to_pylist()
    assert manifest["outputs"] == len(out) == 2 * 2 * 2  # products x kinds x variants, nothing dropped
    assert {(r["product_id"], r["kind"], r["variant"]) for r in out} == \
        {(p, k, i) for p in ("MH01", "MH02") for k in ("title", "description") for i in (0, 1)}
    assert all(r["engine"] == "vllm" and r["raw"].strip() for r in out)  # the model answered every chat
    for r in out:
        if r["passed"]:  # what passed holds no colour or audience the product's facts lack
            assert r["text"] and not naive_colour_audience_check(r["text"], catalog.facts(r["product_id"])), r
        else:
            assert r["text"] == "" and json.loads(r["reasons"]), r
