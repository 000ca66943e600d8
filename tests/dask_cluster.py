"""A real Dask cluster on localhost for the fleet tests and bench: `dask scheduler` and
`dask worker` processes (this interpreter's `python -m dask ...`), torn down whatever happens.

The scheduler picks a free port itself (--port 0) and writes its address to a scheduler file;
workers are waited for by asking the scheduler (Client.wait_for_workers), not by sleeping.
Every process is started in a process group of its own (ended by its group id) but in the
caller's session: with the kernel's autogroup scheduling (sched_autogroup_enabled), a session of
its own would give each worker a CPU share of its own on a shared machine, and make a benchmark
against local processes unfair.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Cluster:
    address: str
    procs: list[subprocess.Popen] = field(default_factory=list)
    log_dir: str = ""

    def logs(self) -> str:
        out = []
        for p in sorted(Path(self.log_dir).glob("*.log")):
            out.append(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}")
        return "\n".join(out)


def _env() -> dict[str, str]:
    """Workers import this checkout's kmemleak_offline (as the test process does)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("DASK_DISTRIBUTED__WORKER__DAEMON", "False")
    return env


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=str(log.parent), process_group=0)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    for p in reversed(procs):
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)


@contextlib.contextmanager
def local_cluster(workers: int = 2, nthreads: int = 1, timeout: float = 180.0) -> Iterator[Cluster]:
    """A scheduler and `workers` single-process workers of `nthreads` threads each, no memory
    limit (a loaded machine must not make them pause), no dashboards."""
    from distributed import Client

    tmp = tempfile.mkdtemp(prefix="kmlo-dask-")
    sched_file = Path(tmp) / "scheduler.json"
    env = _env()
    cluster = Cluster(address="", log_dir=tmp)
    try:
        cluster.procs.append(_start(
            [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(sched_file)], Path(tmp) / "scheduler.log", env))
        deadline = time.monotonic() + timeout
        while True:  # the file appears once the scheduler listens
            if sched_file.is_file():
                with contextlib.suppress(ValueError):
                    cluster.address = json.loads(sched_file.read_text())["address"]
                    break
            if cluster.procs[0].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dask scheduler did not start\n{cluster.logs()}")
            time.sleep(0.1)
        for i in range(workers):
            cluster.procs.append(_start(
                [sys.executable, "-m", "dask", "worker", cluster.address, "--nthreads", str(nthreads),
                 "--nworkers", "1", "--no-nanny", "--no-dashboard", "--memory-limit", "0",
                 "--local-directory", tmp, "--name", f"kmlo-worker-{i}"],
                Path(tmp) / f"worker-{i}.log", env))
        with Client(cluster.address, timeout=timeout, set_as_default=False) as client:
            try:
                client.wait_for_workers(workers, timeout=timeout)
            except TimeoutError:
                raise RuntimeError(f"dask workers did not register\n{cluster.logs()}") from None
        yield cluster
    finally:
        _stop(cluster.procs)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
