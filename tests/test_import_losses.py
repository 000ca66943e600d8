"""Per-event losses of an imported perf.data, and report timestamps without clock data.

Losses are forced: `perf record -m 1` (one-page rings) is SIGSTOPped by its own workload while
that workload allocates, then continued. Expected counts come from `perf report --stats` of the
same file (perf's per-event LOST_SAMPLES sums)."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from kmemleak_offline.cli import main
from kmemleak_offline.format.recording import open_recording
from tests.test_import import _perf

# the workload stops perf (its parent), allocates a lot, lets perf go on
LOAD = "sleep 0.2; kill -STOP $PPID; find /usr > /dev/null; ls -lR /usr/lib > /dev/null; kill -CONT $PPID"


@pytest.fixture(scope="module")
def lossy(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("loss") / "l.data"
    res = _perf("record", "-q", "-m", "1", "-e", "kmem:kmalloc", "-e", "kmem:kfree", "-a",
                "-o", str(data), "--", "sh", "-c", LOAD)
    assert res.returncode == 0, res.stderr
    return data


def _perf_stats(data: Path) -> dict[str, int]:
    """Per-event LOST_SAMPLES sums of `perf report --stats`."""
    out = _perf("report", "-i", str(data), "--stats").stdout
    got, ev = {}, None
    for ln in out.splitlines():
        m = re.match(r"^(\S+) stats:$", ln)
        if m:
            ev = m.group(1)
        m = re.match(r"^\s+LOST_SAMPLES events:\s+(\d+)$", ln)
        if m and ev:
            got[ev] = int(m.group(1))
    return got


def test_lost_samples_per_event_match_perf(lossy: Path, tmp_path: Path, capsys) -> None:
    want = _perf_stats(lossy)
    assert want.get("kmem:kmalloc", 0) > 0 and want.get("kmem:kfree", 0) > 0, want  # losses forced
    out = tmp_path / "l.parquet"
    capsys.readouterr()
    snap = tmp_path / "target-kallsyms"  # as if imported on another machine
    snap.write_bytes(Path("/proc/kallsyms").read_bytes())
    assert main(["import", str(lossy), "-o", str(out), "--kallsyms", str(snap)]) == 0
    assert "estimated" not in capsys.readouterr().err
    m = open_recording(out).metadata
    assert {k: v["lost"] for k, v in m["counts"].items()} == {k: want[k] for k in m["counts"]}
    assert m["lost_split"] == "exact"
    assert main(["info", str(out)]) == 0
    assert "estimated" not in capsys.readouterr().out


def test_without_lost_samples_the_split_is_said_estimated(lossy: Path, tmp_path: Path, capsys) -> None:
    raw = bytearray(lossy.read_bytes())
    d_off, d_size = struct.unpack_from("<QQ", raw, 40)
    pos, hidden = d_off, 0
    while pos < d_off + d_size:  # LOST_SAMPLES (13) -> FINISHED_ROUND (68): an older perf's file
        typ, _m, sz = struct.unpack_from("<IHH", raw, pos)
        if typ == 13:
            struct.pack_into("<I", raw, pos, 68)
            hidden += 1
        pos += sz
    assert hidden
    old = tmp_path / "old.data"
    old.write_bytes(bytes(raw))
    out = tmp_path / "old.parquet"
    capsys.readouterr()
    assert main(["import", str(old), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    m = open_recording(out).metadata
    lost_rows = sum(open_recording(out).table(["lost"], ["lost"]).column("lost").to_pylist())
    if lost_rows:  # LOST records present: their sum is split by the event each names
        assert "per-event split is estimated" in err and m["lost_split"] == "estimated"
        assert sum(v["lost"] for v in m["counts"].values()) <= lost_rows
        assert main(["info", str(out)]) == 0
        assert "(per-event split estimated)" in capsys.readouterr().out
    else:
        assert "lost_split" not in m


def test_report_time_unknown_without_clock_data(lossy: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "t.parquet"
    assert main(["import", str(lossy), "-o", str(out)]) == 0  # recorded without -k: no CLOCK_DATA
    assert open_recording(out).metadata["clock"]["anchor"]["realtime_ns"] == 0
    capsys.readouterr()
    assert main(["analyze", str(out), "-j", "1"]) == 0
    report = capsys.readouterr().out
    stats = report.count("KMEMLEAK STATS:")
    assert stats and report.count("time unknown \nKMEMLEAK STATS:") == stats and "1970-" not in report
