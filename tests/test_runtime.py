"""Private Ray attributes that mmray patches or calls: these tests fail loudly when an upgrade
moves them (the library itself warns and carries on, or would break at run time)."""
from __future__ import annotations

import inspect
import logging

import pytest

from mmray.runtime import _faster_resource_refresh, joins_cluster

REFRESH = "GLOBAL_LIMITS_UPDATE_INTERVAL_S"


def resource_manager():
    try:
        from ray.data._internal.execution.resource_manager import ResourceManager
    except ImportError as e:
        pytest.fail(f"ray.data._internal.execution.resource_manager.ResourceManager moved ({e}): "
                    "update mmray.runtime._faster_resource_refresh")
    return ResourceManager


def test_resource_refresh_interval_is_still_a_read_class_attribute():
    rm = resource_manager()
    value = getattr(rm, REFRESH, None)
    assert isinstance(value, (int, float)), f"ResourceManager.{REFRESH} is gone: update mmray.runtime"
    # defined AND read through the instance (a renamed read would leave our patch without effect)
    assert f"self.{REFRESH}" in inspect.getsource(rm), f"ResourceManager no longer reads {REFRESH}"


def test_faster_resource_refresh_patches_it_and_warns_when_it_is_missing(monkeypatch, caplog):
    rm = resource_manager()
    monkeypatch.setattr(rm, REFRESH, 1)  # monkeypatch restores Ray's value afterwards
    _faster_resource_refresh()
    assert getattr(rm, REFRESH) == 0.0
    monkeypatch.delattr(rm, REFRESH)
    with caplog.at_level(logging.WARNING, logger="mmray"):
        _faster_resource_refresh()
    assert REFRESH in caplog.text and not hasattr(rm, REFRESH)


def test_internal_ref_bundles_stream_blocks_for_the_progress_log(ray_session, caplog):
    """mmray.preprocess._with_progress: Dataset.iter_internal_ref_bundles, RefBundle.num_rows(),
    RefBundle.block_refs."""
    ray = ray_session
    from mmray.preprocess import _with_progress

    ds = ray.data.range(10, override_num_blocks=2)
    assert hasattr(ray.data.Dataset, "iter_internal_ref_bundles"), "Dataset.iter_internal_ref_bundles is gone"
    bundles = list(ds.iter_internal_ref_bundles())
    assert sum(b.num_rows() for b in bundles) == 10
    assert all(isinstance(ref, ray.ObjectRef) for b in bundles for ref in b.block_refs)
    with caplog.at_level(logging.INFO, logger="mmray"):
        blocks = list(_with_progress(ds, rows=10, every_s=0.0))
    assert sum(len(block) for block in blocks) == 10
    assert "images: 5/10 rows" in caplog.text  # the first of two 5-row blocks was counted


def test_ray_start_env_names_only_variables_ray_serve_reads():
    from ray.serve._private import constants

    from mmray.config import ServeConfig
    from mmray.config.serve import REPLICA_ENV, ray_start_env

    source = inspect.getsource(constants)
    env = ray_start_env(ServeConfig(port=9000))
    assert env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
    assert (env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"], env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]) == ("9000", "9049")
    for name in env:
        assert f'"{name}"' in source, f"Ray Serve no longer reads {name}: update mmray.config.serve.ray_start_env"
    assert REPLICA_ENV.items() <= env.items()
    assert ray_start_env(ServeConfig(direct_ingress=False, tuned_replicas=False)) == {}
    assert "RAY_SERVE_ENABLE_DIRECT_INGRESS" not in ray_start_env(ServeConfig(direct_ingress=False))


@pytest.mark.parametrize(("value", "joins"), [(None, False), ("", False), ("local", False),
                                              ("127.0.0.1:6380", True), ("http://head:8265", True)])
def test_joins_cluster_only_for_a_named_address(monkeypatch, value, joins):
    if value is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", value)
    assert joins_cluster() is joins



def test_ray_address_local_starts_a_private_ray_beside_a_stale_current_cluster(tmp_path):
    """A head that `ray start` recorded (here: a dead one) is what a plain ray.init() would join;
    with RAY_ADDRESS=local (the tests' setting, conftest) init_ray starts its own and runs work."""
    import os
    import subprocess
    import sys
    import tempfile

    tmp = tempfile.mkdtemp(prefix="mmt", dir="/tmp")  # short: Ray's socket paths live under it
    os.makedirs(os.path.join(tmp, "ray"))
    with open(os.path.join(tmp, "ray", "ray_current_cluster"), "w") as f:
        f.write("127.0.0.1:1")  # nothing listens there
    code = ("import ray; from mmray.runtime import init_ray; init_ray(num_cpus=1); "
            "print(ray.get(ray.remote(lambda: 41 + 1).remote()), ray.get_runtime_context().gcs_address)")
    env = {**os.environ, "RAY_TMPDIR": tmp, "RAY_ADDRESS": "local"}
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    answer, gcs = done.stdout.split()[-2:]
    assert answer == "42" and gcs != "127.0.0.1:1"
