"""Serving settings for the Ray Serve application."""
from __future__ import annotations

from pydantic import Field

from mmray.config.base import StrictConfig


class DeploymentConfig(StrictConfig):
    """Resources and scaling of one deployment, applied with `.options()`."""

    num_replicas: int | str = 1
    """Fixed replica count, or "auto" to use autoscaling."""
    num_cpus: float = Field(1.0, ge=0)
    """CPUs per replica."""
    num_gpus: float = Field(0.0, ge=0)
    """GPUs per replica."""
    max_ongoing_requests: int = Field(16, ge=1)
    """Requests a replica works on at once."""
    max_queued_requests: int = Field(64, ge=-1)
    """Requests queued at the caller before 503 (-1: unbounded)."""


class ServeConfig(StrictConfig):
    """HTTP front end and deployment graph."""

    host: str = "127.0.0.1"
    """Address the HTTP proxy binds."""
    port: int = Field(8000, ge=1, le=65535)
    """HTTP port."""
    request_timeout_s: float = Field(10.0, gt=0)
    """Per-request timeout."""
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    """Request bodies larger than this are refused while streaming (413)."""
    max_query_chars: int = Field(512, ge=1)
    """Longest accepted text query."""
    max_k: int = Field(100, ge=1)
    """Largest k a request may ask for."""
    ingress: DeploymentConfig = DeploymentConfig()
    """Ingress deployment."""
    embedder: DeploymentConfig = DeploymentConfig()
    """Embedder deployment."""
    retriever: DeploymentConfig = DeploymentConfig()
    """Retriever deployment."""
