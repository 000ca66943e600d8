"""`kmemleak-offline import`: real `perf record` captures made here, imported, then analysed.

Expected values come from the workload (N pipes held open past the end of the capture) and from
`perf script` reading the same perf.data (event counts, ptr fields, timestamps).
"""

from __future__ import annotations

import collections
import os
import platform
import re
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kmemleak_offline import __version__
from kmemleak_offline.cli import main
from kmemleak_offline.format import tracefs
from kmemleak_offline.format.recording import open_recording
from kmemleak_offline.perfdata import reader as perfreader
from tests.test_record_e2e import groups

N_PIPES = 64
PERF = shutil.which("perf") or "perf"
# parent forks a child that opens N pipes, tells the parent, and keeps them open after perf stops
HOLDER = """import os, sys, time
r, w = os.pipe()
pid = os.fork()
if pid == 0:  # detach from perf's and pytest's pipes so nobody waits for this child
    os.close(r)
    nul = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(nul, fd)
    ps = [os.pipe() for _ in range({n})]
    os.write(w, b"x")
    time.sleep(60)
    os._exit(0)
os.close(w)
os.read(r, 1)
open(sys.argv[1], "w").write(str(pid))
time.sleep(0.1)
"""
KERNEL_CTX = 0xFFFFFFFFFFFFFF80  # PERF_CONTEXT_KERNEL


def _perf(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PERF, *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def pipes_data(tmp_path_factory) -> Path:
    """perf.data of kmalloc+kfree with kernel call chains, monotonic clock, N pipes left open."""
    d = tmp_path_factory.mktemp("imp")
    data, pidfile, prog = d / "pipes.data", d / "holder.pid", d / "holder.py"
    prog.write_text(HOLDER.replace("{n}", str(N_PIPES)))
    try:
        res = _perf("record", "-q", "-e", "kmem:kmalloc", "-e", "kmem:kfree", "-g", "-a", "-k", "mono",
                    "-o", str(data), "--", sys.executable, str(prog), str(pidfile))
        assert res.returncode == 0, res.stderr
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
    return data


@pytest.fixture(scope="module")
def pipes_rec(pipes_data: Path) -> Path:
    out = pipes_data.with_suffix(".parquet")
    assert main(["import", str(pipes_data), "-o", str(out)]) == 0
    return out


def _script(data: Path, fields: str) -> list[str]:
    res = _perf("script", "-i", str(data), "-F", fields, "--ns")
    assert res.returncode == 0, res.stderr
    return [ln for ln in res.stdout.splitlines() if ln.strip()]


def test_pipes_leak_through_import_and_analyze(pipes_rec: Path, capsys) -> None:
    capsys.readouterr()
    assert main(["analyze", str(pipes_rec)]) == 0
    report = capsys.readouterr().out
    pipe = [n for n, st in groups(report)
            if any(" alloc_pipe_info+" in s for s in st) and any(" create_pipe_files+" in s for s in st)]
    assert pipe and max(pipe) >= N_PIPES, report[:3000]


def test_event_counts_fields_and_times_match_perf_script(pipes_data: Path, pipes_rec: Path) -> None:
    lines = _script(pipes_data, "event,time,trace")
    want = collections.Counter(re.search(r"(kmem:\w+):", ln).group(1) for ln in lines)
    rec = open_recording(pipes_rec)
    t = rec.table(["sample"], ["event", "time", "raw", "cpu", "seq", "stack_id"])
    got = collections.Counter(t.column("event").cast("string").to_pylist())
    assert got == want and sum(want.values()) > N_PIPES
    assert {k: v["samples"] for k, v in rec.metadata["counts"].items()} == dict(want)
    # timestamps: perf script prints sec.nsec of the same clock
    ptimes = sorted(int(m.group(1)) * 10**9 + int(m.group(2))
                    for m in (re.search(r"(?:^|\s)(\d+)\.(\d{9}):", ln) for ln in lines))
    assert sorted(t.column("time").to_pylist()) == ptimes
    # decoded ptr fields of each event equal what perf's own decoder prints
    ev = np.array(t.column("event").cast("string").to_pylist())
    for name in want:
        fmt = tracefs.parse_format(rec.metadata["events"][name]["format"], name.split(":")[0])
        cols = tracefs.decode(fmt, t.column("raw").filter(ev == name))
        theirs = sorted(0 if v == "(nil)" else int(v, 16) for ln in lines if f"{name}:" in ln
                        for v in re.findall(r"ptr=(\S+)", ln))
        assert sorted(cols["ptr"].astype(np.uint64).tolist()) == theirs
    # seq numbers the records of each cpu 0,1,2... in one sequence shared by samples and side-band
    cpu = np.array(t.column("cpu").to_pylist())
    seq = np.array(t.column("seq").to_pylist())
    for c in np.unique(cpu):
        s = np.sort(seq[cpu == c])
        assert len(np.unique(s)) == len(s)


def test_stacks_deduplicated_and_kernel_first(pipes_rec: Path) -> None:
    rec = open_recording(pipes_rec)
    stacks = rec.table(["stack"], ["stack_id", "callchain"])
    ids = stacks.column("stack_id").to_pylist()
    chains = [tuple(c) for c in stacks.column("callchain").to_pylist()]
    assert len(set(ids)) == len(ids) and len(set(chains)) == len(chains)  # one row per distinct chain
    assert all(c[0] == KERNEL_CTX for c in chains)
    used = set(rec.table(["sample"], ["stack_id"]).column("stack_id").to_pylist())
    assert None not in used and used == set(ids)


def test_metadata_host_clock_and_kernel_symbols(pipes_rec: Path) -> None:
    rec = open_recording(pipes_rec)
    m = rec.metadata
    assert m["producer"] == f"kmemleak-offline {__version__} import"
    assert m["host"]["kernel_release"] == platform.release()
    assert m["host"]["hostname"] == platform.node()
    assert m["host"]["ncpus"] == os.cpu_count()
    assert set(m["events"]) == {"kmem:kmalloc", "kmem:kfree"}
    assert m["alloc"] == ["kmem:kmalloc//ptr=ptr/size=bytes_alloc/stack/"]
    assert m["free"] == ["kmem:kfree//ptr=ptr/"]
    times = rec.table(["sample"], ["time"]).column("time").to_pylist()
    assert m["clock"]["start_ns"] <= min(times) and m["clock"]["stop_ns"] == max(times)
    side = rec.table(["comm", "mmap", "fork", "exit"], ["time"]).column("time").to_pylist()
    assert side and min(side) == m["clock"]["start_ns"]  # perf's synthesized state at the start
    assert m["clock"]["perf_clock"] == "monotonic"
    anchor = m["clock"]["anchor"]  # -k mono writes HEADER_CLOCK_DATA
    assert anchor["realtime_ns"] > 1_600_000_000 * 10**9 and 0 < anchor["perf_ns"] <= min(times)
    ksym = rec.table(["ksym"], ["name"]).column("name").to_pylist()
    assert "alloc_pipe_info" in ksym
    comms = rec.table(["comm"], ["comm"]).column("comm").to_pylist()
    assert "python3" in comms or Path(sys.executable).name in comms


def _one_error_line(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_bad_inputs(tmp_path: Path, pipes_data: Path, capsys) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("this is not a perf.data file at all\n" * 10)
    assert "not a perf.data" in _one_error_line(capsys, ["import", str(text), "-o", str(tmp_path / "x")])
    cut = tmp_path / "cut.data"  # cut inside the header: nothing to salvage (a cut in the data is
    for n in (60, 110, 130):      # salvaged: tests/test_import_damage.py)
        cut.write_bytes(pipes_data.read_bytes()[:n])
        assert "truncated" in _one_error_line(capsys, ["import", str(cut), "-o", str(tmp_path / "y")])
    assert "no such file" in _one_error_line(capsys, ["import", str(tmp_path / "nope.data")])
    err = _one_error_line(capsys, ["import", str(pipes_data), "-o", str(tmp_path / "z"),
                                   "--alloc", "kmem:mm_page_alloc"])
    assert "kmem:mm_page_alloc" in err and "kmem:kmalloc" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()


def test_no_tracepoint_samples(tmp_path: Path, capsys) -> None:
    data = tmp_path / "clock.data"
    res = _perf("record", "-q", "-e", "cpu-clock", "-o", str(data), "--", "sleep", "0.1")
    assert res.returncode == 0, res.stderr
    err = _one_error_line(capsys, ["import", str(data), "-o", str(tmp_path / "c.parquet")])
    assert "no tracepoint samples" in err


def test_alloc_free_options_are_kept(tmp_path: Path, pipes_data: Path, capsys) -> None:
    out = tmp_path / "o.parquet"
    assert main(["import", str(pipes_data), "-o", str(out), "--alloc", "kmem:kmalloc//size=bytes_req/stack/",
                 "--free", "kmem:kfree/ptr != 0/"]) == 0
    m = open_recording(out).metadata
    assert m["alloc"] == ["kmem:kmalloc//size=bytes_req/stack/"] and m["free"] == ["kmem:kfree/ptr != 0/"]


def test_parse_tracing_data_formats_round_trip(pipes_data: Path) -> None:
    pd_ = perfreader.read_perf_data(pipes_data)
    here = Path("/sys/kernel/tracing/events/kmem/kmalloc/format").read_text()
    fmt = next(f for f in pd_.formats.values() if f.full_name == "kmem:kmalloc")
    assert fmt.fields == tracefs.parse_format(here, "kmem").fields
    assert {a.name for a in pd_.attrs if a.type == 2} == {"kmem:kmalloc", "kmem:kfree"}


LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
LEAKY_C = Path(__file__).resolve().parent / "c" / "leaky.c"


def test_uprobe_malloc_return_and_free(tmp_path: Path, capsys) -> None:
    """perf probe on libc malloc%return/free; leaky's leak_a (7) and leak_b (3) mallocs are found."""
    exe = tmp_path / "leaky"
    cc = subprocess.run(["gcc", "-O2", "-fno-omit-frame-pointer", "-pthread", "-o", str(exe), str(LEAKY_C)],
                        capture_output=True, text=True, check=False)
    assert cc.returncode == 0, cc.stderr
    data, out = tmp_path / "u.data", tmp_path / "u.parquet"
    try:
        for spec in ("kmlt_imp_m=malloc%return $retval", "kmlt_imp_f=free ptr=%di:x64"):
            res = _perf("probe", "-q", "-x", LIBC, "-a", spec)
            assert res.returncode == 0, res.stderr
        res = _perf("record", "-q", "-e", "probe_libc:kmlt_imp_*", "-g", "-o", str(data), "--", str(exe))
        assert res.returncode == 0, res.stderr
    finally:
        _perf("probe", "-q", "-d", "probe_libc:kmlt_imp_*")
    assert "kmlt_imp" not in _perf("probe", "-l").stdout
    want = collections.Counter(re.search(r"(probe_libc:\w+):", ln).group(1) for ln in _script(data, "event"))
    assert main(["import", str(data), "-o", str(out), "--alloc", "probe_libc:kmlt_imp_m__return//ptr=arg1/stack/",
                 "--free", "probe_libc:kmlt_imp_f//ptr=ptr/"]) == 0
    rec = open_recording(out)
    assert {k: v["samples"] for k, v in rec.metadata["counts"].items()} == dict(want)
    capsys.readouterr()
    assert main(["analyze", str(out)]) == 0
    report = capsys.readouterr().out
    first: list[str] = []  # first stack line of each leaked event
    lines = report.splitlines()
    for i, ln in enumerate(lines):
        if "probe_libc:kmlt_imp_m__return:" in ln:
            assert ln.split()[0] == "leaky"  # comm at allocation time, after exec
            first.append(lines[i + 1])
    assert sum(" leak_a+" in f for f in first) == 7
    assert sum(" leak_b+" in f for f in first) == 3


# ---------------------------------------------------------------- header features (table-driven)
def _with_features(src: Path, dst: Path, change: dict[int, bytes | None]) -> Path:
    """Copy of a perf.data with feature sections replaced (bytes), added, or removed (None)."""
    raw = src.read_bytes()
    d_off, d_size = struct.unpack_from("<QQ", raw, 40)
    bitmap = list(struct.unpack_from("<4Q", raw, 72))
    bits = [b for b in range(256) if bitmap[b // 64] >> (b % 64) & 1]
    feats = {}
    for i, bit in enumerate(bits):
        off, size = struct.unpack_from("<QQ", raw, d_off + d_size + 16 * i)
        feats[bit] = raw[off:off + size]
    for bit, blob in change.items():
        if blob is None:
            feats.pop(bit, None)
        else:
            feats[bit] = blob
    bitmap = [0, 0, 0, 0]
    for bit in feats:
        bitmap[bit // 64] |= 1 << (bit % 64)
    out = bytearray(raw[:d_off + d_size])
    struct.pack_into("<4Q", out, 72, *bitmap)
    pos = len(out) + 16 * len(feats)
    table, blobs = bytearray(), bytearray()
    for bit in sorted(feats):
        table += struct.pack("<QQ", pos + len(blobs), len(feats[bit]))
        blobs += feats[bit]
    dst.write_bytes(bytes(out + table + blobs))
    return dst


def test_feature_table_names_every_perf_feature() -> None:
    names = [f.name for f in perfreader.FEATURES.values()]
    assert sorted(perfreader.FEATURES) == list(range(1, 32)) and len(set(names)) == len(names)
    refused = {k for k, f in perfreader.FEATURES.items() if f.refuse}
    assert refused == {perfreader.F_AUXTRACE}
    assert all(f.parse is None for f in perfreader.FEATURES.values() if f.refuse)


def test_rewritten_features_round_trip(tmp_path: Path, pipes_data: Path) -> None:
    """The test helper itself: rewriting nothing keeps every feature and the import's rows."""
    same = _with_features(pipes_data, tmp_path / "same.data", {})
    a, b = perfreader.read_perf_data(pipes_data), perfreader.read_perf_data(same)
    assert a.features == b.features and a.values.keys() == b.values.keys() and not b.warnings


@pytest.mark.parametrize(("feat", "words"), [
    (27, ["compressed perf.data of type 0", "only zstd"]),  # HEADER_COMPRESSED of another type
    (18, ["AUX area data"]),
])
def test_unsupported_features_are_refused_in_one_line(tmp_path: Path, pipes_data: Path, capsys,
                                                      feat: int, words: list[str]) -> None:
    data = _with_features(pipes_data, tmp_path / f"f{feat}.data", {feat: b"\0" * 24})
    err = _one_error_line(capsys, ["import", str(data), "-o", str(tmp_path / "x.parquet")])
    assert all(w in err for w in words), err
    assert not (tmp_path / "x.parquet").exists()


def test_corrupt_compressed_records_are_one_line(tmp_path: Path, pipes_data: Path, capsys) -> None:
    """PERF_RECORD_COMPRESSED (81) and COMPRESSED2 (83, newer perf) holding no zstd data."""
    raw = bytearray(pipes_data.read_bytes())
    d_off = struct.unpack_from("<Q", raw, 40)[0]
    for typ in (81, 83):
        struct.pack_into("<I", raw, d_off, typ)
        data = tmp_path / f"r{typ}.data"
        data.write_bytes(bytes(raw))
        err = _one_error_line(capsys, ["import", str(data), "-o", str(tmp_path / "x.parquet")])
        assert "corrupt compressed record" in err, err


def test_directory_without_dir_format_is_refused(tmp_path: Path, pipes_data: Path, capsys) -> None:
    d = tmp_path / "perf.data"
    d.mkdir()
    shutil.copy(pipes_data, d / "data")
    (d / "data.0").write_bytes(b"")
    err = _one_error_line(capsys, ["import", str(d), "-o", str(tmp_path / "x.parquet")])
    assert "--threads" in err and "HEADER_DIR_FORMAT" in err, err


def _event_desc(names: list[str], attr_size: int = 16) -> bytes:
    out = struct.pack("<II", len(names), attr_size)
    for i, n in enumerate(names):
        s = n.encode() + b"\0" * (8 - len(n) % 8)
        out += b"\xaa" * attr_size + struct.pack("<II", 1, len(s)) + s + struct.pack("<Q", 100 + i)
    return out


def test_event_desc_names_whole_or_said_truncated() -> None:
    warnings: list[str] = []
    blob = _event_desc(["kmem:kmalloc", "cpu-clock", "probe_libc:malloc"])
    assert perfreader._event_desc(blob, warnings.append) == {
        0: "kmem:kmalloc", 1: "cpu-clock", 2: "probe_libc:malloc"}
    assert warnings == []
    start2 = len(_event_desc(["kmem:kmalloc"]))  # where each entry begins in `blob`
    start3 = len(_event_desc(["kmem:kmalloc", "cpu-clock"]))
    name2 = start2 + 16 + 8  # after the 2nd entry's attr and its (nr_ids, len)
    for cut, want in ((start3 - 1, {0: "kmem:kmalloc"}),  # 2nd entry's ids cut: not whole
                      (name2 + 3, {0: "kmem:kmalloc"}),  # inside the 2nd name: not half a name
                      (start2 + 5, {0: "kmem:kmalloc"}),  # inside the 2nd attr
                      (len(blob) - 12, {0: "kmem:kmalloc", 1: "cpu-clock"})):  # inside the 3rd name
        warnings.clear()
        assert perfreader._event_desc(blob[:cut], warnings.append) == want
        assert len(warnings) == 1 and f"names of {len(want)} of 3 events" in warnings[0], warnings
    warnings.clear()
    assert perfreader._event_desc(blob[:5], warnings.append) == {} and len(warnings) == 1


def test_truncated_event_desc_is_said_through_the_notice(tmp_path: Path, pipes_data: Path,
                                                         pipes_rec: Path, capsys) -> None:
    full = perfreader.read_perf_data(pipes_data).features[perfreader.F_EVENT_DESC]
    data = _with_features(pipes_data, tmp_path / "cut.data", {perfreader.F_EVENT_DESC: full[:-9]})
    out = tmp_path / "cut.parquet"
    capsys.readouterr()
    assert main(["import", str(data), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    said = [ln for ln in err.splitlines() if "HEADER_EVENT_DESC is truncated" in ln]
    nr = struct.unpack_from("<I", full)[0]  # kmalloc, kfree (and perf's dummy event with -a)
    assert len(said) == 1 and f"names of {nr - 1} of {nr} events" in said[0], err
    rec = open_recording(out)
    assert any("HEADER_EVENT_DESC is truncated" in n for n in rec.metadata["notes"])
    # tracepoints take their names from the formats: the samples are all still there
    assert rec.metadata["counts"] == open_recording(pipes_rec).metadata["counts"]
