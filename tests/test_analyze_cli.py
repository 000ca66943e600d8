"""Acceptance tests of `kmemleak-offline analyze`/`info` through the CLI (issue 2).

Every recording here is built with RecordingBuilder from a short list of events; the expected
leaks come from `model_replay` below (a plain per-event dict replay of docs/behaviour.md's matching rules, written
independently of the vectorised analyser) or are worked out by hand in the test.
The exact text output is pinned by golden files in tests/golden (see test_reports_golden.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kmemleak_offline.cli import main
from kmemleak_offline.format.integrity import seal
from kmemleak_offline.format.recording import METADATA_KEY, open_recording
from kmemleak_offline.synthetic import DEFAULT_REALTIME_NS, PERF_CONTEXT_KERNEL, RecordingBuilder

K = PERF_CONTEXT_KERNEL
MS = 1_000_000
START = 1_000_000_000  # perf ns of the recording start (the clock anchor)
STOP = START + 1000 * MS
GFP_KERNEL = 0xCC0

KSYMS = {
    0xFFFFFFFF81100000: "__kmalloc_noprof",
    0xFFFFFFFF81200000: "udp_init_sock",
    0xFFFFFFFF81210000: "alloc_pipe_info",
    0xFFFFFFFF81300000: "do_syscall_64",
    0xFFFFFFFF81400000: "entry_SYSCALL_64_after_hwframe",
}
# call chains (leaf first, with the kernel context marker, as the kernel delivers them)
STACKS = {
    "udp": (K, 0xFFFFFFFF81100244, 0xFFFFFFFF8120007C, 0xFFFFFFFF81300071, 0xFFFFFFFF81400076),
    "udp2": (K, 0xFFFFFFFF81100100, 0xFFFFFFFF81200010, 0xFFFFFFFF81300071),
    "pipe2": (K, 0xFFFFFFFF81100100, 0xFFFFFFFF81210030, 0xFFFFFFFF81300071),
    "pipe": (K, 0xFFFFFFFF81100244, 0xFFFFFFFF81210030, 0xFFFFFFFF81300071, 0xFFFFFFFF81400076),
}
KMALLOC = "kmem:kmalloc//ptr=ptr/size=bytes_alloc/stack/"
KFREE = "kmem:kfree//ptr=ptr/"


def P(i: int) -> int:
    """A slab pointer."""
    return 0xFFFF888100000000 + i * 0x100


@dataclass(frozen=True)
class Ev:
    """One alloc (size given) or free (size None) sample."""

    t: int  # ms after START
    cpu: int
    pid: int
    tid: int
    ptr: int
    size: int | None = None
    stack: str | None = None  # key of STACKS, None = no callchain
    req: int = 0

    @property
    def is_alloc(self) -> bool:
        return self.size is not None

    @property
    def time(self) -> int:
        return START + self.t * MS


def model_replay(events: list[Ev]) -> list[Ev]:
    """perf-prof's tree, one event at a time (ordering by time; all times here are distinct)."""
    tree: dict[int, Ev] = {}
    for e in sorted(events, key=lambda e: (e.time, e.cpu)):
        if e.is_alloc:
            tree[e.ptr] = e  # replaces (forgets) an older entry with the same key
        else:
            tree.pop(e.ptr, None)
    return sorted(tree.values(), key=lambda e: (e.time, e.ptr))


def model_groups(leaked: list[Ev], comm_of_pid) -> list[tuple[int, int, str | None, list]]:
    """(bytes, objects, stack, comms) per call chain, sorted like docs/behaviour.md says (CPU mode: pid 0)."""
    acc: dict[str | None, list[Ev]] = {}
    for e in leaked:
        acc.setdefault(e.stack, []).append(e)
    out = []
    for stack, es in acc.items():
        comms: dict[str, list[int]] = {}
        for e in es:
            c = comms.setdefault(comm_of_pid(e.pid, e.t), [0, 0])
            c[0] += e.size
            c[1] += 1
        clist = sorted(((n, b, c) for n, (b, c) in comms.items()), key=lambda x: (-x[1], -x[2], x[0]))
        out.append((sum(e.size for e in es), len(es), stack, clist))
    chain = lambda s: (1, ()) if s is None else (0, STACKS[s])
    return sorted(out, key=lambda g: (-g[0], 0, -g[1], chain(g[2])))


def build(events: list[Ev], path: Path, *, alloc: list[str] | None = None, free: list[str] | None = None,
          comms: list[tuple[int, int, int, str, bool]] = (), lost: list[tuple[int, int, int]] = (),
          stop_ms: int = 1000, alloc_event: str = "kmem:kmalloc", free_event: str = "kmem:kfree",
          extra_alloc_fields=None) -> Path:
    """Write a recording of kmalloc/kfree samples (or other events), with ksyms and comm rows.

    comms: (t_ms, pid, tid, comm, exec); lost: (t_ms, cpu, count) LOST records.
    """
    b = RecordingBuilder()
    b.add_ksyms(list(KSYMS), list(KSYMS.values()))
    sid = dict(zip(STACKS, b.add_stacks(list(STACKS.values())), strict=True))
    allocs = [e for e in events if e.is_alloc]
    frees = [e for e in events if not e.is_alloc]
    if allocs:
        fields = extra_alloc_fields(allocs) if extra_alloc_fields else {
            "ptr": [e.ptr for e in allocs], "bytes_alloc": [e.size for e in allocs],
            "bytes_req": [e.req or e.size for e in allocs], "gfp_flags": GFP_KERNEL,
            "call_site": [STACKS[e.stack][2] if e.stack else 0xFFFFFFFF81300071 for e in allocs]}
        b.add_samples(alloc_event, [e.time for e in allocs], [e.cpu for e in allocs],
                      [e.pid for e in allocs], [e.tid for e in allocs], fields,
                      stack_id=[sid[e.stack] if e.stack else -1 for e in allocs])
    if frees:
        key = "ptr" if free_event == "kmem:kfree" else "pfn"
        b.add_samples(free_event, [e.time for e in frees], [e.cpu for e in frees],
                      [e.pid for e in frees], [e.tid for e in frees],
                      {key: [e.ptr for e in frees], **({"call_site": 0xFFFFFFFF81300071}
                                                       if key == "ptr" else {})})
    for t, pid, tid, name, ex in comms:
        b.add_comm(START + t * MS, pid, tid, name, exec=ex)
    for t, cpu, count in lost:
        b.add_lost(START + t * MS, cpu, count)
    return b.write(path, alloc or [KMALLOC], free or [KFREE], start_ns=START,
                   stop_ns=START + stop_ms * MS)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; (exit status, stdout, stderr)."""
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def ts(perf_ns: int) -> str:
    """`<TS>` in UTC for a perf timestamp, from the builder's default anchor (START <-> 2025-01-01)."""
    real = DEFAULT_REALTIME_NS + perf_ns - START
    sec, ns = divmod(real, 1_000_000_000)
    return datetime.fromtimestamp(sec, tz=UTC).strftime("%Y-%m-%d %H:%M:%S") + f".{ns // 1000:06d} "


def stack_lines(name: str) -> list[str]:
    """perf-prof's kernel stack lines for a chain, symbolised against KSYMS by hand."""
    out = []
    addrs = sorted(KSYMS)
    for ip in STACKS[name][1:]:
        base = max(a for a in addrs if a <= ip)
        out.append(f"    {ip:016x} {KSYMS[base]}+0x{ip - base:x} ([kernel.kallsyms])")
    return out


# ----------------------------------------------------------------------------- scenario A
# Leaked-bytes mode, CPU mode, with comms, a replace, a free without alloc, a comm that changes
# (pid 200 execs "date" at 500 ms) and an allocation without a call chain.

COMMS_A = [
    (0, 100, 100, "python3", False), (0, 100, 101, "py-worker", False),
    (0, 200, 200, "bash", False), (0, 300, 300, "sshd", False),
    (500, 200, 200, "date", True),
]
EVENTS_A = [
    Ev(10, 0, 100, 100, P(1), 64, "udp", 40),
    Ev(20, 1, 100, 101, P(2), 64, "udp", 40),
    Ev(30, 0, 100, 100, P(3), 64, "udp", 40),      # freed at 300
    Ev(40, 1, 200, 200, P(4), 64, "udp", 40),      # comm bash
    Ev(600, 0, 200, 200, P(5), 64, "udp", 40),     # comm date (after exec)
    Ev(50, 0, 100, 101, P(6), 64, "udp", 40),
    Ev(70, 1, 100, 100, P(31), 64, "udp", 40),     # replaced at 210 by a pipe alloc: forgotten
    *[Ev(100 + 10 * i, 1, 300, 300, P(10 + i), 64, "udp2", 48) for i in range(4)],
    *[Ev(140 + 10 * i, 0, 300, 300, P(20 + i), 64, "pipe2", 64) for i in range(5)],  # P(24) freed
    Ev(190, 1, 300, 300, P(24)),
    Ev(200, 0, 100, 100, P(30), 128, "pipe", 100),
    Ev(210, 1, 100, 100, P(31), 128, "pipe", 100),
    Ev(250, 0, 100, 100, P(99)),                   # free without alloc: only counted
    Ev(300, 1, 100, 100, P(3)),
    Ev(400, 0, 100, 100, P(40), 288, None, 260),  # no call chain
]


def comm_of_pid_a(pid: int, t_ms: int) -> str:
    """The tgid's comm at t (worked out from COMMS_A)."""
    return {100: "python3", 300: "sshd"}.get(pid) or ("bash" if t_ms < 500 else "date")


@pytest.fixture
def rec_a(tmp_path: Path) -> Path:
    return build(EVENTS_A, tmp_path / "a.parquet", comms=COMMS_A)


def expected_groups_text(groups, with_comm: bool) -> list[str]:
    lines = ["LEAKED BYTES REPORT:"]
    for b, n, stack, comms in groups:
        lines.append(f"Leak of {b} bytes in {n} objects allocated from:")
        if with_comm:
            lines.append("    comms:" + "".join(f" {c}({cb}/{cn})" for c, cb, cn in comms))
        lines += stack_lines(stack) if stack else ["    (no call chain recorded; use -g or stack)"]
    return lines


def test_leaked_bytes_groups_comms_and_stats(rec_a, capsys):
    code, out, err = run(capsys, "analyze", rec_a, "--utc", "--comm")
    assert code == 0, err
    leaked = model_replay(EVENTS_A)
    groups = model_groups(leaked, comm_of_pid_a)
    # hand check of the model on this data: udp 5 objects (P31 was replaced), then the
    # no-chain 288, then three 256-byte groups by objects desc, then stack addresses asc
    assert [(g[0], g[1], g[2]) for g in groups] == [
        (320, 5, "udp"), (288, 1, None), (256, 4, "udp2"), (256, 4, "pipe2"), (256, 2, "pipe")]
    assert groups[0][3] == [("python3", 192, 3), ("bash", 64, 1), ("date", 64, 1)]
    n_alloc = sum(e.is_alloc for e in EVENTS_A)
    n_free = len(EVENTS_A) - n_alloc
    want = [ts(STOP), "KMEMLEAK STATS:", f"TOTAL alloc {n_alloc} free {n_free}", "",
            *expected_groups_text(groups, with_comm=True)]
    assert out.splitlines() == want
    assert err == ""


def test_leaked_bytes_without_comm_has_no_comms_line(rec_a, capsys):
    code, out, _ = run(capsys, "analyze", rec_a, "--utc")
    assert code == 0
    groups = model_groups(model_replay(EVENTS_A), comm_of_pid_a)
    assert out.splitlines()[4:] == expected_groups_text(groups, with_comm=False)


def test_verbose_adds_event_list_in_time_order(rec_a, capsys):
    code, out, _ = run(capsys, "analyze", rec_a, "--utc", "-v")
    assert code == 0
    lines = out.splitlines()
    leaked = model_replay(EVENTS_A)
    assert lines[:2] == [f"Wildcard expansion: '{KMALLOC}' -> '{KMALLOC}'",  # perf-prof -v, once per list
                         f"Wildcard expansion: '{KFREE}' -> '{KFREE}'"]
    assert lines[6] == f"KMEMLEAK REPORT: {len(leaked)}"
    ev_lines = [ln for ln in lines if " kmem:kmalloc: " in ln]
    assert len(ev_lines) == len(leaked)
    thread_comm = {(100, 100): "python3", (100, 101): "py-worker", (300, 300): "sshd"}
    for line, e in zip(ev_lines, leaked, strict=True):
        us = (e.time + 500) // 1000
        comm = thread_comm.get((e.pid, e.tid)) or ("bash" if e.t < 500 else "date")
        head = f"{comm:>16} {e.tid:6d} ..... [{e.cpu:03d}] {us // 1_000_000}.{us % 1_000_000:06d}: kmem:kmalloc: "
        assert line.startswith(head), (line, head)
        assert f" ptr=0x{e.ptr:x} bytes_req={e.req} bytes_alloc={e.size} gfp_flags=GFP_KERNEL " in line
    # event list block precedes the leaked-bytes block
    assert lines.index("LEAKED BYTES REPORT:") > lines.index(ev_lines[-1])
    # each event line of an entry with a chain is followed by its stack
    i = lines.index(ev_lines[0])
    assert lines[i + 1: i + 1 + len(stack_lines("udp"))] == stack_lines("udp")


# ----------------------------------------------------------------------------- event-list mode

PAGE_ALLOC = "kmem:mm_page_alloc//ptr=pfn/stack/"
PAGE_FREE = "kmem:mm_page_free//ptr=pfn/"
EVENTS_B = [
    Ev(100, 0, 300, 300, 0x1000, 0, "udp"),
    Ev(200, 1, 300, 300, 0x1001, 1, "pipe"),
    Ev(300, 0, 300, 300, 0x1002, 0, "udp"),
    Ev(350, 1, 300, 300, 0x1002),
    Ev(900, 0, 300, 300, 0x1003, 2, None),
]


def page_fields(allocs: list[Ev]) -> dict:
    # Ev.size carries the page order here
    return {"pfn": [e.ptr for e in allocs], "order": [e.size for e in allocs],
            "gfp_flags": GFP_KERNEL, "migratetype": 0}


@pytest.fixture
def rec_b(tmp_path: Path) -> Path:
    return build(EVENTS_B, tmp_path / "b.parquet", alloc=[PAGE_ALLOC], free=[PAGE_FREE],
                 alloc_event="kmem:mm_page_alloc", free_event="kmem:mm_page_free",
                 extra_alloc_fields=page_fields, comms=[(0, 300, 300, "sshd", False)])


def test_event_list_mode_lists_every_leak(rec_b, capsys):
    code, out, err = run(capsys, "analyze", rec_b, "--utc")
    assert code == 0, err
    leaked = model_replay(EVENTS_B)
    assert [e.ptr for e in leaked] == [0x1000, 0x1001, 0x1003]
    lines = out.splitlines()
    assert lines[:5] == [ts(STOP), "KMEMLEAK STATS:", "TOTAL alloc 4 free 1", "",
                         f"KMEMLEAK REPORT: {len(leaked)}"]
    assert "LEAKED BYTES REPORT:" not in out
    ev = [ln for ln in lines if "kmem:mm_page_alloc:" in ln]
    assert [re.search(r"pfn=0x([0-9a-f]+)", ln).group(1) for ln in ev] == ["1000", "1001", "1003"]
    assert [re.search(r"order=(\d+)", ln).group(1) for ln in ev] == ["0", "1", "2"]
    # the chain-less entry has no stack lines: it is the last line
    assert lines[-1] == ev[-1]


@pytest.mark.parametrize(("than", "kept"), [
    ("0", [0x1000, 0x1001, 0x1003]),
    ("700ms", [0x1000, 0x1001]),       # ages at stop: 900, 800, 100 ms
    ("800ms", [0x1000]),               # strict >: 800 ms is not older than 800 ms
    ("899999999", [0x1000]),
    ("900ms", []),
])
def test_than_drops_lines_not_the_count(rec_b, capsys, than, kept):
    code, out, _ = run(capsys, "analyze", rec_b, "--utc", "--than", than)
    assert code == 0
    assert "KMEMLEAK REPORT: 3" in out.splitlines()
    ev = [ln for ln in out.splitlines() if "kmem:mm_page_alloc:" in ln]
    assert [int(re.search(r"pfn=0x([0-9a-f]+)", ln).group(1), 16) for ln in ev] == kept


def test_than_final_reference_is_stop_time_in_leaked_bytes_mode(rec_a, capsys):
    # udp group allocs at 10, 20, 40, 50, 600 ms; stop at 1000 ms: --than 500ms keeps 4 of 5
    code, out, _ = run(capsys, "analyze", rec_a, "--utc", "--than", "500ms")
    assert code == 0
    leaked = [e for e in model_replay(EVENTS_A) if (STOP - e.time) > 500 * MS]
    groups = model_groups(leaked, comm_of_pid_a)
    assert [(g[0], g[1]) for g in groups if g[2] == "udp"] == [(256, 4)]
    assert [g[0] for g in groups] == [288, 256, 256, 256, 256]  # udp now ties: objects, then chain
    assert out.splitlines()[4:] == expected_groups_text(groups, with_comm=False)


# ----------------------------------------------------------------------------- defaults, re-interpretation

def test_default_ptr_and_size_from_bare_event_names(tmp_path, capsys):
    rec = build(EVENTS_A, tmp_path / "d.parquet", comms=COMMS_A,
                alloc=["kmem:kmalloc"], free=["kmem:kfree"])
    code, out, err = run(capsys, "analyze", rec, "--utc")
    assert code == 0, err
    # bare kmem:kmalloc: ptr defaults to the ptr field, size to bytes_alloc -> leaked-bytes mode
    groups = model_groups(model_replay(EVENTS_A), comm_of_pid_a)
    assert out.splitlines()[4:] == expected_groups_text(groups, with_comm=False)


def test_alloc_filter_reinterprets_offline(rec_a, capsys):
    code, out, err = run(capsys, "analyze", rec_a, "--utc", "--alloc",
                         "kmem:kmalloc/bytes_alloc > 100/ptr=ptr/size=bytes_alloc/", "--free", KFREE)
    assert code == 0, err
    big = [e for e in EVENTS_A if not e.is_alloc or e.size > 100]
    leaked = model_replay(big)
    # P(31)@70 (64 B) is filtered out, so nothing is replaced; the two 128-B pipe allocs and 288 leak
    assert sorted((e.ptr, e.size) for e in leaked) == [(P(30), 128), (P(31), 128), (P(40), 288)]
    groups = model_groups(leaked, comm_of_pid_a)
    lines = out.splitlines()
    assert lines[2] == f"TOTAL alloc {sum(e.is_alloc for e in big)} free {sum(not e.is_alloc for e in big)}"
    assert lines[4:] == expected_groups_text(groups, with_comm=False)


def test_size_expression_on_page_alloc(rec_b, capsys):
    code, out, err = run(capsys, "analyze", rec_b, "--utc", "--alloc",
                         "kmem:mm_page_alloc//ptr=pfn/size=4096<<order/stack/", "--free", PAGE_FREE)
    assert code == 0, err
    leaked = model_replay(EVENTS_B)
    by_stack: dict = {}
    for e in leaked:
        b_, n_ = by_stack.get(e.stack, (0, 0))
        by_stack[e.stack] = (b_ + (4096 << e.size), n_ + 1)
    # orders 0 (udp), 1 (pipe), 2 (no chain): 4096, 8192, 16384 bytes
    assert by_stack == {"udp": (4096, 1), "pipe": (8192, 1), None: (16384, 1)}
    lines = out.splitlines()
    assert lines[4:] == ["LEAKED BYTES REPORT:",
                         "Leak of 16384 bytes in 1 objects allocated from:",
                         "    (no call chain recorded; use -g or stack)",
                         "Leak of 8192 bytes in 1 objects allocated from:", *stack_lines("pipe"),
                         "Leak of 4096 bytes in 1 objects allocated from:", *stack_lines("udp")]


# ----------------------------------------------------------------------------- lost records
# cpu0: P1@100 P2@200 [LOST 5] P3@400 free P1@700;  cpu1: P4@150 P5@300 free P2@350 P6@500.
# The loss window on cpu0 is (200, 400): the early report fires at the first sample later than
# 200 (P5@300, cpu1) with P1, P4, P2 in the tree; P5 and the free of P2 are dropped (inside the
# window, any ring); P3@400 is kept (not strictly inside). The free of P1@700 finds an empty slot.

EVENTS_C = [
    Ev(100, 0, 100, 100, P(1), 64, "udp"),
    Ev(200, 0, 100, 100, P(2), 256, "pipe"),
    Ev(400, 0, 100, 100, P(3), 512, "udp"),
    Ev(700, 0, 100, 100, P(1)),
    Ev(150, 1, 100, 100, P(4), 128, "udp"),
    Ev(300, 1, 100, 100, P(5), 32, "udp"),
    Ev(350, 1, 100, 100, P(2)),
    Ev(500, 1, 100, 100, P(6), 1024, "pipe"),
]
LOST_C = [(250, 0, 5)]


@pytest.fixture
def rec_c(tmp_path: Path) -> Path:
    return build(EVENTS_C, tmp_path / "c.parquet", lost=LOST_C,
                 comms=[(0, 100, 100, "python3", False)])


def group_block(groups: list[tuple[int, int, str]]) -> list[str]:
    return expected_groups_text([(b, n, s, []) for b, n, s in groups], with_comm=False)


def test_lost_window_early_report(rec_c, capsys):
    code, out, err = run(capsys, "analyze", rec_c, "--utc")
    assert code == 0
    trig = START + 300 * MS
    assert err.splitlines() == [f"{ts(trig)}kmemleak: lost 5 events (total)"]
    assert out.splitlines() == [
        f"{ts(trig)}Report memory leaks in advance due to lost",
        ts(trig), "KMEMLEAK STATS:", "TOTAL alloc 3 free 0", "",
        *group_block([(256, 1, "pipe"), (192, 2, "udp")]),  # P2 | P1 + P4
        ts(STOP), "KMEMLEAK STATS:", "TOTAL alloc 5 free 1", "",
        *group_block([(1024, 1, "pipe"), (512, 1, "udp")]),
    ]


@pytest.mark.parametrize(("than", "early", "final"), [
    # early reference = trigger (300 ms): ages P1 200, P4 150, P2 100; final = stop: P3 600, P6 500
    ("120ms", [(192, 2, "udp")], [(1024, 1, "pipe"), (512, 1, "udp")]),
    ("160ms", [(64, 1, "udp")], [(1024, 1, "pipe"), (512, 1, "udp")]),
    ("550ms", [], [(512, 1, "udp")]),
])
def test_than_reference_times_early_and_final(rec_c, capsys, than, early, final):
    code, out, _ = run(capsys, "analyze", rec_c, "--utc", "--than", than)
    assert code == 0
    trig = START + 300 * MS
    assert out.splitlines() == [
        f"{ts(trig)}Report memory leaks in advance due to lost",
        ts(trig), "KMEMLEAK STATS:", "TOTAL alloc 3 free 0", "", *group_block(early),
        ts(STOP), "KMEMLEAK STATS:", "TOTAL alloc 5 free 1", "", *group_block(final),
    ]


def test_loss_before_first_sample_starts_at_recording_start(tmp_path, capsys):
    # cpu1 loses 10 events before its first sample (@200): window (START, 200 ms). Q1@50 on cpu0
    # triggers the (empty) early report and is dropped; Q2@200 and Q3@300 are kept.
    events = [Ev(50, 0, 100, 100, P(1), 64, "udp"), Ev(200, 1, 100, 100, P(2), 128, "udp"),
              Ev(300, 0, 100, 100, P(3), 256, "pipe"), Ev(400, 0, 100, 100, P(9))]
    rec = build(events, tmp_path / "d.parquet", lost=[(0, 1, 10)])
    code, out, err = run(capsys, "analyze", rec, "--utc")
    assert code == 0
    assert err.splitlines() == [f"{ts(START + 50 * MS)}kmemleak: lost 10 events (total)"]
    assert "in advance" not in out  # the tree was empty: nothing to report early
    assert out.splitlines() == [ts(STOP), "KMEMLEAK STATS:", "TOTAL alloc 2 free 1", "",
                                *group_block([(256, 1, "pipe"), (128, 1, "udp")])]


def test_lost_total_accumulates_over_reports(tmp_path, capsys):
    # two losses on cpu0, each followed by samples: stderr shows the running total
    events = [Ev(100, 0, 1, 1, P(1), 64, "udp"), Ev(200, 0, 1, 1, P(2), 64, "udp"),
              Ev(400, 0, 1, 1, P(3), 64, "udp"), Ev(600, 0, 1, 1, P(4), 64, "udp"), Ev(700, 0, 1, 1, P(9))]
    rec = build(events, tmp_path / "e.parquet", lost=[(150, 0, 3), (500, 0, 4)])
    code, out, err = run(capsys, "analyze", rec, "--utc")
    assert code == 0
    # windows (100, 200) and (400, 600): triggers at 200 and 600, which end their windows (kept)
    assert err.splitlines() == [f"{ts(START + 200 * MS)}kmemleak: lost 3 events (total)",
                                f"{ts(START + 600 * MS)}kmemleak: lost 7 events (total)"]
    assert out.count("Report memory leaks in advance due to lost") == 2
    # early reports hold P1, then P2+P3; the final one P4
    assert [ln for ln in out.splitlines() if ln.startswith("Leak of")] == [
        "Leak of 64 bytes in 1 objects allocated from:", "Leak of 128 bytes in 2 objects allocated from:",
        "Leak of 64 bytes in 1 objects allocated from:"]


# ----------------------------------------------------------------------------- json

def test_json_report(rec_c, capsys):
    code, out, err = run(capsys, "analyze", rec_c, "--format", "json", "--comm")
    assert code == 0, err
    doc = json.loads(out)
    for key in ("format_version", "recording", "mode", "stats", "reports", "lost"):
        assert key in doc
    assert doc["format_version"] == 1
    assert doc["recording"] == str(rec_c)
    assert doc["mode"] == "leaked-bytes"
    assert doc["stats"] == {"total_alloc": 5, "total_free": 1, "lost_events": 5}  # LOST_C: 5 lost
    assert [(r["reason"], r["time_ns"], r["num"]) for r in doc["reports"]] == [
        ("lost", START + 300 * MS, 3), ("final", STOP, 2)]
    early, final = doc["reports"]
    assert [(g["bytes"], g["objects"], g["pid"]) for g in early["groups"]] == [(256, 1, 0), (192, 2, 0)]
    assert [(g["bytes"], g["objects"]) for g in final["groups"]] == [(1024, 1), (512, 1)]
    g = final["groups"][1]
    assert g["comms"] == [{"comm": "python3", "bytes": 512, "count": 1}]
    want = [(ip, KSYMS[max(a for a in KSYMS if a <= ip)], ip - max(a for a in KSYMS if a <= ip))
            for ip in STACKS["udp"][1:]]
    assert [(f["addr"], f["symbol"], f["offset"], f["dso"]) for f in g["stack"]] == [
        (a, s, o, "[kernel.kallsyms]") for a, s, o in want]
    assert early["events"] == [] and final["events"] == []  # leaked-bytes mode without -v
    assert doc["lost"] == [{"cpu": 0, "count": 5, "start_ns": START + 200 * MS, "end_ns": START + 400 * MS}]


def test_json_event_list_mode_and_verbose_events(rec_b, capsys):
    code, out, _ = run(capsys, "analyze", rec_b, "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["mode"] == "event-list"
    (final,) = doc["reports"]
    assert final["groups"] == []
    assert "comms" not in json.dumps(final)  # only with --comm
    leaked = model_replay(EVENTS_B)
    ev = final["events"]
    assert [(e["time_ns"], e["cpu"], e["pid"], e["tid"], e["comm"], e["event"], e["ptr"])
            for e in ev] == [(e.time, e.cpu, e.pid, e.tid, "sshd", "kmem:mm_page_alloc", e.ptr)
                             for e in leaked]
    assert [len(e["stack"]) for e in ev] == [4, 4, 0]
    assert doc["lost"] == []


# ----------------------------------------------------------------------------- flame graph

def folded_line(stack: str, weight: int) -> str:
    names = [ln.split()[1].split("+0x")[0] for ln in stack_lines(stack)]
    return ";".join(reversed(names)) + f" {weight}"


def test_flame_graph_leaked_bytes_weights_are_bytes(rec_a, tmp_path, capsys):
    target = tmp_path / "fg"
    code, out, _ = run(capsys, "analyze", rec_a, "--utc", "--flame-graph", target)
    assert code == 0
    path = tmp_path / "fg.folded"
    assert path.exists() and not target.exists()
    groups = model_groups(model_replay(EVENTS_A), comm_of_pid_a)
    want = {folded_line(s, b) for b, _n, s, _c in groups if s is not None}
    assert set(path.read_text().splitlines()) == want
    assert "entry_SYSCALL_64_after_hwframe;do_syscall_64;udp_init_sock;__kmalloc_noprof 320" in want
    assert out.endswith("To generate the flame graph, running THIS shell command:\n\n"
                        f"  flamegraph.pl {path} > {tmp_path / 'fg.svg'}\n\n")


def test_flame_graph_event_list_weights_are_objects_and_folded_suffix_kept(tmp_path, capsys):
    events = [*[Ev(100 + i, 0, 300, 300, 0x2000 + i, 0, "udp") for i in range(3)],
              Ev(200, 1, 300, 300, 0x3000, 1, "pipe"), Ev(300, 1, 300, 300, 0x4000, 0, None),
              Ev(400, 1, 300, 300, 0x5000)]  # (a free: the recording must know the free event)
    rec = build(events, tmp_path / "b.parquet", alloc=[PAGE_ALLOC], free=[PAGE_FREE],
                alloc_event="kmem:mm_page_alloc", free_event="kmem:mm_page_free",
                extra_alloc_fields=page_fields)
    target = tmp_path / "pages.folded"
    code, out, _ = run(capsys, "analyze", rec, "--flame-graph", target)
    assert code == 0
    assert not (tmp_path / "pages.folded.folded").exists()
    assert sorted(target.read_text().splitlines()) == sorted([folded_line("udp", 3), folded_line("pipe", 1)])
    assert f"  flamegraph.pl {target} > {tmp_path / 'pages.svg'}\n" in out


# ----------------------------------------------------------------------------- -i interval stats

def test_interval_stats_lines(rec_a, capsys):
    code, out, _ = run(capsys, "analyze", rec_a, "--utc", "-i", "250")
    assert code == 0
    blocks = []
    prev_a = prev_f = 0
    for bound in (250, 500, 750, 1000):
        upto = [e for e in EVENTS_A if e.t <= bound]
        live = model_replay(upto)
        ta = sum(e.is_alloc for e in upto)
        tf = len(upto) - ta
        blocks += [ts(START + bound * MS), "KMEMLEAK STATS:",
                   f"ALLOC LIST num {len(live)} mem {sum(e.size for e in live)}",
                   f"INTERVAL alloc {ta - prev_a} free {tf - prev_f}", f"TOTAL alloc {ta} free {tf}", ""]
        prev_a, prev_f = ta, tf
    # hand check of the first boundary: 17 allocs, P31@70 replaced, P24 freed, P99 no-op -> 15 live,
    # 5x64 (udp) + 4x64 (udp2) + 4x64 (pipe2) + 2x128 (pipe) = 1088 bytes
    assert blocks[2] == "ALLOC LIST num 15 mem 1088"
    lines = out.splitlines()
    assert lines[: len(blocks)] == blocks
    assert lines[len(blocks)] == ts(STOP)  # then the final report


# ----------------------------------------------------------------------------- info

def test_info_summarises_the_recording(rec_c, capsys):
    code, out, err = run(capsys, "info", rec_c)
    assert code == 0, err
    assert "synthetic" in out and "6.18.0-synthetic" in out  # host and kernel
    assert re.search(r"kmem:kmalloc\s+samples\s+6\b", out)
    assert re.search(r"kmem:kfree\s+samples\s+2\b", out)
    assert re.search(r"lost:\s+5 events in 1 LOST records", out)
    assert "duration 1.000 s" in out
    size = rec_c.stat().st_size
    assert f"{size / 1024:.1f} KiB" in out


def test_event_list_mode_for_uprobe_alloc_without_size(tmp_path, capsys):
    """malloc_ret has a `ptr` field (default key) and no bytes_alloc: no size -> event-list mode."""
    b = RecordingBuilder()
    func, ret = 0x7F1C45F47930, 0x55A5F9FA51BB
    ptrs = [94172132418224 + 64 * i for i in range(4)]
    b.add_comm(START, 4242, 4242, "leak")
    b.add_samples("kmlt_fmt:malloc_ret", [START + (100 + i) * MS for i in range(4)], 0, 4242, 4242,
                  {"__probe_func": func, "__probe_ret_ip": ret, "ptr": ptrs})
    b.add_samples("kmlt_fmt:free_ent", START + 200 * MS, 1, 4242, 4242,
                  {"__probe_ip": 0x7F1C45F47EF0, "ptr": ptrs[1]})
    rec = b.write(tmp_path / "u.parquet", ["kmlt_fmt:malloc_ret"], ["kmlt_fmt:free_ent"],
                  start_ns=START, stop_ns=STOP)
    code, out, err = run(capsys, "analyze", rec, "--utc")
    assert code == 0, err
    leaked = [p for p in ptrs if p != ptrs[1]]
    assert out.splitlines() == [
        ts(STOP), "KMEMLEAK STATS:", "TOTAL alloc 4 free 1", "", f"KMEMLEAK REPORT: {len(leaked)}",
        *[f"            leak   4242 ..... [000] 1.{100 + i:03d}000: kmlt_fmt:malloc_ret: "
          f"({func:x} <- {ret:x}) ptr={p}" for i, p in enumerate(ptrs) if p in leaked]]


def test_json_verbose_lists_events_in_leaked_bytes_mode(rec_c, capsys):
    code, out, _ = run(capsys, "analyze", rec_c, "--format", "json", "-v")
    assert code == 0
    early, final = json.loads(out)["reports"]
    # early: P1@100, P4@150, P2@200 (time order); final: P3@400, P6@500 - with sizes
    assert [(e["time_ns"], e["ptr"], e["size"]) for e in early["events"]] == [
        (START + 100 * MS, P(1), 64), (START + 150 * MS, P(4), 128), (START + 200 * MS, P(2), 256)]
    assert [(e["ptr"], e["size"]) for e in final["events"]] == [(P(3), 512), (P(6), 1024)]
    assert all(e["comm"] == "python3" and e["event"] == "kmem:kmalloc" for e in early["events"])


def test_offline_filter_can_use_ksymbol_from_the_recordings_kallsyms(tmp_path, capsys):
    # call_site is each alloc's caller (STACKS[...][2]): udp_init_sock for "udp", alloc_pipe_info for "pipe"
    events = [Ev(10, 0, 100, 100, 0x1000, size=64, stack="udp"),
              Ev(11, 0, 100, 100, 0x2000, size=512, stack="pipe"),
              Ev(12, 1, 100, 100, 0x9999)]  # a free of nothing: both allocs leak unless filtered
    rec = build(events, tmp_path / "ks.parquet")
    code, out, err = run(capsys, "analyze", rec, "--alloc",
                         'kmem:kmalloc/ksymbol(call_site) == "alloc_pipe_info"/', "--free", "kmem:kfree")
    assert code == 0, err
    assert "TOTAL alloc 1 free 1" in out
    assert "Leak of 512 bytes in 1 objects allocated from:" in out
    assert "Leak of 64 bytes" not in out


def test_byte_totals_stay_exact_above_2_to_the_53(tmp_path, capsys):
    """Sizes are u64 (perf-prof prints %lu): totals past float precision must not be rounded
    (71 objects of 2**47 - 1 bytes: an odd total past 2**53, which a float cannot hold)."""
    n = 71
    rec = build([Ev(10 + i, 0, 100, 100, P(1 + i), 64, "udp") for i in range(n)]
                + [Ev(900, 0, 100, 100, P(999))], tmp_path / "big.parquet")
    size = 2**47 - 1
    total = n * size
    assert total > 2**53 and float(total) != total
    spec = f"kmem:kmalloc//ptr=ptr/size={size}/stack/"
    code, out, err = run(capsys, "analyze", rec, "--alloc", spec)
    assert (code, err) == (0, "")
    assert f"Leak of {total} bytes in {n} objects" in out, out
    code, out, err = run(capsys, "analyze", rec, "--alloc", spec, "--format", "json")
    groups = json.loads(out)["reports"][-1]["groups"]
    assert [g["bytes"] for g in groups] == [total]


@pytest.mark.parametrize("size", ["2**47 + 1", "-2", "0x8000000000000000"])
@pytest.mark.parametrize("engine", [[], ["--in-memory"]])
def test_sizes_no_allocator_returns_are_left_out_with_a_warning(tmp_path, capsys, size, engine):
    """A size past 128 TiB (2**47, the user address space) is damaged or foreign data: those
    samples are left out of the report and counted in a warning (text and JSON), never summed."""
    size = {"2**47 + 1": str(2**47 + 1)}.get(size, size)
    rec = build([Ev(10, 0, 100, 100, P(1), 64, "udp"), Ev(20, 0, 100, 100, P(2), 64, "udp"),
                 Ev(30, 0, 100, 100, P(9))], tmp_path / "huge.parquet")
    spec = f"kmem:kmalloc//ptr=ptr/size=ptr == {P(2)} ? {size} : bytes_alloc/stack/"
    code, out, err = run(capsys, "analyze", rec, "--alloc", spec, *engine)
    assert code == 0, err
    assert "Leak of 64 bytes in 1 objects" in out and "TOTAL alloc 1 free 1" in out
    assert err == ("kmemleak-offline: warning: kmem:kmalloc: 1 samples with a size past "
                   "140,737,488,355,328 bytes (128 TiB: no allocator returns that; damaged or "
                   "foreign data?): left out of the report\n").replace("kmemleak-offline: ", "")
    code, out, err = run(capsys, "analyze", rec, "--alloc", spec, "--format", "json", *engine)
    doc = json.loads(out)
    assert [g["bytes"] for g in doc["reports"][-1]["groups"]] == [64]
    assert len(doc["warnings"]) == 1 and "128 TiB" in doc["warnings"][0]


@pytest.mark.parametrize("engine", [[], ["--in-memory"]])
def test_samples_timed_long_after_the_stop_are_left_out_with_a_warning(tmp_path, capsys, engine):
    rec = build([Ev(10, 0, 100, 100, P(1), 64, "udp"), Ev(20, 1, 100, 100, P(2), 64, "udp"),
                 Ev(30, 0, 100, 100, P(9)), Ev(40, 0, 100, 100, P(3), 128, "pipe")],
                tmp_path / "late.parquet", stop_ms=1000)
    t = pq.read_table(rec)
    time_ = t.column("time").to_pylist()
    kind = t.column("kind").cast("string").to_pylist()
    late = [i for i, k in enumerate(kind) if k == "sample" and time_[i] == START + 20 * MS]
    assert len(late) == 1
    time_[late[0]] = START + 3600 * 10**9  # an hour after the stop
    t = t.set_column(t.schema.get_field_index("time"), "time", pa.array(time_, pa.uint64()))
    pq.write_table(t, rec)
    seal(rec)
    code, out, err = run(capsys, "analyze", rec, "--utc", *engine)
    assert code == 0, err
    assert "Leak of 192 bytes in 2 objects" not in out
    assert "Leak of 64 bytes in 1 objects" in out and "Leak of 128 bytes in 1 objects" in out
    assert "TOTAL alloc 2 free 1" in out
    assert "kmem:kmalloc: 1 samples timed after the recording's stop" in err
    assert ts(START + 1000 * MS) in out  # the final report is at the recorded stop, not an hour on


def test_lost_lines_per_record_with_v_and_running_total_without(tmp_path, capsys):
    """perf-prof: with -v each reclaimed LOST record prints `lost N events on CPU #c`; without,
    a running total `lost T events (total)`."""
    rec = build(EVENTS_C, tmp_path / "c2.parquet", lost=[(250, 0, 5), (260, 1, 7)],
                comms=[(0, 100, 100, "python3", False)])
    # ring 1 loses after its 150 ms sample (window 150..300), ring 0 after 200 ms (200..400):
    # the first is reclaimed by the 200 ms sample, the second by the 300 ms one
    code, _, err = run(capsys, "analyze", rec, "--utc", "-v")
    assert code == 0
    assert [line for line in err.splitlines() if "lost" in line] == [
        "2025-01-01 00:00:00.200000 kmemleak: lost 7 events on CPU #1",
        "2025-01-01 00:00:00.300000 kmemleak: lost 5 events on CPU #0"]
    code, _, err = run(capsys, "analyze", rec, "--utc")
    assert [line for line in err.splitlines() if "lost" in line] == [
        "2025-01-01 00:00:00.200000 kmemleak: lost 7 events (total)",
        "2025-01-01 00:00:00.300000 kmemleak: lost 12 events (total)"]


def test_verbose_prints_each_list_wildcard_expanded(rec_a, capsys):
    """perf-prof -v: `Wildcard expansion: '<list>' -> '<expanded>'` on stdout, expanded against the
    recording's events (the suffix copied to every match)."""
    code, out, _ = run(capsys, "analyze", rec_a, "-v", "--alloc", "kmem:kmall*//size=bytes_req/stack/",
                       "--free", "kmem:kf*")
    assert code == 0
    assert out.splitlines()[:2] == [
        "Wildcard expansion: 'kmem:kmall*//size=bytes_req/stack/' -> 'kmem:kmalloc//size=bytes_req/stack/'",
        "Wildcard expansion: 'kmem:kf*' -> 'kmem:kfree'"]
    code, out, _ = run(capsys, "analyze", rec_a, "--alloc", "kmem:kmall*", "--free", "kmem:kf*")
    assert "Wildcard" not in out


def test_info_shows_kernel_counts_unaccounted_and_how_it_stopped(tmp_path, capsys):
    """`kernel count` is the kernel's PERF_FORMAT_LOST count, not the samples again; the
    `count - samples - lost` residue (docs/format.md) is shown; a killed recorder's marker is printed."""
    rec = build(EVENTS_C, tmp_path / "k.parquet")
    meta = open_recording(rec).metadata
    meta["counts"] = {"kmem:kmalloc": {"samples": 6, "kernel_count": 9, "lost": 2},
                      "kmem:kfree": {"samples": 2, "kernel_count": 2, "lost": 0}}
    meta["stopped"] = "recorder killed"
    t = pq.read_table(rec)
    pq.write_table(t.replace_schema_metadata({METADATA_KEY: json.dumps(meta)}), rec)
    seal(rec)  # edited by hand: sealed again, as a writer would
    code, out, err = run(capsys, "info", rec)
    assert code == 0, err
    assert re.search(r"kmem:kmalloc\s+samples\s+6\s+kernel count 9\s+lost 2\s+unaccounted 1\b", out)
    assert re.search(r"kmem:kfree\s+samples\s+2\s+kernel count 2\s+lost 0\s+unaccounted 0\b", out)
    assert "stopped:     recorder killed" in out


def test_stop_time_older_than_the_last_sample_is_not_used_for_than(tmp_path, capsys):
    """A killed recorder's last metadata can say stop < last sample: --than must measure from the
    last sample then, not wrap around and call young allocations old."""
    rec = build(EVENTS_C, tmp_path / "s.parquet", stop_ms=50)  # every sample is after "stop"
    # as an older version wrote it (this one never writes a stop older than its last record)
    meta = open_recording(rec).metadata
    del meta["integrity"]
    pq.write_table(pq.read_table(rec).replace_schema_metadata({METADATA_KEY: json.dumps(meta)}), rec)
    code, out, err = run(capsys, "analyze", rec, "--than", "10s")
    assert code == 0, err
    assert "Leak of" not in out  # nothing is 10 s old: the recording spans 0.7 s
    # final report at the last sample (700 ms): the udp allocs at 150/300/400 ms are old enough,
    # the pipe alloc at 500 ms (200 ms old) is not
    code, out, err = run(capsys, "analyze", rec, "--than", "250ms")
    assert "Leak of 672 bytes in 3 objects" in out and "Leak of 1024 bytes" not in out


def test_no_allocations_prints_nothing_like_perf_prof_and_says_why_on_stderr(tmp_path, capsys):
    rec = build([Ev(5, 0, 100, 100, P(3), 64, "udp"), Ev(10, 0, 100, 100, P(1)),
                 Ev(20, 0, 100, 100, P(2))], tmp_path / "f.parquet")
    code, out, err = run(capsys, "analyze", rec, "--alloc", "kmem:kmalloc/bytes_alloc > 4096/")
    assert code == 0 and out == ""  # perf-prof: no stats without allocations, no empty report
    assert err == "kmemleak-offline: note: no allocations to report (kmem:kmalloc: none recorded " \
                  "or all filtered out)\n"


def test_large_ring_ids_analyse_like_small_ones(tmp_path, capsys):
    """`ring` is any uint32 a writer chose (e.g. a thread id in per-task mode): ids past 16 bits
    must order, pair with their lost rows and report exactly like ring numbers 0 and 1."""
    import pyarrow as pa
    import pyarrow.compute as pc

    small = build(EVENTS_C, tmp_path / "small.parquet", lost=LOST_C,
                  comms=[(0, 100, 100, "python3", False)])
    t = pq.read_table(small)
    big = {0: 3_000_000_000, 1: 70_000}
    cpu = t.column("cpu").to_pylist()
    ring = [None if c is None else big[c] for c in cpu]
    t = t.set_column(t.schema.get_field_index("ring"), "ring", pa.array(ring, pa.uint32()))
    assert pc.max(t.column("ring")).as_py() == 3_000_000_000
    large = tmp_path / "large.parquet"
    pq.write_table(t, large)
    seal(large)  # edited by hand: sealed again, as a writer would
    for args in ([], ["--format", "json"], ["-v"], ["--than", "120ms"]):
        a = run(capsys, "analyze", small, "--utc", *args)
        b = run(capsys, "analyze", large, "--utc", *args)
        assert a[0] == b[0] == 0
        assert a[1].replace(str(small), "R") == b[1].replace(str(large), "R"), args
        assert a[2] == b[2]


@pytest.mark.parametrize("engine", [[], ["--in-memory"]])
def test_payloads_shorter_than_their_format_are_left_out_with_a_warning(tmp_path, capsys, engine):
    """The kernel writes every field of an event: a shorter payload (damaged or foreign data)
    would decode as zeros (ptr 0, size 0) and is left out instead."""
    rec = build([Ev(10, 0, 100, 100, P(1), 64, "udp"), Ev(20, 0, 100, 100, P(2), 96, "udp"),
                 Ev(30, 0, 100, 100, P(9))], tmp_path / "short.parquet")
    t = pq.read_table(rec)
    raw = t.column("raw").to_pylist()
    ev = t.column("event").cast("string").to_pylist()
    i = next(i for i, e in enumerate(ev) if e == "kmem:kmalloc" and raw[i] is not None)
    raw[i] = raw[i][:3]
    t = t.set_column(t.schema.get_field_index("raw"), "raw", pa.array(raw, pa.binary()))
    pq.write_table(t, rec)
    seal(rec)
    code, out, err = run(capsys, "analyze", rec, *engine)
    assert code == 0, err
    assert "TOTAL alloc 1 free 1" in out and "Leak of 0 bytes" not in out
    assert "kmem:kmalloc: 1 samples with a payload shorter than the event's format" in err
    code, out, err = run(capsys, "info", rec)
    assert code == 0 and "payload shorter" in out and "payload shorter" in err
