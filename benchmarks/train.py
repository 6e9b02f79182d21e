"""Ray Train loop vs a plain single-process PyTorch loop: samples/s on the same model, rows and batch.

    python -m benchmarks.train [--model lite|tiny] [--batch 32] [--steps 6] [--warmup 2] [--cpus 2] [--repeats 2]

Needs the preprocessed Luma items (`python -m jobs.preprocess --config configs/local.yaml`).

Every configuration runs the library's own training step, `mmray.training.loop.run_epoch`
(embed_batch on raw images: decode + augment + image tower + text tower, contrastive loss,
backward, gradient all-reduce, AdamW) on a fresh `TrainState`, over the same first
(warmup + steps) x batch training rows (`explode_images` over the train split, in file order):
  plain      the driver process, no Ray: pre-built numpy batches, torch threads = --cpus.
  ray 1w     TorchTrainer, 1 worker with --cpus CPUs and as many torch threads; rows streamed
             from a Ray Dataset shard (iter_batches, as the production loop does).
  ray 2w     TorchTrainer, 2 workers with --cpus/2 CPUs and threads each; the global batch is
             split (batch/2 rows per worker, loss over the gathered global batch).
Default model: `lite` with `model.unlocked_image_blocks=1` (EfficientNet-Lite0's last block
trains, so features are not cacheable and every step does the full image work);
`--model tiny` is a quick smoke run.

Measured: samples/s = steps x batch / wall time of the measured steps, timed inside the loop
(after the warm-up steps and a barrier, so worker start-up, model build, imports and the first
steps are excluded). Ray's end-to-end time (trainer construction + fit, start-up included) is
shown separately, as is the one-off ray.init. Ray workers run at nice 0 like the plain loop
(Ray's default 15 would hand the cores to anything else on a shared machine and bill that to
Ray; `--worker-niceness 15` restores it). The three configurations run in turn, --repeats
times (plain, ray 1w, ray 2w, plain, ...), and the best samples/s of each is reported, all runs
listed below the table. The busy-cores column says how many cores our own process tree and
everything else used during the measured window: "other" well above 0 means the machine was
shared and the ratios are noisy (two torch threads on cores someone else also wants slow down
far more than in proportion, so plain and ray 1w suffer most). Ray gets a private local
cluster (address="local", own temp dir) unless RAY_ADDRESS is set; its worker logs are hidden
unless --verbose.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

from benchmarks.common import machine_busy_seconds, machine_facts, module_versions, process_table

ROOT = Path(__file__).resolve().parent.parent
TARGET_OVERHEAD_PCT = 10.0


# --------------------------------------------------------------------------- rows


def load_rows(cfg, n: int) -> list[dict]:
    """The first `n` training rows: explode_images over the train split of the preprocessed items."""
    import numpy as np
    import pyarrow.parquet as pq

    from mmray.dataset import current_dataset, item_paths
    from mmray.storage import ArtifactError
    from mmray.training.data import explode_images

    try:
        dataset = current_dataset(cfg)
    except ArtifactError as e:
        raise SystemExit(f"error: {e}") from None
    table = pq.read_table(item_paths(dataset), filesystem=dataset.store.fs,
                          columns=["group", "images", "captions", "split"]).to_pydict()
    keep = [i for i, s in enumerate(table["split"]) if s == "train"]
    items = {k: np.empty(len(keep), dtype=object) for k in ("group", "images", "captions")}
    for k in items:
        items[k][:] = [table[k][i] for i in keep]
    out = explode_images(items)
    total = len(out["group"])
    if total < n:
        raise SystemExit(f"error: {n} rows needed ((warmup + steps) x batch), the train split has {total}")
    return [{"group": int(out["group"][i]), "image": bytes(out["image"][i]),
             "captions": [str(c) for c in out["captions"][i]]} for i in range(n)]


def numpy_batches(rows: list[dict], batch: int) -> list[dict]:
    """Rows as numpy batches shaped like Ray Data's numpy batches."""
    import numpy as np

    out = []
    for s in range(0, len(rows), batch):
        part = rows[s:s + batch]
        images, captions = np.empty(len(part), dtype=object), np.empty(len(part), dtype=object)
        images[:] = [r["image"] for r in part]
        captions[:] = [np.array(r["captions"], dtype=object) for r in part]
        out.append({"group": np.array([r["group"] for r in part], dtype=np.int64), "image": images,
                    "captions": captions})
    return out


def ray_dataset(rows: list[dict], block_rows: int = 32):
    """The same rows as a Ray Dataset of `block_rows`-row blocks (as train_dataset repartitions)."""
    import pyarrow as pa
    import ray

    tables = [pa.table({"group": pa.array([r["group"] for r in part], pa.int64()),
                        "image": pa.array([r["image"] for r in part], pa.binary()),
                        "captions": pa.array([r["captions"] for r in part], pa.list_(pa.string()))})
              for part in (rows[s:s + block_rows] for s in range(0, len(rows), block_rows))]
    return ray.data.from_arrow(tables).materialize()


# --------------------------------------------------------------------------- measuring


class CoreMeter:
    """Busy CPU seconds of the whole machine and of the process tree under `root` over an interval."""

    def __init__(self, root: int) -> None:
        self.root, self.tck = root, os.sysconf("SC_CLK_TCK")

    def _machine(self) -> float:
        return machine_busy_seconds(self.tck)

    def _tree(self) -> dict[int, float]:
        """CPU seconds so far of every process under `root` (root included), by pid."""
        procs = process_table(self.tck)
        tree = {}
        for pid, (_, cpu) in procs.items():
            p, seen = pid, 0
            while p in procs and seen < 64:
                if p == self.root:
                    tree[pid] = cpu
                    break
                p, seen = procs[p][0], seen + 1
        return tree

    def start(self) -> None:
        self.t0, self.m0, self.o0 = time.perf_counter(), self._machine(), self._tree()

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        machine, tree = self._machine() - self.m0, self._tree()
        # per process, so that one exiting meanwhile does not take its earlier CPU time with it
        own = sum(max(0.0, cpu - self.o0.get(pid, 0.0)) for pid, cpu in tree.items())
        return {"ours": round(own / wall, 2), "other": round(max(0.0, machine - own) / wall, 2)}


class TimedBatches:
    """Wraps a batch iterable: step start times, time spent waiting for the next batch, the rows seen."""

    def __init__(self, batches):
        self.it, self.starts, self.wait, self.images = iter(batches), [], 0.0, []

    def __iter__(self):
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(self.it)
            except StopIteration:
                return
            t1 = time.perf_counter()
            self.wait += t1 - t0
            self.starts.append(t1)
            self.images.append(batch["image"])  # fingerprinted after the timed window
            yield batch


def fingerprint(image_columns) -> tuple[int, int]:
    """(rows, sum of crc32 of the image bytes): equal across configs iff they saw the same rows."""
    n = s = 0
    for col in image_columns:
        for x in col:
            n, s = n + 1, s + zlib.crc32(bytes(x))
    return n, s


def timed_allreduce():
    """Patch mmray.training.loop.average_gradients with a timed wrapper; returns (restore, seconds list)."""
    import mmray.training.loop as loop

    original, spent = loop.average_gradients, [0.0]

    def wrapper(params, world):
        t0 = time.perf_counter()
        original(params, world)
        spent[0] += time.perf_counter() - t0

    loop.average_gradients = wrapper
    return (lambda: setattr(loop, "average_gradients", original)), spent


def wait_quiet(meter: CoreMeter, max_s: float, threshold: float = 0.25) -> tuple[float, float | None]:
    """Wait (up to max_s) for a second in which other work on the machine used < threshold cores."""
    t0, other = time.perf_counter(), None
    while time.perf_counter() - t0 < max_s:
        meter.start()
        time.sleep(1.0)
        other = meter.stop()["other"]
        if other < threshold:
            break
    return time.perf_counter() - t0, other


def measure(cfg_dict: dict, batches_for, warmup: int, steps: int, rank: int, world: int, threads: int,
            barrier, meter: CoreMeter | None, quiet_s: float = 0.0) -> dict:
    """Build a TrainState, run `warmup` then `steps` steps of run_epoch, timing only the latter.

    `batches_for(n)` returns an iterable of this worker's next n batches."""
    import torch

    from mmray.config import MmrayConfig
    from mmray.training.loop import TrainState, run_epoch

    torch.set_num_threads(threads)
    cfg = MmrayConfig.model_validate(cfg_dict)
    t_start = time.time()
    state = TrainState(cfg, warmup + steps)
    cached = bool(state.model.image_cacheable and state.model.text_cacheable)
    t_built = time.time()
    warm = TimedBatches(batches_for(warmup))
    if warmup:
        run_epoch(state, warm, rank, world, cached, epoch=0)
    t_warm = time.time()
    waited, other_before = wait_quiet(meter, quiet_s) if meter and quiet_s > 0 else (0.0, None)
    barrier()
    if meter:
        meter.start()
    barrier()
    restore, allreduce = timed_allreduce()
    timed = TimedBatches(batches_for(steps))
    try:
        w0 = time.perf_counter()
        loss = run_epoch(state, timed, rank, world, cached, epoch=1)
        w_run = time.perf_counter()
        barrier()
        w1 = time.perf_counter()
    finally:
        restore()
    cores = meter.stop() if meter else None
    t_end = time.time()
    if len(timed.starts) != steps:
        raise RuntimeError(f"rank {rank}: got {len(timed.starts)} measured batches, expected {steps}")
    marks = timed.starts + [w_run]
    step_s = [b - a for a, b in zip(marks, marks[1:])]
    return {
        "rank": rank, "threads": torch.get_num_threads(), "nice": os.nice(0), "pid": os.getpid(),
        "cached": cached, "loss": loss, "window_s": w1 - w0, "step_s": step_s,
        "data_wait_s": timed.wait, "allreduce_s": allreduce[0], "cores": cores,
        "t_start": t_start, "build_s": t_built - t_start, "warmup_s": t_warm - t_built, "t_end": t_end,
        "quiet_wait_s": waited, "other_before": other_before,
        "rows": fingerprint(warm.images + timed.images),
        "trainable_params": sum(p.numel() for p in state.params),
    }


def plain_loop(cfg_dict: dict, rows: list[dict], batch: int, warmup: int, steps: int, threads: int,
               quiet_s: float = 0.0) -> dict:
    """The baseline: the driver process alone, numpy batches already in memory."""
    batches = numpy_batches(rows, batch)
    source = iter(batches)
    t0 = time.time()
    res = measure(cfg_dict, lambda n: list(itertools.islice(source, n)), warmup, steps, rank=0, world=1,
                  threads=threads, barrier=lambda: None, meter=CoreMeter(os.getpid()), quiet_s=quiet_s)
    res["e2e_s"] = time.time() - t0
    return res


def ray_train_loop(config: dict) -> None:
    """Ray Train worker: the same measure() over this worker's dataset shard; rank 0 reports all ranks."""
    import ray.train
    import torch.distributed as dist

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    t_entry = time.time()
    local = config["batch"] // world
    kwargs = {"local_shuffle_buffer_size": 4 * local, "local_shuffle_seed": rank} if config["shuffle"] else {}
    batches = iter(ray.train.get_dataset_shard("train").iter_batches(
        batch_size=local, drop_last=True, batch_format="numpy", **kwargs))
    res = measure(config["cfg"], lambda n: itertools.islice(batches, n), config["warmup"], config["steps"],
                  rank, world, config["threads"], barrier=dist.barrier,
                  meter=CoreMeter(config["driver_pid"]) if rank == 0 else None, quiet_s=config["quiet_s"])
    res["t_entry"] = t_entry
    gathered = [None] * world
    dist.all_gather_object(gathered, res)
    if rank == 0:  # Ray Train V2 keeps only metrics that come with a checkpoint: a tiny one
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "bench.json").write_text(json.dumps(gathered))
            ray.train.report({"ranks": gathered}, checkpoint=ray.train.Checkpoint.from_directory(folder))
    else:
        ray.train.report({}, checkpoint=None)


def run_ray(cfg_dict: dict, ds, workers: int, cpus: int, args, storage: str) -> dict:
    import ray.train
    from ray.train.torch import TorchTrainer

    per_worker = cpus / workers
    t0 = time.time()
    trainer = TorchTrainer(
        ray_train_loop,
        train_loop_config={"cfg": cfg_dict, "batch": args.batch, "warmup": args.warmup, "steps": args.steps,
                           "threads": max(1, int(per_worker)), "shuffle": args.shuffle,
                           "driver_pid": os.getpid(), "quiet_s": args.wait_quiet},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=False,
                                               resources_per_worker={"CPU": per_worker}),
        run_config=ray.train.RunConfig(name=f"bench-train-{workers}w-{int(t0)}", storage_path=storage),
        datasets={"train": ds})
    result = trainer.fit()
    t1 = time.time()
    if result.error:
        raise RuntimeError(f"Ray Train run with {workers} workers failed: {result.error}")
    ranks = result.metrics["ranks"]
    r0 = dict(ranks[0])
    rows = [r["rows"] for r in ranks]
    r0.update(
        e2e_s=t1 - t0, startup_s=min(r["t_entry"] for r in ranks) - t0, finish_s=t1 - max(r["t_end"] for r in ranks),
        data_wait_s=statistics.mean(r["data_wait_s"] for r in ranks),
        allreduce_s=statistics.mean(r["allreduce_s"] for r in ranks),
        quiet_wait_s=max(r["quiet_wait_s"] for r in ranks),
        loss=statistics.mean(r["loss"] for r in ranks),
        rows=(sum(n for n, _ in rows), sum(s for _, s in rows)),
        nice=sorted({r["nice"] for r in ranks}), threads=sorted({r["threads"] for r in ranks}),
        window_s=max(r["window_s"] for r in ranks))
    return r0


def start_ray(cpus: int, niceness: int, temp_dir: str, verbose: bool) -> None:
    """Join RAY_ADDRESS if set; else start a private local Ray with `cpus` CPUs.

    address="local" and a private temp dir: a plain ray.init() would join whatever cluster
    /tmp/ray/ray_current_cluster names (another user's `ray start` on a shared machine)."""
    import ray

    kwargs = {"log_to_driver": verbose, "configure_logging": False}
    if not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault("RAY_worker_niceness", str(niceness))
        kwargs.update(address="local", num_cpus=cpus, include_dashboard=False, _temp_dir=temp_dir)
    ray.init(**kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


# --------------------------------------------------------------------------- report


def machine_info() -> dict[str, str]:
    versions = module_versions("ray", "torch", "torchvision", "timm", "transformers", "numpy", "pyarrow")
    try:
        from ray.train.v2._internal.constants import is_v2_enabled
        versions["ray_train"] = "V2" if is_v2_enabled() else "V1"
    except Exception:  # noqa: BLE001
        versions["ray_train"] = "?"
    return {**machine_facts(), **versions}


def summarize(name: str, res: dict, batch: int, steps: int, warmup: int) -> dict:
    sps = steps * batch / res["window_s"]
    med, fastest = statistics.median(res["step_s"]), min(res["step_s"])
    e2e = res["e2e_s"] - res["quiet_wait_s"]  # the benchmark's own pause is not billed
    return {"config": name, "samples_per_s": sps, "median_step_s": med, "median_sps": batch / med,
            "best_step_s": fastest, "best_step_sps": batch / fastest, "quiet_wait_s": res["quiet_wait_s"],
            "other_before": res["other_before"],
            "window_s": res["window_s"], "data_wait_pct": 100 * res["data_wait_s"] / res["window_s"],
            "allreduce_pct": 100 * res["allreduce_s"] / res["window_s"], "loss": res["loss"],
            "cores": res["cores"], "e2e_s": e2e, "e2e_sps": (warmup + steps) * batch / e2e,
            "startup_s": res.get("startup_s"), "build_s": res["build_s"], "warmup_s": res["warmup_s"],
            "finish_s": res.get("finish_s"), "rows": list(res["rows"]), "nice": res["nice"],
            "threads": res["threads"], "step_s": [round(s, 3) for s in res["step_s"]],
            "trainable_params": res["trainable_params"], "cached": res["cached"]}


def best(runs: list[dict]) -> dict:
    return max(runs, key=lambda r: r["samples_per_s"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train", description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["lite", "tiny"], default="lite",
                        help="lite (default; unlocked_image_blocks=1, trained on images end to end) or tiny (quick)")
    parser.add_argument("--batch", type=int, default=32, help="global batch (default 32)")
    parser.add_argument("--steps", type=int, default=6, help="measured steps (default 6)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps first (default 2)")
    parser.add_argument("--cpus", type=int, default=2, help="cores for each configuration and Ray's num_cpus (default 2)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="run plain, ray 1w, ray 2w this many times in turn (default 2); the best of each"
                             " is reported")
    parser.add_argument("--shuffle", action="store_true",
                        help="Ray workers use the production loop's local shuffle buffer (rows then differ per step)")
    parser.add_argument("--config", default=str(ROOT / "configs" / "local.yaml"), help="base config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override, e.g. model.image_size=160")
    parser.add_argument("--worker-niceness", type=int, default=0,
                        help="nice level of the Ray workers (default 0, the plain loop's own; Ray's default is 15)")
    parser.add_argument("--wait-quiet", type=float, default=15.0, metavar="S",
                        help="before each measured window, wait up to S s for a second in which other work on the"
                             " machine uses < 0.25 cores (default 15; 0: never wait)")
    parser.add_argument("--verbose", action="store_true", help="show Ray worker and Train controller logs")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if min(args.batch, args.steps, args.cpus, args.repeats) < 1 or args.warmup < 0:
        parser.error("--batch, --steps, --cpus, --repeats must be >= 1 and --warmup >= 0")
    if args.batch % 2 or args.cpus % 2:
        parser.error("--batch and --cpus must be even (the 2-worker run splits both)")

    from mmray.config import ConfigError, load_config

    model_sets = (["model.kind=lite", "model.unlocked_image_blocks=1"] if args.model == "lite"
                  else ["model.kind=tiny", "model.embed_dim=64"])
    try:
        cfg = load_config(args.config, [*model_sets, f"train.batch_size={args.batch}", "train.epochs=1",
                                        "train.grad_accum_steps=1", *args.set])
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    cfg_dict = cfg.model_dump(mode="json")
    n_rows = (args.warmup + args.steps) * args.batch
    rows = load_rows(cfg, n_rows)
    load0 = os.getloadavg()
    info = machine_info()
    date = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"benchmarks.train: {args.model} model, global batch {args.batch}, {args.warmup} warm-up + "
          f"{args.steps} measured steps, {args.cpus} cores, {args.repeats} repeat(s)", flush=True)

    runs: dict[str, list[dict]] = {"plain": [], "ray 1w": [], "ray 2w": []}
    storage = tempfile.mkdtemp(prefix="mmray-bench-train-")
    ray_tmp = tempfile.mkdtemp(prefix="rbt-", dir="/tmp")  # short: Ray's socket paths live under it
    ray_init_s = None
    try:
        for rep in range(args.repeats):
            print(f"[{rep + 1}/{args.repeats}] plain loop ...", flush=True)
            res = plain_loop(cfg_dict, rows, args.batch, args.warmup, args.steps, args.cpus, args.wait_quiet)
            runs["plain"].append(summarize("plain", res, args.batch, args.steps, args.warmup))
            if ray_init_s is None:  # after the first plain run, so Ray's idle daemons never overlap it
                t0 = time.time()
                start_ray(args.cpus, args.worker_niceness, ray_tmp, args.verbose)
                ds = ray_dataset(rows)
                ray_init_s = time.time() - t0
            for workers in (1, 2):
                print(f"[{rep + 1}/{args.repeats}] Ray Train, {workers} worker(s) ...", flush=True)
                res = run_ray(cfg_dict, ds, workers, args.cpus, args, storage)
                runs[f"ray {workers}w"].append(summarize(f"ray {workers}w", res, args.batch, args.steps, args.warmup))
    finally:
        if ray_init_s is not None:
            import ray

            ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)

    chosen = {k: best(v) for k, v in runs.items()}
    fastest = {k: max(r["best_step_sps"] for r in v) for k, v in runs.items()}  # over every run's steps
    plain, one, two = chosen["plain"], chosen["ray 1w"], chosen["ray 2w"]
    overhead = 100 * (1 - one["samples_per_s"] / plain["samples_per_s"])
    overhead_step = 100 * (1 - fastest["ray 1w"] / fastest["plain"])
    scaling = two["samples_per_s"] / one["samples_per_s"]
    same_rows = len({tuple(r["rows"]) for v in runs.values() for r in v}) == 1
    noisy = max(r["cores"]["other"] for r in chosen.values() if r["cores"])
    res = {"model": args.model, "batch": args.batch, "warmup": args.warmup, "steps": args.steps, "cpus": args.cpus,
           "repeats": args.repeats, "shuffle": args.shuffle, "wait_quiet_s": args.wait_quiet, "rows": n_rows,
           "ray_init_s": ray_init_s, "runs": runs, "ray_overhead_pct": overhead,
           "ray_overhead_best_step_pct": overhead_step, "two_vs_one": scaling,
           "two_vs_one_best_step": fastest["ray 2w"] / fastest["ray 1w"], "same_rows": same_rows,
           "max_other_cores": noisy, "loadavg_before": [round(v, 2) for v in load0],
           "loadavg_after": [round(v, 2) for v in os.getloadavg()], "machine": info, "date": date}

    labels = {"plain": f"plain loop (1 process, {args.cpus} threads)",
              "ray 1w": f"Ray Train 1 worker x {args.cpus} CPU",
              "ray 2w": f"Ray Train 2 workers x {args.cpus // 2} CPU"}
    rule = "-" * 136
    print()
    print(f"train benchmark: Ray Train vs a plain PyTorch loop ({args.model} model"
          f"{', unlocked_image_blocks=1' if args.model == 'lite' else ''}, images end to end,"
          f" global batch {args.batch}, {args.steps} measured steps after {args.warmup} warm-up)")
    print(rule)
    print(f"{'config':<36}{'samples/s':>10}{'vs plain':>9}{'overhead':>10}{'best step':>11}{'overhead':>10}"
          f"{'med step':>10}{'data wait':>11}{'allreduce':>11}{'loss':>8}{'busy cores ours/other':>23}")
    for key, r in chosen.items():
        ratio, ratio_step = r["samples_per_s"] / plain["samples_per_s"], fastest[key] / fastest["plain"]
        over = "-" if key == "plain" else f"{100 * (1 - ratio):+.1f}%"
        over_step = "-" if key == "plain" else f"{100 * (1 - ratio_step):+.1f}%"
        cores = f"{r['cores']['ours']:.2f} / {r['cores']['other']:.2f}" if r["cores"] else "?"
        print(f"{labels[key]:<36}{r['samples_per_s']:>10.2f}{ratio:>8.2f}x{over:>10}{fastest[key]:>11.2f}{over_step:>10}"
              f"{r['median_step_s']:>9.2f}s{r['data_wait_pct']:>10.1f}%{r['allreduce_pct']:>10.1f}%{r['loss']:>8.3f}"
              f"{cores:>23}")
    print(rule)
    print("end to end (wall, start-up included; the benchmark's own wait for a quiet machine is not billed):")
    p = plain
    print(f"  {labels['plain']:<36} {p['e2e_s']:6.1f} s = build {p['build_s']:.1f} + warm-up {p['warmup_s']:.1f}"
          f" + measured {p['window_s']:.1f}   -> {p['e2e_sps']:.2f} samples/s")
    for key in ("ray 1w", "ray 2w"):
        r = chosen[key]
        print(f"  {labels[key]:<36} {r['e2e_s']:6.1f} s = start-up {r['startup_s']:.1f} + build {r['build_s']:.1f}"
              f" + warm-up {r['warmup_s']:.1f} + measured {r['window_s']:.1f} + finish {r['finish_s']:.1f}"
              f"   -> {r['e2e_sps']:.2f} samples/s")
    print(f"  ray.init + dataset (once per process): {ray_init_s:.1f} s")
    print(rule)
    verdict = "PASS" if overhead <= TARGET_OVERHEAD_PCT else "FAIL"
    if noisy > 0.2:
        verdict += f" (not trustworthy: other work took up to {noisy:.2f} cores in a measured window)"
    print(f"headline: Ray Train 1 worker vs plain loop: {plain['samples_per_s']:.2f} -> {one['samples_per_s']:.2f}"
          f" samples/s, overhead {overhead:+.1f}% (target <= {TARGET_OVERHEAD_PCT:.0f}%): {verdict}")
    print(f"          noise-robust cross-check, fastest single step: {fastest['plain']:.2f} -> {fastest['ray 1w']:.2f}"
          f" samples/s, overhead {overhead_step:+.1f}%")
    print(f"headline: Ray Train 2 workers vs 1 worker: {scaling:.2f}x"
          f" ({two['samples_per_s']:.2f} vs {one['samples_per_s']:.2f} samples/s, same {args.cpus} cores);"
          f" fastest step {fastest['ray 2w'] / fastest['ray 1w']:.2f}x")
    print(rule)
    m = info
    print("all runs, samples/s (other cores; quiet wait s): " + "; ".join(
        f"{k} " + ", ".join(f"{r['samples_per_s']:.2f} ({r['cores']['other']:.2f}; {r['quiet_wait_s']:.0f})"
                            for r in v) for k, v in runs.items()))
    print("overhead = 1 - samples/s(config) / samples/s(plain); samples/s = measured steps x batch / their wall time"
          " (best of the runs); 'best step' = batch / fastest single step of any run; 'med step' = median step;"
          " 'data wait' = time in next(batch); 'allreduce' = time in average_gradients")
    print(f"rows: {n_rows} (first {n_rows} training rows, file order), same rows in every run: "
          f"{'yes' if same_rows else 'NO'}; Ray workers shuffle: {'yes' if args.shuffle else 'no'};"
          f" trainable params {plain['trainable_params']:,}; step times (s): "
          + "; ".join(f"{k} {r['step_s']}" for k, r in chosen.items()))
    print(f"settings: torch threads plain {plain['threads']}, ray 1w {one['threads']}, ray 2w {two['threads']};"
          f" nice plain {os.nice(0)}, ray workers {one['nice']}; {args.repeats} run(s) each, interleaved;"
          f" wait for a quiet machine before each window: up to {args.wait_quiet:.0f} s")
    print(f"noise: other work took up to {noisy:.2f} cores during a chosen measured window"
          f"{' (shared machine: ratios are noisy, run again)' if noisy > 0.2 else ''};"
          f" load avg {res['loadavg_before'][0]} -> {res['loadavg_after'][0]}")
    print(f"machine: nproc {m['nproc']} (affinity {m['affinity']}), {m['cpu']}")
    print(f"versions: python {m['python']}, ray {m['ray']} (Train {m['ray_train']}), torch {m['torch']},"
          f" torchvision {m['torchvision']}, timm {m['timm']}, transformers {m['transformers']}")
    print(f"date: {date}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    return 0

if __name__ == "__main__":
    sys.exit(main())
