"""`perf record -z` (PERF_RECORD_COMPRESSED, zstd) and `perf record --threads` (data + data.N)
files imported like a plain perf.data: each checked against `perf script` of the same file
(events, timestamps, payload pointers) and against the workload (N pipes held open)."""

from __future__ import annotations

import collections
import os
import re
import signal
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from kmemleak_offline.cli import main
from kmemleak_offline.format import tracefs
from kmemleak_offline.format.recording import open_recording
from kmemleak_offline.perfdata import reader as perfreader
from tests.test_import import HOLDER, N_PIPES, _perf, _script
from tests.test_record_e2e import groups

MODES = {"plain": [], "z": ["-z"], "threads": ["--threads"], "z+threads": ["-z", "--threads"]}


@pytest.fixture(scope="module")
def captures(tmp_path_factory) -> dict[str, Path]:
    """The same workload (a child holding N pipes) recorded in each mode."""
    d = tmp_path_factory.mktemp("zt")
    prog = d / "holder.py"
    prog.write_text(HOLDER.replace("{n}", str(N_PIPES)))
    snap = d / "target-kallsyms"  # as if imported on another machine: symbols from the target's copy
    snap.write_bytes(Path("/proc/kallsyms").read_bytes())
    out = {"kallsyms": snap}
    for mode, opts in MODES.items():
        data, pidfile = d / f"{mode}.data", d / f"{mode}.pid"
        try:
            res = _perf("record", "-q", *opts, "-e", "kmem:kmalloc", "-e", "kmem:kfree", "-g", "-a",
                        "-k", "mono", "-o", str(data), "--", sys.executable, str(prog), str(pidfile))
            assert res.returncode == 0, res.stderr
        finally:
            if pidfile.exists():
                try:
                    os.kill(int(pidfile.read_text()), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        out[mode] = data
    return out


def _record_types(path: Path) -> collections.Counter:
    files = [path / "data", *sorted(path.glob("data.*"))] if path.is_dir() else [path]
    c: collections.Counter = collections.Counter()
    for i, f in enumerate(files):
        raw = f.read_bytes()
        pos, end = (struct.unpack_from("<Q", raw, 40)[0], sum(struct.unpack_from("<QQ", raw, 40))) \
            if i == 0 else (0, len(raw))
        while pos + 8 <= end:
            typ, _m, sz = struct.unpack_from("<IHH", raw, pos)
            c[typ] += 1
            pos += sz
    return c


@pytest.mark.parametrize("mode", list(MODES))
def test_mode_imports_like_perf_script(captures, mode: str, tmp_path: Path, capsys) -> None:
    data = captures[mode]
    types = _record_types(data)
    if "z" in mode:  # really compressed: samples only inside COMPRESSED/COMPRESSED2 records
        assert types[81] + types[83] > 0 and types[9] == 0, types
        assert perfreader.F_COMPRESSED in perfreader.read_perf_data(data).features
    if "threads" in mode:
        assert data.is_dir() and list(data.glob("data.*"))
    out = tmp_path / "r.parquet"
    assert main(["import", str(data), "-o", str(out), "--kallsyms", str(captures["kallsyms"])]) == 0
    lines = _script(data, "event,time,trace")
    want = collections.Counter(re.search(r"(kmem:\w+):", ln).group(1) for ln in lines)
    rec = open_recording(out)
    t = rec.table(["sample"], ["event", "time", "raw"])
    assert collections.Counter(t.column("event").cast("string").to_pylist()) == want
    ptimes = sorted(int(m.group(1)) * 10**9 + int(m.group(2))
                    for m in (re.search(r"(?:^|\s)(\d+)\.(\d{9}):", ln) for ln in lines))
    assert sorted(t.column("time").to_pylist()) == ptimes
    ev = np.array(t.column("event").cast("string").to_pylist())
    fmt = tracefs.parse_format(rec.metadata["events"]["kmem:kmalloc"]["format"], "kmem")
    ptrs = tracefs.decode(fmt, t.column("raw").filter(ev == "kmem:kmalloc"))["ptr"].astype(np.uint64)
    theirs = sorted(int(v, 16) for ln in lines if "kmem:kmalloc:" in ln for v in re.findall(r"ptr=(\S+)", ln))
    assert sorted(ptrs.tolist()) == theirs
    capsys.readouterr()
    assert main(["analyze", str(out), "-j", "1"]) == 0
    report = capsys.readouterr().out
    pipe = [n for n, st in groups(report)
            if any(" alloc_pipe_info+" in s for s in st) and any(" create_pipe_files+" in s for s in st)]
    assert pipe and max(pipe) >= N_PIPES, report[:3000]


def test_frame_spanning_records_and_new_frames(tmp_path: Path, captures) -> None:
    """The decompressor keeps one context: a record split over two COMPRESSED records, and a
    second zstd frame after the first ends, decompress like one stream."""
    import zstandard

    plain = perfreader.read_perf_data(captures["plain"])
    start, size = plain.data_offset, plain.data_size
    body = bytes(plain.buf[start:start + size])
    comp = zstandard.ZstdCompressor().compress(body[: size // 2]) + \
        zstandard.ZstdCompressor().compress(body[size // 2:])  # two frames
    recs, pos = bytearray(), 0
    while pos < len(comp):  # COMPRESSED records of at most 1000 payload bytes: frames span them
        part = comp[pos:pos + 1000]
        recs += struct.pack("<IHH", 81, 0, 8 + len(part)) + part
        pos += len(part)
    raw = bytearray(captures["plain"].read_bytes())
    feats = raw[start + size:]
    new = raw[:start] + recs
    struct.pack_into("<Q", new, 48, len(recs))
    # the feature table's offsets move by the size change
    delta = len(recs) - size
    bits = [b for b in range(256) if struct.unpack_from("<4Q", raw, 72)[b // 64] >> (b % 64) & 1]
    for i in range(len(bits)):
        off = struct.unpack_from("<Q", feats, 16 * i)[0]
        struct.pack_into("<Q", feats, 16 * i, off + delta)
    dst = tmp_path / "hand.data"
    dst.write_bytes(bytes(new + feats))
    a = perfreader.read_perf_data(dst)
    want = _records(plain, 1 << 20)
    for window in (1 << 20, 4096):  # small windows: records cut by a window end, frames by records
        assert _records(a, window) == want
    assert want[1] == body


def _records(pd_: perfreader.PerfData, window: int) -> tuple[list[int], bytes]:
    """(record types, record bytes) of a perf.data's stream, read in windows of `window` bytes."""
    types, data = [], []
    for w in perfreader.record_windows(pd_, window):
        types += w.types.tolist()
        data.append(w.buf[:w.valid].tobytes())
    return types, b"".join(data)
