"""perf-probe allocator uprobes (issue 9, item 3) on synthetic rows: events named as `perf probe`
names them in its default group `probe_libc` (`malloc`, `malloc__return`, `_Znwm`, ...), fields as
it names them (`size=` as typed, unnamed ones `argN`, `$retval` -> `arg1`), paired like
`record --malloc` without any --alloc/--free. The live capture is tests/test_import_perf_probe.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kmemleak_offline import perfprobe
from kmemleak_offline.format.recording import open_recording
from kmemleak_offline.malloc import is_malloc_recording, malloc_events, probe_fields, summary
from kmemleak_offline.synthetic import RecordingBuilder

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "kmemleak_offline.cli"]
LIBC = 0x7F0000000000
SITE = {"malloc": LIBC + 0x98930, "calloc": LIBC + 0x996E0, "realloc": LIBC + 0x99130,
        "free": LIBC + 0x98EF0, "memalign": LIBC + 0x99610, "aligned_alloc": LIBC + 0x99610,
        "posix_memalign": LIBC + 0x9A280, "_Znwm": LIBC + 0x200000, "_ZdlPv": LIBC + 0x200100}
STUB = LIBC + 0x26030  # where perf probe (6.1, with libc debug info) also puts `calloc`


def uprobe_format(event: str, ident: int, args: list[str], ret: bool | None = None) -> str:
    """A uprobe event's tracefs format text, as the kernel writes it for perf probe's events (a
    return probe's when `ret`, by default when the name says `__return`)."""
    name = event.split(":", 1)[1]
    ret = "__return" in name if ret is None else ret
    lines = [f"name: {name}", f"ID: {ident}", "format:",
             "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;",
             "\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;",
             "\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;",
             "\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;", ""]
    off = 8
    for p in (["__probe_func", "__probe_ret_ip"] if ret else ["__probe_ip"]):
        lines.append(f"\tfield:unsigned long {p};\toffset:{off};\tsize:8;\tsigned:0;")
        off += 8
    for a in args:
        lines.append(f"\tfield:u64 {a};\toffset:{off};\tsize:8;\tsigned:0;")
        off += 8
    lines += ["", 'print fmt: "(%lx)"', ""]
    return "\n".join(lines)


# what `perf probe -x libc ...` makes from the specs docs/allocators.md gives (and a few variants:
# unnamed arguments, C++ operators), in perf's default group
EVENTS = {
    "probe_libc:malloc": ["size"],                      # malloc size=%di
    "probe_libc:malloc__return": ["arg1"],              # malloc%return $retval
    "probe_libc:calloc": ["arg1", "arg2"],              # calloc %di %si
    "probe_libc:calloc__return": ["arg1"],
    "probe_libc:realloc": ["ptr", "size"],              # realloc ptr=%di size=%si (man page names)
    "probe_libc:realloc__return": ["arg1"],
    "probe_libc:memalign": ["align", "size"],           # memalign == aligned_alloc in glibc
    "probe_libc:memalign__return": ["arg1"],
    "probe_libc:aligned_alloc": ["alignment", "arg2"],
    "probe_libc:aligned_alloc__return": ["arg1"],
    "probe_libc:posix_memalign": ["memptr", "align", "size"],
    "probe_libc:posix_memalign__return": ["arg1", "sp"] + [f"w{k}" for k in range(4)],
    "probe_libc:free": ["ptr"],
    "probe_libstdc:_Znwm": ["arg1"],                     # perf probe -x libstdc++ _Znwm %di
    "probe_libstdc:_Znwm__return": ["arg1"],
    "probe_libstdc:_ZdlPv": ["arg1"],
}


def formats(events: dict[str, list[str]] = EVENTS) -> dict[str, str]:
    return {e: uprobe_format(e, 3000 + i, a) for i, (e, a) in enumerate(events.items())}


class ProbeBuilder(RecordingBuilder):
    """Writes the metadata `import` writes for a perf.data with these events."""

    def _metadata(self, *args, **kwargs):
        meta = super()._metadata(*args, **kwargs)
        meta["probes"] = perfprobe.recognise({e: v["format"] for e, v in meta["events"].items()})
        return meta


class Program:
    """Probe rows of a program, in call order (one row per probe hit), per thread."""

    def __init__(self) -> None:
        self.b = ProbeBuilder(formats())
        self.t = 1000

    def hit(self, event: str, tid: int, site: int, **args: int) -> None:
        self.t += 10
        ret = event.endswith("__return")
        fields = {("__probe_func" if ret else "__probe_ip"): site, **args}
        if ret:
            fields["__probe_ret_ip"] = 0x555500001000
        self.b.add_samples(event, [self.t], 0, 5, tid, fields, stack_id=[0] if ret else None)

    def call(self, fn: str, tid: int, ret: int, inner=None, site: int | None = None,
             group: str = "probe_libc", **args: int) -> None:
        """entry, what the allocator calls inside (a function), return."""
        s = SITE[fn] if site is None else site
        self.hit(f"{group}:{fn}", tid, s, **args)
        if inner:
            inner()
        self.hit(f"{group}:{fn}__return", tid, s, arg1=ret)

    def write(self, path: Path) -> Path:
        self.b.add_stacks([[0xFFFFFFFFFFFFFE00, 0x555500001000]])
        probes = perfprobe.recognise(self.b.format_texts)
        alloc, free = perfprobe.event_specs(probes)
        used = {r["event"] for r in self.b._samples}
        return self.b.write(path, [a for a in alloc if a.split("//")[0] in used],
                            [f for f in free if f.split("//")[0] in used])


def program(stub_hit: bool = True) -> Program:
    """Live at the end: 0x2000 300 (realloc(NULL, 300), malloc inside), 0x5000 160 (memalign,
    traced by two events), 0x6000 480 (realloc of 0x4000 through the PLT stub), 0x7000 512
    (posix_memalign). Freed: 0x1000 by another thread, 0x1100, 0x3000 by realloc(p, 0), 0x4000
    by realloc, 0x8000 (operator new / delete, malloc and free inside). Failed: malloc -> NULL."""
    p = Program()
    p.call("malloc", 11, 0x1000, size=100)
    p.call("malloc", 11, 0x1100, size=50)
    p.hit("probe_libc:free", 11, SITE["free"], ptr=0x1100)
    p.call("realloc", 11, 0x2000, inner=lambda: p.call("malloc", 11, 0x2000, size=300), ptr=0, size=300)
    p.call("malloc", 11, 0x3000, size=64)
    p.call("realloc", 11, 0, inner=lambda: p.hit("probe_libc:free", 11, SITE["free"], ptr=0x3000),
           ptr=0x3000, size=0)
    p.call("malloc", 11, 0, size=1 << 62)  # fails
    p.call("calloc", 11, 0x4000, arg1=5, arg2=48)
    # two events on one function: the kernel reports them in the same order at entry and return
    p.hit("probe_libc:memalign", 11, SITE["memalign"], align=32, size=160)
    p.hit("probe_libc:aligned_alloc", 11, SITE["memalign"], alignment=32, arg2=160)
    p.hit("probe_libc:memalign__return", 11, SITE["memalign"], arg1=0x5000)
    p.hit("probe_libc:aligned_alloc__return", 11, SITE["memalign"], arg1=0x5000)
    if stub_hit:  # libc's own realloc through realloc@plt, where perf also put `calloc`
        p.call("calloc", 11, 0x6000, site=STUB, arg1=0x4000, arg2=480,
               inner=lambda: p.call("realloc", 11, 0x6000, ptr=0x4000, size=480))
    else:
        p.call("realloc", 11, 0x6000, ptr=0x4000, size=480)
    sp = 0x7FFF0000
    p.hit("probe_libc:posix_memalign", 11, SITE["posix_memalign"], memptr=sp + 8, align=64, size=512)
    p.hit("probe_libc:posix_memalign__return", 11, SITE["posix_memalign"], arg1=0, sp=sp, w0=1,
          w1=0x7000, w2=2, w3=3)
    p.call("_Znwm", 11, 0x8000, group="probe_libstdc", arg1=24,
           inner=lambda: p.call("malloc", 11, 0x8000, size=24))
    p.hit("probe_libstdc:_ZdlPv", 11, SITE["_ZdlPv"], arg1=0x8000)
    p.hit("probe_libc:free", 11, SITE["free"], ptr=0x8000)
    p.hit("probe_libc:free", 12, SITE["free"], ptr=0x1000)
    return p


EXPECTED_LIVE = {0x2000: 300, 0x5000: 160, 0x6000: 480, 0x7000: 512}


def live(df) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in df.itertuples():  # the test's own replay
        if r.is_alloc:
            out[int(r.ptr)] = int(r.size)
        else:
            out.pop(int(r.ptr), None)
    return out


def test_recognise_maps_perf_probe_fields_onto_the_pairing_names():
    probes = {p["event"]: p for p in perfprobe.recognise(formats())}
    assert set(probes) == set(EVENTS)
    f = {e: p["fields"] for e, p in probes.items()}
    assert f["probe_libc:malloc"] == {"size": "size"}
    assert f["probe_libc:malloc__return"] == {"ptr": "arg1"}
    assert f["probe_libc:calloc"] == {"nmemb": "arg1", "size": "arg2"}
    assert f["probe_libc:realloc"] == {"oldptr": "ptr", "size": "size"}  # the man page's ptr
    assert f["probe_libc:aligned_alloc"] == {"align": "alignment", "size": "arg2"}
    assert f["probe_libc:posix_memalign__return"] == {"ret": "arg1", "sp": "sp", "w0": "w0", "w1": "w1",
                                                      "w2": "w2", "w3": "w3"}
    assert f["probe_libc:free"] == {"ptr": "ptr"}
    assert f["probe_libstdc:_Znwm"] == {"size": "arg1"}
    assert (probes["probe_libstdc:_Znwm"]["func"], probes["probe_libstdc:_ZdlPv"]["func"]) == ("malloc", "free")
    assert probes["probe_libc:malloc__return"]["kind"] == "return"
    assert all(p["source"] == "perf probe" and not p["unknown"] for p in probes.values())


def test_recognise_any_group_duplicates_and_only_uprobes():
    # perf probe -f names a second `malloc%return` probe malloc_1: the format says it is a return
    fm = formats({"mygrp:malloc_1": ["arg1"], "mygrp:malloc__return_1": ["ptr"],
                  "mygrp:free__return": [],          # a free return carries nothing: left out
                  "mygrp:strdup": ["arg1"],          # not an allocator
                  "mygrp:calloc": ["arg1", "weird"]})
    fm["sched:malloc"] = fm["mygrp:strdup"].replace("__probe_ip", "prev_pid")  # no uprobe format
    fm["mygrp:malloc_2"] = uprobe_format("mygrp:malloc_2", 99, ["arg1"], ret=True)
    probes = {p["event"]: p for p in perfprobe.recognise(fm)}
    assert set(probes) == {"mygrp:malloc_1", "mygrp:malloc__return_1", "mygrp:calloc", "mygrp:malloc_2"}
    assert probes["mygrp:malloc__return_1"]["fields"] == {"ptr": "ptr"}
    assert (probes["mygrp:malloc_1"]["kind"], probes["mygrp:malloc_2"]["kind"]) == ("entry", "return")
    assert probes["mygrp:malloc_2"]["fields"] == {"ptr": "arg1"}
    assert probes["mygrp:calloc"]["unknown"] == ["weird"]
    alloc, free = perfprobe.event_specs(list(probes.values()))
    assert alloc == ["mygrp:calloc//ptr=__probe_ip/", "mygrp:malloc_1//ptr=__probe_ip/",
                     "mygrp:malloc_2//ptr=arg1/stack/", "mygrp:malloc__return_1//ptr=ptr/stack/"]
    assert free == []


def test_notes_say_what_a_capture_lacks():
    # perf probe -x libc malloc; malloc%return (no $retval); realloc %di (no size); no free
    probes = perfprobe.recognise(formats({"probe_libc:malloc": [], "probe_libc:malloc__return": [],
                                          "probe_libc:realloc": ["arg1"],
                                          "probe_libc:calloc__return": ["arg1"],
                                          "probe_libc:posix_memalign__return": ["arg1"],
                                          "probe_libc:posix_memalign": ["arg1", "arg2", "arg3"]}))
    text = "\n".join(perfprobe.notes(probes))
    assert "no size argument on probe_libc:malloc, probe_libc:realloc" in text
    assert "object counts only" in text
    assert "no return value on probe_libc:malloc__return" in text
    assert "no return probe for realloc" in text
    assert "no entry probe for calloc" in text and "calloc nmemb=%di size=%si" in text
    assert "no free probe" in text
    assert "posix_memalign__return fetches no caller stack words" in text
    assert perfprobe.notes(perfprobe.recognise(formats())) == []  # the documented set lacks nothing


def test_pairs_like_record_malloc(tmp_path):
    path = program().write(tmp_path / "p.parquet")
    rec = open_recording(path)
    meta = rec.metadata
    assert is_malloc_recording(meta)
    assert probe_fields(meta)["probe_libc:calloc"] == {"nmemb": "arg1", "size": "arg2"}

    def site_ok(pid, addr, time):
        return np.asarray(addr) != STUB  # what the ELF check says of the PLT stub

    df, stats = malloc_events(rec.table(["sample"]), meta, site_ok)
    assert live(df) == EXPECTED_LIVE
    assert stats["off_site"] == 2 and stats["alias"] == 2
    assert stats["null"] == 2 and stats["nested"] == 3  # failed malloc + realloc(p, 0); realloc(NULL)'s malloc etc.
    assert any("PLT stub" in s for s in summary(stats))
    allocs = df[df["is_alloc"]]
    assert list(allocs[allocs["ptr"] == 0x2000]["size"]) == [300]  # realloc(NULL, n): once
    assert list(allocs[allocs["ptr"] == 0x5000]["size"]) == [160]  # two probes, one call
    assert (allocs["stack_id"] == 0).all()  # from the return rows


def test_without_the_stub_nothing_is_dropped(tmp_path):
    rec = open_recording(program(stub_hit=False).write(tmp_path / "p.parquet"))
    df, stats = malloc_events(rec.table(["sample"]), rec.metadata, lambda p, a, t: np.ones(len(a), bool))
    assert live(df) == EXPECTED_LIVE and "off_site" not in stats


def test_analyze_needs_no_event_options(tmp_path):
    """`analyze` of such a recording, no --alloc/--free: bytes and objects per call chain."""
    path = program(stub_hit=False).write(tmp_path / "p.parquet")
    res = subprocess.run(CLI + ["analyze", str(path), "--format", "json"], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    groups = json.loads(res.stdout)["reports"][-1]["groups"]
    assert sum(g["bytes"] for g in groups) == sum(EXPECTED_LIVE.values())
    assert sum(g["objects"] for g in groups) == len(EXPECTED_LIVE)
    assert "note:" not in res.stderr


def test_object_counts_without_sizes(tmp_path):
    """perf probe -x libc malloc (no size=): calls still pair, blocks count 0 bytes, one note."""
    b = ProbeBuilder(formats({"probe_libc:malloc": [], "probe_libc:malloc__return": ["arg1"],
                              "probe_libc:free": ["arg1"]}))
    t = 0
    for ptr in (0x1000, 0x2000, 0x3000, 0):
        b.add_samples("probe_libc:malloc", [t + 1], 0, 5, 11, {"__probe_ip": SITE["malloc"]})
        b.add_samples("probe_libc:malloc__return", [t + 2], 0, 5, 11,
                      {"__probe_func": SITE["malloc"], "arg1": ptr}, stack_id=[0])
        t += 10
    b.add_samples("probe_libc:free", [t], 0, 5, 11, {"__probe_ip": SITE["free"], "arg1": 0x2000})
    b.add_stacks([[0xFFFFFFFFFFFFFE00, 0x555500001000]])
    alloc, free = perfprobe.event_specs(perfprobe.recognise(b.format_texts))
    path = b.write(tmp_path / "n.parquet", alloc, free)
    res = subprocess.run(CLI + ["analyze", str(path), "--format", "json"], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    groups = json.loads(res.stdout)["reports"][-1]["groups"]
    assert [(g["bytes"], g["objects"]) for g in groups] == [(0, 2)]
    notes = [x for x in res.stderr.splitlines() if "perf probe" in x]
    assert len(notes) == 1 and "no size argument on probe_libc:malloc" in notes[0], res.stderr


@pytest.mark.parametrize("name,expect", [
    ("malloc", ("malloc", "malloc")), ("malloc__return", ("malloc", "malloc")),
    ("cfree", ("cfree", "free")), ("_ZnamRKSt9nothrow_t__return", ("_ZnamRKSt9nothrow_t", "malloc")),
    ("_ZnwmSt11align_val_t", ("_ZnwmSt11align_val_t", "aligned_alloc")),
    ("_ZdaPvm", ("_ZdaPvm", "free")), ("malloc_2", ("malloc", "malloc")),
    ("realloc__return_1", ("realloc", "realloc")), ("mallocx", None), ("free_list", None)])
def test_event_names(name, expect):
    assert perfprobe._function(name) == expect
