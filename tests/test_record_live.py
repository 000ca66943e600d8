"""Live recorder tests: real tracepoints on this kernel, as root, checked on what was recorded.

Workloads are small Python programs (pipes kept open or closed). Leaks are worked out here with a
plain dict replay over the decoded samples, and stacks are symbolised with the recording's own
ksym rows, so these tests check the recorder, not the analyser.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from kmemleak_offline.format.recording import open_recording
from kmemleak_offline.format.tracefs import decode, parse_format

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="live perf tests need root")

ROOT = Path(__file__).resolve().parents[1]
RECORD = [sys.executable, "-m", "recorder", "record"]
KK = ["--alloc", "kmem:kmalloc", "--free", "kmem:kfree/ptr != 0/"]
MARKER = 2**64 - 4096

PIPES = textwrap.dedent("""
    import os, sys, time, threading
    n, mode, pre, post = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    if pre < 0:   # wait for the test's go (a line on stdin): it sends it once recording is on
        sys.stdin.readline()
    else:
        time.sleep(pre)
    def work():
        ps = [os.pipe() for _ in range(n)]
        if mode == "close":
            for a, b in ps:
                os.close(a); os.close(b)
        print(threading.get_native_id(), flush=True)
        time.sleep(post)
    if len(sys.argv) > 5:   # in a new thread (follow-threads test)
        t = threading.Thread(target=work); t.start(); t.join()
    else:
        work()
""")


@pytest.fixture
def workload(tmp_path: Path) -> Path:
    p = tmp_path / "pipes.py"
    p.write_text(PIPES)
    return p


def run_record(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(RECORD + args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          check=False)


def record_then_go(args: list[str], workloads: list[subprocess.Popen],
                   timeout: float = 60) -> subprocess.CompletedProcess:
    """Start the recorder, wait for its 'recording' line (events are on), then tell the waiting
    workloads to go: the workload never races the recorder's start-up, however loaded the box."""
    rec = subprocess.Popen(RECORD + args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        first = rec.stderr.readline()  # the 'recording' line (or an error: go all the same)
        for w in workloads:
            w.stdin.write("go\n")
            w.stdin.flush()
        out, err = rec.communicate(timeout=timeout)
    finally:
        if rec.poll() is None:
            rec.kill()
            rec.wait()
    return subprocess.CompletedProcess(rec.args, rec.returncode, out, first + err)


def events(path: Path):
    """The recording with event rows: a raw one (killed recorder) converted as `analyze` does."""
    from kmemleak_offline.commands.convert import converted

    return converted(open_recording(path))


def wait_marked_killed(out: Path, timeout: float = 60) -> None:
    """The converter outlives a killed recorder: wait until it has sealed the parts and said so."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(Exception):  # a part being renamed in: look again
            if open_recording(out).metadata.get("stopped") == "recorder killed":
                return
        time.sleep(0.1)
    raise AssertionError("the converter never marked the recording 'recorder killed'")


def samples(path: Path) -> tuple[dict, list[dict]]:
    """Metadata and the decoded samples (event, time, pid, tid, cpu, ptr, stack names)."""
    rec = events(path)
    meta = rec.metadata
    ks = rec.table(["ksym"], ["addr", "name"]).sort_by("addr")
    kaddr = ks.column("addr").to_numpy()
    kname = np.array(ks.column("name").to_pylist(), dtype=object)
    st = rec.table(["stack"], ["stack_id", "callchain"]).to_pylist()
    stacks = {}
    for r in st:
        ips = np.array(r["callchain"], dtype=np.uint64)
        kern = ips[(ips < MARKER) & (ips >= 0xFFFF800000000000)]
        names = kname[np.searchsorted(kaddr, kern, side="right") - 1].tolist()
        stacks[r["stack_id"]] = {"names": names, "words": r["callchain"]}
    t = rec.table(["sample"])
    out = []
    for ev in set(t.column("event").cast("string").to_pylist()):
        sub = t.filter(pc.equal(t.column("event").cast("string"), ev))
        fmt = parse_format(meta["events"][ev]["format"], ev.split(":")[0])
        ptr = decode(fmt, sub.column("raw").combine_chunks(), ["ptr"])["ptr"]
        for row, p in zip(sub.select(["time", "pid", "tid", "cpu", "stack_id", "seq"]).to_pylist(),
                          ptr.tolist()):
            row["event"], row["ptr"] = ev, p
            row["stack"] = stacks.get(row["stack_id"], {"names": [], "words": []})
            out.append(row)
    out.sort(key=lambda r: (r["time"], r["cpu"], r["seq"]))
    return meta, out


def leaks(rows: list[dict]) -> list[dict]:
    """Plain replay: alloc inserts ptr (replacing), free removes it; what is left leaked."""
    live: dict[int, dict] = {}
    for r in rows:
        if r["event"] == "kmem:kmalloc":
            live[r["ptr"]] = r
        else:
            live.pop(r["ptr"], None)
    return list(live.values())


def from_pipe(r: dict) -> bool:
    """Allocated by alloc_pipe_info itself (the frame after the allocator), not slab internals."""
    return "alloc_pipe_info" in r["stack"]["names"][:2]


def pipe_leaks(rows: list[dict], **match) -> list[dict]:
    return [r for r in leaks(rows) if from_pipe(r) and all(r[k] == v for k, v in match.items())]


def biggest_group(objs: list[dict]) -> int:
    counts: dict[int, int] = {}
    for r in objs:
        counts[r["stack_id"]] = counts.get(r["stack_id"], 0) + 1
    return max(counts.values(), default=0)


def one_line_error(res: subprocess.CompletedProcess, code: int, needle: str) -> None:
    assert res.returncode == code, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in res.stderr, res.stderr


# ------------------------------------------------------------------ -- CMD


@pytest.mark.parametrize("mode", ["keep", "close"])
def test_command_pipes_kept_open_leak_and_closed_do_not(tmp_path: Path, workload: Path,
                                                         mode: str) -> None:
    n = 64
    out = tmp_path / "cmd.parquet"
    t0 = time.monotonic()
    res = run_record(KK + ["-g", "-o", str(out), "--duration", "30s", "--",
                           sys.executable, str(workload), str(n), mode, "0.2", "0.3"])
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - t0 < 20  # stopped when the command ended, not at --duration
    assert out.is_file() and not Path(str(out) + ".parts").exists()
    meta, rows = samples(out)
    child = int(res.stdout.split()[-1])  # the workload prints its tid (== pid here)
    assert {r["pid"] for r in rows} == {child}  # only the traced command
    assert meta["options"]["command"][0] == sys.executable
    rec = open_recording(out)
    comms = rec.table(["comm"]).to_pylist()
    assert any(c["pid"] == child and c["exec"] for c in comms)  # COMM_EXEC side-band
    maps = rec.table(["mmap"]).to_pylist()
    assert any(m["pid"] == child and m["build_id"] for m in maps)  # MMAP2 with build-id
    allocs = [r for r in rows if r["event"] == "kmem:kmalloc" and from_pipe(r)]
    assert len(allocs) >= n
    assert any(w == 2**64 - 512 for r in allocs for w in r["stack"]["words"])  # user chain
    leaked = pipe_leaks(rows)
    if mode == "keep":
        assert biggest_group(leaked) >= n
    else:
        assert leaked == []


# ---------------------------------------------------------------------- -p / -t


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def test_pid_mode_follows_new_threads(tmp_path: Path, workload: Path) -> None:
    n = 40
    proc = _start([str(workload), str(n), "keep", "-1", "3", "thread"])
    try:
        out = tmp_path / "p.parquet"
        res = record_then_go(KK + ["-g", "-p", str(proc.pid), "--duration", "3s", "-o", str(out)],
                             [proc])
        assert res.returncode == 0, res.stderr
        worker = int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
    assert worker != proc.pid  # the thread was created after attaching
    meta, rows = samples(out)
    assert rows and {r["pid"] for r in rows} == {proc.pid}
    assert biggest_group(pipe_leaks(rows, tid=worker)) >= n
    assert meta["options"]["pids"] == [proc.pid]
    rec = open_recording(out)
    start = meta["clock"]["start_ns"]
    maps = [m for m in rec.table(["mmap"]).to_pylist() if m["pid"] == proc.pid]
    exe = os.path.realpath(sys.executable)
    assert any(m["time"] == start and m["filename"] == exe and m["build_id"] for m in maps)


def test_tid_mode_records_only_that_thread(tmp_path: Path, workload: Path) -> None:
    # two processes making pipes; attach to one thread only
    a = _start([str(workload), "30", "keep", "-1", "2"])
    b = _start([str(workload), "30", "keep", "-1", "2"])
    try:
        out = tmp_path / "t.parquet"
        res = record_then_go(KK + ["-g", "-t", str(a.pid), "--duration", "3s", "-o", str(out)],
                             [a, b])
        assert res.returncode == 0, res.stderr
    finally:
        for p in (a, b):
            p.kill()
            p.wait()
    _, rows = samples(out)
    assert {r["tid"] for r in rows} == {a.pid}
    assert len(pipe_leaks(rows)) >= 30


# ---------------------------------------------------------------------- -C


def test_cpu_mode_records_only_listed_cpus(tmp_path: Path, workload: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.fail("needs 2 CPUs")
    on0 = subprocess.Popen(["taskset", "-c", "0", sys.executable, str(workload), "50", "keep",
                            "-1", "3"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    on1 = subprocess.Popen(["taskset", "-c", "1", sys.executable, str(workload), "50", "keep",
                            "-1", "3"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        out = tmp_path / "c.parquet"
        res = record_then_go(KK + ["-g", "-C", "0", "--duration", "3s", "-o", str(out)], [on0, on1])
        assert res.returncode == 0, res.stderr
    finally:
        for p in (on0, on1):
            p.kill()
            p.wait()
    meta, rows = samples(out)
    assert {r["cpu"] for r in rows} == {0}
    assert meta["options"]["cpus"] == [0]
    assert biggest_group(pipe_leaks(rows, pid=on0.pid)) >= 50
    assert pipe_leaks(rows, pid=on1.pid) == []
    # CPU mode: no user call chains (exclude_callchain_user)
    assert not any(w == 2**64 - 512 for r in rows for w in r["stack"]["words"])


# ---------------------------------------------------------------------- stop / crash


def test_duration_stops_and_leaves_one_file(tmp_path: Path) -> None:
    out = tmp_path / "d.parquet"
    t0 = time.monotonic()
    res = run_record(KK + ["--duration", "1s", "-o", str(out)])
    wall = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    assert wall < 15
    meta = open_recording(out).metadata
    span = (meta["clock"]["stop_ns"] - meta["clock"]["start_ns"]) / 1e9
    assert 0.95 <= span <= 3.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.parquet"]
    assert meta["alloc"] and meta["free"] and meta["events"]["kmem:kmalloc"]["format"]
    assert meta["clock"]["anchor"]["realtime_ns"] > 1.6e18


def _loader(seconds: float) -> subprocess.Popen:
    code = (f"import os,time\nend=time.time()+{seconds}\nwhile time.time()<end:\n"
            " a,b=os.pipe(); os.close(a); os.close(b)\n")
    return subprocess.Popen([sys.executable, "-c", code])


def test_sigint_sigusr1_and_sigkill_partial_recording(tmp_path: Path) -> None:
    loads = [_loader(6) for _ in range(2)]
    try:
        out = tmp_path / "k.parquet"
        rec = subprocess.Popen(RECORD + KK + ["-g", "-o", str(out)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        parts = Path(str(out) + ".parts")
        deadline = time.monotonic() + 30
        while len(list(parts.glob("part-*.parquet"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)  # initial state part + two 1 s batches
        rec.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        rec.kill()  # SIGKILL: no chance to convert
        _, err = rec.communicate(timeout=10)
        assert "events" in err  # live stats on SIGUSR1
        wait_marked_killed(out)
        assert parts.is_dir() and not out.exists() and not list(parts.glob(".ring-*"))
        r = open_recording(out)  # the parts folder is a (raw) recording
        assert r.partial and r.table(["chunk"], ["ring"]).num_rows > 0
        r = events(out)  # converted as analyze does
        n = r.table(["sample"], ["time"]).num_rows
        assert n > 1000 and r.table(["ksym"], ["addr"]).num_rows > 1000
        assert r.metadata["counts"]["kmem:kmalloc"]["samples"] > 0
        assert r.metadata["clock"]["stop_ns"] > r.metadata["clock"]["start_ns"]
        assert r.metadata["stopped"] == "recorder killed"
        assert r.metadata["clock"]["stop_ns"] >= max(r.table(["sample"], ["time"]).column("time").to_pylist())

        out2 = tmp_path / "i.parquet"
        loads += [_loader(4) for _ in range(2)]  # the first ones may be done by now
        rec = subprocess.Popen(RECORD + KK + ["-o", str(out2)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert "recording" in rec.stderr.readline()  # events are on (start-up varies with load)
        time.sleep(0.5)
        rec.send_signal(signal.SIGINT)
        assert rec.wait(timeout=20) == 0
        assert out2.is_file() and not Path(str(out2) + ".parts").exists()
        assert open_recording(out2).table(["sample"], ["time"]).num_rows > 0
    finally:
        for p in loads:
            p.kill()
            p.wait()


def test_tiny_ring_under_load_gives_lost_rows(tmp_path: Path) -> None:
    """Losses are made certain, not hoped for: once the recorder says it is recording, it is
    stopped (SIGSTOP) for a second while the load runs, so its 1-page rings overflow."""
    out = tmp_path / "l.parquet"
    rec = subprocess.Popen(RECORD + KK + ["-g", "-m", "1", "--duration", "3s", "-o", str(out)],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    loads: list[subprocess.Popen] = []
    try:
        line = rec.stderr.readline()
        assert "recording" in line and "Ctrl-C to stop" in line, line
        loads = [_loader(4) for _ in range(2)]
        time.sleep(0.2)
        rec.send_signal(signal.SIGSTOP)
        time.sleep(1.0)
        rec.send_signal(signal.SIGCONT)
        err = rec.communicate(timeout=60)[1]
        assert rec.returncode == 0, err
    finally:
        rec.send_signal(signal.SIGCONT)
        for p in loads:
            p.kill()
            p.wait()
        if rec.poll() is None:
            rec.kill()
            rec.wait()
    r = open_recording(out)
    lost = r.table(["lost"]).to_pylist()
    assert lost and all(x["lost"] > 0 and x["cpu"] in (0, 1) for x in lost)
    # a LOST record reports its ring's losses, whatever event id it carries: no event on the row,
    # the records counted per ring in the metadata; per event only PERF_FORMAT_LOST
    assert all(x["event"] is None for x in lost)
    by_ring = r.metadata["lost_by_ring"]
    assert sum(x["lost_records"] for x in by_ring) == len(lost)
    assert sum(x["lost"] for x in by_ring) == sum(x["lost"] for x in lost)
    assert {x["cpu"] for x in by_ring} == {x["cpu"] for x in lost}
    assert all("lost_records" not in c for c in r.metadata["counts"].values())
    assert sum(c["lost"] for c in r.metadata["counts"].values()) > 0


# ---------------------------------------------------------------------- filters, errors


def _filter_file() -> str:
    return Path("/sys/kernel/tracing/events/kmem/kmalloc/filter").read_text()


def test_kernel_filter_and_userspace_fallback(tmp_path: Path) -> None:
    before = _filter_file()
    out = tmp_path / "f.parquet"
    res = run_record(["--alloc", "kmem:kmalloc/bytes_req == bytes_alloc/", "--free",
                      "kmem:kfree/ptr != 0/", "--duration", "1s", "-o", str(out)])
    assert res.returncode == 0, res.stderr
    assert "kmem:kmalloc filters 'bytes_req == bytes_alloc' in userspace" in res.stdout
    meta, rows = samples(out)
    assert meta["options"]["kernel_filters"] == {"kmem:kfree": "ptr != 0"}
    assert all(r["ptr"] != 0 for r in rows if r["event"] == "kmem:kfree")
    assert _filter_file() == before  # no tracefs state left behind


def test_errors_are_one_line(tmp_path: Path) -> None:
    o = ["-o", str(tmp_path / "e.parquet"), "--duration", "1s"]
    one_line_error(run_record(["--alloc", "kmem:nosuch", "--free", "kmem:kfree"] + o), 2,
                   "kmem:nosuch not found")
    one_line_error(run_record(["--alloc", "kmem:mm_page_alloc", "--free", "kmem:kfree"] + o), 2,
                   "ptr attribute is not set")
    one_line_error(run_record(["--alloc", "kmem:kmalloc/nosuchfield > 1/", "--free",
                               "kmem:kfree"] + o), 2, "nosuchfield")
    one_line_error(run_record(KK + ["-p", "999999999"] + o), 2, "999999999 does not exist")
    one_line_error(run_record(KK + ["-m", "3"] + o), 2, "power of two")
    one_line_error(run_record(KK + ["--duration", "10x", "-o", "x.parquet"]), 2, "--duration")
    env = dict(os.environ, KMEMLEAK_OFFLINE_TRACEFS=str(tmp_path / "no" / "tracefs"))
    res = subprocess.run(RECORD + KK + o, cwd=ROOT, capture_output=True, text=True, env=env,
                         check=False)
    one_line_error(res, 1, "mount -t tracefs")
    assert not list(tmp_path.glob("e.parquet*"))


def expression_error(res: subprocess.CompletedProcess, headline: str, text: str, pos: int) -> None:
    """Exit 2; a headline, then perf-prof's block: the text, a caret under `pos`, the fields."""
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[0].startswith("kmemleak-offline record: ") and headline in lines[0], lines
    assert lines[1] == text and lines[2].index("^") == pos and lines[3] == "Available variables:"
    assert any(line.split()[-1] == "bytes_alloc" for line in lines[4:]), lines


def test_bad_expressions_are_refused_before_recording(tmp_path: Path) -> None:
    """A ptr=/size= that does not compile would make a recording its own analysis refuses."""
    o = ["-o", str(tmp_path / "e.parquet"), "--duration", "1s"]
    expression_error(run_record(["--alloc", "kmem:kmalloc//ptr=nosuchfield+/", "--free", "kmem:kfree"]
                                + o), "kmem:kmalloc ptr=nosuchfield+: undefined variable",
                     "nosuchfield+", 11)
    expression_error(run_record(["--alloc", "kmem:kmalloc//size=bytes_alloc*/", "--free", "kmem:kfree"]
                                + o), "kmem:kmalloc size=bytes_alloc*", "bytes_alloc*", 11)
    expression_error(run_record(["--alloc", "kmem:kmalloc/bytes_alloc >/", "--free", "kmem:kfree"]
                                + o), "rejected by the kernel, and not a valid expression",
                     "bytes_alloc >", 12)
    assert not list(tmp_path.glob("e.parquet*"))


def test_not_root_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from recorder.__main__ import app

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    res = CliRunner().invoke(app, ["record", *KK, "-o", str(tmp_path / "x.parquet")])
    assert res.exit_code == 1 and "needs root" in res.output
    assert "Traceback" not in res.output


# ---------------------------------------------------------------------- start, crash, outputs

LATE = r"""
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {  /* sleep until CLOCK_MONOTONIC argv[1] s, then kmalloc */
    double until = atof(argv[1]);
    struct timespec ts;
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &ts);
        if (ts.tv_sec + ts.tv_nsec / 1e9 >= until) break;
        usleep(10000);
    }
    int p[2];
    for (int i = 0; i < 20; i++) if (pipe(p) == 0) { close(p[0]); close(p[1]); }
    return 0;
}
"""


def test_process_started_during_setup_has_its_comm(tmp_path: Path) -> None:
    """Processes started while the recorder sets up (kallsyms, fork...) exec before the events
    are on and only allocate later: their comm comes from the /proc snapshot, which must be
    taken once the side-band is on (it was taken ~1 s before enabling)."""
    src = tmp_path / "late.c"
    src.write_text(LATE)
    exe = tmp_path / "kmlolate"
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(src)], check=True)
    out = tmp_path / "late.parquet"
    rec = subprocess.Popen(RECORD + KK + ["-o", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    kids = []
    try:
        wake = time.monotonic() + 6.0
        end = time.monotonic() + 4.0
        while time.monotonic() < end:  # one every 40 ms through the whole set-up
            kids.append(subprocess.Popen([str(exe), f"{wake:.3f}"]))
            time.sleep(0.04)
        for k in kids:
            assert k.wait(timeout=30) == 0
        time.sleep(0.3)
        rec.send_signal(signal.SIGINT)
        _, err = rec.communicate(timeout=60)
        assert rec.returncode == 0, err
    finally:
        for p in kids + [rec]:
            if p.poll() is None:
                p.kill()
                p.wait()
    r = open_recording(out)
    pids = {k.pid for k in kids}
    sampled = {p for p in r.table(["sample"], ["pid"]).column("pid").to_pylist() if p in pids}
    assert len(sampled) > len(pids) // 2, "the children allocated while recording"
    comm = r.table(["comm"], ["pid", "comm"]).to_pylist()
    named = {c["pid"] for c in comm if c["pid"] in pids and c["comm"] == "kmlolate"}
    assert sorted(sampled - named) == [], "sampled children without a comm"
    start = r.metadata["clock"]["start_ns"]
    assert min(t for t in r.table(["sample"], ["time"]).column("time").to_pylist()) >= start


def test_recorder_killed_during_setup_never_runs_the_command(tmp_path: Path) -> None:
    """-- CMD is held until the events are on; a recorder that dies first must not let it run."""
    out = tmp_path / "h.parquet"
    flag = tmp_path / "ran"
    rec = subprocess.Popen(RECORD + KK + ["-o", str(out), "--", "touch", str(flag)], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 60
        kids: list[str] = []
        while not kids:  # the held command is the recorder's first child (before the converter)
            assert rec.poll() is None and time.monotonic() < end
            kids = Path(f"/proc/{rec.pid}/task/{rec.pid}/children").read_text().split()
            time.sleep(0.002)
        assert not list(Path(str(out) + ".parts").glob("part-*.parquet")), "too late"
        rec.kill()
        rec.wait(timeout=10)
        held = int(kids[0])
        end = time.monotonic() + 10
        while os.path.exists(f"/proc/{held}") and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        if rec.poll() is None:
            rec.kill()
            rec.wait()
    time.sleep(0.3)
    assert not flag.exists(), "the held command ran untraced after the recorder died"


def test_group_sigkill_leaves_every_part_sealed(tmp_path: Path) -> None:
    """kill -9 -PGID: the converter (own session) still seals every part, the open one too, and
    the recording says the recorder was killed; converted, its stop time covers its records."""
    loads = [_loader(6) for _ in range(2)]
    try:
        out = tmp_path / "g.parquet"
        rec = subprocess.Popen(RECORD + KK + ["-g", "-o", str(out)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
        parts = Path(str(out) + ".parts")
        deadline = time.monotonic() + 30
        while len(list(parts.glob("part-*.parquet"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # mid-part: chunks written, the part not finished yet
        os.killpg(rec.pid, signal.SIGKILL)
        rec.wait(timeout=10)
        wait_marked_killed(out)
    finally:
        for p in loads:
            p.kill()
            p.wait()
    assert not list(parts.glob(".ring-*")), "a part was left unsealed"
    r = open_recording(out)
    assert r.partial and r.metadata["stopped"] == "recorder killed"
    r = events(out)
    times = r.table(["sample"], ["time"]).column("time").to_pylist()
    assert len(times) > 1000
    assert r.metadata["clock"]["stop_ns"] >= max(times)  # --than must not see young as old
    assert r.metadata["alloc"] == ["kmem:kmalloc//ptr=ptr/size=bytes_alloc/stack/"]  # -g: stack/
    res = subprocess.run([sys.executable, "-m", "kmemleak_offline.cli", "analyze", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0 and "TOTAL alloc" in res.stdout, res.stderr


def test_output_checks_before_recording(tmp_path: Path) -> None:
    t0 = time.monotonic()
    res = run_record(KK + ["--duration", "3s", "-o", str(tmp_path)])
    one_line_error(res, 2, "is a directory")
    assert time.monotonic() - t0 < 2.5, "refused only after recording"
    assert sorted(tmp_path.iterdir()) == []
    one_line_error(run_record(KK + ["--duration", "1s", "-o", str(tmp_path / "no" / "x.parquet")]),
                   2, "does not exist")


def test_existing_output_and_parts_are_kept_as_old(tmp_path: Path) -> None:
    out = tmp_path / "o.parquet"
    out.write_bytes(b"previous recording")
    parts = Path(str(out) + ".parts")
    parts.mkdir()
    (parts / "part-00000.parquet").write_bytes(b"a crashed run's part")
    Path(str(parts) + ".old").mkdir()  # an older .old is replaced
    (Path(str(parts) + ".old") / "stale").write_bytes(b"")
    res = run_record(KK + ["--duration", "1s", "-o", str(out)])
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.parquet", "o.parquet.old",
                                                          "o.parquet.parts.old"]
    assert Path(str(out) + ".old").read_bytes() == b"previous recording"
    assert [p.name for p in Path(str(parts) + ".old").iterdir()] == ["part-00000.parquet"]
    lines = [x for x in res.stderr.splitlines() if ".old" in x]
    assert len(lines) == 1 and "o.parquet.old" in lines[0] and "o.parquet.parts.old" in lines[0], res.stderr
    assert open_recording(out).table(["ksym"], ["addr"]).num_rows > 1000
