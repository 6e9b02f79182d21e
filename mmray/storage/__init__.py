"""Storage: filesystems for local folders and s3:// / gs:// (`fs`), and the artifact layer that
owns every versioned dataset, model, index and cache (`artifacts`)."""
from mmray.storage.artifacts import (
    INDEX_KIND,
    REPORT_KIND,
    ArtifactError,
    ArtifactStore,
    Version,
    VersionWriter,
    dataset_kind,
    feature_cache_kind,
    model_kind,
    new_version,
)
from mmray.storage.fs import file_sha256, join, resolve_filesystem

__all__ = [
    "INDEX_KIND", "REPORT_KIND", "ArtifactError", "ArtifactStore", "Version", "VersionWriter", "dataset_kind",
    "feature_cache_kind", "file_sha256", "join", "model_kind", "new_version", "resolve_filesystem",
]
