"""What the Ingress serves besides the API: the shop page (static files in deployments/static/,
no build step) at `/` and `/static/<file>`, and the evaluation report (the current
`reports/evaluation` artifact that `jobs.evaluate` publishes) at `/report/`.

Both are read-only views: the page's files are read once when a replica starts; the report is
read through the artifact layer (hash-checked) and kept while its version stays current.
"""
from __future__ import annotations

import threading
from pathlib import Path

from mmray.storage import REPORT_KIND, ArtifactError, ArtifactStore

STATIC_DIR = Path(__file__).resolve().parent / "static"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
               ".json": "application/json"}
# The page runs only its own script, talks only to this origin, shows images from it (and blob: previews
# of the shopper's own upload); the report is static HTML with inline styles and no script at all.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
            "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; frame-ancestors 'none'"


class StaticPages:
    """The page's files by name (flat folder, known suffixes only), read once."""

    def __init__(self, folder: Path = STATIC_DIR):
        self.files = {p.name: (p.read_bytes(), MEDIA_TYPES[p.suffix]) for p in sorted(folder.iterdir())
                      if p.is_file() and p.suffix in MEDIA_TYPES}

    def get(self, name: str) -> tuple[bytes, str] | None:
        return self.files.get(name)


class ReportPages:
    """Files of the current evaluation report: `index.html`, `report.json`, `plots/<name>.png`."""

    def __init__(self, store: ArtifactStore):
        self.store = store
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[bytes, str]] = {}
        self._version: str | None = None

    def get(self, rel: str) -> tuple[bytes, str] | None:
        """(bytes, media type) of `rel` in the current report; None when there is no report or no such file."""
        try:
            version = self.store.current(REPORT_KIND)
        except ArtifactError:
            return None
        if version is None:
            return None
        with self._lock:
            if version != self._version:
                self._cache, self._version = {}, version
            if rel in self._cache:
                return self._cache[rel]
        suffix = Path(rel).suffix
        if suffix not in (".html", ".png", ".json"):
            return None
        try:
            found = self.store.resolve(REPORT_KIND, version, verify=False)
            if rel not in found.files:
                return None
            entry = (found.read_bytes(rel), MEDIA_TYPES[suffix])  # read_bytes checks the file's hash
        except (ArtifactError, OSError):
            return None
        with self._lock:
            if version == self._version:
                self._cache[rel] = entry
        return entry
