"""mmray.runtime without a cluster: fitting a job to its CPU budget, the watchdog's starvation rule on
scripted cluster states, the exit codes of run_job, and the Ray status API the watchdog reads.
(Against a real cluster beside a Serve app: tests/test_jobs_beside_app.py.)"""
from __future__ import annotations

import collections
import dataclasses
import inspect

import pytest

from mmray.config import ConfigError, load_config
from mmray.runtime import (
    RESOURCE_EXIT,
    TASK_CPUS,
    ResourceWaitError,
    ResourceWatchdog,
    fit_to_budget,
    run_job,
)


def _parallelism(cfg) -> tuple:
    return cfg.data.concurrency, cfg.index.embed_concurrency, cfg.train.num_workers, cfg.train.cpus_per_worker


def _peak_cpus(cfg) -> float:
    """The most CPUs the job asks for at once: its largest stage (every task or actor: TASK_CPUS)."""
    return max(cfg.data.concurrency * TASK_CPUS, cfg.index.embed_concurrency * TASK_CPUS,
               cfg.train.num_workers * TASK_CPUS,  # the feature-cache actor pool: one per worker
               cfg.train.num_workers * cfg.train.cpus_per_worker)


@pytest.mark.parametrize("cpus", [1.0, 1.5, 2.0, 3.0, 7.5])
@pytest.mark.parametrize("overrides", [
    [],  # the embedded default: 2 workers x 1 CPU, 2 embedder actors, concurrency unset
    ["train.num_workers=4", "train.cpus_per_worker=0.5", "index.embed_concurrency=3", "data.concurrency=8"],
    ["train.num_workers=1", "train.cpus_per_worker=4", "index.embed_concurrency=1", "data.concurrency=1"],
])
def test_a_fitted_job_asks_for_no_more_than_its_budget_and_keeps_what_fits(cpus, overrides):
    cfg = load_config(None, overrides)
    fitted = fit_to_budget(cfg, cpus)
    assert _peak_cpus(fitted) <= cpus
    # each setting is lowered only as far as the budget needs: the largest value that fits
    slots = int(cpus // TASK_CPUS)
    assert fitted.data.concurrency == min(cfg.data.concurrency or slots, slots)
    assert fitted.index.embed_concurrency == min(cfg.index.embed_concurrency, slots)
    per_worker = min(cfg.train.cpus_per_worker, cpus)
    best = max(w for w in range(1, cfg.train.num_workers + 1) if w * max(TASK_CPUS, per_worker) <= cpus)
    assert (fitted.train.num_workers, fitted.train.cpus_per_worker) == (best, per_worker)
    # and nothing else changes
    same = {s: getattr(cfg, s).model_dump() for s in ("model", "serve", "storage", "jobs")}
    assert {s: getattr(fitted, s).model_dump() for s in same} == same
    assert fitted.train.batch_size == cfg.train.batch_size and fitted.train.epochs == cfg.train.epochs


def test_a_budget_that_needs_no_change_returns_the_config_itself():
    cfg = load_config(None, ["data.concurrency=2"])
    assert fit_to_budget(cfg, 2.0) is cfg
    assert _parallelism(fit_to_budget(cfg, 1.0)) == (1, 1, 1, 1.0)


def test_jobs_config_accepts_free_a_number_or_none_and_nothing_below_one_cpu():
    assert load_config(None, ["jobs.cpus=free"]).jobs.cpus == "free"
    assert load_config(None, ["jobs.cpus=3"]).jobs.cpus == 3.0
    assert load_config(None).jobs.cpus is None
    with pytest.raises(ConfigError, match=r"jobs\.cpus"):
        load_config(None, ["jobs.cpus=0.5"])  # below the 1 CPU every task asks for: could run nothing
    with pytest.raises(ConfigError, match=r"jobs\.resource_wait_s"):
        load_config(None, ["jobs.resource_wait_s=0"])


class ScriptedCluster(ResourceWatchdog):
    """The watchdog's rule on a scripted cluster: `state` is (unplaced shapes, free CPUs, CPUs in use)."""

    def __init__(self, state, wait_s=10.0):
        self.state = state
        super().__init__(wait_s)

    def demands(self):
        return collections.Counter(self.state[0])

    def free(self):
        return {"CPU": self.state[1]}

    def cpus_in_use(self):
        return self.state[2]


CPU1, CPU2 = (("CPU", 1.0),), (("CPU", 2.0),)


def _run(watchdog, states, step_s=1.0) -> list[str | None]:
    out = []
    for i, state in enumerate(states):
        watchdog.state = state
        out.append(watchdog.check(100.0 + i * step_s))
    return out


@pytest.fixture(autouse=True)
def scripted_usage(monkeypatch):
    """What the messages say about the cluster (the real one asks Ray: tests/test_jobs_beside_app.py)."""
    import mmray.runtime as runtime

    monkeypatch.setattr(runtime, "cluster_usage", lambda: "0.5 of 2 CPUs free; named actors: SERVE_REPLICA::app")


def test_the_watchdog_stops_a_job_whose_work_waits_while_nothing_of_its_own_runs():
    app_holds = 1.5  # in use before the job started: another job's (the app's)
    w = ScriptedCluster(([], 0.5, app_holds), wait_s=10.0)
    results = _run(w, [([CPU1], 0.5, app_holds)] * 12)
    assert results[:10] == [None] * 10  # waited 0..9 s
    assert results[10].startswith("waited 10 s for {CPU: 1}, which the cluster does not give this job: 0.5 of 2")
    assert "SERVE_REPLICA::app" in results[10] and "make stop" in results[10] and "jobs.cpus=free" in results[10]


def test_the_watchdog_leaves_queued_fitting_and_foreign_work_alone():
    # the job's own work runs (more in use than at its start): what waits behind it is not starved
    w = ScriptedCluster(([], 0.0, 1.0))
    assert _run(w, [([CPU1], 0.0, 2.0)] * 30) == [None] * 30
    # work that fits what is free is about to start
    w = ScriptedCluster(([], 1.0, 1.0))
    assert _run(w, [([CPU1], 1.0, 1.0)] * 30) == [None] * 30
    # work already unplaced when the job started (a Serve replica that does not fit) is not the job's
    w = ScriptedCluster(([CPU2], 0.0, 2.0))
    assert _run(w, [([CPU2], 0.0, 2.0)] * 30) == [None] * 30
    # the clock restarts whenever the job's work is placed or its own work runs
    w = ScriptedCluster(([], 0.0, 1.0), wait_s=5.0)
    waiting, running = ([CPU1], 0.0, 1.0), ([CPU1], 0.0, 2.0)
    results = _run(w, [waiting] * 4 + [running] + [waiting] * 4 + [([], 1.0, 1.0)] + [waiting] * 7)
    assert results[:15] == [None] * 15 and results[15].startswith("waited 5 s for {CPU: 1}")


def test_run_job_exit_codes_and_one_line_errors(capsys):
    def starved():
        raise ResourceWaitError("waited 3 s for {CPU: 1}")

    def bad_config():
        raise ConfigError("invalid x: jobs.cpus: ...")

    assert run_job(starved, (ConfigError,)) == RESOURCE_EXIT == 3
    assert capsys.readouterr().err == "error: waited 3 s for {CPU: 1}\n"
    assert run_job(bad_config, (ConfigError,)) == 2
    assert capsys.readouterr().err == "error: invalid x: jobs.cpus: ...\n"
    def bug():
        raise RuntimeError("unexpected")

    with pytest.raises(RuntimeError):  # anything unexpected keeps its stack trace
        run_job(bug, (ConfigError,))


def test_the_ray_status_api_the_watchdog_reads_is_still_there():
    """ray.autoscaler.v2.sdk.get_cluster_status and the demand fields mmray.runtime.ResourceWatchdog reads
    (not a stable Ray API: this fails loudly when an upgrade moves them)."""
    from ray.autoscaler.v2 import schema, sdk

    assert list(inspect.signature(sdk.get_cluster_status).parameters)[0] == "gcs_address"
    fields = {f.name for f in dataclasses.fields(schema.ResourceDemandSummary)}
    assert {"ray_task_actor_demand", "placement_group_demand"} <= fields
    assert {f.name for f in dataclasses.fields(schema.ResourceRequestByCount)} >= {"bundle", "count"}
    assert "bundles_by_count" in {f.name for f in dataclasses.fields(schema.PlacementGroupResourceDemand)}
    assert "resource_demands" in {f.name for f in dataclasses.fields(schema.ClusterStatus)}


def test_the_gcs_actor_table_the_messages_read_is_still_there():
    """mmray.runtime.cpu_holders reads the CPUs each live actor holds from the GCS's actor table
    (private; Ray's public state API needs the dashboard): fails loudly when an upgrade moves it."""
    from ray._private.state import GlobalState
    from ray.core.generated import gcs_pb2

    assert callable(getattr(GlobalState, "_connect_and_get_accessor", None))
    assert "accessor.get_actor_table(job_id, actor_state_name)" in inspect.getsource(GlobalState.actor_table)
    fields = gcs_pb2.ActorTableData.DESCRIPTOR.fields_by_name
    assert {"required_resources", "name", "class_name"} <= set(fields)
    assert fields["required_resources"].message_type.GetOptions().map_entry  # name -> amount
