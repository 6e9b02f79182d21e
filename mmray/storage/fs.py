"""Filesystems for local paths and s3:// / gs:// URIs (pyarrow.fs), and byte-level helpers.

Everything that touches a file goes through a pyarrow filesystem, so the same code runs on a
laptop folder and on a bucket. Object stores have no folders and no atomic move: callers that
need crash safety use `mmray.storage.artifacts`, which never moves or deletes what it publishes.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import pyarrow.fs as pafs

CHUNK = 8 << 20  # bytes per read when streaming a file through a hash


def resolve_filesystem(uri: str, endpoint: str | None = None, region: str | None = None
                       ) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for a local path or a URI.

    s3:// takes its endpoint, region and credentials from the standard AWS_* environment
    variables (AWS_ENDPOINT_URL for MinIO or another S3-compatible server); `endpoint` and
    `region`, when given (from `storage.*` config), win over them.
    """
    if uri.startswith("s3://") and (endpoint or region):
        kwargs = {"endpoint_override": endpoint} if endpoint else {}
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), uri[len("s3://"):].rstrip("/")
    if "://" in uri:
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path.rstrip("/") or path
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def join(base: str, *parts: str) -> str:
    """`base/part/...` with '/' (URIs and local paths alike)."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write one file (one PUT on an object store for small files); parent folders are made."""
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def iter_chunks(fs: pafs.FileSystem, path: str) -> Iterator[bytes]:
    with fs.open_input_stream(path) as f:
        while chunk := f.read(CHUNK):
            yield chunk


def sha256_file(fs: pafs.FileSystem, path: str) -> str:
    """SHA-256 of a file, streamed (never the whole file in memory)."""
    h = hashlib.sha256()
    for chunk in iter_chunks(fs, path):
        h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str) -> str:
    """SHA-256 of a local file."""
    return sha256_file(pafs.LocalFileSystem(), os.path.abspath(path))


def delete_dir(fs: pafs.FileSystem, path: str) -> None:
    """Delete a folder and everything in it (a missing folder is fine)."""
    if exists(fs, path):
        fs.delete_dir(path)
