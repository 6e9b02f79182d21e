"""How a job shares the Ray cluster it runs in (`mmray.runtime.start_job`)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from mmray.config.base import StrictConfig


class JobsConfig(StrictConfig):
    """The CPUs a job may use in the cluster it joins or starts, and how long it waits for them."""

    cpus: Annotated[float, Field(ge=1.0)] | Literal["free"] | None = None
    """CPUs a job may use at once. `free`: what the cluster has free when the job starts (on a laptop
    beside `make serve`, all but the app's `serve.ingress.num_cpus`); a number: that many; None: the
    config as written (an autoscaling cluster adds nodes for what a job asks). With a budget the job
    fits itself to it, logging what it changed: `data.concurrency`, `index.embed_concurrency` and
    `train.num_workers` are lowered (each of their tasks and actors takes 1 CPU, a Ray Train worker
    `train.cpus_per_worker`), and Ray Data is limited to it. At least 1: with `free` and less than
    1 CPU free, the job waits for one (up to `resource_wait_s`)."""
    resource_wait_s: float = Field(300.0, gt=0)
    """Seconds a job may wait for CPUs it asked for while nothing of its own runs before it stops
    (exit code 3) with one line naming what it waits for, what holds the cluster's CPUs and how to
    free them. On a cluster whose autoscaler must first start nodes, allow for their start-up."""
