"""The `mmray` CLI (jobs/cli.py): --help of every command documents every option, exit codes scripts can
rely on, progress as log lines off a terminal, and search/status/copy against a real test Serve app."""
from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
import tomllib
import typer
from conftest import LUMA_CATALOG, ROOT
from shop_app import serve_shop

from jobs import cli

COMMANDS = ["quickstart", "preprocess", "train", "index", "serve", "stop", "evaluate", "copy", "search", "status"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# --------------------------------------------------------------------------- without an app


def test_entry_point_is_declared_and_importable():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attr = scripts["mmray"].partition(":")
    assert (module, attr) == ("jobs.cli", "run") and callable(getattr(cli, attr))


def test_help_of_every_command_explains_every_option(capsys):
    group = typer.main.get_command(cli.app)
    assert sorted(group.commands) == sorted(COMMANDS)
    code, out, _ = run(capsys, "--help")
    assert code == 0 and all(name in out for name in COMMANDS)
    assert all(f"{c} {what}" in " ".join(out.split()) for c, what in cli.EXIT_CODES.items())
    for name, command in group.commands.items():
        code, out, _ = run(capsys, name, "--help")
        assert code == 0, name
        assert command.help and " ".join(command.help.split())[:40] in " ".join(out.split()), name
        for param in command.params:
            if param.param_type_name == "option":
                assert param.help, (name, param.name)
                assert param.opts[0] in out, (name, param.opts)
    assert "--set" in run(capsys, "train", "--help")[1] and "--config" in run(capsys, "train", "--help")[1]


def test_usage_and_config_errors_exit_2(capsys, tmp_path):
    assert run(capsys, "search", "--bogus")[0] == cli.EXIT_USAGE
    code, _, err = run(capsys, "search", "x", "--filter", "nonsense")
    assert code == cli.EXIT_USAGE and "field=value" in err
    code, _, err = run(capsys, "search")
    assert code == cli.EXIT_USAGE and "give a query" in err
    code, _, err = run(capsys, "preprocess", "--config", str(tmp_path / "missing.yaml"))
    assert code == cli.EXIT_USAGE and "config file not found" in err
    # Off a terminal, progress is one log line per step, the failure named with its exit code.
    assert "[1/1] preprocess ..." in err and "[1/1] preprocess failed (exit 2)" in err
    code, _, err = run(capsys, "train", "--set", "model.kind=big")
    assert code == cli.EXIT_USAGE and "model.kind" in err


def test_unreachable_app_exits_5(capsys):
    port = __import__("shop_app").free_port()  # nothing listens there
    code, _, err = run(capsys, "status", "--url", f"http://127.0.0.1:{port}", "--timeout", "2")
    assert code == cli.EXIT_UNREACHABLE and "no answer from" in err


def test_steps_stop_at_the_first_failure_with_and_without_a_terminal(capsys):
    for tty in (False, True):
        ran = []
        steps = [lambda ran=ran, n=n, code=code: ran.append(n) or code for n, code in (("a", 0), ("b", 3), ("c", 0))]
        assert cli.Steps(["a", "b", "c"], tty=tty).run(steps) == 3
        assert ran == ["a", "b"]
        assert cli.Steps(["a"], tty=tty).run([lambda: 0]) == 0
    err = capsys.readouterr().err
    assert "[2/3] b failed (exit 3)" in err and "b failed (exit 3)" in err.split("[1/1] a done")[-1]


# --------------------------------------------------------------------------- against a test app


@pytest.fixture(scope="module")
def shop(tmp_path_factory, ray_session):
    yield from serve_shop(tmp_path_factory.mktemp("cli"))


@pytest.mark.slow
def test_search_prints_what_the_app_answers(capsys, shop):
    code, out, _ = run(capsys, "search", "hoodie for men", "--k", "5", "--url", shop.base, "--json")
    expected = httpx.post(shop.base + "/v1/search", json={"query": "hoodie for men", "k": 5}).json()
    assert code == 0 and [r["id"] for r in json.loads(out)["results"]] == [r["id"] for r in expected["results"]]
    code, out, _ = run(capsys, "search", "hoodie for men", "--k", "5", "--url", shop.base)
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].startswith(f"{len(expected['results'])} results  (index {shop.version}")
    for line, r in zip(lines[1:], expected["results"], strict=True):
        assert line.split()[1] == f"{r['score']:.3f}" and line.endswith(r["title"]) and r["product_id"] in line

    code, out, _ = run(capsys, "search", "jacket", "-f", "gender=Women", "-f", "max_price=60", "--url", shop.base, "--json")
    expected = httpx.post(shop.base + "/v1/search", json={"query": "jacket", "k": 10,
                                                          "filters": {"gender": "Women", "max_price": 60}}).json()
    assert code == 0 and json.loads(out)["results"] == [dict(r, score=pytest.approx(r["score"])) for r in expected["results"]]
    assert expected["results"] and all(r["price"] <= 60 for r in expected["results"])

    photo = LUMA_CATALOG.parent / "images" / "mh01-black_main.jpg"
    code, out, _ = run(capsys, "search", "--image", str(photo), "--k", "3", "--url", shop.base, "--json")
    expected = httpx.post(shop.base + "/v1/search/image", files={"image": ("p.jpg", photo.read_bytes())}, data={"k": "3"}).json()
    assert code == 0 and [r["id"] for r in json.loads(out)["results"]] == [r["id"] for r in expected["results"]]


@pytest.mark.slow
def test_status_and_api_errors(capsys, shop):
    code, out, _ = run(capsys, "status", "--url", shop.base)
    assert code == 0 and f"ready  index {shop.version} ({len(shop.rows)} items" in out
    code, _, err = run(capsys, "search", "jacket", "--k", "100000", "--url", shop.base)
    assert code == cli.EXIT_API and "422 invalid_request: k: must be <=" in err
    # An unknown product: the app's own 404, exit 4.
    code, _, err = run(capsys, "copy", "NO-SUCH-PRODUCT", "--url", shop.base)
    assert code == cli.EXIT_API and err.startswith("error: 404 ") and "has no POST" not in err
    # An app without the route (here: the app mounted under another prefix): the router's 404 and a hint.
    code, _, err = run(capsys, "copy", "MH01", "--url", shop.base + "/elsewhere")
    assert code == cli.EXIT_API and "404 not_found: Not Found" in err and "has no POST /v1/copy route" in err


@pytest.mark.slow
def test_the_cli_as_a_process(shop):
    """`python -m jobs.cli` (what the `mmray` script runs): real exit codes and stdout."""
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "search", "bag", "--k", "2", "--url", shop.base, "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["results"]) == 2
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "copy", "MH01", "--kind", "title", "--url", shop.base],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    expected = httpx.post(shop.base + "/v1/copy", json={"product_id": "MH01", "kinds": ["title"]}, timeout=120).json()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"copy for MH01 (engine {expected['engine']})" and "title:" in lines
    for v in expected["outputs"][0]["variants"]:
        assert f"1. {v['text']}" in done.stdout
        assert ("[passed]" if v["passed"] else "[BLOCKED: ") in done.stdout
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "copy", "MH01", "--url", shop.base + "/elsewhere"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == cli.EXIT_API and "has no POST /v1/copy route" in done.stderr


def test_progress_bar_in_a_terminal(tmp_path):
    """Under a pseudo-terminal the steps draw a rich progress bar instead of log lines."""
    import os
    import pty

    script = ("from jobs.cli import Steps\nimport sys, time\n"
              "sys.exit(Steps(['first', 'second']).run([lambda: 0, lambda: 7]))\n")
    pid, fd = pty.fork()
    if pid == 0:  # the child: stderr is the terminal
        os.chdir(ROOT)
        os.execv(sys.executable, [sys.executable, "-c", script])
    chunks = []
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 7
    assert "second failed (exit 7)" in text and "[1/2]" not in text and "\u2501" in text  # the bar's glyph
