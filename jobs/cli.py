"""The `mmray` command: each pipeline step, the app, and a small client for a running app.

    mmray quickstart                      preprocess -> train -> index -> reranker -> evaluate -> serve
    mmray train --config configs/local.yaml --set train.epochs=5
    mmray serve | mmray stop
    mmray search "red jacket" --k 5 --filter gender=Women      (or --image photo.jpg)
    mmray status | mmray copy MH01 --kind title --kind ad

Every step is a thin call into the job of the same name (`python -m jobs.<name>`) or into
`deployments.launch`, so the CLI and `ray job submit` run the same code with the same config.
A terminal gets a progress bar over the steps; anything else (CI, a pipe) gets one log line per
step. Exit codes (also in `mmray --help`) are listed in EXIT_CODES.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import typer

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_RESOURCES, EXIT_API, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 5, 130
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FAILED: "unexpected failure (a stack trace says where)",
    EXIT_USAGE: "bad usage, config, override or input (one `error:` line names it)",
    EXIT_RESOURCES: "a job waited jobs.resource_wait_s for CPUs the cluster did not give it",
    EXIT_API: "the app answered an error (4xx/5xx; its code and message are printed)",
    EXIT_UNREACHABLE: "no app answers at --url",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_CONFIG = "configs/local.yaml"
log = logging.getLogger("mmray.cli")

app = typer.Typer(
    name="mmray", no_args_is_help=True, add_completion=False, rich_markup_mode=None,
    help="mmray: multimodal search, recommendations and copy on Ray.\n\n"
         "Exit codes: " + "; ".join(f"{code} {what}" for code, what in EXIT_CODES.items()) + ".")

ConfigOpt = typer.Option(DEFAULT_CONFIG, "--config", "-c", help="YAML config file (see configs/ and mmray/config/).")
SetOpt = typer.Option([], "--set", "-s", metavar="KEY=VALUE",
                      help="Dotted override of one config field, e.g. --set train.epochs=5 (repeatable).")
UrlOpt = typer.Option(DEFAULT_URL, "--url", envvar="MMRAY_URL", help="Base URL of the running app ($MMRAY_URL).")
TimeoutOpt = typer.Option(30.0, "--timeout", min=0.1, help="Seconds to wait for the app's answer.")


# --------------------------------------------------------------------------- progress


class Steps:
    """Named steps run in order: a progress bar in a terminal, log lines otherwise; stops at the
    first step that returns a non-zero exit code, and returns it."""

    def __init__(self, names: list[str], tty: bool | None = None):
        self.names = names
        self.tty = sys.stderr.isatty() if tty is None else tty

    def run(self, steps: list[Callable[[], int]]) -> int:
        if self.tty:
            return self._run_with_bar(steps)
        for i, (name, step) in enumerate(zip(self.names, steps), 1):
            print(f"[{i}/{len(steps)}] {name} ...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            code = step()
            print(f"[{i}/{len(steps)}] {name} {'done' if code == 0 else f'failed (exit {code})'} "
                  f"in {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
            if code:
                return code
        return EXIT_OK

    def _run_with_bar(self, steps: list[Callable[[], int]]) -> int:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
            task = bar.add_task(self.names[0], total=len(steps))
            for name, step in zip(self.names, steps):
                bar.update(task, description=name)
                code = step()
                if code:
                    bar.update(task, description=f"{name} failed (exit {code})")
                    return code
                bar.advance(task)
            bar.update(task, description="done")
        return EXIT_OK


def _args(config: str, overrides: list[str], *extra: str) -> list[str]:
    return ["--config", config, *[a for item in overrides for a in ("--set", item)], *extra]


def _job(module: str, argv: list[str]) -> Callable[[], int]:
    def step() -> int:
        import importlib

        return importlib.import_module(module).main(argv)
    return step


def _finish(code: int) -> None:
    raise typer.Exit(code)


# --------------------------------------------------------------------------- pipeline


@app.command()
def preprocess(config: str = ConfigOpt, set_: list[str] = SetOpt) -> None:
    """Validate and clean the catalog into a new dataset version (jobs.preprocess, Ray Data)."""
    _finish(Steps(["preprocess"]).run([_job("jobs.preprocess", _args(config, set_))]))


@app.command()
def train(config: str = ConfigOpt, set_: list[str] = SetOpt,
          run_name: str = typer.Option(None, "--run-name", help="Ray Train run name; pass an interrupted run's name "
                                                                "to resume it from its latest checkpoint.")) -> None:
    """Train the dual encoder and publish a model version (jobs.train, Ray Train)."""
    extra = ["--run-name", run_name] if run_name else []
    _finish(Steps(["train"]).run([_job("jobs.train", _args(config, set_, *extra))]))


@app.command()
def index(config: str = ConfigOpt, set_: list[str] = SetOpt,
          model: str = typer.Option(None, "--model", help="Model version to embed with (default: the current one).")) -> None:
    """Embed the catalog and publish a new index version (jobs.build_index)."""
    extra = ["--model", model] if model else []
    _finish(Steps(["index"]).run([_job("jobs.build_index", _args(config, set_, *extra))]))


@app.command()
def evaluate(config: str = ConfigOpt, set_: list[str] = SetOpt,
             index_version: str = typer.Option(None, "--index", help="Index version to evaluate (default: the current one).")
             ) -> None:
    """Evaluate the index and publish the report (JSON, HTML, plots) served at /report (jobs.evaluate)."""
    extra = ["--index", index_version] if index_version else []
    _finish(Steps(["evaluate"]).run([_job("jobs.evaluate", _args(config, set_, *extra))]))


def _serve_steps(config: str, overrides: list[str], cpus: int, metrics_port: int, dashboard: bool):
    def start() -> int:
        from deployments.launch import start_local_ray
        from mmray.config import ConfigError

        try:
            start_local_ray(config, overrides, cpus, metrics_port, dashboard)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        except Exception as e:  # noqa: BLE001 - `ray start` failed: say so in one line
            print(f"error: could not start Ray: {e}", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK
    return ["start ray", "deploy app"], [start, _job("deployments.launch", _args(config, overrides))]


CpusOpt = typer.Option(2, "--cpus", min=1, help="CPUs of the local Ray head.")
MetricsOpt = typer.Option(8080, "--metrics-port", help="Port of Ray's Prometheus metrics endpoint.")
DashboardOpt = typer.Option(False, "--dashboard/--no-dashboard", help="Start Ray's dashboard and job server on 127.0.0.1:8265.")


@app.command()
def serve(config: str = ConfigOpt, set_: list[str] = SetOpt, cpus: int = CpusOpt, metrics_port: int = MetricsOpt,
          dashboard: bool = DashboardOpt) -> None:
    """Start a local Ray cluster and deploy the app on it (as `make serve`); it keeps serving after this
    returns, until `mmray stop`."""
    names, steps = _serve_steps(config, set_, cpus, metrics_port, dashboard)
    _finish(Steps(names).run(steps))


@app.command()
def stop() -> None:
    """Stop the local Ray cluster and the app in it (`ray stop`)."""
    from deployments.launch import stop_local_ray

    _finish(EXIT_OK if stop_local_ray() == 0 else EXIT_FAILED)


@app.command()
def quickstart(config: str = ConfigOpt, set_: list[str] = SetOpt, cpus: int = CpusOpt, metrics_port: int = MetricsOpt,
               dashboard: bool = DashboardOpt) -> None:
    """The whole pipeline on the configured catalog, then the app: preprocess, train, index, reranker, evaluate, serve."""
    names, serve_steps = _serve_steps(config, set_, cpus, metrics_port, dashboard)
    args = _args(config, set_)
    steps = [_job("jobs.preprocess", args), _job("jobs.train", args), _job("jobs.build_index", args),
             _job("jobs.train_reranker", args), _job("jobs.evaluate", args), *serve_steps]
    _finish(Steps(["preprocess", "train", "index", "reranker", "evaluate", *names]).run(steps))


# --------------------------------------------------------------------------- client of a running app


def api_key() -> str | None:
    """$MMRAY_API_KEY, else the first of the server's own $MMRAY_API_KEYS (a local app)."""
    key = os.environ.get("MMRAY_API_KEY") or (os.environ.get("MMRAY_API_KEYS") or "").split(",")[0]
    return key.strip() or None


def call(method: str, url: str, path: str, timeout: float, **kwargs) -> dict:
    """The JSON answer of a route; an error answer or no answer ends the command with its exit code."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if (key := api_key()) else {}
    try:
        r = httpx.request(method, url.rstrip("/") + path, headers=headers, timeout=timeout, trust_env=False, **kwargs)
    except httpx.HTTPError as e:
        print(f"error: no answer from {url} ({type(e).__name__}: {e}); is the app running? (mmray serve)", file=sys.stderr)
        raise typer.Exit(EXIT_UNREACHABLE) from None
    try:
        body = r.json()
    except ValueError:
        body = None
    if r.status_code >= 400 or not isinstance(body, dict):
        err = (body or {}).get("error") if isinstance(body, dict) else None
        code, message = (err.get("code"), err.get("message")) if isinstance(err, dict) else (str(r.status_code), r.text[:200])
        hint = ""
        if r.status_code == 404 and message == "Not Found":  # the router's own 404: no such route in this app
            hint = f"\n  this app has no {method} {path.split('?')[0]} route (a version without that feature)"
        elif r.status_code == 503 and r.headers.get("Retry-After"):
            hint = f"\n  retry after {r.headers['Retry-After']} s"
        print(f"error: {r.status_code} {code}: {message}{hint}", file=sys.stderr)
        raise typer.Exit(EXIT_API)
    return body


def _filters(items: list[str]) -> dict:
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"error: --filter {item!r} must look like field=value (category, gender, color, min_price, "
                  "max_price, available_only)", file=sys.stderr)
            raise typer.Exit(EXIT_USAGE)
        if key in ("min_price", "max_price"):
            try:
                out[key] = float(value)
            except ValueError:
                print(f"error: --filter {key}: {value!r} is not a number", file=sys.stderr)
                raise typer.Exit(EXIT_USAGE) from None
        elif key == "available_only":
            out[key] = value.lower() in ("1", "true", "yes")
        else:
            out[key] = value
    return out


def format_results(answer: dict) -> str:
    lines = [f"{len(answer['results'])} results  (index {answer['index_version']}, {answer['took_ms']} ms)"]
    for rank, r in enumerate(answer["results"], 1):
        price = f"${r['price']:.2f}" if isinstance(r.get("price"), (int, float)) else "-"
        lines.append(f"{rank:>3}. {r['score']:.3f}  {price:>9}  {'+'.join(r['retrievers']):<14} {r['product_id']:<12} {r['title']}")
    return "\n".join(lines)


@app.command()
def search(query: str = typer.Argument(None, help="Text to search for (leave out with --image)."),
           image: Path = typer.Option(None, "--image", exists=True, dir_okay=False, help="Search by this photo instead."),
           k: int = typer.Option(10, "--k", "-k", min=1, help="Results wanted."),
           filter_: list[str] = typer.Option([], "--filter", "-f", metavar="FIELD=VALUE",
                                             help="Filter, e.g. gender=Women, category=Women/Tops, max_price=50 (repeatable)."),
           hybrid: bool = typer.Option(None, "--hybrid/--vector-only", help="Fuse BM25 with vectors (default: the app's)."),
           as_json: bool = typer.Option(False, "--json", help="Print the app's JSON answer as it is."),
           url: str = UrlOpt, timeout: float = TimeoutOpt) -> None:
    """Search a running app by text or photo and print the results."""
    filters = _filters(filter_)
    if image is not None:
        data = {"k": str(k)} | ({"filters": json.dumps(filters)} if filters else {})
        answer = call("POST", url, "/v1/search/image", timeout, data=data,
                      files={"image": (image.name, image.read_bytes(), "application/octet-stream")})
    elif query:
        body: dict = {"query": query, "k": k} | ({"filters": filters} if filters else {})
        if hybrid is not None:
            body["hybrid"] = hybrid
        answer = call("POST", url, "/v1/search", timeout, json=body)
    else:
        print("error: give a query or --image PATH", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE)
    print(json.dumps(answer) if as_json else format_results(answer))


@app.command()
def status(url: str = UrlOpt, timeout: float = TimeoutOpt,
           as_json: bool = typer.Option(False, "--json", help="Print readiness and index info as JSON.")) -> None:
    """Whether a running app is ready, and the index and model versions it serves."""
    ready = call("GET", url, "/readyz", timeout)
    info = call("GET", url, "/v1/index", timeout)
    if as_json:
        print(json.dumps({"ready": ready, "index": info}))
        return
    print(f"{url}: {ready['status']}  index {info['version']} ({info['count']} items, {info['products']} products, "
          f"{info['factory']}, {info['num_shards']} shard(s))  model {info['model_version']}")
    if info.get("reload_error"):
        print(f"  reload error: {info['reload_error']}")


@app.command()
def copy(product_id: str = typer.Argument(..., help="Product (or item) id to write copy for."),
         kind: list[str] = typer.Option(["title", "description"], "--kind",
                                        help="What to write: title, description, bullets, ad (repeatable)."),
         tone: str = typer.Option(None, "--tone", help="Tone, e.g. friendly, premium (default: the engine's)."),
         channel: str = typer.Option(None, "--channel", help="Channel, e.g. web, social, email."),
         variants: int = typer.Option(1, "--variants", "-n", min=1, help="Variants per kind."),
         engine: str = typer.Option(None, "--engine", help="Copy engine (default: the app's copy.engine)."),
         as_json: bool = typer.Option(False, "--json", help="Print the app's JSON answer as it is."),
         url: str = UrlOpt, timeout: float = typer.Option(120.0, "--timeout", min=0.1, help="Seconds to wait.")) -> None:
    """Write product copy with a running app (POST /v1/copy), each variant with its guardrail verdict."""
    answer = call("POST", url, "/v1/copy", timeout, json={"product_id": product_id, "kinds": kind, "tone": tone,
                                                          "channel": channel, "n_variants": variants, "engine": engine})
    if as_json:
        print(json.dumps(answer))
        return
    print(f"copy for {answer.get('product_id')} (engine {answer.get('engine')})")
    for out in answer.get("outputs", []):
        print(f"\n{out['kind']}:")
        for i, v in enumerate(out.get("variants", []), 1):
            verdict = "passed" if v.get("passed") else "BLOCKED: " + "; ".join(v.get("reasons") or [])
            print(f"  {i}. {v.get('text')}\n     [{verdict}]")
            for removed in v.get("removed") or []:
                print(f"     removed {removed.get('text')!r}: {removed.get('reason')}")


def main(argv: list[str] | None = None) -> int:
    """Entry point (`mmray`, and `python -m jobs.cli`): the command's exit code (usage errors: 2)."""
    try:
        app(args=argv, prog_name="mmray")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (EXIT_OK if e.code is None else EXIT_FAILED)
    return EXIT_OK


def run() -> None:
    """The console script."""
    sys.exit(main())


if __name__ == "__main__":
    run()
