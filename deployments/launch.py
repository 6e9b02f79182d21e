"""Deploy the app to the running Ray cluster (or a new local one), wait until it is ready, and
print example requests with their real answers. The app keeps serving after this exits.

    python -m deployments.launch --config configs/local.yaml [--set serve.port=8000]
    python -m deployments.launch --print-ray-env     # the environment `ray start` needs for this config
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid

from mmray.config import ConfigError, load_config
from mmray.config.serve import http_options, ray_start_env
from mmray.runtime import run_job, setup_logging


def _request(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _upload(url: str, path: str, fields: dict[str, str]) -> tuple[int, dict]:
    """A multipart/form-data POST with one file (stdlib only, so the launcher needs no extras)."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    with open(path, "rb") as f:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{os.path.basename(path)}"'
                     f'\r\nContent-Type: application/octet-stream\r\n\r\n'.encode() + f.read() + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def wait_ready(base: str, timeout_s: float = 180) -> dict:
    deadline = time.time() + timeout_s
    last = None
    while time.time() < deadline:
        try:
            status, body = _request(base + "/readyz")
            if status == 200:
                return body
            last = body
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            last = str(e)
        time.sleep(1)
    raise TimeoutError(f"app not ready after {timeout_s} s: {last}")


EXAMPLES = [
    ("POST", "/v1/search", {"query": "red jacket for women", "k": 3}),
    ("POST", "/v1/search", {"query": "waterproof messenger bag", "k": 3, "filters": {"max_price": 60}}),
    ("GET", "/v1/products/MH01/similar?k=3", None),
    ("GET", "/v1/index", None),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.launch", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/local.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--address", default="auto", help="Ray cluster to deploy to ('local' starts one here)")
    parser.add_argument("--print-ray-env", action="store_true",
                        help="print the environment Ray must be started with for this config, and exit")
    args = parser.parse_args(argv)
    setup_logging()
    if args.print_ray_env:
        print(" ".join(f"{k}={v}" for k, v in ray_start_env(load_config(args.config, args.set).serve).items()))
        return 0

    def body() -> int:
        import ray
        from ray import serve

        from deployments.app import build_app

        cfg = load_config(args.config, args.set)
        ray.init(address=None if args.address == "local" else args.address, include_dashboard=False,
                 log_to_driver=False)
        serve.start(http_options=http_options(cfg.serve))
        serve.run(build_app({"config": args.config, "overrides": args.set}), name="mmray", route_prefix="/",
                  blocking=False)
        base = f"http://{cfg.serve.host}:{cfg.serve.port}"
        try:
            ready = wait_ready(base)
        except TimeoutError:
            if cfg.serve.direct_ingress:
                env = " ".join(f"{k}={v}" for k, v in ray_start_env(cfg.serve).items())
                raise TimeoutError(f"nothing answers on {base}: serve.direct_ingress is on, so Ray must be started "
                                   f"with {env} (make serve does this), or set serve.direct_ingress=false") from None
            raise
        print(f"\nmmray is serving at {base}  (index {ready['index_version']}, model {ready['model_version']})")
        print(f"shop page: {base}/   evaluation report: {base}/report/   API docs: {base}/docs\n")
        for method, path, payload in EXAMPLES:
            curl = f"curl -s {'-X POST ' if method == 'POST' else ''}{base}{path}"
            if payload is not None:
                curl += f" -H 'Content-Type: application/json' -d '{json.dumps(payload)}'"
            status, answer = _request(base + path, payload)
            print(f"$ {curl}\n[{status}] {json.dumps(_shorten(answer))}\n")
        image = "data/luma/images/mb05-black-0.jpg"
        if os.path.exists(image):
            status, answer = _upload(base + "/v1/search/image", image, {"k": "3"})
            print(f"$ curl -s -X POST {base}/v1/search/image -F image=@{image} -F k=3\n"
                  f"[{status}] {json.dumps(_shorten(answer))}\n")
        print("stop it with: make stop  (ray stop)")
        return 0

    return run_job(body, (ConfigError, FileNotFoundError, TimeoutError))


def ray_binary() -> str:
    """The `ray` command of this environment (next to its Python), else the one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "ray")
    return beside if os.access(beside, os.X_OK) else "ray"


def start_local_ray(config: str, overrides: list[str], cpus: int = 2, metrics_port: int = 8080,
                    dashboard: bool = False, port: int = 6380) -> None:
    """What `make serve` does before deploying: stop any local Ray, start a loopback head that outlives
    this process, with the environment this config's Serve settings need (`--print-ray-env`)."""
    import subprocess

    env = {**os.environ, **ray_start_env(load_config(config, overrides).serve)}
    subprocess.run([ray_binary(), "stop"], capture_output=True, check=False)
    subprocess.run([ray_binary(), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", f"--num-cpus={cpus}",
                    f"--metrics-export-port={metrics_port}", f"--include-dashboard={str(dashboard).lower()}",
                    "--dashboard-host=127.0.0.1", "--disable-usage-stats"], env=env, check=True,
                   stdout=subprocess.DEVNULL)


def stop_local_ray() -> int:
    """`ray stop`: ends the local cluster and the app in it; its exit code."""
    import subprocess

    return subprocess.run([ray_binary(), "stop"], check=False).returncode


def _shorten(answer: dict) -> dict:
    if "results" in answer:
        answer = dict(answer, results=[{k: r[k] for k in ("product_id", "title", "price", "score", "retrievers")}
                                       for r in answer["results"]])
    return answer


if __name__ == "__main__":
    sys.exit(main())
