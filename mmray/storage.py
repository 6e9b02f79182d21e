"""Paths and filesystems for artifacts and catalogs: local folders and s3:// / gs:// alike."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any

import pyarrow.fs as pafs

log = logging.getLogger(__name__)


def resolve_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for a local path or a URI."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def staging_dir(final: str) -> str:
    """A sibling folder to write into before `publish` moves it into place (absolute when local,
    so Ray workers with another working directory write to the same place)."""
    final = final.rstrip("/")
    if is_local(final) and not final.startswith("file://"):
        final = os.path.abspath(final)
    return f"{final}.tmp-{os.getpid()}-{int(time.time() * 1000)}"


def remove_tree(uri: str) -> None:
    """Delete a folder and everything in it; a missing folder is fine, a failure only warns."""
    fs, path = resolve_filesystem(uri)
    try:
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            _delete_dir(fs, path, is_local(uri))
    except OSError as e:
        log.warning("could not remove %s: %s", uri, e)


def publish(staging: str, final: str) -> None:
    """Replace `final` with the finished `staging` folder (readers never see a half-written one)."""
    fs, src = resolve_filesystem(staging)
    _, dst = resolve_filesystem(final)
    if fs.get_file_info(dst).type != pafs.FileType.NotFound:
        _delete_dir(fs, dst, is_local(final))
    fs.move(src, dst)


def _delete_dir(fs: pafs.FileSystem, path: str, local: bool) -> None:
    if local:
        shutil.rmtree(path)
    else:
        fs.delete_dir(path)


def write_json(uri: str, obj: Any) -> None:
    fs, path = resolve_filesystem(uri)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(obj, indent=2, sort_keys=False, default=str).encode())


def read_json(uri: str) -> Any:
    fs, path = resolve_filesystem(uri)
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


def set_current(root: str, version: str) -> None:
    """Point `<root>/current.json` at `version` atomically (temp file + rename): readers see the
    old version or the new one, never a half-written pointer."""
    tmp = os.path.join(root, f".current.json.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump({"version": version, "path": os.path.join(root, version)}, f)
    os.replace(tmp, os.path.join(root, "current.json"))


def current_path(root: str) -> str | None:
    """The folder `<root>/current.json` points at, or None when nothing has been published."""
    path = os.path.join(root, "current.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return os.path.join(root, json.load(f)["version"])


def new_version() -> str:
    """A sortable, unique-enough version name: v20261128-171403-123 (to the millisecond)."""
    now = time.time()
    return time.strftime("v%Y%m%d-%H%M%S", time.localtime(now)) + f"-{int(now * 1000) % 1000:03d}"


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
