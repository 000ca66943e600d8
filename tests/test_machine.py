"""The machine layer (kmemleak_offline.symbols.machine): comms and maps of threads and processes
over time, from comm/fork/exit/mmap rows; and `analyze -v` naming ELF files it could not read."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from kmemleak_offline.symbols.callchain import StackResolver, UserResolver
from kmemleak_offline.symbols.machine import UNKNOWN_COMM, Machine
from kmemleak_offline.symbols.user import Dsos
from kmemleak_offline.synthetic import PERF_CONTEXT_USER as U
from kmemleak_offline.synthetic import RecordingBuilder
from tests.test_analyze_cli import run


def comm_t(rows):  # (time, pid, tid, comm, exec)
    t, p, d, c, e = zip(*rows) if rows else ((), (), (), (), ())
    return pa.table({"time": pa.array(t, pa.uint64()), "pid": pa.array(p, pa.int32()),
                     "tid": pa.array(d, pa.int32()), "comm": pa.array(c, pa.string()),
                     "exec": pa.array(e, pa.bool_())})


def fork_t(rows):  # (time, pid, tid, ppid, ptid)
    t, p, d, pp, pt = zip(*rows) if rows else ((), (), (), (), ())
    return pa.table({"time": pa.array(t, pa.uint64()), "pid": pa.array(p, pa.int32()),
                     "tid": pa.array(d, pa.int32()), "ppid": pa.array(pp, pa.int32()),
                     "ptid": pa.array(pt, pa.int32())})


def mmap_t(rows):  # (time, pid, addr, len, filename)
    t, p, a, n, f = zip(*rows) if rows else ((), (), (), (), ())
    return pa.table({"time": pa.array(t, pa.uint64()), "pid": pa.array(p, pa.int32()),
                     "tid": pa.array(p, pa.int32()), "addr": pa.array(a, pa.uint64()),
                     "len": pa.array(n, pa.uint64()), "pgoff": pa.array([0] * len(t), pa.uint64()),
                     "filename": pa.array(f, pa.string()),
                     "build_id": pa.array([None] * len(t), pa.binary())})


def files(m: Machine, pid, addr, time) -> list[str | None]:
    """The mapped file of each (pid, addr, time), None if unmapped."""
    rows = m.find_mappings(np.asarray(pid), np.asarray(addr, np.uint64), np.asarray(time, np.uint64))
    return [m.maps.file[r] if r >= 0 else None for r in rows.tolist()]


# parent 100 (comm "app") maps /bin/app at 10; forks 200 at 20 (no exec)
PARENT = [(10, 100, 0x1000, 0x1000, "/bin/app")]


def test_fork_without_exec_inherits_the_parents_maps_as_of_the_fork():
    m = Machine(comm_t([(5, 100, 100, "app", True)]), fork_t([(20, 200, 200, 100, 100)]),
                mmap_t(PARENT + [(30, 100, 0x8000, 0x1000, "/lib/late.so")]))
    assert files(m, [200, 200, 100], [0x1800] * 3, [25, 1000, 25]) == ["/bin/app"] * 3
    # a mapping the parent made after the fork is not the child's; before its fork the child had none
    assert files(m, [100, 200, 200], [0x8800, 0x8800, 0x1800], [40, 40, 15]) == \
        ["/lib/late.so", None, None]
    # the comm: inherited at the fork
    assert m.comm(np.array([200, 200, 100, 999]), np.array([25, 1000, 25, 25])).tolist() == \
        ["app", "app", "app", UNKNOWN_COMM]


def test_map_added_in_the_child_after_the_fork_is_the_childs_only():
    m = Machine(None, fork_t([(20, 200, 200, 100, 100)]),
                mmap_t(PARENT + [(30, 200, 0x5000, 0x1000, "/lib/plugin.so"),
                                 (35, 200, 0x1000, 0x1000, "/bin/other")]))  # child maps over /bin/app
    assert files(m, [200, 100], [0x5800] * 2, [40] * 2) == ["/lib/plugin.so", None]
    assert files(m, [200, 200, 100], [0x1800] * 3, [32, 40, 40]) == ["/bin/app", "/bin/other", "/bin/app"]
    # looked up before it was recorded: a mapping of the child itself, recorded a little late
    assert files(m, [200], [0x5800], [25]) == ["/lib/plugin.so"]


def test_exec_starts_a_fresh_map_set():
    m = Machine(comm_t([(5, 100, 100, "sh", False), (20, 100, 100, "app", True)]), None,
                mmap_t([(10, 100, 0x1000, 0x1000, "/bin/sh"), (25, 100, 0x4000, 0x1000, "/bin/app")]))
    assert files(m, [100] * 4, [0x1800, 0x1800, 0x4800, 0x4800], [15, 30, 30, 22]) == \
        ["/bin/sh", None, "/bin/app", "/bin/app"]
    assert m.comm(np.array([100, 100]), np.array([15, 30])).tolist() == ["sh", "app"]


def test_exec_in_a_forked_child_drops_what_it_inherited():
    m = Machine(comm_t([(40, 200, 200, "ls", True)]), fork_t([(20, 200, 200, 100, 100)]),
                mmap_t(PARENT + [(45, 200, 0x7000, 0x1000, "/bin/ls")]))
    assert files(m, [200, 200, 200, 100], [0x1800, 0x1800, 0x7800, 0x1800], [30, 50, 50, 50]) == \
        ["/bin/app", None, "/bin/ls", "/bin/app"]


def test_multi_generation_forks():
    m = Machine(comm_t([(5, 100, 100, "app", True), (26, 200, 200, "worker", False)]),
                fork_t([(20, 200, 200, 100, 100), (30, 300, 300, 200, 200), (40, 400, 400, 300, 300)]),
                mmap_t(PARENT + [(25, 200, 0x5000, 0x1000, "/lib/a.so"),
                                 (35, 300, 0x6000, 0x1000, "/lib/b.so"),
                                 (45, 200, 0x9000, 0x1000, "/lib/after.so")]))
    pids = [400, 400, 400, 400, 300, 100]
    assert files(m, pids, [0x1800, 0x5800, 0x6800, 0x9800, 0x6800, 0x5800], [50] * 6) == \
        ["/bin/app", "/lib/a.so", "/lib/b.so", None, "/lib/b.so", None]
    assert m.comm(np.array([200, 300, 400, 200]), np.array([50, 50, 50, 22])).tolist() == \
        ["worker", "worker", "worker", "app"]


def test_threads_share_their_process_maps_and_a_reused_pid_starts_afresh():
    m = Machine(None, fork_t([(15, 100, 101, 100, 100), (50, 100, 100, 1, 1)]),  # thread; pid reuse
                mmap_t(PARENT + [(5, 1, 0x3000, 0x1000, "/sbin/init")]))
    assert files(m, [100, 100, 100], [0x1800, 0x1800, 0x3800], [20, 60, 60]) == \
        ["/bin/app", None, "/sbin/init"]


def _reference(mm, execs, forks, pid, addr, t):
    """The mapping file of (pid, addr, t) by the definition, recursively: a process's maps at t are
    its own mappings since its last exec or fork into it, plus (fork) its parent's maps at the
    fork; the latest (time, row) covering wins; else its own earliest covering one after t."""
    def alive(p, t):
        births = [(te, None) for (te, pp) in execs if pp == p and te <= t] + \
                 [(tf, par) for (tf, c, par) in forks if c == p and tf <= t]
        since, parent = max(births) if births else (-1, None)
        own = [i for i, r in enumerate(mm) if r[1] == p and since <= r[0] <= t]
        return own + (alive(parent, since) if parent is not None else [])

    cover = [i for i in alive(pid, t) if mm[i][2] <= addr < mm[i][2] + mm[i][3]]
    if cover:
        return mm[max(cover, key=lambda i: (mm[i][0], i))][4]
    late = [i for i, r in enumerate(mm) if r[1] == pid and r[0] > t and r[2] <= addr < r[2] + r[3]]
    return mm[min(late, key=lambda i: (mm[i][0], i))][4] if late else None


@pytest.mark.parametrize("seed", range(40))
def test_maps_equal_the_recursive_definition(seed):
    rng = np.random.default_rng(seed)
    times = iter(rng.permutation(np.arange(1, 400)).tolist())  # distinct: no same-time ties
    mm = [(next(times), int(rng.integers(1, 6)), int(rng.integers(0, 12)) * 0x1000,
           int(rng.integers(1, 4)) * 0x1000, f"/f{int(rng.integers(0, 5))}")
          for _ in range(int(rng.integers(0, 25)))]
    execs = [(next(times), int(rng.integers(1, 6))) for _ in range(int(rng.integers(0, 4)))]
    forks = []
    for _ in range(int(rng.integers(0, 6))):
        c, p = (int(x) for x in rng.choice(np.arange(1, 6), 2, replace=False))
        forks.append((next(times), c, p))
    threads = [(next(times), 3, 7, 3, 3)]  # a thread of process 3: changes nothing
    m = Machine(comm_t([(t, p, p, "x", True) for t, p in execs]),
                fork_t([(t, c, c, p, p) for t, c, p in forks] + threads), mmap_t(mm))
    q = 200
    pid, addr, t = rng.integers(1, 6, q), rng.integers(0, 15 * 0x1000, q), rng.integers(0, 420, q)
    got = files(m, pid, addr, t)
    want = [_reference(mm, execs, forks, int(p), int(a), int(x)) for p, a, x in zip(pid, addr, t)]
    assert got == want


def test_analyze_v_names_elf_files_it_could_not_read(tmp_path, capsys):
    """A mapped file that is not ELF and one that is gone: their frames print Unknown (without a
    name), and -v says which and why, once per file; without -v nothing is said."""
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not an elf file at all\n")
    gone = str(tmp_path / "gone.so")
    b = RecordingBuilder()
    sids = b.add_stacks([(U, 0x10010, 0x20020), (U, 0x10030)])
    b.add_samples("kmlt_fmt:malloc_ret", [10**9 + 1, 10**9 + 2, 10**9 + 3], 0, 100, 100,
                  {"__probe_func": 1, "__probe_ret_ip": 2, "ptr": [16, 32, 48]},
                  stack_id=np.array([sids[0], sids[1], sids[0]]))
    b.add_samples("kmlt_fmt:free_ent", [10**9 + 4], 0, 100, 100, {"__probe_ip": 3, "ptr": [48]})
    b.add_comm(10**9, 100, 100, "app")
    b.add_mmap(10**9, 100, 100, [0x10000, 0x20000], [0x1000, 0x1000], [0, 0], [str(junk), gone])
    path = b.write(tmp_path / "r.parquet", ["kmlt_fmt:malloc_ret"], ["kmlt_fmt:free_ent"],
                   options={"pids": [100]})
    code, out, err = run(capsys, "analyze", path, "-v")
    assert code == 0, err
    assert f"0000000000010010 Unknown+0x0 ({junk})" in out
    notes = [ln for ln in err.splitlines() if "cannot read ELF file" in ln]
    assert len(notes) == 2  # once per file, though two stacks and three frames use them
    assert notes[0].startswith(f"kmemleak-offline: note: cannot read ELF file {junk} (not an ELF file")
    assert notes[0].endswith("): its frames are Unknown")
    assert notes[1] == (f"kmemleak-offline: note: cannot read ELF file {gone} (No such file or "
                        "directory): its frames are Unknown")
    code, _, err = run(capsys, "analyze", path)
    assert code == 0 and "cannot read" not in err


def test_stack_resolver_reports_no_unreadable_files_when_all_resolve():
    res = UserResolver(Machine(mmap=mmap_t([])), Dsos())
    stacks = StackResolver({1: np.array([U, 0x10], np.uint64)}, _NoKsyms(), res)
    assert [f.line() for f in stacks.frames(1, 100, 5)] == ["    0000000000000010 Unknown"]
    assert stacks.unreadable == {}


class _NoKsyms:
    def resolve(self, addrs):
        return np.full(len(addrs), None, object), np.zeros(len(addrs), np.uint64)


def test_symbols_and_diff_import_nothing_from_the_output_layer():
    """Callchain resolution lives in symbols/ (perf: util/callchain.c), so the comparison logic
    (diff.py) and symbols/ stand below reports/. The diff command takes from reports/ only its
    own page (`diff --format html`: reports.diff_html)."""
    import ast
    from pathlib import Path

    pkg = Path(__file__).resolve().parents[1] / "kmemleak_offline"
    files = [*sorted((pkg / "symbols").glob("*.py")), pkg / "diff.py", pkg / "commands" / "diff.py"]
    bad = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and "reports" in (node.module or "").split("."):
                if f.parent.name == "commands" and [a.name for a in node.names] == ["diff_html"]:
                    continue
                bad.append(f"{f.name}:{node.lineno}")
    assert bad == []
