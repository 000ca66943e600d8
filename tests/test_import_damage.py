"""Pipe-mode perf.data and damaged files, recorded here with the real perf and imported.

The workload (tests/c/pipe_holder.c) leaves N pipes open in a child: two kernel call chains under
alloc_pipe_info (pipe_inode_info and its buffer array) with N leaked objects each, under the
program's `main`. Expected sample counts come from `perf script` where it reads the file, and
from an independent record walk in this file (`walk`) where perf refuses it. Kernel symbols come
from a /proc/kallsyms snapshot given with --kallsyms, as if imported on another machine.
"""

from __future__ import annotations

import collections
import json
import os
import platform
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kmemleak_offline.cli import main
from kmemleak_offline.format.recording import open_recording

PERF = shutil.which("perf") or "perf"
C_FILE = Path(__file__).parent / "c" / "pipe_holder.c"
N = 43
CHURN = 5000  # pipes opened and closed after the leak: 20000 samples, most of a file recorded with -a
EVENTS = ["-e", "kmem:kmalloc", "-e", "kmem:kfree"]
TRACEFS = Path("/sys/kernel/tracing/events")
ROOT = Path(__file__).resolve().parents[1]
# sample_type bits, as in include/uapi/linux/perf_event.h
S_IP, S_TID, S_TIME, S_ADDR, S_ID, S_STREAM_ID, S_CPU, S_IDENTIFIER = 1, 2, 4, 8, 64, 512, 128, 1 << 16


# ------------------------------------------------------------------------ independent walk
def _tracefs_names() -> dict[int, str]:
    """tracepoint id -> kmem:NAME, from this machine's tracefs."""
    out = {}
    for name in ("kmalloc", "kfree"):
        text = (TRACEFS / "kmem" / name / "format").read_text()
        out[int(re.search(r"^ID: (\d+)$", text, re.MULTILINE).group(1))] = f"kmem:{name}"
    return out


@dataclass
class Walk:
    """What a plain per-record walk of a perf.data finds: whole sample records per event, the
    latest sample time per cpu, and where the whole records end."""

    counts: collections.Counter = field(default_factory=collections.Counter)
    last_time: dict[int, int] = field(default_factory=dict)
    end: int = 0
    lost: int = 0  # LOST records

    @property
    def samples(self) -> int:
        return sum(self.counts.values())


def walk(path: Path) -> Walk:
    raw = path.read_bytes()
    names = _tracefs_names()
    by_id: dict[int, tuple[int, int]] = {}  # sample id -> (config, sample_type)
    if struct.unpack_from("<Q", raw, 8)[0] == 16:  # pipe mode: attrs come as records
        pos, end = 16, len(raw)
    else:
        asz, a_off, a_size, d_off, d_size = struct.unpack_from("<5Q", raw, 16)
        for b in range(a_off, a_off + a_size, asz):
            config, stype = struct.unpack_from("<Q", raw, b + 8)[0], struct.unpack_from("<Q", raw, b + 24)[0]
            ids_off, ids_size = struct.unpack_from("<QQ", raw, b + asz - 16)
            by_id |= dict.fromkeys(struct.unpack_from(f"<{ids_size // 8}Q", raw, ids_off), (config, stype))
        pos, end = d_off, (min(len(raw), d_off + d_size) if d_size else len(raw))
    out = Walk()
    while pos + 8 <= end:
        typ, _misc, size = struct.unpack_from("<IHH", raw, pos)
        if typ == 66:  # pipe-mode tracing data: its payload follows the record
            size += struct.unpack_from("<I", raw, pos + 8)[0]
        if size < 8 or pos + size > end:
            break
        if typ == 2:
            out.lost += 1
        elif typ == 64:  # HEADER_ATTR: attr, then its ids
            asz = struct.unpack_from("<I", raw, pos + 12)[0]
            config, stype = struct.unpack_from("<Q", raw, pos + 16)[0], struct.unpack_from("<Q", raw, pos + 32)[0]
            ids = struct.unpack_from(f"<{(size - 8 - asz) // 8}Q", raw, pos + 8 + asz)
            by_id |= dict.fromkeys(ids, (config, stype))
        elif typ == 9:
            st = next(iter(by_id.values()))[1]  # the events here share one sample layout
            q = pos + 8 + (8 if st & S_IDENTIFIER else 0)
            id_at = pos + 8 if st & S_IDENTIFIER else q + 8 * sum(1 for b in (S_IP, S_TID, S_TIME, S_ADDR) if st & b)
            config = by_id[struct.unpack_from("<Q", raw, id_at)[0]][0]
            q += 8 * sum(1 for b in (S_IP, S_TID) if st & b)
            t = struct.unpack_from("<Q", raw, q)[0]
            q += 8 + 8 * sum(1 for b in (S_ADDR, S_ID, S_STREAM_ID) if st & b)
            cpu = struct.unpack_from("<I", raw, q)[0]
            out.counts[names[config]] += 1
            out.last_time[cpu] = max(out.last_time.get(cpu, 0), t)
        pos += size
    out.end = pos
    return out


# ------------------------------------------------------------------------------ helpers
def _perf(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([PERF, *args], capture_output=True, timeout=120, check=False, **kw)


def _script_counts(data: Path) -> tuple[collections.Counter, subprocess.CompletedProcess]:
    res = _perf("script", "-i", str(data), "-F", "event")
    found = re.findall(r"(kmem:\w+):", res.stdout.decode(errors="replace")) if res.returncode == 0 else []
    return collections.Counter(found), res


def _kill_child(pidfile: Path) -> None:
    try:
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(folder, the compiled holder, a /proc/kallsyms snapshot "copied off the target")."""
    d = tmp_path_factory.mktemp("damage")
    exe = d / "pipe_holder"
    subprocess.run(["gcc", "-O1", "-fno-omit-frame-pointer", "-o", str(exe), str(C_FILE)], check=True)
    snap = d / "target-kallsyms"
    snap.write_bytes(Path("/proc/kallsyms").read_bytes())
    assert snap.read_bytes().split(None, 1)[0].strip(b"0"), "run as root: kallsyms addresses are hidden"
    return d, exe, snap


def _import(src: Path | str, out: Path, snap: Path, *extra: str, stdin=None) -> subprocess.CompletedProcess:
    """`kmemleak-offline import` as a process (stdin can be fed)."""
    res = subprocess.run([sys.executable, "-m", "kmemleak_offline", "import", str(src), "-o", str(out),
                          "--kallsyms", str(snap), *extra], stdin=stdin, capture_output=True, text=True,
                         timeout=300, check=False, cwd=ROOT,
                         env=os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [
                             str(ROOT), os.environ.get("PYTHONPATH")]))})
    return res


def _holder_leaks(rec: Path, exe: Path, capsys) -> list[int]:
    """Objects of each leak group kmalloc'ed by alloc_pipe_info (not slab metadata allocated on
    the way) whose user frames are the holder's main."""
    capsys.readouterr()
    assert main(["analyze", str(rec), "--format", "json", "-j", "1"]) == 0
    groups = json.loads(capsys.readouterr().out)["reports"][-1]["groups"]
    return sorted(g["objects"] for g in groups
                  if len(g["stack"]) > 1 and g["stack"][1]["symbol"] == "alloc_pipe_info"
                  and any(f["symbol"] == "main" and f["dso"] == str(exe) for f in g["stack"]))


def _counts(rec: Path) -> dict[str, int]:
    return {k: v["samples"] for k, v in open_recording(rec).metadata["counts"].items()}


def _cut(src: Path, dst: Path, fraction: float) -> Path:
    raw = src.read_bytes()
    dst.write_bytes(raw[:int(len(raw) * fraction)])
    return dst


# ---------------------------------------------------------------------------- pipe mode
@pytest.fixture(scope="module")
def piped(work) -> tuple[Path, Path, str]:
    """`perf record -o - ... | tee saved | kmemleak-offline import -`: (recording, saved stream, stderr).

    Command mode: the importer starts slower than perf writes, so perf waits on the pipe; only the
    workload's few hundred records are in its rings, never enough to lose any."""
    d, exe, snap = work
    saved, live, pidfile = d / "saved.pipe", d / "live.parquet", d / "pipe.pid"
    cmd = (f"{PERF} record -q -g {' '.join(EVENTS)} -o - -- {exe} {N} {pidfile} | tee {saved} | "
           f"{sys.executable} -m kmemleak_offline import - -o {live} --kallsyms {snap}")
    try:
        res = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=300, check=False,
                             cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)})
    finally:
        _kill_child(pidfile)
    assert res.returncode == 0, res.stderr
    return live, saved, res.stderr


def test_pipe_mode_from_stdin_and_from_a_saved_stream(piped, work, tmp_path: Path, capsys) -> None:
    live, saved, err = piped
    _, exe, snap = work
    assert struct.unpack_from("<8sQ", saved.read_bytes()) == (b"PERFILE2", 16)  # a real pipe stream
    assert "salvaged" not in err and "damaged" not in err, err
    want, res = _script_counts(saved)
    assert res.returncode == 0 and sum(want.values()) > 2 * N, res.stderr
    assert walk(saved).counts == want and walk(saved).lost == 0
    assert _counts(live) == dict(want)
    assert _holder_leaks(live, exe, capsys) == [N, N]
    m = open_recording(live).metadata
    assert m["host"]["hostname"] == platform.node() and m["host"]["kernel_release"] == platform.release()
    assert "record" in m["options"]["perf_cmdline"] and "salvaged" not in m
    assert set(m["events"]) == {"kmem:kmalloc", "kmem:kfree"}
    # the saved stream, by path and redirected to stdin, imports the same
    for src, stdin in ((saved, None), ("-", saved)):
        out = tmp_path / f"again{stdin is None}.parquet"
        with open(stdin, "rb") if stdin else open(os.devnull, "rb") as f:
            r = _import(src, out, snap, stdin=f)
        assert r.returncode == 0, r.stderr
        assert _counts(out) == dict(want)
        assert _holder_leaks(out, exe, capsys) == [N, N]


def test_cut_pipe_stream_reads_like_perf_script(piped, work, tmp_path: Path, capsys) -> None:
    _, saved, _ = piped
    _, _, snap = work
    cut = _cut(saved, tmp_path / "cut.pipe", 0.6)
    want, res = _script_counts(cut)
    assert res.returncode == 0 and sum(want.values()) > 0, res.stderr  # perf script reads up to the cut
    w = walk(cut)
    assert w.counts == want and w.end < cut.stat().st_size  # the cut falls inside a record
    for src, stdin in ((cut, None), ("-", subprocess.PIPE)):
        out = tmp_path / f"cut{stdin is None}.parquet"
        if stdin is None:
            r = _import(src, out, snap)
        else:  # through a real pipe: no seeking
            cat = subprocess.Popen(["cat", str(cut)], stdout=subprocess.PIPE)
            r = _import(src, out, snap, stdin=cat.stdout)
            cat.wait()
        assert r.returncode == 0, r.stderr
        assert _counts(out) == dict(want)
        said = [ln for ln in r.stderr.splitlines() if "salvaged:" in ln]
        assert len(said) == 1 and f"up to byte {w.end}" in said[0] and "perf script" in said[0], r.stderr
        s = open_recording(out).metadata["salvaged"]
        assert s["samples"] == sum(want.values()) and s["end_offset"] == w.end
        assert "pipe stream" in s["reason"] and s["formats"] == ["file"]
        capsys.readouterr()
        assert main(["info", str(out)]) == 0
        assert f"salvaged:    {s['records']} whole records ({s['samples']} samples) up to byte {w.end}" \
            in capsys.readouterr().out


def test_pipe_stream_without_its_tracing_data_takes_formats_by_name(piped, work, tmp_path: Path) -> None:
    """A stream whose HEADER_TRACING_DATA record is gone still names its events (EVENT_DESC,
    EVENT_UPDATE): the bundled formats are taken by name."""
    _, saved, _ = piped
    _, _, snap = work
    raw = saved.read_bytes()
    pos = 16
    while True:
        typ, _m, size = struct.unpack_from("<IHH", raw, pos)
        if typ == 66:
            size += struct.unpack_from("<I", raw, pos + 8)[0]
            break
        pos += size
    stripped = tmp_path / "notd.pipe"
    stripped.write_bytes(raw[:pos] + raw[pos + size:])
    out = tmp_path / "notd.parquet"
    r = _import(stripped, out, snap)
    assert r.returncode == 0, r.stderr
    assert "from the formats bundled with kmemleak-offline (matched by name)" in r.stderr
    assert _counts(out) == dict(walk(saved).counts)


def test_compressed_pipe_stream_whole_and_cut(work, tmp_path: Path) -> None:
    """`perf record -z -o -`: COMPRESSED records in a stream; cut inside one, the records
    decompressed before the cut are read, as perf script reads them."""
    _, exe, snap = work
    data, pidfile = tmp_path / "z.pipe", tmp_path / "z.pid"
    try:
        with open(data, "wb") as f:
            res = subprocess.run([PERF, "record", "-q", "-z", "-g", *EVENTS, "-o", "-", "--", str(exe), str(N),
                                  str(pidfile), str(CHURN)], stdout=f, stderr=subprocess.PIPE, timeout=120,
                                 check=False)
    finally:
        _kill_child(pidfile)
    assert res.returncode == 0, res.stderr
    raw, pos, comp = data.read_bytes(), 16, []
    while pos < len(raw):  # where the COMPRESSED/COMPRESSED2 records are
        typ, _m, size = struct.unpack_from("<IHH", raw, pos)
        if typ == 66:
            size += struct.unpack_from("<I", raw, pos + 8)[0]
        if typ in (81, 83):
            comp.append((pos, size))
        pos += size
    assert len(comp) >= 3, comp  # the workload's 20000 samples take several
    cut = tmp_path / "zcut.pipe"  # cut inside the last compressed record
    cut.write_bytes(raw[:comp[-1][0] + comp[-1][1] // 2])
    for src in (data, cut):
        want, r = _script_counts(src)
        assert r.returncode == 0 and sum(want.values()) > 0, r.stderr
        out = src.with_suffix(".parquet")
        r = _import(src, out, snap)
        assert r.returncode == 0, r.stderr
        assert _counts(out) == dict(want)
        assert ("salvaged:" in r.stderr) == (src == cut)


# ------------------------------------------------------------------------ file cut at 60 %
@pytest.fixture(scope="module")
def filed(work) -> Path:
    d, exe, _ = work
    data, pidfile = d / "whole.data", d / "file.pid"
    try:
        res = _perf("record", "-q", "-a", "-g", *EVENTS, "-o", str(data), "--", str(exe), str(N), str(pidfile),
                    str(CHURN))
    finally:
        _kill_child(pidfile)
    assert res.returncode == 0, res.stderr
    return data


def test_file_cut_at_60_percent_is_salvaged(filed, work, tmp_path: Path, capsys) -> None:
    _, _, snap = work
    cut = _cut(filed, tmp_path / "cut.data", 0.6)
    w = walk(cut)
    assert w.samples > CHURN
    want, res = _script_counts(cut)
    if res.returncode == 0:  # perf 6.1 refuses such a file; a newer one may read it
        assert want == w.counts
    out = tmp_path / "cut.parquet"
    r = _import(cut, out, snap)
    assert r.returncode == 0, r.stderr
    assert _counts(out) == dict(w.counts)
    assert "damaged perf.data: the file is cut short" in r.stderr
    assert "kmem:kmalloc, kmem:kfree from the formats bundled with kmemleak-offline (matched by id)" in r.stderr
    said = [ln for ln in r.stderr.splitlines() if "salvaged:" in ln]
    assert len(said) == 1 and f"({w.samples} samples) up to byte {w.end} of {cut.stat().st_size}" in said[0]
    s = open_recording(out).metadata["salvaged"]
    assert s["formats"] == ["the formats bundled with kmemleak-offline"] and "cut short" in s["reason"]
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "salvaged:    " in capsys.readouterr().out
    # the target's formats given by hand (a copy of its tracefs) import the same
    fmts = tmp_path / "events"
    for f in (TRACEFS / "kmem").glob("*/format"):  # as `cp --parents kmem/*/format DIR` would
        (fmts / "kmem" / f.parent.name).mkdir(parents=True)
        (fmts / "kmem" / f.parent.name / "format").write_text(f.read_text())
    out2 = tmp_path / "cut2.parquet"
    r = _import(cut, out2, snap, "--formats", str(fmts))
    assert r.returncode == 0, r.stderr
    assert f"from --formats {fmts} (matched by id)" in r.stderr
    assert _counts(out2) == dict(w.counts)


def test_file_cut_inside_its_feature_sections(filed, work, tmp_path: Path) -> None:
    """All records and the formats (the first feature section) are there; later features are not."""
    _, _, snap = work
    raw = filed.read_bytes()
    d_off, d_size = struct.unpack_from("<QQ", raw, 40)
    cut = tmp_path / "feat.data"
    cut.write_bytes(raw[:len(raw) - 16])  # the last feature section (after the formats) cut short
    want, res = _script_counts(filed)
    assert res.returncode == 0
    out = tmp_path / "feat.parquet"
    r = _import(cut, out, snap, "--formats", str(TRACEFS))  # not needed: said, not used
    assert r.returncode == 0, r.stderr
    assert "inside its feature sections: missing" in r.stderr
    assert [ln.split("import: ")[1] for ln in r.stderr.splitlines() if "formats:" in ln] == [
        f"formats: --formats {TRACEFS} not used: the perf.data has the formats of its events"]
    assert _counts(out) == dict(want)
    s = open_recording(out).metadata["salvaged"]
    assert s["formats"] == ["file"] and s["end_offset"] == d_off + d_size


def test_formats_that_do_not_fit_are_refused(filed, work, tmp_path: Path, capsys) -> None:
    _, _, snap = work
    cut = _cut(filed, tmp_path / "cut.data", 0.6)
    # a kmalloc format with a field far past the payload (another kernel's layout), same id
    fmts = tmp_path / "events" / "kmem"
    for name in ("kmalloc", "kfree"):
        (fmts / name).mkdir(parents=True)
        text = (TRACEFS / "kmem" / name / "format").read_text()
        if name == "kmalloc":
            text = text.replace("\nprint fmt:", "\tfield:unsigned long far;\toffset:512;\tsize:8;\tsigned:0;\n"
                                "\nprint fmt:")
        (fmts / name / "format").write_text(text)
    r = _import(cut, tmp_path / "x.parquet", snap, "--formats", str(tmp_path / "events"))
    assert r.returncode == 2 and r.stderr.splitlines()[-1].count("does not fit the recorded payloads") == 1
    assert "Traceback" not in r.stderr and not (tmp_path / "x.parquet").exists()
    # tracepoint ids no format has: one clear line
    raw = bytearray(cut.read_bytes())
    asz, a_off, a_size = struct.unpack_from("<3Q", raw, 16)
    for b in range(a_off, a_off + a_size, asz):
        if struct.unpack_from("<I", raw, b)[0] == 2:
            struct.pack_into("<Q", raw, b + 8, 60000 + struct.unpack_from("<Q", raw, b + 8)[0])
    odd = tmp_path / "odd.data"
    odd.write_bytes(bytes(raw))
    r = _import(odd, tmp_path / "y.parquet", snap)
    last = r.stderr.splitlines()[-1]
    assert r.returncode == 2 and "no tracepoint formats" in last and "--formats DIR" in last, r.stderr
    assert not (tmp_path / "y.parquet").exists()


# --------------------------------------------------------------------- SIGKILLed perf record
@pytest.fixture(scope="module")
def killed(work) -> Path:
    """perf record -a on kmalloc/kfree, SIGKILLed once every cpu's records written after the
    workload ended are in the file: each cpu's ring is written in order, so a sample of that cpu
    timed after the workload means all of its earlier records are in. The workload starts once
    every cpu has a sample timed after perf started: perf enables its events only after writing
    the side-band of every process (long on a loaded machine)."""
    d, exe, _ = work
    data, pidfile = d / "killed.data", d / "killed.pid"
    # --exclude-perf: perf's own writes would feed back; --no-buffering: records written at once;
    # 8 MB rings: perf drains them at every record, nothing of the workload is lost (checked)
    started = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    perf = subprocess.Popen([PERF, "record", "-q", "-a", "-g", "-k", "mono", "--no-buffering", "-m", "2048",
                             "-e", "kmem:kmalloc", "--exclude-perf", "-e", "kmem:kfree", "--exclude-perf",
                             "-o", str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    cpus = sorted(os.sched_getaffinity(0))

    def written_past(t: int) -> None:
        """Until every cpu has a sample timed after t in the file."""
        while not all(walk(data).last_time.get(c, 0) > t for c in cpus):
            assert time.monotonic() < deadline and perf.poll() is None, "perf record writes nothing"
            for c in cpus:  # something that kmallocs on each cpu
                subprocess.run(["true"], check=True, preexec_fn=lambda c=c: os.sched_setaffinity(0, {c}))
            time.sleep(0.05)

    try:
        while not data.exists() or data.stat().st_size < 4096:  # the header
            assert time.monotonic() < deadline and perf.poll() is None, "perf record did not start"
            time.sleep(0.05)
        written_past(started)
        subprocess.run([str(exe), str(N), str(pidfile)], check=True, timeout=60)
        written_past(time.clock_gettime_ns(time.CLOCK_MONOTONIC))
        perf.send_signal(signal.SIGKILL)
        perf.wait(timeout=30)
    finally:
        if perf.poll() is None:
            perf.kill()
            perf.wait()
        _kill_child(pidfile)
    assert struct.unpack_from("<Q", data.read_bytes(), 48)[0] == 0  # data size never written
    return data


def test_sigkilled_perf_record_is_salvaged(killed, work, tmp_path: Path, capsys) -> None:
    _, exe, snap = work
    res = _perf("script", "-i", str(killed))
    assert res.returncode != 0 or not res.stdout.strip()  # perf refuses it
    w = walk(killed)
    assert w.lost == 0
    out = tmp_path / "k.parquet"
    r = _import(killed, out, snap)
    assert r.returncode == 0, r.stderr
    assert "the header's data size is 0" in r.stderr and "salvaged:" in r.stderr
    assert _counts(out) == dict(w.counts)
    assert _holder_leaks(out, exe, capsys) == [N, N]
    m = open_recording(out).metadata
    assert m["salvaged"]["samples"] == w.samples and m["salvaged"]["end_offset"] == w.end
    assert m["clock"]["perf_clock"] == "monotonic" and m["clock"]["start_ns"] > 0
    assert "time span" in next(ln for ln in r.stderr.splitlines() if "salvaged:" in ln)
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "salvaged:" in capsys.readouterr().out


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("data", "words"), [
    (b"PERFILE2\x10\0", "truncated perf.data header"),
    (b"garbage on stdin, not perf\n" * 4, "not a perf.data file"),
    (b"", "not a perf.data file"),
    (b"PERFILE2" + struct.pack("<Q", 16) + b"\x05\0\0\0\0\0\x10\0" + b"\0" * 8, "before any PERF_RECORD_HEADER_ATTR"),
])
def test_bad_streams_are_one_line(work, tmp_path: Path, data: bytes, words: str) -> None:
    _, _, snap = work
    cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert cat.stdin is not None
    cat.stdin.write(data)
    cat.stdin.close()
    r = _import("-", tmp_path / "o.parquet", snap, stdin=cat.stdout)
    cat.wait()
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and words in r.stderr, r.stderr
    assert not (tmp_path / "o.parquet").exists()


def test_a_perf_data_file_through_a_pipe_and_stdin_without_o(filed, work, tmp_path: Path) -> None:
    _, _, snap = work
    with open(filed, "rb") as f:  # a regular file on stdin is read by its path
        r = _import("-", tmp_path / "f.parquet", snap, stdin=f)
    assert r.returncode == 0, r.stderr
    cat = subprocess.Popen(["cat", str(filed)], stdout=subprocess.PIPE)
    r = _import("-", tmp_path / "g.parquet", snap, stdin=cat.stdout)
    cat.kill()
    cat.wait()
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "not a pipe stream" in r.stderr
    r = subprocess.run([sys.executable, "-m", "kmemleak_offline", "import", "-"], capture_output=True,
                       text=True, cwd=ROOT, stdin=subprocess.DEVNULL, check=False)
    assert r.returncode == 2 and "give the recording to write with -o" in r.stderr
