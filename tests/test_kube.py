"""deployments/kube.py and deployments/kubernetes/: the committed manifests are what the generator
makes now, and each validates against the schema the API server applies: KubeRay's CRDs (vendored
in tests/data/kuberay-crds/) for RayService and RayJob, Kubernetes' own (the kubernetes-validate
package) for ConfigMap, NetworkPolicy and object metadata, and a small strict schema for
Kustomization. The Serve app in serveConfigV2 imports and takes its args. No network, no Ray.
"""
from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import posixpath
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import ray
import yaml
from kubernetes_validate.utils import latest_version
from ray.serve.schema import ServeDeploySchema

from deployments import kube
from deployments.app import AppArgs
from mmray.config import ConfigError, load_config
from mmray.config.serve import ray_start_env

CRDS = Path(__file__).parent / "data" / "kuberay-crds"
K8S_VERSIONS = ("1.29", latest_version())  # the oldest Kubernetes docs/deployment.md supports, the newest known

# Kustomization is not an API object, so neither the API server nor kubernetes-validate has a schema
# for it: this one allows exactly the fields the generator writes (kustomize reference,
# kubectl.docs.kubernetes.io/references/kustomize/kustomization/), so a patch or generator that
# kube_render() below does not apply cannot slip in unvalidated.
KUSTOMIZATION = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "resources"],
    "properties": {"apiVersion": {"const": "kustomize.config.k8s.io/v1beta1"}, "kind": {"const": "Kustomization"},
                   "resources": {"type": "array", "items": {"type": "string", "minLength": 1}}},
}


def strict(schema):
    """An openAPIV3Schema made as strict as `kubectl apply` (strict field validation): every object
    that lists its properties is closed (additionalProperties: false) unless it says
    x-kubernetes-preserve-unknown-fields. A field guarded by a CEL rule (x-kubernetes-validations),
    which jsonschema cannot evaluate, is refused outright, so the manifests cannot depend on one."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items() if k != "properties"}
    if "properties" in schema:
        out["properties"] = {k: False if "x-kubernetes-validations" in v else strict(v)
                             for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    for path in CRDS.glob("*.yaml"):
        crd = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
        if crd["spec"]["names"]["kind"] == kind:
            (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
            return jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))
    raise KeyError(kind)


def validate(doc: dict) -> None:
    """Raise jsonschema.ValidationError unless `doc` is valid for its kind."""
    if doc.get("kind") == "Kustomization":
        jsonschema.validate(doc, KUSTOMIZATION)
    elif doc.get("apiVersion") == "ray.io/v1":
        crd_validator(doc["kind"]).validate(doc)
        for v in K8S_VERSIONS:  # the CRD leaves metadata open; the API server checks it as ObjectMeta
            kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}, v, strict=True)
    else:
        for v in K8S_VERSIONS:
            kubernetes_validate.validate(doc, v, strict=True)


def load(path: Path) -> dict:
    (doc,) = yaml.safe_load_all(path.read_text())
    return doc


def kube_render(folder: Path) -> list[dict]:
    """What `kubectl apply -k folder` applies (resources only: the schema above allows nothing else)."""
    k = load(folder / "kustomization.yaml")
    validate(k)
    docs = []
    for r in k["resources"]:
        p = folder / r
        docs += kube_render(p) if p.is_dir() else [load(p)]
    return docs


def pod_templates(cluster: dict):
    yield "head", cluster["headGroupSpec"]
    for g in cluster["workerGroupSpecs"]:
        yield g["groupName"], g


def ray_clusters():
    """(path, RayCluster spec) of every RayService and RayJob under deployments/kubernetes/."""
    for path in sorted(kube.OUT_DIR.rglob("*.yaml")):
        spec = load(path).get("spec", {})
        if "rayClusterConfig" in spec or "rayClusterSpec" in spec:
            yield path, spec.get("rayClusterConfig") or spec["rayClusterSpec"]


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return kube.render_all()


def test_committed_manifests_are_current(rendered):
    assert kube.stale(rendered, kube.OUT_DIR) == [], "deployments/kubernetes/ is stale: run `make manifests`"


def test_every_manifest_validates():
    files = sorted(kube.OUT_DIR.rglob("*.yaml"))
    assert len(files) == len(kube.TARGETS) * (3 + len(kube.JOBS)) + 2  # + base: policy, kustomization
    for path in files:
        try:
            validate(load(path))
        except jsonschema.ValidationError as e:
            pytest.fail(f"{path.relative_to(kube.OUT_DIR)}: {'.'.join(map(str, e.absolute_path))}: {e.message}")


@pytest.mark.parametrize("target", sorted(kube.TARGETS))
def test_kustomization_applies_the_service_whole(target):
    docs = kube_render(kube.OUT_DIR / target)
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "NetworkPolicy", "RayService"]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    (svc,) = [d for d in docs if d["kind"] == "RayService"]
    jobs = [load(p) for p in (kube.OUT_DIR / target / "jobs").glob("*.yaml")]
    for cluster in [svc["spec"]["rayClusterConfig"], *(j["spec"]["rayClusterSpec"] for j in jobs)]:
        for _, group in pod_templates(cluster):
            volumes = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
            assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]  # the config applied with it


BROKEN = [  # (file, change, what the API server would say)
    ("prod/rayservice.yaml", lambda d: d["spec"]["rayClusterConfig"]["headGroupSpec"].update(replica=1), "unknown field"),
    ("prod/rayservice.yaml", lambda d: d["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(maxReplicas="8"),
     "wrong type"),
    ("prod/rayservice.yaml", lambda d: d["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]["template"]["spec"]
     ["containers"][0].update(imagePullPolicyy="Always"), "unknown field deep in a pod template"),
    ("prod/rayservice.yaml", lambda d: d["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
     ["containers"][0]["resources"]["limits"].update(memory="lots"), "bad quantity"),
    ("prod/rayservice.yaml", lambda d: d["spec"]["rayClusterConfig"].update(managedBy="ray.io/kuberay-operator"),
     "CEL-guarded field"),
    ("prod/rayservice.yaml", lambda d: d["metadata"].update(lables={"a": "b"}), "unknown metadata field"),
    ("dev/jobs/train.yaml", lambda d: d["spec"].update(backoffLimit="2"), "wrong type"),
    ("dev/jobs/train.yaml", lambda d: d["spec"].update(shutdownAfterJobsFinish=True), "unknown field"),
    ("dev/config.yaml", lambda d: d["data"].update(port=8000), "wrong type"),
    ("dev/config.yaml", lambda d: d.update(spec={}), "unknown field"),
    ("base/networkpolicy.yaml", lambda d: d["spec"]["ingress"][0]["ports"][0].update(port=[8000]), "wrong type"),
    ("base/networkpolicy.yaml", lambda d: d["spec"].update(podselector={}), "unknown field"),
    ("dev/kustomization.yaml", lambda d: d.update(patches=[]), "a field kube_render does not apply"),
]


@pytest.mark.parametrize("path, change, why", BROKEN, ids=[f"{p}:{w}" for p, _, w in BROKEN])
def test_validation_rejects_a_broken_manifest(path, change, why):
    doc = load(kube.OUT_DIR / path)
    validate(doc)  # the committed one passes ...
    broken = copy.deepcopy(doc)
    change(broken)
    with pytest.raises(jsonschema.ValidationError):  # ... and the broken one does not
        validate(broken)


@pytest.mark.parametrize("target", sorted(kube.TARGETS))
def test_serve_config_is_the_app_built_from_the_mounted_config(target, tmp_path):
    svc = load(kube.OUT_DIR / target / "rayservice.yaml")
    cm = load(kube.OUT_DIR / target / "config.yaml")
    serve_cfg = yaml.safe_load(svc["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_cfg)
    (app,) = serve_cfg["applications"]
    module, _, attr = app["import_path"].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    args = AppArgs.model_validate(app["args"])
    assert posixpath.split(args.config) == (kube.CONFIG_DIR, kube.CONFIG_KEY) and kube.CONFIG_KEY in cm["data"]

    cfg, text = kube.effective_config(kube.TARGETS[target])
    assert cm["data"][kube.CONFIG_KEY] == text
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert load_config(path) == cfg  # the ConfigMap holds exactly the config the manifests were sized for
    assert not cfg.serve.direct_ingress and cfg.serve.host == "0.0.0.0"
    assert serve_cfg["http_options"]["port"] == cfg.serve.port == kube.SERVE_PORT
    expected = {"Ingress"} | ({"EmbedderDeployment", "RetrieverDeployment"} if cfg.serve.topology == "split" else set())
    expected |= {"RerankerDeployment"} if cfg.serve.topology == "split" and cfg.rerank.enabled else set()
    assert {d["name"] for d in app["deployments"]} == expected

    keys_dir, _ = posixpath.split(cfg.serve.auth.keys_file)
    cluster = svc["spec"]["rayClusterConfig"]
    for name, group in pod_templates(cluster):
        pod = group["template"]["spec"]
        (c,) = pod["containers"]
        assert {e["name"]: e["value"] for e in c.get("env", [])} == ray_start_env(cfg.serve), name
        assert {m["mountPath"]: m["name"] for m in c["volumeMounts"]}[keys_dir] == "api-keys"
        assert {v["name"]: v for v in pod["volumes"]}["api-keys"]["secret"]["secretName"] == kube.API_KEYS_SECRET
        assert {p["name"]: p["containerPort"] for p in c["ports"]}["serve"] == cfg.serve.port
        if name != "head":
            assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "serve"}
            assert "livenessProbe" not in c  # KubeRay's own (raylet health); see deployments/kube.py
    assert cluster["headGroupSpec"]["rayStartParams"].items() >= {"num-cpus": "0", "num-gpus": "0"}.items()
    assert cluster["enableInTreeAutoscaling"] is True and svc["spec"]["excludeHeadPodFromServeSvc"] is True
    assert svc["spec"]["rayClusterDeletionDelaySeconds"] > cfg.serve.request_timeout_s


def test_ray_version_and_images_match_the_installed_ray():
    found = list(ray_clusters())
    assert len(found) == len(kube.TARGETS) * (1 + len(kube.JOBS))
    for path, cluster in found:
        assert cluster["rayVersion"] == ray.__version__, path
        for name, group in pod_templates(cluster):
            (c,) = group["template"]["spec"]["containers"]
            gpus = int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
            variant = "gpu" if gpus else "cpu"
            assert c["image"] == kube.image(variant), (path, name)
            assert c["image"].endswith(f"-ray{ray.__version__}-py311-{variant}")
            assert c["resources"]["requests"] == {k: v for k, v in c["resources"]["limits"].items() if k != "nvidia.com/gpu"}


@pytest.mark.parametrize("target", sorted(kube.TARGETS))
def test_jobs_run_modules_that_exist(target):
    files = sorted((kube.OUT_DIR / target / "jobs").glob("*.yaml"))
    assert [p.stem for p in files] == sorted(j.module for j in kube.JOBS)
    for path in files:
        spec = load(path)["spec"]
        argv = spec["entrypoint"].split()
        assert argv[:3] == ["python", "-m", f"jobs.{path.stem}"] and argv[3:] == ["--config", kube.CONFIG_PATH]
        module = importlib.util.find_spec(argv[2])
        assert module is not None and "--config" in Path(module.origin).read_text()
        assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
        assert spec["activeDeadlineSeconds"] > 0 and spec["backoffLimit"] >= 0
        assert len(load(path)["metadata"]["generateName"]) <= 47 - 5  # KubeRay: RayJob names <= 47; 5 random chars
        assert "api-keys" not in str(spec["rayClusterSpec"])  # jobs get no API keys
    for planned in kube.PLANNED_JOBS:  # once one lands, it belongs in kube.JOBS (and docs/deployment.md)
        assert importlib.util.find_spec(f"jobs.{planned}") is None, f"jobs.{planned} exists now: add it to kube.JOBS"


def test_network_policy_opens_only_the_serve_port():
    (policy,) = [d for d in kube_render(kube.OUT_DIR / "prod") if d["kind"] == "NetworkPolicy"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    open_rules = [r for r in policy["spec"]["ingress"] if "from" not in r]
    assert [p["port"] for r in open_rules for p in r["ports"]] == [kube.SERVE_PORT]
    for r in policy["spec"]["ingress"]:
        peers = r.get("from", [])
        if peers and "ports" not in r:  # all ports: only from mmray's own pods
            assert peers == [{"podSelector": {"matchLabels": selector}}]
    for _, cluster in ray_clusters():  # every Ray pod is one the policy covers
        for _, group in pod_templates(cluster):
            assert group["template"]["metadata"]["labels"].items() >= selector.items()


def test_pods_needed_packs_first_fit_decreasing():
    pods = kube.Pods(cpus=16, memory_gib=64, gpus=1)
    assert kube.pods_needed([(8, 0)] * 4 + [(1, 0)] * 2, pods) == 3
    assert kube.pods_needed([(4, 1)] * 3, pods) == 3  # one GPU each
    assert kube.pods_needed([], pods) == 0
    with pytest.raises(ConfigError, match="does not fit"):
        kube.pods_needed([(17, 0)], pods)


@pytest.mark.parametrize("target, override, message", [
    ("prod", "serve.embedder.max_replicas=20", "serve.gpu: needs 20 gpu pods"),
    ("prod", "train.num_workers=9", "train: needs 9 gpu pods"),
    ("dev", "serve.ingress.num_gpus=1", "no GPU group"),
    ("dev", "serve.ingress.num_cpus=8", "does not fit"),
])
def test_generator_refuses_what_the_cluster_cannot_schedule(target, override, message):
    with pytest.raises(ConfigError, match=message):
        kube.render(target, overrides=(override,))


def test_cli_writes_checks_and_prunes(tmp_path, capsys):
    assert kube.main(["--target", "dev", "--out", str(tmp_path), "--check"]) == 1
    assert kube.main(["--target", "dev", "--out", str(tmp_path)]) == 0
    assert kube.main(["--target", "dev", "--out", str(tmp_path), "--check"]) == 0
    (tmp_path / "dev" / "jobs" / "old.yaml").write_text(kube.HEADER + " from nothing\n")
    (tmp_path / "dev" / "mine.yaml").write_text("# hand-written: kept\n")
    (tmp_path / "dev" / "rayservice.yaml").write_text("edited\n")
    assert kube.main(["--target", "dev", "--out", str(tmp_path), "--check"]) == 1
    assert "stale: " in capsys.readouterr().out
    assert kube.main(["--target", "dev", "--out", str(tmp_path), "--set", "serve.max_k=50"]) == 0
    assert not (tmp_path / "dev" / "jobs" / "old.yaml").exists() and (tmp_path / "dev" / "mine.yaml").exists()
    assert "max_k: 50" in (tmp_path / "dev" / "config.yaml").read_text()
    capsys.readouterr()
    assert kube.main(["--print-base", "gpu"]) == 0
    assert capsys.readouterr().out.strip() == f"rayproject/ray:{ray.__version__}-py311-gpu"
