"""Starting or joining Ray, and the shared behaviour of job entry points: one-line errors, fitting a
job to the CPUs it may use (`jobs.cpus`), and a watchdog that stops a job starved of resources
(`jobs.resource_wait_s`) with a message that says what it waits for and what holds it.
"""
from __future__ import annotations

import _thread
import collections
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

from mmray.config import JobsConfig, MmrayConfig

log = logging.getLogger("mmray")

TASK_CPUS = 1.0
"""CPUs each Ray task and actor of the library asks for: none of them sets `num_cpus`, so Ray's default
(Ray Train workers ask `train.cpus_per_worker`). A job budget below this could run nothing."""
RESOURCE_EXIT = 3
"""Exit code of a job that waited `jobs.resource_wait_s` for resources it did not get."""
HOW_TO_FREE = ("to free CPUs: stop the app (`make stop`) or give it fewer (serve.ingress.num_cpus, serve.*.num_replicas), "
               "or let the job fit what is free (--set jobs.cpus=free; fewer workers: train.num_workers, "
               "index.embed_concurrency); --set jobs.resource_wait_s=SECONDS waits longer")


class ResourceWaitError(RuntimeError):
    """A job waited `jobs.resource_wait_s` for resources the cluster did not give it."""


def joins_cluster() -> bool:
    """Whether `ray.init()` here joins a cluster named by RAY_ADDRESS (set by `ray job submit` too);
    `RAY_ADDRESS=local` asks for a private local one, as unset does when no `ray start` runs here."""
    return os.environ.get("RAY_ADDRESS", "") not in ("", "local")


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by RAY_ADDRESS (or the one `ray job submit` runs us in), or without it the
    local head a `ray start` on this machine left running (`make serve`'s), else start a local one.
    `RAY_ADDRESS=local` always starts a private one (tests use it: never a cluster someone else started)."""
    import ray

    if ray.is_initialized():
        return
    kwargs = {"log_to_driver": True, "configure_logging": False}
    if not joins_cluster():
        kwargs.update(include_dashboard=False, num_cpus=num_cpus)
    ray.init(**kwargs)
    _faster_resource_refresh()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty() or bool(os.environ.get("MMRAY_PROGRESS"))
    ctx.print_on_execution_start = False


def start_job(cfg: MmrayConfig) -> MmrayConfig:
    """Join (or start) Ray for a job and watch it for starvation; returns `cfg` fitted to the CPUs
    the job may use (`jobs.cpus`), with Ray Data limited to them."""
    import ray

    global _watchdog
    init_ray()
    budget = job_budget(cfg.jobs)
    if budget is not None and budget < ray.cluster_resources().get("CPU", 0.0):
        cfg = fit_to_budget(cfg, budget)
        ray.data.DataContext.get_current().execution_options.resource_limits = \
            ray.data.ExecutionResources.for_limits(cpu=budget)
    stop_watchdog()
    try:
        _watchdog = ResourceWatchdog(cfg.jobs.resource_wait_s)
    except Exception as e:  # noqa: BLE001 - the job runs unwatched rather than not at all
        log.warning("no resource watchdog (Ray's cluster status did not answer: %s): a starved job waits", e)
        return cfg
    _watchdog.start()
    return cfg


def job_budget(jobs: JobsConfig) -> float | None:
    """The CPUs this job may use: `jobs.cpus`, or with `free` what the cluster has free now (after
    waiting up to `jobs.resource_wait_s` for at least TASK_CPUS); None where there is no budget."""
    import ray

    if jobs.cpus is None:
        return None
    if jobs.cpus != "free":
        return float(jobs.cpus)
    start = time.monotonic()
    while (free := ray.available_resources().get("CPU", 0.0)) < TASK_CPUS:
        waited = time.monotonic() - start
        if waited >= jobs.resource_wait_s:
            raise ResourceWaitError(starved_message(f"{TASK_CPUS:g} free CPU (jobs.cpus=free)", waited))
        if waited < 1.0:  # the first look: say so at once
            log.warning("waiting up to %.0f s for %g free CPU (jobs.cpus=free): %s", jobs.resource_wait_s,
                        TASK_CPUS, cluster_usage())
        time.sleep(1.0)
    return free


def fit_to_budget(cfg: MmrayConfig, cpus: float) -> MmrayConfig:
    """`cfg` with the parallelism of its tasks, actor pools and Ray Train workers lowered to fit `cpus`."""
    slots = max(1, int(cpus // TASK_CPUS))
    per_worker = min(cfg.train.cpus_per_worker, cpus)
    fitted = {
        ("data", "concurrency"): min(cfg.data.concurrency or slots, slots),
        ("index", "embed_concurrency"): min(cfg.index.embed_concurrency, slots),
        ("train", "num_workers"): max(1, min(cfg.train.num_workers, slots, int(cpus // per_worker))),
        ("train", "cpus_per_worker"): per_worker,
    }
    changed = {key: value for key, value in fitted.items() if getattr(getattr(cfg, key[0]), key[1]) != value}
    if not changed:
        return cfg
    log.info("job budget %g CPUs: %s", cpus, ", ".join(
        f"{s}.{f} {getattr(getattr(cfg, s), f)} -> {v}" for (s, f), v in changed.items()))
    sections = collections.defaultdict(dict)
    for (section, field), value in changed.items():
        sections[section][field] = value
    return cfg.model_copy(update={s: getattr(cfg, s).model_copy(update=u) for s, u in sections.items()})


class ResourceWatchdog(threading.Thread):
    """Stops the job when work it asked Ray for has waited `wait_s` for resources while nothing new ran.

    Unplaced work (tasks, actors, placement groups) is the GCS's cluster-wide view (the autoscaler's
    resource demands); what was already unplaced, and the CPUs already in use, when the job started
    belong to others (the Serve app), so they do not count. Work that fits what is free is about to
    start, and work queued behind running work is not starved. On starvation the message is kept in
    `failure`, the main thread is interrupted (run_job prints it and exits RESOURCE_EXIT), and the
    process exits after `grace_s` if the main thread has not unwound by then."""

    def __init__(self, wait_s: float, poll_s: float = 1.0, grace_s: float = 15.0):
        super().__init__(name="mmray-resource-watchdog", daemon=True)
        self.wait_s, self.poll_s, self.grace_s = wait_s, poll_s, grace_s
        self.baseline = self.demands()
        self.baseline_used = self.cpus_in_use()
        self.since: float | None = None
        self.failure: str | None = None
        self._stop_event = threading.Event()

    def demands(self) -> collections.Counter:
        """Unplaced work by shape (a placement group counts as one shape: it is placed whole)."""
        import ray
        from ray.autoscaler.v2.sdk import get_cluster_status

        summary = get_cluster_status(ray.get_runtime_context().gcs_address).resource_demands
        out: collections.Counter = collections.Counter()
        for demand in summary.ray_task_actor_demand:
            for b in demand.bundles_by_count:
                out[_shape(b.bundle)] += b.count
        for pg in summary.placement_group_demand:
            total: collections.Counter = collections.Counter()
            for b in pg.bundles_by_count:
                total.update({k: v * b.count for k, v in b.bundle.items()})
            out[_shape(total)] += 1
        return out

    def check(self, now: float) -> str | None:
        """One look at the cluster; the failure message once the job has starved for `wait_s`."""
        free = self.free()
        blocked = [shape for shape in self.demands() - self.baseline
                   if any(free.get(k, 0.0) + 1e-9 < v for k, v in shape)]
        if not blocked or self.cpus_in_use() > self.baseline_used + 1e-6:
            self.since = None
            return None
        wanted = " and ".join(_describe(shape) for shape in blocked)
        if self.since is None:
            self.since = now
            log.warning("waiting for %s (stops after %.0f s): %s", wanted, self.wait_s, cluster_usage())
            return None
        return starved_message(wanted, now - self.since) if now - self.since >= self.wait_s else None

    def free(self) -> dict[str, float]:
        import ray

        return ray.available_resources()

    def cpus_in_use(self) -> float:
        import ray

        return ray.cluster_resources().get("CPU", 0.0) - ray.available_resources().get("CPU", 0.0)

    def run(self) -> None:
        while not self._stop_event.wait(self.poll_s):
            try:
                failure = self.check(time.monotonic())
            except Exception as e:  # noqa: BLE001 - a failed look is retried at the next poll
                log.debug("resource watchdog: %s", e)
                continue
            if failure:
                self.failure = failure
                _thread.interrupt_main()
                time.sleep(self.grace_s)  # still here: the main thread did not unwind, or the exit hangs
                print(f"error: {failure}", file=sys.stderr, flush=True)
                os._exit(RESOURCE_EXIT)

    def stop(self) -> None:
        self._stop_event.set()


_watchdog: ResourceWatchdog | None = None


def stop_watchdog() -> None:
    global _watchdog
    if _watchdog is not None:
        _watchdog.stop()
        _watchdog = None


def cluster_usage() -> str:
    """'0.0 of 2.0 CPUs free; holding CPUs: <actor> (CPU 1), ...' for messages."""
    import ray

    total, free = ray.cluster_resources().get("CPU", 0.0), ray.available_resources().get("CPU", 0.0)
    return f"{free:g} of {total:g} CPUs free; {cpu_holders()}"


def cpu_holders(limit: int = 8) -> str:
    """The live actors that hold CPUs and how many, from the GCS's actor table (Ray's public state API
    needs the dashboard, which `make serve` does not start). Private: tests/test_job_budget.py fails
    loudly when it moves; here the cluster's named actors are listed instead."""
    import ray

    try:
        from ray._private.state import state
        from ray.core.generated import gcs_pb2

        actors = [gcs_pb2.ActorTableData.FromString(raw)
                  for raw in state._connect_and_get_accessor().get_actor_table(None, "ALIVE")]
        held = sorted(((a.required_resources.get("CPU", 0.0), a.name or a.class_name) for a in actors), reverse=True)
        held = [f"{name} (CPU {cpu:g})" for cpu, name in held if cpu > 0]
        return "holding CPUs: " + (", ".join(held[:limit]) if held else "no actor (tasks only)")
    except Exception as e:  # noqa: BLE001 - a moved private API must not hide the message itself
        log.debug("actor table: %s", e)
    names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True))
    return "named actors: " + (", ".join(names[:limit]) if names else "none")


def starved_message(wanted: str, waited_s: float) -> str:
    return f"waited {waited_s:.0f} s for {wanted}, which the cluster does not give this job: {cluster_usage()}; {HOW_TO_FREE}"


def _shape(bundle) -> tuple[tuple[str, float], ...]:
    """A resource request as a hashable shape; Ray's own bookkeeping resources left out."""
    return tuple(sorted((k, float(v)) for k, v in dict(bundle).items()
                        if v and not k.startswith(("node:", "bundle_group_")) and "_group_" not in k))


def _describe(shape: tuple[tuple[str, float], ...]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in shape) + "}"


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def run_job(main: Callable[[], int], expected: tuple[type[BaseException], ...]) -> int:
    """Run a job body; an expected error prints one clear line and exits 2 instead of a stack trace,
    a job starved of resources exits RESOURCE_EXIT with the watchdog's message."""
    try:
        return main()
    except BaseException as e:
        failure = _watchdog.failure if _watchdog is not None else None
        if failure or isinstance(e, ResourceWaitError):
            print(f"error: {failure or e}", file=sys.stderr)
            return RESOURCE_EXIT
        if isinstance(e, expected):
            print(f"error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, KeyboardInterrupt):
            print("interrupted", file=sys.stderr)
            return 130
        raise
    finally:
        stop_watchdog()


def _faster_resource_refresh() -> None:
    """Ray 2.60's Ray Data refreshes its view of the cluster's resources once a second, and an
    execution that starts between refreshes launches one task, then waits for the next scheduling
    step (0.1 s) to launch the rest. Refreshing on every step removes that (measured on the
    2-block image stage: second task started 0.10 s late, then 0.00 s; stage 4.40 s -> 4.05 s).
    Private attribute: tests/test_runtime.py fails when an upgrade moves it; here it is skipped
    with a warning."""
    import ray

    try:
        from ray.data._internal.execution.resource_manager import ResourceManager
    except ImportError:
        ResourceManager = None
    if not hasattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S"):
        log.warning("Ray %s has no ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S: keeping Ray Data's "
                    "default resource refresh (stages may start ~0.1 s later)", ray.__version__)
        return
    ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S = 0.0
