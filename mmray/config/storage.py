"""Where artifacts (datasets, models, indexes, caches) live, and how they are kept."""
from __future__ import annotations

from pydantic import Field

from mmray.config.base import StrictConfig


class StorageConfig(StrictConfig):
    """The storage root every job and replica works from (see `mmray.storage.artifacts`)."""

    root: str = "artifacts"
    """Root of datasets/, models/, indexes/ and cache/: a local folder, `s3://bucket/prefix` or
    `gs://bucket/prefix`. On Kubernetes, where nodes share no disk, use a bucket."""
    endpoint_url: str | None = None
    """S3-compatible endpoint (MinIO, Ceph, ...). None: `AWS_ENDPOINT_URL`, else AWS itself.
    Credentials always come from the standard AWS_* environment variables or the node's role."""
    region: str | None = None
    """S3 region. None: `AWS_DEFAULT_REGION` / the SDK's default."""
    cache_dir: str | None = None
    """Local folder where replicas and workers keep verified copies of remote versions.
    None: `$MMRAY_CACHE_DIR`, else `<system temp>/mmray-cache`."""
    keep_versions: int = Field(3, ge=1)
    """Complete versions kept per kind after a publish; older ones are removed, the current one never."""
