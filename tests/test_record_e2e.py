"""Acceptance of issue 3 end to end: `kmemleak-offline record` then `kmemleak-offline analyze`.

Leak counts are known from the workloads (N pipes kept open or closed); the checks read the text
report's `Leak of B bytes in N objects allocated from:` groups and their stack lines.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="live perf tests need root")

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "kmemleak_offline.cli"]
KK = ["--alloc", "kmem:kmalloc", "--free", "kmem:kfree/ptr != 0/", "-g"]
PIPES = "import os,sys,time\ntime.sleep(0.2)\nps=[os.pipe() for _ in range({n})]\n{close}time.sleep(0.3)\n"


def cli(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          check=False)


def groups(report: str) -> list[tuple[int, list[str]]]:
    """(objects, stack lines) of each LEAKED BYTES group of a text report."""
    out: list[tuple[int, list[str]]] = []
    for line in report.splitlines():
        m = re.match(r"Leak of \d+ bytes in (\d+) objects allocated from:", line)
        if m:
            out.append((int(m.group(1)), []))
        elif out and line.startswith("    "):
            out[-1][1].append(line)
    return out


def pipe_groups(report: str) -> list[int]:
    """Object counts of groups allocated by alloc_pipe_info itself (second frame)."""
    return [n for n, st in groups(report) if len(st) > 1 and " alloc_pipe_info+" in st[1]]


def test_cli_has_record() -> None:
    res = cli(["record", "--help"])
    assert res.returncode == 0 and "--mmap-pages" in res.stdout


@pytest.mark.parametrize("close", [False, True])
def test_pipes_open_are_reported_closed_are_gone(tmp_path: Path, close: bool) -> None:
    n = 50
    prog = tmp_path / "w.py"
    prog.write_text(PIPES.format(n=n, close="[(os.close(a),os.close(b)) for a,b in ps]\n"
                                 if close else ""))
    out = tmp_path / "r.parquet"
    res = cli(["record", *KK, "-o", str(out), "--", sys.executable, str(prog)])
    assert res.returncode == 0, res.stderr
    rep = cli(["analyze", str(out)])
    assert rep.returncode == 0, rep.stderr
    found = pipe_groups(rep.stdout)
    if close:
        assert found == []
    else:
        assert max(found) >= n  # N objects in one group through the pipe allocation path


def _loader(seconds: float) -> subprocess.Popen:
    code = (f"import os,time\nend=time.time()+{seconds}\nwhile time.time()<end:\n"
            " a,b=os.pipe(); os.close(a); os.close(b)\n")
    return subprocess.Popen([sys.executable, "-c", code])


def test_tiny_ring_lost_gives_early_report(tmp_path: Path) -> None:
    loads = [_loader(4) for _ in range(2)]
    try:
        out = tmp_path / "l.parquet"
        res = cli(["record", *KK, "-m", "1", "--duration", "3s", "-o", str(out)])
        assert res.returncode == 0, res.stderr
    finally:
        for p in loads:
            p.kill()
            p.wait()
    rep = cli(["analyze", str(out)])
    assert rep.returncode == 0, rep.stderr
    assert "Report memory leaks in advance due to lost" in rep.stdout


def test_sigkilled_recording_analyses(tmp_path: Path) -> None:
    loads = [_loader(8) for _ in range(2)]
    try:
        out = tmp_path / "k.parquet"
        rec = subprocess.Popen(CLI + ["record", *KK, "-o", str(out)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        parts = Path(str(out) + ".parts")
        deadline = time.monotonic() + 30
        while len(list(parts.glob("part-*.parquet"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        rec.send_signal(signal.SIGKILL)
        rec.wait(timeout=10)
    finally:
        for p in loads:
            p.kill()
            p.wait()
    assert parts.is_dir() and not out.exists()
    rep = cli(["analyze", str(out)])
    assert rep.returncode == 0, rep.stderr
    m = re.search(r"TOTAL alloc (\d+) free (\d+)", rep.stdout)
    assert m and int(m.group(1)) > 100
