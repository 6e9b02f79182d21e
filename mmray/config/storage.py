"""Where artifacts (datasets, models, indexes) are written."""
from __future__ import annotations

from mmray.config.base import StrictConfig


class StorageConfig(StrictConfig):
    """Artifact locations; a local folder or an s3:// / gs:// URI."""

    root: str = "artifacts"
    """Root folder of datasets/, models/ and indexes/."""

    def path(self, *parts: str) -> str:
        """Join `parts` under the root (URI-safe: always '/')."""
        return "/".join([self.root.rstrip("/"), *parts])
