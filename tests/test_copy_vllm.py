"""The `vllm` copy engine for real: `jobs.serve_llm` builds the ray.serve.llm application from our
config in the LLM environment (`make llm-env`: vLLM's CPU build, its own torch), serves the shipped
SmolLM2-135M-Instruct on 127.0.0.1, and the Copywriter in this environment writes copy through it,
guardrails included. Skipped where the LLM environment is not installed.
"""
from __future__ import annotations

import collections
import os
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


@pytest.fixture(scope="module")
def llm_url(tmp_path_factory):
    """Run `jobs.serve_llm` in the LLM environment until its app is ready; its base URL."""
    root = tmp_path_factory.mktemp("llm")
    port = free_port()
    cfg = {"storage": {"root": str(root / "artifacts")}, "serve": {"host": "127.0.0.1", "port": port},
           "copy": {"engine": "vllm", "vllm": VLLM}}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": env.get("RAY_AUTH_MODE", "token")}
    proc = subprocess.Popen([str(LLM_PYTHON), "-m", "jobs.serve_llm", "--config", str(root / "config.yaml")],
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


def test_vllm_engine_end_to_end_through_ray_serve_llm(catalog, llm_url, monkeypatch):  # noqa: F811
    monkeypatch.setenv("MMRAY_VLLM_BASE_URL", llm_url)
    cw = Copywriter(catalog, CopyConfig(engine="vllm", max_tokens=160, vllm=VLLM))
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
