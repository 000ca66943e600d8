"""Allocator uprobes on this kernel: definitions, creation, cleanup, and a real traced run.

The traced run reads the tracefs ring (`trace`), so it does not depend on the perf recorder: it
proves that the probe points and fetch args give, after pairing (kmemleak_offline.malloc) and
symbolisation (kmemleak_offline.symbols), exactly the leaks the C program makes.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from elftools.elf.elffile import ELFFile

from kmemleak_offline.format import tracefs
from kmemleak_offline.format.elf import read_build_id
from kmemleak_offline.malloc import pair_calls
from kmemleak_offline.symbols.callchain import UserResolver
from kmemleak_offline.symbols.machine import Machine
from recorder.probes import (
    ALLOCATORS,
    DEFAULT_LIBC,
    ProbeError,
    UprobeSet,
    allocator_probes,
    cheap_entry_offset,
    malloc_event_specs,
    probe_metadata,
    tracefs_root,
)

C_DIR = Path(__file__).parent / "c"
ROOT = tracefs_root()
EXPECTED = {"leak_a": (700, 7), "leak_b": (12288, 3), "leak_calloc": (480, 2),
            "leak_realloc": (1000, 1), "leak_memalign": (512, 1)}


def uprobe_lines() -> list[str]:
    return Path(ROOT, "uprobe_events").read_text().splitlines()


def libc_symbol_offsets() -> dict[str, int]:
    with open(DEFAULT_LIBC, "rb") as f:
        elf = ELFFile(f)
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        out = {}
        for s in elf.get_section_by_name(".dynsym").iter_symbols():
            if s.name in ALLOCATORS and s["st_value"]:
                v = s["st_value"]
                seg = next(p for p in loads if p["p_vaddr"] <= v < p["p_vaddr"] + p["p_filesz"])
                out[s.name] = v - seg["p_vaddr"] + seg["p_offset"]
        return out


def test_libc_probe_definitions(tmp_path):
    defs = allocator_probes(DEFAULT_LIBC, group="kmlo_t")
    offs = libc_symbol_offsets()
    funcs = {d.func for d in defs}
    # memalign and aligned_alloc share code in glibc: probed once
    assert funcs == set(offs) - {"memalign"} or funcs == set(offs) - {"aligned_alloc"}
    code = Path(DEFAULT_LIBC).read_bytes()
    for d in defs:
        assert d.group == "kmlo_t" and d.event == f"kmlo_t:{d.name}"
        if d.kind == "return":
            assert d.offset == offs[d.func] and d.name == d.func + "_ret"
            assert d.definition.startswith(f"r:kmlo_t/{d.name} {os.path.realpath(DEFAULT_LIBC)}:")
        elif d.func != "free":
            assert d.offset == offs[d.func]  # shares the uretprobe's breakpoint
    free = next(d for d in defs if d.func == "free")
    skip = free.offset - offs["free"]
    assert skip > 0, "free's entry probe should move off the single-stepped `test %rdi,%rdi`"
    b = code[free.offset]
    assert 0x50 <= b <= 0x57 or (b == 0x41 and 0x50 <= code[free.offset + 1] <= 0x57)
    assert "ptr=%di" in free.definition
    alloc, free_specs = malloc_event_specs(defs)
    assert "kmlo_t:malloc_ret//ptr=ptr/stack/" in alloc and free_specs == ["kmlo_t:free//ptr=ptr/"]
    assert "kmlo_t:malloc//ptr=__probe_ip/" in alloc  # entries recorded too, without stacks
    assert len(alloc) + len(free_specs) == len(defs)
    meta = probe_metadata(defs)
    assert [m["definition"] for m in meta] == [d.definition for d in defs]


def test_cheap_entry_offset_is_conservative():
    free_like = bytes.fromhex("4885ff" "0f84bf000000" "55" "488d77f0")
    assert cheap_entry_offset(free_like, null_skip_ok=True) == 9
    assert cheap_entry_offset(free_like, null_skip_ok=False) == 0  # je would skip real calls
    assert cheap_entry_offset(bytes.fromhex("4154" "55"), True) == 0  # push r12 at +0
    assert cheap_entry_offset(bytes.fromhex("803d11223344" "00" "4154"), False) == 7
    assert cheap_entry_offset(bytes.fromhex("4889f8" "55"), True) == 0  # mov: unknown -> +0


def test_bad_libraries(tmp_path):
    with pytest.raises(ProbeError, match="cannot open"):
        allocator_probes(str(tmp_path / "nope.so"))
    (tmp_path / "x.so").write_bytes(b"not an elf at all" * 10)
    with pytest.raises(ProbeError, match="not an ELF"):
        allocator_probes(str(tmp_path / "x.so"))
    with pytest.raises(ProbeError, match="je_malloc"):
        allocator_probes(DEFAULT_LIBC, prefix="je_")


def test_create_reads_formats_and_always_removes():
    defs = allocator_probes(DEFAULT_LIBC, group=f"kmlo_t{os.getpid()}")
    before = uprobe_lines()
    with pytest.raises(RuntimeError, match="boom"), UprobeSet() as probes:
        created = probes.create(defs)
        assert len(created) == len(defs)
        for c in created:
            d = c.probe
            evdir = Path(ROOT, "events", d.group, d.name)
            assert int((evdir / "id").read_text()) == c.id
            fmt = tracefs.parse_format(c.format, d.group)
            assert fmt.id == c.id and fmt.name == d.name
            names = {f.name for f in fmt.fields}
            want = {a.split("=")[0] for a in d.fetchargs}
            assert want <= names
        assert sum(f"{defs[0].group}/" in line for line in uprobe_lines()) == len(defs)
        raise RuntimeError("boom")
    assert uprobe_lines() == before
    assert not Path(ROOT, "events", defs[0].group).exists()


def test_failed_create_removes_what_was_made():
    defs = allocator_probes(DEFAULT_LIBC, group=f"kmlo_t{os.getpid()}")
    bad = defs[0].__class__(**{**defs[0].__dict__, "name": "bad", "fetchargs": ("x=%nosuchreg",)})
    before = uprobe_lines()
    with pytest.raises(ProbeError, match="cannot create uprobe"):
        UprobeSet().create(defs[:3] + [bad])
    assert uprobe_lines() == before



def test_interrupt_right_after_the_kernel_took_a_probe_leaves_nothing(monkeypatch):
    """Ctrl-C landing between the tracefs write and the bookkeeping must not orphan the probe (CI saw it)."""
    import recorder.probes as probes_mod

    defs = allocator_probes(DEFAULT_LIBC, group=f"kmlo_t{os.getpid()}")
    real_write = probes_mod._write_line
    calls = []

    def write_then_interrupt(path: str, line: str) -> None:
        real_write(path, line)
        calls.append(line)
        if len(calls) == 4:
            raise KeyboardInterrupt

    before = uprobe_lines()
    monkeypatch.setattr(probes_mod, "_write_line", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        UprobeSet().create(defs)
    monkeypatch.setattr(probes_mod, "_write_line", real_write)
    assert calls[3] == defs[3].definition and calls[4:] == [f"-:{d.group}/{d.name}" for d in defs[3::-1]]
    assert uprobe_lines() == before
    assert not Path(ROOT, "events", defs[0].group).exists()

# ---- a real traced run through the tracefs ring ---------------------------------------------------

_LINE = re.compile(r"^\s*(?P<comm>.+?)-(?P<tid>\d+)\s+\[(?P<cpu>\d+)\]\s+\S+\s+(?P<ts>[\d.]+):\s+"
                   r"(?P<name>\w+):\s+\((?P<ip>\w+)(?: <- (?P<func>\w+))?\)\s*(?P<args>.*)$")


def compile_leaky(tmp_path: Path, fp: bool) -> Path:
    exe = tmp_path / ("kmlo_leaky_fp" if fp else "kmlo_leaky_nofp")
    flag = "-fno-omit-frame-pointer" if fp else "-fomit-frame-pointer"
    subprocess.run(["gcc", "-O1", flag, "-pthread", "-o", str(exe), str(C_DIR / "leaky.c")], check=True)
    return exe


def maps_rows(pid: int) -> pa.Table:
    rows = {"time": [], "pid": [], "addr": [], "len": [], "pgoff": [], "filename": [], "build_id": []}
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6 or not parts[5].startswith("/"):
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        for k, v in (("time", 0), ("pid", pid), ("addr", start), ("len", end - start),
                     ("pgoff", int(parts[2], 16)), ("filename", parts[5]),
                     ("build_id", read_build_id(parts[5]))):
            rows[k].append(v)
    return pa.table(rows)


def trace_run(exe: Path, group: str) -> tuple[list[dict], pa.Table, int]:
    """Run exe with the group's events enabled in a private trace instance (other processes on the
    machine are filtered out by comm); (parsed trace lines of exe, its maps, pid)."""
    inst = Path(ROOT, "instances", group)
    inst.mkdir()
    proc = None
    try:
        evdir = inst / "events" / group
        (evdir / "filter").write_text(f'comm == "{exe.name[:15]}"')
        (evdir / "enable").write_text("1")
        proc = subprocess.Popen([str(exe), "wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        proc.stdin.write(b"g")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"R\n"
        (evdir / "enable").write_text("0")
        maps = maps_rows(proc.pid)
        proc.stdin.write(b"q")
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
        text = (inst / "trace").read_text()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        ev = inst / "events" / group
        if ev.exists():
            (ev / "enable").write_text("0")
        inst.rmdir()
    lines = []
    for t in text.splitlines():
        m = _LINE.match(t)
        if m and m.group("comm").strip() == exe.name[:15]:
            lines.append(m.groupdict())
    return lines, maps, proc.pid


@pytest.mark.parametrize("fp", [True, False], ids=["fp", "nofp"])
def test_traced_leaky_program_gives_exact_leaks(tmp_path, fp):
    exe = compile_leaky(tmp_path, fp)
    group = f"kmlo_t{os.getpid()}"
    with UprobeSet() as probes:
        probes.create(allocator_probes(DEFAULT_LIBC, group=group))
        lines, maps, pid = trace_run(exe, group)
    assert not any(f"{group}/" in line for line in uprobe_lines())
    assert not Path(ROOT, "instances", group).exists()
    assert lines, "no probe hits traced"

    n = len(lines)
    args = [dict(kv.split("=", 1) for kv in ln["args"].split()) for ln in lines]
    cols = {"time": np.array([round(float(ln["ts"]) * 1e9) for ln in lines], np.uint64),
            "seq": np.arange(n, dtype=np.uint64), "cpu": np.array([int(ln["cpu"]) for ln in lines]),
            "pid": np.full(n, pid), "tid": np.array([int(ln["tid"]) for ln in lines]),
            "func": np.array([ln["name"].removesuffix("_ret") for ln in lines], object),
            "is_return": np.array([ln["func"] is not None for ln in lines]),
            "stack_id": np.arange(n)}  # row index: lets us find the return address below
    for k in ("size", "nmemb", "oldptr", "memptr", "ptr", "ret", "sp"):
        cols[k] = np.array([int(a.get(k, "0"), 0) & (2**64 - 1) for a in args], dtype=np.uint64)
    words = np.array([[int(a.get(f"w{i}", "0"), 16) for i in range(32)] for a in args], np.uint64)
    df, stats = pair_calls(cols, words)
    assert stats["memptr_unknown"] == 0

    live: dict[int, tuple[int, int]] = {}  # oracle replay
    for r in df.itertuples():
        if r.is_alloc:
            live[int(r.ptr)] = (int(r.size), int(lines[r.stack_id]["ip"], 16))  # return address
        else:
            live.pop(int(r.ptr), None)
    ret_ips = np.array([v[1] for v in live.values()], np.uint64)
    sym = UserResolver(Machine(mmap=maps))
    names, _, dsos = sym.resolve(np.full(len(ret_ips), pid), ret_ips, np.ones(len(ret_ips), np.uint64))
    got: dict[str, tuple[int, int]] = {}
    for (size, _), name, dso in zip(live.values(), names, dsos, strict=True):
        if dso == str(exe):
            b, c = got.get(name, (0, 0))
            got[name] = (b + size, c + 1)
    assert got == EXPECTED
