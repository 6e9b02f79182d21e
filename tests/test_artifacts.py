"""The artifact layer on a local folder and on a real S3-compatible server (moto, loopback):
publish and resolve, hashes checked on read, malformed pointers refused, a publish interrupted
at every step (and a writer killed with SIGKILL) leaves the previous version current and whole,
retention never removes the current version.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mmray.storage import ArtifactError, ArtifactStore
from mmray.storage import artifacts as art
from mmray.storage.fs import read_bytes, write_bytes

KIND = "indexes"


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> ArtifactStore:
    if request.param == "local":
        return ArtifactStore(str(tmp_path / "root"), cache_dir=str(tmp_path / "cache"))
    bucket = request.getfixturevalue("s3_bucket")
    return ArtifactStore(f"s3://{bucket}/mmray", cache_dir=str(tmp_path / "cache"))


def publish(store: ArtifactStore, payload: bytes = b"payload", kind: str = KIND, **extra) -> art.Version:
    with store.begin(kind, config={"seed": 1}, parents={"models/dual_encoder": "models/dual_encoder/v1"}) as w:
        w.write_bytes("data/blob.bin", payload)
        w.write_json("meta.json", {"n": len(payload)})
        return w.commit(extra=extra)


def put_raw(store: ArtifactStore, rel: str, data: bytes) -> None:
    """Write bytes behind the layer's back (what a broken tool or a bit flip would do)."""
    write_bytes(store.fs, store.path(rel), data)


# --------------------------------------------------------------------------- round trip


def test_publish_then_resolve_reads_back_every_file_with_its_hash(store):
    assert store.current(KIND) is None
    with pytest.raises(ArtifactError, match="nothing has been published"):
        store.resolve(KIND)
    v = publish(store, b"x" * 1000, count=3)
    assert store.current(KIND) == v.name and art.VERSION_RE.fullmatch(v.name)
    got = store.resolve(KIND)
    assert got.manifest["count"] == 3 and got.manifest["config"] == {"seed": 1}
    assert got.manifest["parents"] == {"models/dual_encoder": "models/dual_encoder/v1"}
    assert set(got.files) == {"data/blob.bin", "meta.json"}
    assert got.files["data/blob.bin"]["bytes"] == 1000
    assert got.read_bytes("data/blob.bin") == b"x" * 1000
    assert got.read_json("meta.json") == {"n": 1000}
    local = got.local_dir()
    with open(os.path.join(local, "data", "blob.bin"), "rb") as f:
        assert f.read() == b"x" * 1000
    assert store.local == local.startswith(store.root)  # a local root is read in place, a bucket copied


def test_only_files_the_manifest_lists_can_be_read(store):
    v = publish(store)
    put_raw(store, f"{KIND}/{v.name}/extra.bin", b"smuggled")
    with pytest.raises(ArtifactError, match="no file 'extra.bin'"):
        store.resolve(KIND).path("extra.bin")
    assert "extra.bin" not in store.resolve(KIND).files


def test_a_version_that_lies_about_being_another_is_refused(store):
    a, b = publish(store, b"a"), publish(store, b"b")
    put_raw(store, f"{KIND}/{b.name}/manifest.json", read_bytes(store.fs, store.path(KIND, a.name, "manifest.json")))
    with pytest.raises(ArtifactError, match="unreadable manifest"):
        store.resolve(KIND, b.name)


def test_a_manifest_listing_a_file_outside_its_version_is_refused(store):
    v = publish(store)
    manifest = json.loads(read_bytes(store.fs, store.path(KIND, v.name, "manifest.json")))
    manifest["files"]["../other/blob.bin"] = {"bytes": 1, "sha256": "0" * 64}
    put_raw(store, f"{KIND}/{v.name}/manifest.json", json.dumps(manifest).encode())
    with pytest.raises(ArtifactError, match="outside its version"):
        store.resolve(KIND)


# --------------------------------------------------------------------------- corruption


def flip_byte(store: ArtifactStore, rel: str, at: int = 10) -> None:
    data = bytearray(read_bytes(store.fs, store.path(rel)))
    data[at] ^= 0x01
    put_raw(store, rel, bytes(data))


def test_one_flipped_byte_is_refused_by_hash(store):
    v = publish(store, bytes(range(256)) * 8)
    store.resolve(KIND)  # fine before the damage
    flip_byte(store, f"{KIND}/{v.name}/data/blob.bin")
    with pytest.raises(ArtifactError, match="SHA-256"):
        store.resolve(KIND)
    with pytest.raises(ArtifactError, match="SHA-256"):
        art.Version(store, KIND, v.name, v.manifest).read_bytes("data/blob.bin")


def test_a_flipped_byte_is_caught_while_copying_to_the_local_cache(tmp_path, s3_bucket):
    # (a local root is read in place, and resolve() hashes it: the test above)
    store = ArtifactStore(f"s3://{s3_bucket}/mmray", cache_dir=str(tmp_path / "cache"))
    v = publish(store, bytes(range(256)) * 8)
    flip_byte(store, f"{KIND}/{v.name}/data/blob.bin")
    unchecked = store.resolve(KIND, v.name, verify=False)  # sizes still match
    with pytest.raises(ArtifactError, match="SHA-256"):
        unchecked.local_dir()
    left = [d for _, dirs, _ in os.walk(store.cache_dir) for d in dirs if d.startswith(v.name)]
    assert left == []  # nothing half-copied is left behind to be reused


def test_a_truncated_or_missing_file_is_refused(store):
    v = publish(store, b"y" * 100)
    put_raw(store, f"{KIND}/{v.name}/data/blob.bin", b"y" * 99)
    with pytest.raises(ArtifactError, match="99 bytes"):
        store.resolve(KIND, verify=False)
    store.fs.delete_file(store.path(KIND, v.name, "data/blob.bin"))
    with pytest.raises(ArtifactError, match="missing data/blob.bin"):
        store.resolve(KIND, verify=False)


# --------------------------------------------------------------------------- pointers


@pytest.mark.parametrize("pointer, why", [
    (b"", "empty"),
    (b"   \n", "empty"),
    (b"{not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[]", "not a version"),
    (b'{"version": 5}', "not a version"),
    (b'{"version": "../../../etc"}', "not a version"),
    (b'{"version": "/etc/passwd"}', "not a version"),
    (b'{"version": "v20261202-000000-000/../../x"}', "not a version"),
    (b'{"version": "s3://elsewhere/v20261202-000000-000"}', "not a version"),
    (b'{"path": "/tmp"}', "not a version"),
])
def test_malformed_pointers_are_refused_not_followed(store, pointer, why):
    publish(store)
    put_raw(store, f"{KIND}/current.json", pointer)
    with pytest.raises(ArtifactError, match=why):
        store.resolve(KIND)


def test_a_pointer_to_a_half_written_version_is_refused(store):
    publish(store)
    w = store.begin(KIND)
    w.write_bytes("data/blob.bin", b"half")  # no manifest yet
    put_raw(store, f"{KIND}/current.json", json.dumps({"version": w.name}).encode())
    with pytest.raises(ArtifactError, match="not a complete version"):
        store.resolve(KIND)
    with pytest.raises(ArtifactError, match="not a complete version"):
        store.set_current(KIND, w.name)  # the layer itself never points at one


# --------------------------------------------------------------------------- interrupted publishing


class Killed(BaseException):
    """Stands for the process dying: raised mid-publish, and nothing cleans up after it."""


def test_a_publish_interrupted_at_every_step_leaves_the_previous_version_current(store, monkeypatch):
    old = publish(store, b"old version")
    steps = []
    real_write, real_replace = art.write_bytes, os.replace

    def count(kill_at):
        def write(fs, path, data):
            steps.append(path)
            if len(steps) == kill_at:
                raise Killed
            real_write(fs, path, data)

        def replace(src, dst):
            steps.append(dst)
            if len(steps) == kill_at:
                raise Killed
            real_replace(src, dst)
        return write, replace

    names = []

    def attempt(kill_at):
        steps.clear()
        write, replace = count(kill_at)
        monkeypatch.setattr(art, "write_bytes", write)
        monkeypatch.setattr(art.os, "replace", replace)
        try:
            w = store.begin(KIND)  # no context manager: a killed process runs no cleanup
            names.append(w.name)
            w.write_bytes("data/blob.bin", b"new version")
            w.write_bytes("data/more.bin", b"more")
            w.write_json("meta.json", {"n": 1})
            w.commit()
            return False
        except Killed:
            return True
        finally:
            monkeypatch.setattr(art, "write_bytes", real_write)
            monkeypatch.setattr(art.os, "replace", real_replace)

    assert not attempt(kill_at=0)  # a clean run, to count the steps: 3 files, manifest, pointer
    total = len(steps)
    assert total == 5, steps
    store.set_current(KIND, old.name)
    for kill_at in range(1, total + 1):
        assert attempt(kill_at)
        assert store.current(KIND) == old.name, f"killed at step {kill_at} of {total}: {steps[-1]}"
        assert store.resolve(KIND).read_bytes("data/blob.bin") == b"old version"
    # Killed before its manifest, a version is never listed as complete; killed between the
    # manifest and the pointer, it is complete but not current. The next publish works.
    clean, *killed = names
    assert store.versions(KIND) == [old.name, clean, killed[-1]]
    assert all(store.read_manifest(KIND, v)["version"] == v for v in store.versions(KIND))
    new = publish(store, b"after the crash")
    assert store.resolve(KIND).read_bytes("data/blob.bin") == b"after the crash" and new.name == store.current(KIND)


WRITER = textwrap.dedent("""
    import sys, time
    from mmray.storage import ArtifactStore
    store = ArtifactStore(sys.argv[1])
    w = store.begin("indexes")
    for i in range(10_000):
        w.write_bytes(f"part-{i:05d}.bin", bytes(20_000))
        if i == 3:
            print("writing", flush=True)
        time.sleep(0.01)
    w.commit()
""")


def test_a_writer_killed_with_sigkill_mid_publish_changes_nothing_readers_see(store):
    old = publish(store, b"old version")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, store.root], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert store.current(KIND) == old.name
    assert store.versions(KIND) == [old.name]  # the killed writer's folder has no manifest
    assert len(store._version_folders(KIND)) == 2
    assert store.resolve(KIND).read_bytes("data/blob.bin") == b"old version"


# --------------------------------------------------------------------------- retention


def test_retention_keeps_the_newest_versions_and_never_the_current_one(store):
    store.keep_versions = 2
    made = [publish(store, bytes([i])).name for i in range(4)]
    assert store.versions(KIND) == made[-2:]
    store.set_current(KIND, made[-2])  # roll back to the older of the two
    publish_no_prune = store.begin(KIND)
    publish_no_prune.write_bytes("a", b"a")
    newest = publish_no_prune.commit(make_current=False).name
    assert store.prune(KIND, keep=1) == [made[-1]]
    assert store.versions(KIND) == [made[-2], newest]  # the current one survives retention
    assert store.current(KIND) == made[-2]


def test_retention_removes_old_half_written_folders_only(store):
    publish(store)
    stale = "v20200101-000000-000-abcdef"
    put_raw(store, f"{KIND}/{stale}/part.bin", b"left by a crash years ago")
    fresh = store.begin(KIND)
    fresh.write_bytes("part.bin", b"being written right now")
    assert stale in store.prune(KIND)
    assert fresh.name in store._version_folders(KIND)
    assert stale not in store._version_folders(KIND)


def test_kind_and_version_names_cannot_escape_the_root(store):
    for bad in ("../x", "a/../../b", "/abs", "", "a//b"):
        with pytest.raises(ArtifactError):
            store.begin(bad)
    with pytest.raises(ArtifactError):
        art.dataset_kind("../luma")
    with pytest.raises(ArtifactError):
        store.read_manifest(KIND, "../../etc")


def test_store_survives_pickling_for_ray_workers(store):
    import pickle

    v = publish(store)
    clone = pickle.loads(pickle.dumps(store))
    assert clone.resolve(KIND).name == v.name


def test_the_local_cache_keeps_the_newest_copies_only(tmp_path, s3_bucket):
    store = ArtifactStore(f"s3://{s3_bucket}/mmray", cache_dir=str(tmp_path / "cache"), keep_versions=10)
    folders = [publish(store, bytes([i])).local_dir() for i in range(5)]
    assert [os.path.exists(f) for f in folders] == [False, False, True, True, True]
    with open(os.path.join(folders[-1], "data", "blob.bin"), "rb") as f:
        assert f.read() == bytes([4])
