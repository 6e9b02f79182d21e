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
    max_inflight: int = Field(32, ge=1)
    """Requests the ingress works on at once; past it, 503 with Retry-After (never a hung connection)."""
    retry_after_s: int = Field(1, ge=0)
    """Retry-After seconds sent with 503."""
    reload_poll_s: float = Field(2.0, gt=0)
    """How often Retriever replicas check `indexes/current.json` for a new version."""
    embed_batch_wait_s: float = Field(0.005, ge=0)
    """@serve.batch wait for more requests before embedding a batch."""
    embed_max_batch: int = Field(32, ge=1)
    """@serve.batch maximum batch size."""
    ingress: DeploymentConfig = DeploymentConfig(num_cpus=0.25, max_ongoing_requests=256, max_queued_requests=256)
    """Ingress deployment (HTTP, validation, orchestration)."""
    embedder: DeploymentConfig = DeploymentConfig(num_cpus=1.0, max_ongoing_requests=64, max_queued_requests=256)
    """Embedder deployment (the model)."""
    retriever: DeploymentConfig = DeploymentConfig(num_cpus=0.25, max_ongoing_requests=64, max_queued_requests=256)
    """Retriever deployment."""
