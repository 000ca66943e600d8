"""Acceptance of issue 4 end to end: `record --malloc` on real uprobes, then `analyze`.

tests/c/leaky.c leaks known bytes/objects per function (EXPECTED below, worked out from its source);
everything else it allocates is freed (churn, a failed malloc, blocks another thread frees, a
freed posix_memalign block). Each recording is analysed after the binary is deleted, so function
names can only come from the embedded `usym` rows. A leak is attributed to the first user frame of
its group's stack that lies in the program binary. Every test checks that no uprobe is left behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from kmemleak_offline.format.recording import open_recording
from kmemleak_offline.malloc import is_malloc_recording, malloc_events
from kmemleak_offline.symbols.callchain import UserResolver
from recorder.probes import GROUP_PREFIX, remove_stale_groups, tracefs_root

ROOT = Path(__file__).resolve().parents[1]
C_DIR = Path(__file__).resolve().parent / "c"
CLI = [sys.executable, "-m", "kmemleak_offline.cli"]
CONTEXT_MAX = 2**64 - 4096  # callchain words above this are PERF_CONTEXT_* markers

# From leaky.c: function -> (leaked bytes, leaked objects).
EXPECTED = {
    "leak_a": (7 * 100, 7),
    "leak_b": (3 * 4096, 3),
    "leak_calloc": (2 * 5 * 48, 2),
    "leak_realloc": (1000, 1),  # NULL -> 10 -> 100 -> 1000: only the last block is live
    "leak_memalign": (512, 1),  # the 256-byte one is freed
}


def uprobe_lines() -> list[str]:
    return [x for x in Path(tracefs_root(), "uprobe_events").read_text().splitlines() if x.strip()]


def _group_pid(line: str) -> int | None:
    group = line.split()[0].split(":", 1)[-1].split("/")[0]
    rest = group.removeprefix(GROUP_PREFIX)
    return int(rest) if group.startswith(GROUP_PREFIX) and rest.isdigit() else None


def our_probes() -> list[str]:
    """Probes of recorders that are gone (left behind). Probes of live recorders are other
    people's concurrent runs and are not ours to judge."""
    return [x for x in uprobe_lines()
            if (pid := _group_pid(x)) is not None and not os.path.exists(f"/proc/{pid}")]


def probes_of(pid: int) -> list[str]:
    return [x for x in uprobe_lines() if _group_pid(x) == pid]


@pytest.fixture(autouse=True)
def no_probes_left() -> Iterator[None]:
    """No test may leave kmlo_ uprobes behind; stale ones are removed even on failure."""
    remove_stale_groups()
    try:
        yield
        assert our_probes() == [], "record left uprobes behind"
    finally:
        remove_stale_groups()


def cli(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          check=False)


def compile_leaky(folder: Path, fp: bool) -> Path:
    exe = folder / ("leaky_fp" if fp else "leaky_nofp")
    flag = "-fno-omit-frame-pointer" if fp else "-fomit-frame-pointer"
    subprocess.run(["gcc", "-O1", flag, "-pthread", "-o", str(exe), str(C_DIR / "leaky.c")], check=True)
    return exe


def wait_recording_started(out: Path, rec: subprocess.Popen, timeout: float = 60) -> None:
    """Until the recorder says its events are on (its 'recording ... Ctrl-C to stop' line on
    stderr): then every probe hit is recorded, however long start-up took."""
    seen = []
    while True:
        line = rec.stderr.readline()
        seen.append(line)
        assert line, f"recorder ended before recording: {''.join(seen)}{rec.communicate()[1]}"
        if "Ctrl-C to stop" in line:
            return


def record_attached(exe: Path, out: Path, extra: list[str] = ()) -> None:
    """`record --malloc -g -p PID` on a running leaky (its "wait" mode), stopped by SIGINT."""
    prog = subprocess.Popen([str(exe), "wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    rec = None
    try:
        time.sleep(0.1)  # let it map its libraries
        rec = subprocess.Popen(CLI + ["record", "--malloc", "-g", *extra, "-o", str(out), "-p",
                                      str(prog.pid)], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        wait_recording_started(out, rec)
        prog.stdin.write(b"g")
        prog.stdin.flush()
        assert prog.stdout.readline() == b"R\n"
        time.sleep(0.3)
        rec.send_signal(signal.SIGINT)
        _, err = rec.communicate(timeout=120)
        assert rec.returncode == 0, err
        prog.stdin.write(b"q")
        prog.stdin.close()
        assert prog.wait(timeout=10) == 0
    finally:
        for p in (prog, rec):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def first_exe_frame(stack: list[dict], exe: str) -> str | None:
    for fr in stack:
        if fr.get("dso") != "[kernel.kallsyms]":  # the first user frame
            return fr["symbol"] if fr.get("dso") == exe else None
    return None


def per_function_json(report: dict, exe: str) -> dict[str, tuple[int, int]]:
    got: dict[str, tuple[int, int]] = {}
    for g in report["reports"][-1]["groups"]:
        fn = first_exe_frame(g["stack"], exe)
        if fn is not None:
            b, n = got.get(fn, (0, 0))
            got[fn] = (b + g["bytes"], n + g["objects"])
    return got


_GROUP = re.compile(r"^Leak of (\d+) bytes in (\d+) objects allocated from:$")
_FRAME = re.compile(r"^    [0-9a-f]{16} (\S+?)(?:\+0x[0-9a-f]+)? \((.*)\)$")


def per_function_text(text: str, exe: str) -> dict[str, tuple[int, int]]:
    got: dict[str, tuple[int, int]] = {}
    cur: tuple[int, int] | None = None
    for line in text.splitlines():
        m = _GROUP.match(line)
        if m:
            cur = (int(m.group(1)), int(m.group(2)))
            continue
        f = _FRAME.match(line)
        if cur is not None and f and f.group(2) != "[kernel.kallsyms]":
            if f.group(2) == exe:
                b, n = got.get(f.group(1), (0, 0))
                got[f.group(1)] = (b + cur[0], n + cur[1])
            cur = None  # only the first user frame counts
    return got


def per_function_oracle(path: Path, exe: str) -> dict[str, tuple[int, int]]:
    """Independent of `analyze`: pair the probe samples, replay them in a dict, symbolise the first
    user frame of each live block with the embedded symbols only."""
    rec = open_recording(path)
    meta = rec.metadata
    assert is_malloc_recording(meta)
    samples = rec.table(["sample"])
    rows, _ = malloc_events(samples, meta)
    live: dict[int, tuple[int, int, int, int]] = {}
    for r in rows.itertuples():  # the test's own replay, row by row
        if r.is_alloc:
            live[int(r.ptr)] = (int(r.size), int(r.stack_id), int(r.pid), int(r.time))
        else:
            live.pop(int(r.ptr), None)
    stacks = rec.table(["stack"], ["stack_id", "callchain"]).to_pydict()
    chain = dict(zip(stacks["stack_id"], stacks["callchain"], strict=True))
    blocks = list(live.values())
    leaf = [next(w for w in chain[b[1]] if w < CONTEXT_MAX) for b in blocks]
    sym = UserResolver.from_recording(rec, use_local_files=False)
    names, _, dsos = sym.resolve(np.array([b[2] for b in blocks]), np.array(leaf, np.uint64),
                                 np.array([b[3] for b in blocks], np.uint64))
    got: dict[str, tuple[int, int]] = {}
    for (size, *_), name, dso in zip(blocks, names, dsos, strict=True):
        if dso == exe:
            b, n = got.get(name, (0, 0))
            got[name] = (b + size, n + 1)
    return got


@pytest.fixture(scope="module", params=["cmd-fp", "cmd-nofp", "pid-fp", "pid-nofp"])
def recorded(request, tmp_path_factory) -> Iterator[tuple[Path, str]]:
    """One recording per (launch mode, frame pointers); the binary is deleted afterwards."""
    remove_stale_groups()
    mode, fpn = request.param.split("-")
    folder = tmp_path_factory.mktemp(request.param)
    exe = compile_leaky(folder, fpn == "fp")
    out = folder / "r.parquet"
    try:
        if mode == "cmd":
            res = cli(["record", "--malloc", "-g", "-o", str(out), "--", str(exe)])
            assert res.returncode == 0, res.stderr
        else:
            record_attached(exe, out)
        assert our_probes() == []
    finally:
        remove_stale_groups()
    exe.unlink()
    yield out, str(exe)


def test_recording_contents_name_exact_leaks(recorded) -> None:
    out, exe = recorded
    meta = open_recording(out).metadata
    probes = {p["event"]: p for p in meta["probes"]}
    assert {p["func"] for p in probes.values()} >= {"malloc", "calloc", "realloc", "free", "posix_memalign"}
    # alloc/free are the probe events: analyze needs no event options
    assert {s.split("/")[0] for s in meta["alloc"] + meta["free"]} == set(probes)
    assert all("stack" not in s.split("/", 2)[-1] for s in meta["alloc"]
               if probes[s.split("/")[0]]["kind"] == "entry")
    assert os.path.basename(meta["options"]["malloc"]["lib"]).startswith("libc")
    assert per_function_oracle(out, exe) == EXPECTED


def test_analyze_json_reports_exact_leaks_without_the_binary(recorded) -> None:
    out, exe = recorded
    assert not Path(exe).exists()
    res = cli(["analyze", str(out), "--format", "json"])
    assert res.returncode == 0, res.stderr
    assert per_function_json(json.loads(res.stdout), exe) == EXPECTED


def test_analyze_text_reports_exact_leaks(recorded) -> None:
    out, exe = recorded
    res = cli(["analyze", str(out)])
    assert res.returncode == 0, res.stderr
    assert per_function_text(res.stdout, exe) == EXPECTED


def test_no_embed_symbols_writes_no_usym_rows(tmp_path) -> None:
    exe = compile_leaky(tmp_path, True)
    out = tmp_path / "r.parquet"
    res = cli(["record", "--malloc", "-g", "--no-embed-symbols", "-o", str(out), "--", str(exe)])
    assert res.returncode == 0, res.stderr
    rec = open_recording(out)
    kinds = rec.table(None, ["kind"]).column("kind").cast("string")
    assert pc.sum(pc.equal(kinds, "usym")).as_py() in (0, None)
    assert pc.sum(pc.equal(kinds, "sample")).as_py() > 0
    # still symbolised from the binary itself while it exists
    assert per_function_text(cli(["analyze", str(out)]).stdout, str(exe)) == EXPECTED


def test_without_g_no_callchains(tmp_path) -> None:
    exe = compile_leaky(tmp_path, True)
    out = tmp_path / "r.parquet"
    res = cli(["record", "--malloc", "-o", str(out), "--", str(exe)])
    assert res.returncode == 0, res.stderr
    rec = open_recording(out)
    assert rec.table(["stack"], ["stack_id"]).num_rows == 0
    assert not any("stack" in s for s in rec.metadata["alloc"])
    total = sum(b for b, _ in EXPECTED.values())
    data = json.loads(cli(["analyze", str(out), "--format", "json"]).stdout)
    leaked = sum(g["bytes"] for g in data["reports"][-1]["groups"])
    assert leaked >= total  # plus whatever libc's own start-up keeps


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_probes_removed_when_stopped_by_signal(tmp_path, sig) -> None:
    out = tmp_path / "r.parquet"
    rec = subprocess.Popen(CLI + ["record", "--malloc", "-g", "-o", str(out), "--", "sleep", "30"],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_recording_started(out, rec)
        assert len(probes_of(rec.pid)) > 5  # they exist while recording
        rec.send_signal(sig)
        _, err = rec.communicate(timeout=60)
    finally:
        if rec.poll() is None:
            rec.kill()
            rec.wait()
    assert rec.returncode == 0, err
    assert open_recording(out).metadata["probes"]
    assert our_probes() == []


def test_probes_removed_when_setup_fails_after_creating_them(tmp_path) -> None:
    # -C 4096 is checked after the probes exist: the error path must remove them
    res = cli(["record", "--malloc", "-C", "4096", "-o", str(tmp_path / "r.parquet"), "--", "true"])
    assert res.returncode == 2 and "CPU 4096" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_probes_removed_when_sigterm_during_setup(tmp_path) -> None:
    """SIGTERM as soon as the probes exist, before the record loop runs: nothing is left."""
    out = tmp_path / "r.parquet"
    rec = subprocess.Popen(CLI + ["record", "--malloc", "-g", "-o", str(out), "--", "sleep", "30"],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 60
        while not probes_of(rec.pid):
            assert rec.poll() is None and time.monotonic() < end
            time.sleep(0.001)
        rec.send_signal(signal.SIGTERM)
        parts_existed = Path(str(out) + ".parts").exists()
        _, err = rec.communicate(timeout=60)
    finally:
        if rec.poll() is None:
            rec.kill()
            rec.wait()
    assert not parts_existed, "signal came too late to test the setup path"
    assert "Traceback" not in err
    assert rec.returncode == 143 and len(err.strip().splitlines()) == 1, err  # 128 + SIGTERM
    assert our_probes() == []


def test_sigkill_of_the_recorder_removes_its_probes(tmp_path) -> None:
    """The converter outlives a SIGKILLed recorder: it removes the recorder's uprobes (else they
    stay, slowing every process of that libc, until the next --malloc run)."""
    out = tmp_path / "k.parquet"
    kids: list[int] = []
    rec = subprocess.Popen(CLI + ["record", "--malloc", "-g", "-o", str(out), "--", "sleep", "30"],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_recording_started(out, rec)
        assert len(probes_of(rec.pid)) > 5
        kids = [int(x) for x in Path(f"/proc/{rec.pid}/task/{rec.pid}/children").read_text().split()]
        rec.kill()
        rec.wait(timeout=10)
        end = time.monotonic() + 5
        while probes_of(rec.pid) and time.monotonic() < end:
            time.sleep(0.05)
        assert probes_of(rec.pid) == [], "uprobes of a killed recorder left in tracefs"
    finally:
        if rec.poll() is None:
            rec.kill()
            rec.wait()
        for kid in kids:  # the traced `sleep 30` outlives the recorder: end it
            try:
                if Path(f"/proc/{kid}/comm").read_text().strip() == "sleep":
                    os.kill(kid, signal.SIGKILL)
            except OSError:
                pass
    end = time.monotonic() + 30  # the probes go first; the converter then saves the spool
    while open_recording(out).metadata.get("stopped") != "recorder killed" and time.monotonic() < end:
        time.sleep(0.1)
    r = open_recording(out)
    assert r.partial and r.metadata["stopped"] == "recorder killed"


@pytest.mark.parametrize("wait_s", [0.0, 0.05, 0.2])
def test_sigint_during_setup_always_ends_the_run_in_one_line(tmp_path, wait_s) -> None:
    """Ctrl-C a moment after the probes exist (set-up goes on: perf fds, the fork, kallsyms):
    the run ends, says so in one line, exit 130, leaves no output and no probe. (A signal acted
    on wherever it landed was once swallowed by a finaliser, and the recording went on.)"""
    out = tmp_path / "int.parquet"
    rec = subprocess.Popen(CLI + ["record", "--malloc", "-g", "-o", str(out), "--", "sleep", "30"],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 60
        while not probes_of(rec.pid):
            assert rec.poll() is None and time.monotonic() < end
            time.sleep(0.001)
        time.sleep(wait_s)
        rec.send_signal(signal.SIGINT)
        _, err = rec.communicate(timeout=60)
    finally:
        if rec.poll() is None:
            rec.kill()
            rec.wait()
    assert probes_of(rec.pid) == []
    if out.exists() or Path(str(out) + ".parts").exists():  # set-up was over: a stopped recording
        assert rec.returncode == 0, err
        assert open_recording(out).metadata["stopped"] == "SIGINT"
        return
    assert rec.returncode == 130, err
    assert err.strip() == "kmemleak-offline record: interrupted before recording started"


def test_sigkill_before_the_converter_exists_removes_the_probes(tmp_path) -> None:
    """Killed the moment its probes exist (no converter yet, no parts folder): a guard process
    the recorder forked before writing the first probe removes them."""
    out = tmp_path / "early.parquet"
    rec = subprocess.Popen(CLI + ["record", "--malloc", "-g", "-o", str(out), "--", "sleep", "30"],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 60
        while not probes_of(rec.pid):
            assert rec.poll() is None and time.monotonic() < end
            time.sleep(0.001)
        rec.kill()
        parts_existed = Path(str(out) + ".parts").exists()
        rec.wait(timeout=10)
        end = time.monotonic() + 5
        while probes_of(rec.pid) and time.monotonic() < end:
            time.sleep(0.01)
        assert probes_of(rec.pid) == [], "uprobes of a recorder killed during set-up left behind"
    finally:
        if rec.poll() is None:
            rec.kill()
            rec.wait()
    assert not parts_existed, "kill came too late to test the set-up window"
    assert not out.exists()


def test_probes_are_gone_before_the_recording_is_finished(tmp_path) -> None:
    """Probes go as soon as recording stops, before the symbol tables are embedded and the parts
    stitched (they used to stay ~1.5 s after OUT was complete)."""
    out = tmp_path / "order.parquet"
    rec = subprocess.Popen(CLI + ["record", "--malloc", "-g", "-o", str(out), "--", "sleep", "0.5"],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_recording_started(out, rec)
        seen_with_probes = False
        while rec.poll() is None and not out.exists():
            seen_with_probes = seen_with_probes or bool(probes_of(rec.pid))
            time.sleep(0.001)
        if out.exists():  # the first moment OUT is there: no probe of this recorder may be left
            assert probes_of(rec.pid) == []
        rec.communicate(timeout=60)
    finally:
        if rec.poll() is None:
            rec.kill()
            rec.wait()
    assert rec.returncode == 0 and seen_with_probes and out.exists()
    assert open_recording(out).metadata["stopped"] in ("command exited", "all traced tasks exited")


@pytest.mark.parametrize("args, message", [
    (["--malloc", "--alloc", "kmem:kmalloc", "--free", "kmem:kfree", "--", "true"], "--malloc replaces"),
    (["--malloc"], "--malloc needs -p"),
    (["--malloc", "--malloc-lib", "/nonexistent/libx.so", "--", "true"], "cannot open allocator library"),
    (["--malloc", "--malloc-lib", "/etc/hostname", "--", "true"], "not an ELF"),
    (["--malloc", "--malloc-prefix", "zz_", "--", "true"], "defines none of zz_malloc"),
    (["--alloc", "kmem:kmalloc", "--free", "kmem:kfree", "--malloc-prefix", "je_", "--", "true"],
     "need --malloc"),
])
def test_bad_malloc_options(tmp_path, args, message) -> None:
    res = cli(["record", *args, "-o", str(tmp_path / "r.parquet")])
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.parquet").exists()


def test_malloc_lib_and_prefix_probe_another_library(tmp_path) -> None:
    """A prefixed allocator (jemalloc-style `je_`): a tiny shared library whose je_malloc/je_free
    wrap libc; leaks through je_malloc are found and named, libc calls of the program are not traced."""
    lib = tmp_path / "libjez.so"
    (tmp_path / "jez.c").write_text(
        "#include <stdlib.h>\n"
        "__attribute__((noinline)) void *je_malloc(size_t n) { return malloc(n); }\n"
        "__attribute__((noinline)) void je_free(void *p) { free(p); }\n")
    (tmp_path / "main.c").write_text(
        "#include <stdlib.h>\nvoid *je_malloc(size_t); void je_free(void *);\n"
        "void *volatile keep[8];\n"
        "__attribute__((noinline)) void grab(void) { for (int i = 0; i < 5; i++) keep[i] = je_malloc(333); }\n"
        "__attribute__((noinline)) void churn(void) { for (int i = 0; i < 9; i++) je_free(je_malloc(77)); }\n"
        "int main(void) { grab(); churn(); keep[6] = malloc(999); return 0; }\n")
    subprocess.run(["gcc", "-O1", "-fno-omit-frame-pointer", "-shared", "-fPIC", "-o", str(lib),
                    str(tmp_path / "jez.c")], check=True)
    exe = tmp_path / "jemain"
    subprocess.run(["gcc", "-O1", "-fno-omit-frame-pointer", "-o", str(exe), str(tmp_path / "main.c"),
                    f"-L{tmp_path}", "-ljez", f"-Wl,-rpath,{tmp_path}"], check=True)
    out = tmp_path / "r.parquet"
    res = cli(["record", "--malloc", "--malloc-lib", str(lib), "--malloc-prefix", "je_", "-g",
               "-o", str(out), "--", str(exe)])
    assert res.returncode == 0, res.stderr
    meta = open_recording(out).metadata
    assert {p["symbol"] for p in meta["probes"]} == {"je_malloc", "je_free"}
    data = json.loads(cli(["analyze", str(out), "--format", "json"]).stdout)
    assert per_function_json(data, str(exe)) == {"grab": (5 * 333, 5)}


def test_bundled_malloc_sample_names_the_leaks_offline() -> None:
    """samples/malloc-leak.parquet (record_samples.sh: leaky.c, binary long gone) analyses anywhere."""
    sample = ROOT / "samples" / "malloc-leak.parquet"
    exe = open_recording(sample).metadata["options"]["command"][0]
    assert not Path(exe).exists()
    assert per_function_oracle(sample, exe) == EXPECTED
    data = json.loads(cli(["analyze", str(sample), "--format", "json"]).stdout)
    assert per_function_json(data, exe) == EXPECTED


def test_bundled_pipe_sample_has_one_leak_per_pipe() -> None:
    """samples/pipe-leak.parquet: `pipes 100` kept 100 pipes open; alloc_pipe_info kmallocs the
    pipe_inode_info and its buffer array once per pipe."""
    sample = ROOT / "samples" / "pipe-leak.parquet"
    data = json.loads(cli(["analyze", str(sample), "--format", "json"]).stdout)
    by_caller: dict[str, int] = {}
    for g in data["reports"][-1]["groups"]:
        if len(g["stack"]) > 1 and g["stack"][1]["symbol"] == "alloc_pipe_info":
            by_caller[g["stack"][0]["symbol"]] = by_caller.get(g["stack"][0]["symbol"], 0) + g["objects"]
    assert sorted(by_caller.values()) == [100, 100]
