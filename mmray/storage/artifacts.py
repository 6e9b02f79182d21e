"""The artifact layer: every dataset, model, index and cache version is written and read here.

    <root>/<kind>/<version>/...            the version's files, written once, never moved
    <root>/<kind>/<version>/manifest.json  written last: every file with size and SHA-256,
                                           the config, the parent versions it was built from
    <root>/<kind>/current.json             {"version": ...}, replaced in one write

Kinds are `datasets/<name>`, `models/<name>`, `indexes`, `cache/features/<key>`,
`compiled/<model name>/<model version>/<runtime>` (ONNX exports of a model; and later
`rerankers/<name>`, `recommenders/<name>`, `events`). Publishing is: write the files into a new
version folder, write its manifest, then replace `current.json` (write-then-rename on local
disk, one PUT on an object store: both atomic). Nothing published is moved or deleted in
place, so a job killed at any step leaves the previous version current and whole.

Readers resolve `current.json` (refusing a pointer that is empty, not JSON, or names anything
but a version of that kind), read only files the manifest lists, and verify their hashes.
Serve replicas and other consumers that memory-map copy a verified version into a local cache
folder first (`Version.local_dir`). Retention keeps the newest `keep_versions` complete
versions of a kind; the current one is never removed.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from typing import Any

import pyarrow.fs as pafs

from mmray.storage.fs import (
    delete_dir,
    exists,
    iter_chunks,
    join,
    read_bytes,
    resolve_filesystem,
    sha256_file,
    write_bytes,
)

log = logging.getLogger(__name__)

MANIFEST, POINTER = "manifest.json", "current.json"
FORMAT = 2
# v20261202-053100-123-9f3a1c: UTC time to the millisecond + a random tag (concurrent jobs never clash)
VERSION_RE = re.compile(r"v\d{8}-\d{6}-\d{3}(?:-[0-9a-f]{6})?")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_VERIFIED_MARK = ".mmray-verified"


class ArtifactError(Exception):
    """An artifact that is missing, half-written, corrupt, or named by a pointer we refuse."""


# --------------------------------------------------------------------------- kinds


def dataset_kind(name: str) -> str:
    return f"datasets/{_segment(name, 'dataset name')}"


def model_kind(name: str = "dual_encoder") -> str:
    return f"models/{_segment(name, 'model name')}"


INDEX_KIND = "indexes"
REPORT_KIND = "reports/evaluation"
"""The evaluation report of `jobs.evaluate` (report.json, index.html, plots/*.png), served at /report."""


def feature_cache_kind(key: str) -> str:
    return f"cache/features/{_segment(key, 'cache key')}"


def _segment(value: str, what: str) -> str:
    if not _SEGMENT_RE.fullmatch(value or "") or ".." in value:
        raise ArtifactError(f"{what} {value!r} must be letters, digits, '_', '-', '.' (no '..', no '/')")
    return value


def _check_kind(kind: str) -> str:
    parts = kind.split("/")
    if not parts or any(not _SEGMENT_RE.fullmatch(p) or ".." in p for p in parts):
        raise ArtifactError(f"not an artifact kind: {kind!r}")
    return kind


def new_version() -> str:
    """A sortable, unique version name: v20261202-053100-123-9f3a1c (UTC)."""
    now = time.time()
    return (time.strftime("v%Y%m%d-%H%M%S", time.gmtime(now)) + f"-{int(now * 1000) % 1000:03d}-"
            + secrets.token_hex(3))


def version_time(version: str) -> float:
    """When a version was started (seconds since the epoch), from its name."""
    stamp = dt.datetime.strptime(version[1:16], "%Y%m%d-%H%M%S").replace(tzinfo=dt.timezone.utc)
    return stamp.timestamp() + int(version[17:20]) / 1000


# --------------------------------------------------------------------------- store


class ArtifactStore:
    """One storage root (a local folder, `s3://bucket/prefix` or `gs://bucket/prefix`).

    Picklable: Ray tasks and actors get the store and rebuild its filesystem on arrival.
    """

    def __init__(self, root: str, *, endpoint: str | None = None, region: str | None = None,
                 cache_dir: str | None = None, keep_versions: int = 3, orphan_after_s: float = 6 * 3600):
        self.local = "://" not in root or root.startswith("file://")
        self.root = os.path.abspath(root.removeprefix("file://")) if self.local else root.rstrip("/")
        self.endpoint, self.region = endpoint, region
        self.cache_dir = cache_dir or os.environ.get("MMRAY_CACHE_DIR") or os.path.join(
            tempfile.gettempdir(), "mmray-cache")
        self.keep_versions, self.orphan_after_s = keep_versions, orphan_after_s
        self._fs: pafs.FileSystem | None = None
        self._base = ""

    @classmethod
    def from_config(cls, storage) -> ArtifactStore:
        """From a `StorageConfig`."""
        return cls(storage.root, endpoint=storage.endpoint_url, region=storage.region,
                   cache_dir=storage.cache_dir, keep_versions=storage.keep_versions)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fs": None}

    @property
    def fs(self) -> pafs.FileSystem:
        if self._fs is None:
            self._fs, self._base = resolve_filesystem(self.root, self.endpoint, self.region)
        return self._fs

    def path(self, *parts: str) -> str:
        """Path inside `fs` of `parts` under the root."""
        self.fs  # noqa: B018 - resolves _base
        return join(self._base, *parts)

    def uri(self, *parts: str) -> str:
        """URI of `parts` under the root (an absolute path for a local root)."""
        return join(self.root, *parts)

    def __repr__(self) -> str:
        return f"ArtifactStore({self.root!r})"

    # ------------------------------------------------------------------ writing
    def begin(self, kind: str, config: dict | None = None, parents: dict[str, str] | None = None) -> VersionWriter:
        """A new version of `kind` to write into; `commit()` publishes it."""
        return VersionWriter(self, _check_kind(kind), new_version(), config, parents)

    def set_current(self, kind: str, version: str) -> None:
        """Point `<kind>/current.json` at a complete `version` in one atomic write."""
        self.read_manifest(kind, version)  # never point at something that is not whole
        data = json.dumps({"version": version}).encode()
        target = self.path(kind, POINTER)
        if self.local:  # write-then-rename: readers see the old pointer or the new one
            tmp = f"{target}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        else:  # one PUT of a small object is atomic on S3 and GCS
            write_bytes(self.fs, target, data)

    # ------------------------------------------------------------------ reading
    def current(self, kind: str) -> str | None:
        """The version `<kind>/current.json` names, validated; None when nothing is published."""
        path = self.path(_check_kind(kind), POINTER)
        try:
            raw = read_bytes(self.fs, path)
        except FileNotFoundError:
            return None
        where = f"{kind}/{POINTER}"
        if not raw.strip():
            raise ArtifactError(f"{where} is empty: refusing to follow it")
        try:
            pointer = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ArtifactError(f"{where} is not JSON: refusing to follow it") from None
        version = pointer.get("version") if isinstance(pointer, dict) else None
        if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
            raise ArtifactError(f"{where} names {str(version)[:80]!r}, which is not a version of {kind} "
                                f"(expected e.g. v20261202-053100-123-9f3a1c): refusing to follow it")
        return version

    def resolve(self, kind: str, version: str | None = None, verify: bool = True, hint: str = "") -> Version:
        """A complete version of `kind` (the current one by default), its files checked; `hint`
        is added to the error when nothing has been published yet."""
        if version is None:
            version = self.current(kind)
            if version is None:
                raise ArtifactError(f"nothing has been published under {self.uri(kind)}" + (f": {hint}" if hint else ""))
        manifest = self.read_manifest(kind, version)
        v = Version(self, kind, version, manifest)
        v.check(hashes=verify)
        return v

    def resolve_ref(self, ref: str, verify: bool = True) -> Version:
        """The version a manifest names as a parent (`models/dual_encoder/v...`)."""
        kind, _, version = ref.rpartition("/")
        return self.resolve(kind, version, verify)

    def read_manifest(self, kind: str, version: str) -> dict:
        """The manifest of `<kind>/<version>`, its shape checked; ArtifactError if absent or unreadable."""
        if not VERSION_RE.fullmatch(version or ""):
            raise ArtifactError(f"{version!r} is not a version name")
        where = f"{kind}/{version}"
        try:
            raw = read_bytes(self.fs, self.path(_check_kind(kind), version, MANIFEST))
        except FileNotFoundError:
            raise ArtifactError(f"{where} is not a complete version: no {MANIFEST} "
                                "(half-written, or never published)") from None
        try:
            manifest = json.loads(raw)
            files = manifest["files"]
            for rel, info in files.items():
                _check_relpath(rel)
                int(info["bytes"]), str(info["sha256"])
            if manifest["version"] != version or manifest["kind"] != kind:
                raise ValueError(f"it describes {manifest['kind']}/{manifest['version']}")
        except (ValueError, KeyError, TypeError, AttributeError, ArtifactError) as e:
            raise ArtifactError(f"{where} has an unreadable manifest: {type(e).__name__}: {e}") from None
        return manifest

    def versions(self, kind: str) -> list[str]:
        """Complete versions of `kind` (those with a manifest), oldest first."""
        return [v for v in self._version_folders(kind) if exists(self.fs, self.path(kind, v, MANIFEST))]

    def _version_folders(self, kind: str) -> list[str]:
        selector = pafs.FileSelector(self.path(_check_kind(kind)), allow_not_found=True)
        names = [info.base_name for info in self.fs.get_file_info(selector) if info.type == pafs.FileType.Directory]
        return sorted(n for n in names if VERSION_RE.fullmatch(n))

    # ------------------------------------------------------------------ retention
    def prune(self, kind: str, keep: int | None = None) -> list[str]:
        """Remove complete versions beyond the newest `keep` (never the current one) and
        half-written folders older than `orphan_after_s`; returns the removed versions."""
        keep = self.keep_versions if keep is None else keep
        try:
            current = self.current(kind)
        except ArtifactError:
            return []  # a broken pointer: remove nothing until someone looks
        complete = set(self.versions(kind))
        ordered = sorted(complete)
        keep_set = set(ordered[-keep:]) if keep > 0 else set()
        removed = []
        for v in self._version_folders(kind):
            stale = v in complete and v not in keep_set
            orphan = v not in complete and time.time() - version_time(v) > self.orphan_after_s
            if v != current and (stale or orphan):
                try:
                    delete_dir(self.fs, self.path(kind, v))
                    removed.append(v)
                except OSError as e:
                    log.warning("could not remove old version %s/%s: %s", kind, v, e)
        if removed:
            log.info("retention: removed %s from %s", ", ".join(removed), kind)
        return removed

    # ------------------------------------------------------------------ local copies
    def local_dir(self, version: Version) -> str:
        """A local folder holding `version`'s files, every one verified against the manifest.

        A local root is read in place. A remote version is downloaded into
        `<cache_dir>/<root hash>/<kind>/<version>/`, hashing as it streams; a finished copy
        carries a marker with the manifest's hash and is reused.
        """
        if self.local:
            return self.path(version.kind, version.name)
        digest = hashlib.sha256(json.dumps(version.manifest, sort_keys=True).encode()).hexdigest()
        root_tag = hashlib.sha256(self.root.encode()).hexdigest()[:12]
        final = os.path.join(self.cache_dir, root_tag, *version.kind.split("/"), version.name)
        mark = os.path.join(final, _VERIFIED_MARK)
        if os.path.exists(mark) and open(mark).read() == digest:
            return final
        tmp = f"{final}.tmp-{os.getpid()}-{secrets.token_hex(3)}"
        try:
            for rel, info in version.files.items():
                dst = os.path.join(tmp, *rel.split("/"))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                h, size = hashlib.sha256(), 0
                with open(dst, "wb") as out:
                    for chunk in iter_chunks(self.fs, self.path(version.kind, version.name, rel)):
                        h.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                _check_digest(version, rel, info, size, h.hexdigest())
            with open(os.path.join(tmp, MANIFEST), "w") as f:
                json.dump(version.manifest, f)
            with open(os.path.join(tmp, _VERIFIED_MARK), "w") as f:
                f.write(digest)
            if os.path.exists(final):
                shutil.rmtree(final)  # an unverified leftover in our own cache
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._evict_cache(os.path.dirname(final))
        return final

    def _evict_cache(self, folder: str, keep: int = 3) -> None:
        """Keep the newest `keep` cached versions of a kind (a replica holds at most two loaded)."""
        cached = sorted(n for n in os.listdir(folder) if VERSION_RE.fullmatch(n))
        for name in cached[:-keep]:
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


def _check_relpath(rel: str) -> str:
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in rel:
        raise ArtifactError(f"manifest lists a file outside its version: {rel!r}")
    return rel


def _check_digest(version: Version, rel: str, info: dict, size: int, sha: str | None) -> None:
    where = f"{version.kind}/{version.name}/{rel}"
    if size != int(info["bytes"]):
        raise ArtifactError(f"{where} has {size} bytes, its manifest says {info['bytes']}: refusing a corrupt version")
    if sha is not None and sha != info["sha256"]:
        raise ArtifactError(f"{where} does not match its SHA-256 in the manifest: refusing a corrupt version")


# --------------------------------------------------------------------------- versions


class Version:
    """One complete, published version: its manifest, and access to the files it lists."""

    def __init__(self, store: ArtifactStore, kind: str, name: str, manifest: dict):
        self.store, self.kind, self.name, self.manifest = store, kind, name, manifest

    @property
    def ref(self) -> str:
        """`<kind>/<version>`: how other versions name this one as a parent."""
        return f"{self.kind}/{self.name}"

    @property
    def files(self) -> dict[str, dict]:
        return self.manifest["files"]

    @property
    def uri(self) -> str:
        return self.store.uri(self.kind, self.name)

    def path(self, rel: str) -> str:
        """Filesystem path of a file the manifest lists (nothing else may be read)."""
        if rel not in self.files:
            raise ArtifactError(f"{self.ref} has no file {rel!r} in its manifest")
        return self.store.path(self.kind, self.name, rel)

    def listing(self, prefix: str) -> list[str]:
        """Listed files under `prefix` (e.g. `items/`), sorted."""
        return sorted(rel for rel in self.files if rel.startswith(prefix))

    def read_bytes(self, rel: str) -> bytes:
        data = read_bytes(self.store.fs, self.path(rel))
        _check_digest(self, rel, self.files[rel], len(data), hashlib.sha256(data).hexdigest())
        return data

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def check(self, hashes: bool = True) -> None:
        """Every listed file is there with its size (and, with `hashes`, its SHA-256)."""
        fs = self.store.fs
        infos = fs.get_file_info([self.store.path(self.kind, self.name, rel) for rel in self.files])
        for (rel, info), fi in zip(self.files.items(), infos):
            if fi.type != pafs.FileType.File:
                raise ArtifactError(f"{self.ref} is missing {rel}")
            _check_digest(self, rel, info, fi.size, None)
        if hashes:
            for rel, info in self.files.items():
                _check_digest(self, rel, info, int(info["bytes"]), sha256_file(fs, self.path(rel)))

    def local_dir(self) -> str:
        """A local folder with this version's files, verified (see ArtifactStore.local_dir)."""
        return self.store.local_dir(self)


class VersionWriter:
    """A version being written. Use as a context manager: an exception removes the folder.

    Files may be written through the writer (`write_bytes`, `upload_dir`) or by Ray tasks
    straight into `uri` (Parquet shards); `commit` lists and hashes whatever is there.
    """

    def __init__(self, store: ArtifactStore, kind: str, name: str, config: dict | None,
                 parents: dict[str, str] | None):
        self.store, self.kind, self.name = store, kind, name
        self.config, self.parents = config, dict(parents or {})
        self.digests: dict[str, tuple[int, str]] = {}  # rel -> (bytes, sha256) known without a re-read
        self.committed = False
        store.fs.create_dir(self.path(), recursive=True)

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"

    def path(self, rel: str = "") -> str:
        return self.store.path(self.kind, self.name, *([_check_relpath(rel)] if rel else []))

    def uri(self, rel: str = "") -> str:
        return self.store.uri(self.kind, self.name, *([_check_relpath(rel)] if rel else []))

    def write_bytes(self, rel: str, data: bytes) -> None:
        write_bytes(self.store.fs, self.path(rel), data)
        self.digests[rel] = (len(data), hashlib.sha256(data).hexdigest())

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, default=str).encode())

    def upload_file(self, local_path: str, rel: str) -> None:
        with open(local_path, "rb") as f:
            self.write_bytes(rel, f.read())

    def upload_dir(self, local_dir: str, prefix: str = "") -> None:
        """Copy a local folder's files into the version (under `prefix`)."""
        for dirpath, _, names in os.walk(local_dir):
            for name in sorted(names):
                src = os.path.join(dirpath, name)
                rel = os.path.relpath(src, local_dir).replace(os.sep, "/")
                self.upload_file(src, f"{prefix.rstrip('/')}/{rel}" if prefix else rel)

    def commit(self, extra: dict | None = None, make_current: bool = True) -> Version:
        """Write the manifest (last), then point `current.json` at this version, then apply retention."""
        fs, base = self.store.fs, self.path()
        files = {}
        for info in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
            if info.type != pafs.FileType.File:
                continue
            rel = info.path[len(base):].lstrip("/")
            if rel == MANIFEST:
                continue
            known = self.digests.get(rel)
            sha = known[1] if known and known[0] == info.size else sha256_file(fs, info.path)
            files[rel] = {"bytes": info.size, "sha256": sha}
        manifest = {"format": FORMAT, "kind": self.kind, "version": self.name,
                    "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "parents": self.parents, **(extra or {}), "config": self.config,
                    "files": dict(sorted(files.items()))}
        write_bytes(fs, self.path(MANIFEST), json.dumps(manifest, indent=2, default=str).encode())
        self.committed = True
        version = Version(self.store, self.kind, self.name, manifest)
        if make_current:
            self.store.set_current(self.kind, self.name)
            self.store.prune(self.kind)
        return version

    def abort(self) -> None:
        """Remove the unpublished folder (best effort: a leftover is never read, and retention
        removes it later)."""
        if self.committed:
            return
        try:
            delete_dir(self.store.fs, self.path())
        except OSError as e:
            log.warning("could not remove unpublished %s: %s", self.ref, e)

    def __enter__(self) -> VersionWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
