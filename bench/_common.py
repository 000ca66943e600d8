"""Shared by the analyze benchmarks: the machine, the analyze command, timed runs of a child with
the peak memory of its whole process tree, the Parquet "read floor", and spreads over repeats.

Peak memory: a thread polls /proc every ~50 ms while the child runs, sums Rss (and Pss) from
/proc/PID/smaps_rollup (VmRSS from /proc/PID/status where that is missing) over the child and all
its descendants (found by walking /proc/*/stat parent pids: this kernel has no
/proc/PID/task/*/children), and keeps the largest sum seen. The summed Rss counts pages that
processes share (forked workers, libraries) once per process, so it errs high; the summed Pss
splits shared pages between their users. ru_maxrss from wait4() is printed for reference: the peak
of the largest single process of the tree, exact but blind to the others.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9
POLL_S = 0.05
SAMPLE_COLUMNS = ["time", "cpu", "ring", "seq", "pid", "event", "raw", "stack_id"]


# ----------------------------------------------------------------------------- the machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 / GB
    except OSError:
        pass
    return float("nan")


def _git_head() -> str:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return head + (" (+ uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_lines() -> list[str]:
    """What the figures were measured on: CPU, cores, memory, kernel, versions, load."""
    import numpy
    import pyarrow

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        (f"machine: {_cpu_model()}, nproc {usable} (cpu_count {os.cpu_count()}), "
        f"{_mem_total_gb():.1f} GB RAM, kernel {platform.release()}, load average {load}"),
        (f"         python {platform.python_version()}, numpy {numpy.__version__}, "
        f"pyarrow {pyarrow.__version__}, checkout {_git_head()}"),
    ]


# ----------------------------------------------------------------------------- analyze command


def analyze_command(override: str | None = None) -> list[str]:
    """`override` (shell words) if given; else the installed console script (the one beside this
    Python, not a pyenv shim: that costs a bash start per run), else the CLI module of this checkout."""
    if override:
        return shlex.split(override)
    exe = Path(sys.executable).with_name("kmemleak-offline")
    if exe.is_file() and os.access(exe, os.X_OK):
        return [str(exe)]
    from shutil import which

    found = which("kmemleak-offline")
    if found:
        return [found]
    return [sys.executable, "-m", "kmemleak_offline.cli"]


def cli_accepts(cmd: Sequence[str], subcommand: str, option: str) -> bool:
    """Whether `cmd subcommand --help` mentions `option` (e.g. --jobs)."""
    try:
        res = subprocess.run([*cmd, subcommand, "--help"], capture_output=True, text=True, timeout=120,
                             cwd=ROOT, check=False, env={**os.environ, "COLUMNS": "200"})
    except (OSError, subprocess.SubprocessError):
        return False
    return res.returncode == 0 and option in res.stdout


# ----------------------------------------------------------------------------- memory of a process tree


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses; split after the last ')'
        rest = stat[stat.rfind(b")") + 2:].split()
        if len(rest) > 1:
            kids.setdefault(int(rest[1]), []).append(int(d))
    return kids


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants alive now."""
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def rss_pss_bytes(pid: int) -> tuple[int, int]:
    """(Rss, Pss) of one process in bytes; (0, 0) if it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            text = f.read()
        rss = pss = 0
        for line in text.splitlines():
            if line.startswith(b"Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith(b"Pss:"):
                pss = int(line.split()[1]) * 1024
        return rss, pss
    except (FileNotFoundError, ProcessLookupError):
        return 0, 0
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    v = int(line.split()[1]) * 1024
                    return v, v
    except OSError:
        pass
    return 0, 0


class TreeMemoryPoller:
    """Polls the summed Rss/Pss of a process tree every `interval` s from a thread; keeps the max."""

    def __init__(self, pid: int, interval: float = POLL_S) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_rss = 0
        self.peak_pss = 0
        self.max_procs = 0
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def poll_once(self) -> None:
        pids = process_tree(self.pid)
        rss = pss = 0
        alive = 0
        for p in pids:
            r, s = rss_pss_bytes(p)
            if r:
                alive += 1
            rss += r
            pss += s
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)
        self.max_procs = max(self.max_procs, alive)
        self.polls += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Run:
    """One measured child run."""

    cmd: list[str]
    returncode: int
    wall: float  # seconds, start to reaped
    peak_rss: int  # bytes: max over polls of the tree's summed Rss
    peak_pss: int  # bytes: same with Pss
    ru_maxrss: int  # bytes: wait4()'s ru_maxrss (largest single process of the tree)
    max_procs: int  # most processes of the tree seen alive at once
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def error_line(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else "no message"


def run_measured(cmd: Sequence[str], *, cwd: Path | str = ROOT, keep_stdout: bool = True,
                 env: dict[str, str] | None = None) -> Run:
    """Run cmd as a child; wall time, summed peak memory of its tree, ru_maxrss; output captured
    in temporary files (not pipes: a full pipe would stall the child and the timing)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(list(cmd), stdout=out if keep_stdout else subprocess.DEVNULL, stderr=err,
                             cwd=cwd, env=env)
        with TreeMemoryPoller(p.pid) as poller:
            _, status, usage = os.wait4(p.pid, 0)
            wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Run(list(cmd), p.returncode, wall, poller.peak_rss, poller.peak_pss,
                   usage.ru_maxrss * 1024, poller.max_procs, out.read() if keep_stdout else "", err.read())


# ----------------------------------------------------------------------------- read floor

_READ_FLOOR = r"""
import json, os, sys, time
import pyarrow.parquet as pq
path, columns = sys.argv[1], sys.argv[2].split(",")
t0 = time.perf_counter()
pf = pq.ParquetFile(path, memory_map=False)
present = [c for c in columns if c in pf.schema_arrow.names]
n = pf.metadata.num_row_groups
step = max(1, os.cpu_count() or 1)
rows = nbytes = 0
for lo in range(0, n, step):  # a window of row groups per call: all cores busy, memory bounded
    t = pf.read_row_groups(list(range(lo, min(n, lo + step))), columns=present, use_threads=True)
    rows += t.num_rows
    nbytes += t.nbytes
    del t
print(json.dumps({"seconds": time.perf_counter() - t0, "rows": rows, "bytes": nbytes}))
"""


def read_floor(path: Path, columns: Sequence[str] = SAMPLE_COLUMNS) -> tuple[Run, dict[str, Any]]:
    """Time pyarrow reading (decompressing, decoding) `columns` of every row group of `path`, in a
    child process, `os.cpu_count()` row groups per `read_row_groups(use_threads=True)` call so it
    uses every core without holding the whole file. Returns the run and what the child measured
    itself (seconds without interpreter start and imports, rows, in-memory bytes)."""
    run = run_measured([sys.executable, "-c", _READ_FLOOR, str(path), ",".join(columns)])
    info = json.loads(run.stdout.strip().splitlines()[-1]) if run.ok and run.stdout.strip() else {}
    return run, info


# ----------------------------------------------------------------------------- figures


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(min, median, max)."""
    return min(values), statistics.median(values), max(values)


def fmt_spread(values: Sequence[float], fmt: Callable[[float], str], unit: str = "") -> str:
    """'MED unit (min A, max B)', or just the value when there was one run."""
    lo, med, hi = spread(values)
    if len(values) == 1:
        return f"{fmt(med)}{unit}"
    return f"{fmt(med)}{unit} (min {fmt(lo)}, max {fmt(hi)}, n={len(values)})"


def gb(x: float) -> str:
    return f"{x / GB:.2f}"


def secs(x: float) -> str:
    return f"{x:.2f}"


def mrate(x: float) -> str:
    return f"{x / 1e6:.2f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


@dataclass
class Series:
    """Repeated runs of one command, summarised."""

    runs: list[Run] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.ok for r in self.runs)

    def walls(self) -> list[float]:
        return [r.wall for r in self.runs]

    def peaks(self) -> list[float]:
        return [float(r.peak_rss) for r in self.runs]

    def line(self, events: int, what: str = "events") -> str:
        """'wall ..., rate ..., peak ...' with min/median/max."""
        w = self.walls()
        rates = [events / x for x in w]
        return (f"wall {fmt_spread(w, secs, ' s')}; {fmt_spread(rates, mrate, f' M {what}/s')}; "
                f"peak RSS summed over the process tree {fmt_spread(self.peaks(), gb, ' GB')}; "
                f"summed PSS max {gb(max(r.peak_pss for r in self.runs))} GB; "
                f"ru_maxrss max {gb(max(r.ru_maxrss for r in self.runs))} GB; "
                f"processes <= {max(r.max_procs for r in self.runs)}")


def repeat_runs(cmd: Sequence[str], repeat: int, *, keep_stdout: bool = True) -> Series:
    """Run cmd `repeat` times (stopping at the first failure)."""
    s = Series()
    for _ in range(max(1, repeat)):
        r = run_measured(cmd, keep_stdout=keep_stdout)
        s.runs.append(r)
        if not r.ok:
            break
    return s


# ----------------------------------------------------------------------------- reports


def leak_totals(report: str) -> tuple[int, int, int, int] | None:
    """(bytes, objects, groups, early reports) of a text report: the first three summed over the
    `Leak of N bytes in M objects` lines of its final LEAKED BYTES REPORT; early reports are the
    ones printed at LOST records ("Report memory leaks in advance due to lost": perf-prof reports
    what is outstanding then and forgets it). None if there is no leaked-bytes report."""
    import re

    blocks = report.split("LEAKED BYTES REPORT")
    if len(blocks) < 2:
        return None
    found = re.findall(r"^Leak of (\d+) bytes in (\d+) objects", blocks[-1], flags=re.MULTILINE)
    early = report.count("Report memory leaks in advance due to lost")
    return sum(int(b) for b, _ in found), sum(int(n) for _, n in found), len(found), early


def total_line(report: str) -> str | None:
    """The last `TOTAL alloc A free F` line of a text report."""
    lines = [x.strip() for x in report.splitlines() if x.startswith("TOTAL alloc")]
    return lines[-1] if lines else None


def keep_path(keep: Path | None, name: str) -> Path | None:
    """--keep FILE.parquet is that file; --keep DIR is DIR/name (DIR created)."""
    if keep is None:
        return None
    if keep.suffix == ".parquet" and not keep.is_dir():
        keep.parent.mkdir(parents=True, exist_ok=True)
        return keep
    keep.mkdir(parents=True, exist_ok=True)
    return keep / name


def reusable(path: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    """The build info saved beside `path` if it was built with exactly `params`, else None."""
    side = info_path(path)
    if not (path.is_file() and side.is_file()):
        return None
    try:
        info = json.loads(side.read_text())
    except ValueError:
        return None
    return info if info.get("params") == params else None


def info_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def build_in_child(script: Path, path: Path, args: list[str]) -> tuple[Run, dict[str, Any] | None]:
    """Run `script --build-only PATH ARGS` (so the bench process stays small) with the same memory
    measurement; returns the run and the build info it saved beside the file."""
    run = run_measured([sys.executable, str(script), "--build-only", str(path), *args])
    info = None
    if run.ok and info_path(path).is_file():
        info = json.loads(info_path(path).read_text())
    return run, info
