"""Helpers shared by the benchmarks: what machine this is, and how much CPU our processes and the
rest of the machine used."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import time


def machine_busy_seconds(tck: int) -> float:
    """CPU seconds the whole machine has been busy (all but idle and iowait), from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / tck


def process_table(tck: int) -> dict[int, tuple[int, float]]:
    """pid -> (ppid, CPU seconds incl. reaped children) for every process, from /proc/<pid>/stat."""
    procs = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # ppid, utime, stime, cutime, cstime (reaped children count for their parent)
        procs[int(pid)] = (int(fields[1]), sum(int(x) for x in fields[11:15]) / tck)
    return procs


class CpuMeter:
    """CPU seconds used by the whole machine and by the process tree under `root` (default: this
    process, whose tree holds Ray's workers) over an interval: the difference is what other work
    on the machine took from the benchmark."""

    def __init__(self, root: int | None = None) -> None:
        self.tck, self.root = os.sysconf("SC_CLK_TCK"), root or os.getpid()

    def _machine_busy(self) -> float:
        return machine_busy_seconds(self.tck)

    def _own_tree(self) -> float:
        procs = process_table(self.tck)
        total = 0.0
        for pid, (_, cpu) in procs.items():
            p, seen = pid, 0
            while p and p in procs and seen < 64:
                if p == self.root:
                    total += cpu
                    break
                p, seen = procs[p][0], seen + 1
        return total

    def start(self) -> "CpuMeter":
        self.t0, self.m0, self.o0 = time.perf_counter(), self._machine_busy(), self._own_tree()
        return self

    def stop(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self.t0, 1e-9)
        machine, own = self._machine_busy() - self.m0, self._own_tree() - self.o0
        return {"own_cores": round(own / wall, 2), "other_cores": round(max(0.0, machine - own) / wall, 2),
                "own_cpu_s": round(own, 3)}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return "unknown"


def total_memory() -> str:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            kb = int(next(line.split()[1] for line in f if line.startswith("MemTotal")))
        return f"{kb / 2**20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        return "unknown"


def module_versions(*names: str) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 (any import failure just means "not there")
            versions[name] = "not installed"
    return versions


def machine_facts() -> dict[str, str]:
    return {"nproc": str(os.cpu_count()), "affinity": str(len(os.sched_getaffinity(0))), "cpu": cpu_model(),
            "python": platform.python_version()}


def machine_lines() -> list[str]:
    """The header lines every benchmark report starts with: date, host, CPU, memory, load."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [f"date        {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"host        {platform.node()}  {platform.platform()}",
            f"cpu         {cpu_model()}  (nproc {os.cpu_count()}, affinity {len(os.sched_getaffinity(0))})",
            f"memory      {total_memory()}",
            f"load avg    {load} (1/5/15 min, at start)"]
