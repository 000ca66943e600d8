"""`record` when the disk fills up, and on read-only folders (small tmpfs mounts, unmounted even
when a test fails).

The disk is filled deterministically by the traced command itself: it is exec'ed only once the
events are on, fills the tmpfs with `dd` and then makes system calls (kmalloc/kfree events) until
the recorder has had to stop. Expected (docs/behaviour.md, record): recording stops, what was
written is sealed into the room set aside at the start (the events left in the rings counted),
the stop reason is "disk full", exit status 1 with one line naming where the analysable data is,
and nothing is left behind (open parts, temporary files, the reserve, uprobes).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kmemleak_offline.format.recording import open_recording
from recorder.probes import remove_stale_groups
from tests.test_malloc_e2e import our_probes

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "kmemleak_offline"]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="record and mount need root")


def mount_tmpfs(where: Path, size: str, *opts: str) -> Path:
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *opts]), "tmpfs",
                    str(where)], check=True)
    return where


@pytest.fixture
def tmpfs(tmp_path) -> Iterator:
    mounted: list[Path] = []

    def make(size: str, *opts: str) -> Path:
        mounted.append(mount_tmpfs(tmp_path / f"fs{len(mounted)}", size, *opts))
        return mounted[-1]

    try:
        yield make
    finally:
        for m in mounted:
            subprocess.run(["umount", "-l", str(m)], check=False)


def cli(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          check=False)


def syscalls(n: int) -> str:
    return f"i=0; while [ $i -lt {n} ]; do cat /proc/self/status >/dev/null; i=$((i+1)); done"


def filler(d: Path) -> list[str]:
    """A command that makes events for more than a second (a segment becomes a part), fills `d`
    to the last byte, then makes events until the recorder has had to stop."""
    script = (f"{syscalls(100)}; sleep 1.5; dd if=/dev/zero of={d}/filler bs=64k 2>/dev/null; "
              f"{syscalls(2000)}")
    return ["sh", "-c", script]


def nothing_left_behind(parts: Path) -> None:
    assert not list(parts.glob("spool-*.bin")) and not list(parts.glob("*.tmp"))
    assert not list(parts.glob(".ring-*"))  # every open part sealed
    assert not (parts / ".reserve").exists()


@pytest.mark.parametrize("malloc", [False, True], ids=["kernel", "malloc"])
def test_disk_full_while_recording_keeps_what_fits(tmpfs, malloc) -> None:
    d = tmpfs("64m")
    out = d / "r.parquet"
    events = ["--malloc"] if malloc else ["--alloc", "kmem:kmalloc", "--free", "kmem:kfree"]
    if not malloc:
        remove_stale_groups()
    res = cli(["record", *events, "-g", "-o", str(out), "--", *filler(d)])
    parts = Path(str(out) + ".parts")
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert last.startswith("kmemleak-offline record: disk full: recording stopped")
    assert f"the analysable data is in {parts}" in last and "events could not be kept" in last
    assert not out.exists()
    nothing_left_behind(parts)
    rec = open_recording(out)
    assert rec.partial and rec.metadata["stopped"] == "disk full"
    assert rec.warnings == []  # every part numbered, none missing
    info = cli(["info", str(out)])
    assert info.returncode == 0 and "stopped:     disk full" in info.stdout
    assert "unaccounted ?" not in info.stdout  # the final counts are newer than the samples
    (d / "filler").unlink()  # room again: analyse in place
    an = cli(["analyze", str(out), "--format", "json"])
    assert an.returncode == 0, an.stderr
    assert '"total_alloc": 0' not in an.stdout  # the allocations written before the disk filled
    assert our_probes() == []


def test_no_room_to_join_the_parts_leaves_the_complete_parts_folder(tmpfs, tmp_path) -> None:
    """Room for the recording but not for the single file (the stitch copies every part)."""
    d = tmpfs("16m")
    out = d / "r.parquet"
    probe = cli(["record", "--alloc", "kmem:kmalloc", "--free", "kmem:kfree", "-o",
                 str(d / "probe.parquet"), "--", "true"])
    assert probe.returncode == 0, probe.stderr
    size = (d / "probe.parquet").stat().st_size  # about the kallsyms part: the stitch needs as much
    (d / "probe.parquet").unlink()
    st = os.statvfs(d)
    free = st.f_bavail * st.f_frsize
    keep = size + size // 2  # room for the parts, not for the parts plus the single file
    subprocess.run(["dd", "if=/dev/zero", f"of={d}/filler", "bs=4096",
                    f"count={(free - keep) // 4096}"], check=True, capture_output=True)
    res = cli(["record", "--alloc", "kmem:kmalloc", "--free", "kmem:kfree", "-o", str(out),
               "--", "true"])
    parts = Path(str(out) + ".parts")
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        f"kmemleak-offline record: no room left to join the parts into {out}: the complete "
        f"recording is {parts} (analyse it as it is)")
    assert not out.exists() and not Path(str(out) + ".tmp").exists()
    nothing_left_behind(parts)
    rec = open_recording(parts)
    assert rec.metadata["stopped"] in ("command exited", "all traced tasks exited")
    cache = tmp_path / "cache"  # no room beside the parts: the conversion cache goes here
    an = subprocess.run(CLI + ["analyze", str(parts)], cwd=ROOT, capture_output=True, text=True,
                        timeout=180, check=False, env={**os.environ, "XDG_CACHE_HOME": str(cache)})
    assert an.returncode == 0, an.stderr
    assert list((cache / "kmemleak-offline").glob("*-r.converted.parquet"))


def test_no_room_at_all_records_nothing_and_says_so(tmpfs) -> None:
    d = tmpfs("256k")
    out = d / "r.parquet"
    res = cli(["record", "--alloc", "kmem:kmalloc", "--free", "kmem:kfree", "--duration", "1s",
               "-o", str(out)])
    assert res.returncode == 1
    assert res.stderr.strip() == (f"kmemleak-offline record: no room to record in {d} (disk full): "
                                  "nothing was recorded")
    assert list(d.iterdir()) == []


def test_read_only_folders(tmpfs) -> None:
    ro = tmpfs("1m", "ro")
    res = cli(["record", "--alloc", "kmem:kmalloc", "--free", "kmem:kfree", "--duration", "1s",
               "-o", str(ro / "r.parquet")])
    assert res.returncode == 2 and res.stderr.strip() == (
        f"kmemleak-offline record: output folder {ro} is not writable")
    sample = ROOT / "samples" / "pipe-leak.parquet"
    for args, what in ((["-o", str(ro / "report.txt")], "-o"),
                       (["--flame-graph", str(ro / "leak")], "flame graph"),
                       (["--tmpdir", str(ro), "--partitions", "4"], "--tmpdir")):
        res = cli(["analyze", str(sample), *args])
        assert res.returncode == 2, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr, res.stderr
        assert what in res.stderr
