"""A Ray head started the way `make serve` starts one (`ray start --head`, loopback only), for tests
that submit Ray jobs to it or run job processes beside a Serve app in it.

Every port is chosen free, the head has a temp dir of its own, and it is stopped by its own
process ids (process group, then anything still naming its temp dir): never `ray stop`, which
would also end every other Ray instance on the machine.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """`ray start --head --block` in its own process group; `address` is its GCS, `dashboard` its job server."""

    def __init__(self, num_cpus: int = 2, dashboard: bool = False, env: dict[str, str] | None = None):
        self.num_cpus, self.with_dashboard = num_cpus, dashboard
        self.env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token"), **(env or {})}
        self.env.pop("RAY_ADDRESS", None)
        # Unix sockets live under the temp dir: keep its path short (a socket path has ~107 bytes).
        self.temp_dir = tempfile.mkdtemp(prefix="mmr", dir="/tmp")
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.proc: subprocess.Popen | None = None
        self.log = Path(self.temp_dir) / "ray-start.log"

    def start(self, timeout_s: float = 90) -> LocalCluster:
        cmd = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={self.port}",
               f"--num-cpus={self.num_cpus}", f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
               f"--ray-client-server-port={free_port()}", f"--node-manager-port={free_port()}",
               f"--object-manager-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
               f"--metrics-export-port={free_port()}", f"--include-dashboard={str(self.with_dashboard).lower()}",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}"]
        self.proc = subprocess.Popen(cmd, env=self.env, cwd=ROOT, start_new_session=True,
                                     stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            if self._up():
                return self
            time.sleep(0.5)
        raise TimeoutError(f"Ray head not up after {timeout_s} s: {self.log.read_text()[-2000:]}")

    def _up(self) -> bool:
        if "Ray runtime started" not in self.log.read_text(errors="replace"):
            return False
        if not self.with_dashboard:
            return True
        try:  # the job server answers only with Ray's auth token: that it listens is enough here
            socket.create_connection(("127.0.0.1", self.dashboard_port), timeout=5).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        """End the head and everything it started; safe to call twice."""
        if self.proc is not None and self.proc.poll() is None:
            for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        for pid in self.leftover_pids():  # workers that left the process group
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def leftover_pids(self) -> list[int]:
        """Processes still naming this head's temp dir or GCS address in their command line."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if self.temp_dir in cmdline or f"127.0.0.1:{self.port}" in cmdline:
                pids.append(int(entry))
        return pids

    def job_env(self, **extra: str) -> dict[str, str]:
        """The environment of a process that joins this head (as `RAY_ADDRESS=... python -m jobs.x`)."""
        return {**self.env, "RAY_ADDRESS": self.address, **extra}

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
