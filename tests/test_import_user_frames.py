"""Imported perf.data files: user frames named in every report, and the process kept.

A compiled program's forked child opens N UDP sockets and keeps them after perf stops. The
expected user frames are what `perf script` prints for the same samples; the expected process is
the child's pid (which the program writes down). The kernel's symbols come through --kallsyms, as
from another machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from kmemleak_offline.cli import main
from kmemleak_offline.perfdata.cmdline import record_target
from tests.test_record_e2e import groups

C_FILE = Path(__file__).parent / "c" / "udp_holder.c"
N = 37
PERF = shutil.which("perf") or "perf"
EVENTS = ["-e", "kmem:kmem_cache_alloc", "-e", "kmem:kmem_cache_free", "-e", "kmem:kmalloc",
          "-e", "kmem:kfree"]


def _record(folder: Path, name: str, extra: list[str]) -> tuple[Path, int, Path]:
    exe = folder / "udp_holder"
    if not exe.exists():
        subprocess.run(["gcc", "-O1", "-fno-omit-frame-pointer", "-o", str(exe), str(C_FILE)],
                       check=True)
    data, pidfile = folder / f"{name}.data", folder / f"{name}.pid"
    try:
        res = subprocess.run([PERF, "record", "-q", "-g", *extra, *EVENTS, "-o", str(data), "--",
                              str(exe), str(N), str(pidfile)],
                             capture_output=True, text=True, timeout=120, check=False)
        assert res.returncode == 0, res.stderr
        pid = int(pidfile.read_text())
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    return data, pid, exe


def _script_user_frames(data: Path, pid: int) -> set[tuple[str, ...]]:
    """perf script's user frame names of the child's sk_prot_alloc samples."""
    res = subprocess.run([PERF, "script", "-i", str(data), "-F", "pid,event,ip,sym,dso"],
                         capture_output=True, text=True, timeout=120, check=True)
    chains: set[tuple[str, ...]] = set()
    for block in res.stdout.split("\n\n"):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if not lines or int(lines[0].split()[0]) != pid:
            continue
        frames = [ln.split() for ln in lines[1:]]
        if any(f[1] == "sk_prot_alloc" for f in frames):
            chains.add(tuple(f[1] for f in frames if f[-1] != "([kernel.kallsyms])"))
    return chains


def _import(data: Path, tmp: Path) -> Path:
    snapshot = tmp / "target-kallsyms"  # "copied off the target"
    snapshot.write_bytes(Path("/proc/kallsyms").read_bytes())
    out = data.with_suffix(".parquet")
    assert main(["import", str(data), "-o", str(out), "--kallsyms", str(snapshot)]) == 0
    return out


def _socket_groups(rec: Path, capsys) -> list[dict]:
    capsys.readouterr()
    assert main(["analyze", str(rec), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    final = doc["reports"][-1]
    return [g for g in final["groups"]
            if any(f["symbol"] == "sk_prot_alloc" for f in g["stack"]) and g["objects"] == N]


@pytest.mark.parametrize("mode", ["command", "system-wide"])
def test_user_frames_and_pid_of_imported_groups(tmp_path: Path, capsys, mode: str) -> None:
    data, pid, exe = _record(tmp_path, mode, ["-a"] if mode == "system-wide" else [])
    want = _script_user_frames(data, pid)
    assert len(want) == 1, want  # one chain: main <- __socket (libc)
    (chain,) = want
    assert "main" in chain and "[unknown]" not in chain, chain
    rec = _import(data, tmp_path)

    found = _socket_groups(rec, capsys)
    assert len(found) == 1, found
    g = found[0]
    user = [f for f in g["stack"] if f["addr"] < 1 << 63]
    assert tuple(f["symbol"] for f in user) == chain
    assert [f["dso"] for f in user if f["symbol"] == "main"] == [str(exe)]
    assert all(f["dso"] == str(exe) or "libc.so" in f["dso"] for f in user), user
    # the process is kept for per-task recordings (perf record -- CMD), 0 system-wide (perf-prof)
    assert g["pid"] == (pid if mode == "command" else 0)

    # the text report names the same frames under the group
    assert main(["analyze", str(rec)]) == 0
    report = capsys.readouterr().out
    lines = [st for n, st in groups(report) if n == N and any(" sk_prot_alloc+" in s for s in st)]
    assert len(lines) == 1, report[:3000]
    names = [s.split()[1].rsplit("+", 1)[0] for s in lines[0] if int(s.split()[0], 16) < 1 << 63]
    assert tuple(names) == chain


def test_perf_record_command_lines_say_the_target() -> None:
    assert record_target(["perf", "record", "-q", "-e", "kmem:kmalloc", "-g", "-o", "x", "./a", "-a"]).command \
        == ("./a", "-a")
    t = record_target(["perf", "record", "-ag", "-e", "kmem:kfree", "--", "sleep", "1"])
    assert t.system_wide and t.command is None
    assert record_target(["perf", "record", "-p", "12,13", "-g"]).pids == (12, 13)
    assert record_target(["perf", "record", "--call-graph", "dwarf", "--pid=5"]).pids == (5,)
    assert record_target(["perf", "record", "-F99", "-C", "0-1", "sleep", "2"]).system_wide
    assert record_target(["perf", "record", "-t", "7", "-e", "a"]).tids == (7,)
    assert record_target(None).command is None
    assert record_target(["perf", "record", "--", ]).command is None
