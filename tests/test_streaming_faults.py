"""Streaming analysis at its edges: spill files on a full disk, Ctrl-C and SIGTERM mid-run (nothing
left behind), --jobs/--tmpdir checks, and the progress bar (a terminal only)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kmemleak_offline.engine.progress import Progress
from kmemleak_offline.synthetic import RecordingBuilder
from tests.test_analyze_cli import run

ALLOC = ["kmem:kmalloc//ptr=ptr/size=bytes_alloc/"]
FREE = ["kmem:kfree//ptr=ptr/"]


def big_recording(path: Path, n: int, seed: int = 0) -> Path:
    """n kmalloc/kfree samples on 2 CPUs, in the recorder's layout (segments of 10 ms)."""
    rng = np.random.default_rng(seed)
    t = 1_000_000_000 + np.arange(n, dtype=np.uint64) * np.uint64(1000)
    alloc = rng.random(n) < 0.55
    ptr = np.uint64(0xFFFF888000000000) + rng.integers(0, n // 3 + 1, n).astype(np.uint64) * np.uint64(64)
    cpu = rng.integers(0, 2, n)
    b = RecordingBuilder()
    a, f = np.flatnonzero(alloc), np.flatnonzero(~alloc)
    b.add_samples("kmem:kmalloc", t[a], cpu[a], 10, 10,
                  {"ptr": ptr[a], "bytes_alloc": 64, "bytes_req": 60, "gfp_flags": 0, "call_site": 0})
    b.add_samples("kmem:kfree", t[f], cpu[f], 10, 10, {"ptr": ptr[f], "call_site": 0})
    return b.write(path, ALLOC, FREE, segment_ns=10_000_000)


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> Path:
    return big_recording(tmp_path_factory.mktemp("rec") / "m.parquet", 400_000)


@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MiB tmpfs (root only, as the suite runs), unmounted even when the test fails."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_is_one_line_exit_2_and_nothing_left(medium, tiny_fs, capsys):
    code, out, err = run(capsys, "analyze", medium, "--partitions", "4", "--tmpdir", tiny_fs)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and "no space left on device" in err and "--tmpdir" in err, err
    assert list(tiny_fs.iterdir()) == []


def test_read_only_tmpdir(medium, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(ro)], check=True)
    try:
        code, _, err = run(capsys, "analyze", medium, "--partitions", "4", "--tmpdir", ro)
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)
    assert code == 2 and err.count("\n") == 1 and "spill files" in err, err


@pytest.mark.parametrize("args", [["-j", "0"], ["--tmpdir", "/nonexistent/dir"]])
def test_bad_engine_options(medium, capsys, args):
    code, _, err = run(capsys, "analyze", medium, *args)
    assert code == 2 and err.count("\n") == 1, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_mid_run_removes_spill_files(tmp_path, sig):
    """The signal arrives once spill files exist (waited for, not hoped for); the run ends
    with 130 / 143 and the spill folder is gone; no worker process stays behind."""
    rec = big_recording(tmp_path / "big.parquet", 3_000_000, seed=1)
    spill = tmp_path / "spill"
    spill.mkdir()
    script = "import sys; from kmemleak_offline.cli import main; sys.exit(main())"
    p = subprocess.Popen([sys.executable, "-c", script, "analyze", str(rec), "--tmpdir", str(spill),
                          "--partitions", "64", "--scan-ranges", "8", "-j", "2"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(spill.rglob("*.arrow")):
        assert p.poll() is None, "finished before any spill file was seen"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + sig, err
    assert "Traceback" not in err
    assert list(spill.iterdir()) == []
    kids = subprocess.run(["pgrep", "-P", str(p.pid)], check=False, capture_output=True, text=True).stdout
    assert kids.strip() == ""


def test_progress_bar_only_on_a_terminal_and_only_when_slow():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    quiet = io.StringIO()
    with Progress(stream=quiet) as p:  # not a terminal: nothing, however long it runs
        p.t0 -= 10
        p.stage("reading", 100)
        p.advance(50)
    assert quiet.getvalue() == ""
    fast = Tty()
    with Progress(stream=fast) as p:  # a terminal, but a short run: nothing
        p.stage("reading", 100)
        p.advance(100)
    assert fast.getvalue() == ""
    slow = Tty()
    with Progress(stream=slow) as p:
        p.t0 -= 10  # as if it had been running for 10 s
        p.stage("reading", 100)
        p.advance(50)
        assert p._bar is not None
        p._bar.refresh()
    assert "reading" in slow.getvalue()


def test_jobs_1_and_2_give_the_same_report(medium, capsys):
    outs = []
    for j in ("1", "2"):
        code, out, err = run(capsys, "analyze", medium, "-j", j, "--partitions", "8",
                             "--scan-ranges", "4", "--format", "json")
        assert code == 0, err
        outs.append(out)
    assert outs[0] == outs[1]
    assert os.path.exists(medium)
