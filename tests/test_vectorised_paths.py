"""The columnar paths against plain per-event Python references.

--malloc pairing (integer codes, no per-row Python) against a call-stack machine run row by row,
over random programs with nested allocator calls, failed calls, lost entries and returns, threads
and timestamp ties; the recording path (payloads decoded where they were loaded) against the
same reference; the reporters' grouped loops (flame graph, diff, JSON events) against one step
per leaked entry; user mappings looked up from the cached sorted rows against a scan.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from kmemleak_offline import diff, malloc
from kmemleak_offline.analysis import EVENT_LIST, AnalyzeOptions, analyze
from kmemleak_offline.format.recording import open_recording
from kmemleak_offline.load import load
from kmemleak_offline.reports import flamegraph, json_report
from kmemleak_offline.reports.events import EventLines
from kmemleak_offline.symbols.callchain import StackResolver
from kmemleak_offline.symbols.machine import Machine
from kmemleak_offline.synthetic import PERF_CONTEXT_KERNEL as K
from kmemleak_offline.synthetic import PERF_CONTEXT_USER as U
from kmemleak_offline.synthetic import RecordingBuilder, bundled_formats

M64 = (1 << 64) - 1
SP = 0x7FFF0000
NWORDS = 4
ENTRY_ARGS = {"malloc": ("size",), "valloc": ("size",), "calloc": ("nmemb", "size"),
              "realloc": ("oldptr", "size"), "reallocarray": ("oldptr", "nmemb", "size"),
              "posix_memalign": ("memptr", "size"), "free": ("ptr",)}
RETURN_ARGS = ("ptr", "ret", "sp")


# ---------------------------------------------------------------- random programs

class Program:
    """Allocator calls of a few threads as probe rows (one dict per row), as a program makes them:
    per thread in call order, nested calls inside realloc, then some rows lost."""

    def __init__(self, rng: np.random.Generator, threads: int, calls: int, p_lost: float) -> None:
        self.rng = rng
        self.rows: list[dict] = []
        self.words: list[list[int]] = []
        self.seq = 0
        clock = {t: 1000 + 7 * t for t in range(1, threads + 1)}
        for _ in range(calls):
            tid = int(rng.integers(1, threads + 1))
            clock[tid] = self._call(tid, clock[tid], top=True)
        keep = rng.random(len(self.rows)) >= p_lost
        self.rows = [r for r, k in zip(self.rows, keep, strict=True) if k]
        self.words = [w for w, k in zip(self.words, keep, strict=True) if k]

    def _hit(self, tid: int, t: int, func: str, is_ret: bool, **args: int) -> int:
        t += int(self.rng.integers(0, 3))  # 0: same timestamp, the seq decides
        self.seq += 1
        words = [int(w) for w in self.rng.integers(1, 1 << 40, NWORDS)]  # whatever the stack held
        if "slot" in args:
            words[args.pop("slot")] = args.pop("stored")
        self.rows.append({"time": t, "seq": self.seq, "tid": tid, "pid": 100 + tid % 2,
                          "cpu": int(self.rng.integers(0, 2)), "ring": -1, "func": func,
                          "is_return": is_ret,
                          "stack_id": int(self.rng.integers(-1, 5)) if is_ret else -1, **args})
        self.words.append(words)
        return t

    def _ptr(self, p_null: float = 0.15) -> int:
        return 0 if self.rng.random() < p_null else int(self.rng.integers(1, 40)) * 16

    def _call(self, tid: int, t: int, top: bool) -> int:
        rng = self.rng
        func = str(rng.choice(list(ENTRY_ARGS)))
        size = int(rng.choice([0, 8, 24, 1 << 62]))
        if func == "free":
            return self._hit(tid, t, "free", False, ptr=self._ptr())
        args = {"size": size}
        if func in ("calloc", "reallocarray"):
            args["nmemb"] = int(rng.choice([0, 3, 1 << 40]))
        if func in ("realloc", "reallocarray"):
            args["oldptr"] = self._ptr(0.3)
        if func == "posix_memalign":
            args["memptr"] = SP + 8 * int(rng.integers(-1, NWORDS + 2))
        t = self._hit(tid, t, func, False, **args)
        if top and func == "realloc" and rng.random() < 0.5:  # glibc's own calls inside
            if args["oldptr"] and size == 0:
                t = self._hit(tid, t, "free", False, ptr=args["oldptr"])
            else:
                t = self._call(tid, t, top=False)
        ret: dict[str, int] = {"ptr": self._ptr()}
        if func == "posix_memalign":
            k = (args["memptr"] - SP) // 8
            # the return value is an int: 1 << 32 reads as 0 (success)
            ret = {"ret": int(rng.choice([0, 0, 12, 1 << 32])), "sp": SP}
            if 0 <= k < NWORDS:
                ret |= {"slot": k, "stored": self._ptr()}
        return self._hit(tid, t, func, True, **ret)

    def columns(self, shuffle: bool = True) -> tuple[dict[str, np.ndarray], np.ndarray]:
        n = len(self.rows)
        cols: dict[str, np.ndarray] = {
            k: np.array([r.get(k, 0) for r in self.rows])
            for k in ("time", "seq", "tid", "pid", "cpu", "ring", "is_return", "stack_id")}
        for k in ("size", "nmemb", "oldptr", "memptr", "ptr", "ret", "sp"):
            cols[k] = np.array([r.get(k, 0) for r in self.rows], np.uint64)
        cols["func"] = np.array([r["func"] for r in self.rows], object)
        cols["event"] = np.array([event_name(r["func"], r["is_return"]) for r in self.rows], object)
        words = np.array(self.words, np.uint64).reshape(n, NWORDS)
        if shuffle:  # row order is not significant
            perm = self.rng.permutation(n)
            cols = {k: v[perm] for k, v in cols.items()}
            words = words[perm]
        return cols, words


def event_name(func: str, is_ret: bool) -> str:
    return f"t:{func}{'_ret' if is_ret else ''}"


def reference(rows: list[dict], words: list[list[int]] | None) -> tuple[list[tuple], dict[str, int]]:
    """Pairing as a call-stack machine, one row at a time per thread: an entry is pushed, a return
    pops the innermost open entry and pairs with it if it is the same function (a return with no
    open entry is unpaired). Rows strictly inside a paired call are the allocator's own business.
    Events: (time, seq, tid, pid, cpu, is_alloc, ptr, size, stack_id, func, event)."""
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["tid"], rows[i]["time"], rows[i]["seq"]))
    open_calls: dict[int, list[int]] = {}
    pairs: list[tuple[int, int]] = []  # (entry, return) positions in `order`
    calls = 0
    for pos, i in enumerate(order):
        r = rows[i]
        if r["func"] == "free" and not r["is_return"]:
            continue
        calls += 1
        stack = open_calls.setdefault(r["tid"], [])
        if not r["is_return"]:
            stack.append(pos)
        elif stack:
            e = stack.pop()
            if rows[order[e]]["func"] == r["func"]:
                pairs.append((e, pos))
    inside = [False] * len(order)
    for e, r in pairs:
        for p in range(e + 1, r):
            inside[p] = True
    stats = {"nested": sum(inside[e] for e, _ in pairs), "unpaired": calls - 2 * len(pairs),
             "memptr_unknown": 0, "null": 0}
    out = []

    def event(i: int, is_alloc: bool, ptr: int, size: int) -> None:
        r = rows[i]
        out.append((r["time"], r["seq"], r["tid"], r["pid"], r["cpu"], is_alloc, ptr, size,
                    r["stack_id"], r["func"], event_name(r["func"], r["is_return"])))

    for e, r in pairs:
        if inside[e]:
            continue
        ent, ret = rows[order[e]], rows[order[r]]
        f = ent["func"]
        size = ent.get("size", 0)
        if f in ("calloc", "reallocarray"):
            size = size * ent.get("nmemb", 0) & M64
        unknown = False
        if f == "posix_memalign":
            slot = (ent.get("memptr", 0) - ret.get("sp", 0) + (1 << 63) & M64) - (1 << 63)
            known = words is not None and slot % 8 == 0 and 0 <= slot // 8 < NWORDS
            ok = ret.get("ret", 0) & 0xFFFFFFFF == 0
            ptr = words[order[r]][slot // 8] if ok and known else 0
            unknown = ok and not known
            stats["memptr_unknown"] += unknown
        else:
            ptr = ret.get("ptr", 0)
        stats["null"] += ptr == 0 and not unknown
        old = ent.get("oldptr", 0)
        if f in ("realloc", "reallocarray") and old and (ptr or size == 0):
            event(order[e], False, old, 0)
        if ptr:
            event(order[r], True, ptr, size)
    for pos, i in enumerate(order):
        r = rows[i]
        if r["func"] == "free" and not r["is_return"]:
            if inside[pos]:
                stats["nested"] += 1
            elif r.get("ptr", 0):
                event(i, False, r["ptr"], 0)
    return sorted(out), stats


def frame_events(df) -> list[tuple]:
    return sorted(zip(*(df[c].tolist() for c in ("time", "seq", "tid", "pid", "cpu", "is_alloc",
                                                 "ptr", "size", "stack_id", "func", "event")),
                      strict=True))


@pytest.mark.parametrize("seed", range(40))
def test_pairing_matches_a_call_stack_machine(seed):
    rng = np.random.default_rng(seed)
    prog = Program(rng, threads=int(rng.integers(1, 4)), calls=int(rng.integers(1, 60)),
                   p_lost=float(rng.choice([0.0, 0.05, 0.2])))
    cols, words = prog.columns()
    for w in (words, None):
        df, stats = malloc.pair_calls(cols, w)
        want, want_stats = reference(prog.rows, prog.words if w is not None else None)
        assert frame_events(df) == want
        assert stats == want_stats
        assert (np.diff(df["time"].to_numpy().astype(np.int64)) >= 0).all()  # time order


def test_pairing_is_the_same_over_many_rows():
    """One big random program (every path at scale: clamping, nesting, several threads)."""
    rng = np.random.default_rng(99)
    prog = Program(rng, threads=5, calls=4000, p_lost=0.03)
    cols, words = prog.columns()
    df, stats = malloc.pair_calls(cols, words)
    want, want_stats = reference(prog.rows, prog.words)
    assert frame_events(df) == want and stats == want_stats
    assert stats["nested"] and stats["unpaired"] and stats["null"]


def test_pairing_of_no_rows():
    cols = {"time": np.zeros(0, np.uint64), "tid": np.zeros(0, np.int32),
            "func": np.zeros(0, object), "is_return": np.zeros(0, bool)}
    df, stats = malloc.pair_calls(cols)
    assert len(df) == 0 and list(df.columns) == list(malloc.OUTPUT_COLUMNS)
    assert stats == {"nested": 0, "unpaired": 0, "memptr_unknown": 0, "null": 0}


@pytest.mark.parametrize("case", ["ties", "wide"])
def test_thread_order_is_lexsort(case):
    rng = np.random.default_rng(3)
    n = 5000
    if case == "ties":  # packs into one key; equal (tid, time) pairs fall back to seq
        tid = rng.integers(1, 6, n).astype(np.int32)
        time = rng.integers(0, 300, n).astype(np.uint64)
    else:  # (tid, time) does not fit 64 bits
        tid = rng.choice(np.array([-(1 << 31), 0, (1 << 31) - 1]), n).astype(np.int32)
        time = rng.choice(np.array([0, 1, 1 << 62, (1 << 64) - 1], np.uint64), n)
    seq = rng.permutation(n).astype(np.uint64)
    assert (malloc._thread_order(tid, time, seq) == np.lexsort((seq, time, tid))).all()


# ---------------------------------------------------------------- from a recording

def _format(name: str, ident: int, fields: list[str]) -> str:
    lines = [f"name: {name}", f"ID: {ident}", "format:",
             "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;",
             "\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;",
             "\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;",
             "\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;", ""]
    lines += [f"\tfield:u64 {f};\toffset:{8 + 8 * i};\tsize:8;\tsigned:0;" for i, f in enumerate(fields)]
    args = ", ".join(f"REC->{f}" for f in fields)
    lines += ["", f'print fmt: "{" ".join(f + "=%Lu" for f in fields)}", {args}']
    return "\n".join(lines) + "\n"


def _probe_formats() -> dict[str, str]:
    out = dict(bundled_formats())
    for i, (func, args) in enumerate(ENTRY_ARGS.items()):
        out[event_name(func, False)] = _format(func, 5000 + 2 * i, list(NO_FIELD.get(func, args)))
        if func != "free":
            ret = ["ret", "sp", *(f"w{k}" for k in range(NWORDS))] if func == "posix_memalign" else ["ptr"]
            out[event_name(func, True)] = _format(func + "_ret", 5001 + 2 * i, ret)
    return out


NO_FIELD = {"valloc": ()}  # an entry probe that does not fetch the size: it reads 0


def add_program_rows(b: RecordingBuilder, prog: Program, stack_ids: list[int] | None = None) -> None:
    """A program's probe rows as samples of their events (stack ids mapped through `stack_ids`
    when given; -1 stays "no callchain")."""
    by_event: dict[str, list[int]] = {}
    for i, r in enumerate(prog.rows):
        by_event.setdefault(event_name(r["func"], r["is_return"]), []).append(i)
    for ev, idx in by_event.items():
        rows = [prog.rows[i] for i in idx]
        fields = {f.name: np.array(_col(rows, f.name), np.uint64) for f in b.formats[ev].fields
                  if not f.name.startswith("common_") and f.name[0] != "w"}
        if ev == event_name("posix_memalign", True):
            fields |= {f"w{k}": np.array([prog.words[i][k] for i in idx], np.uint64) for k in range(NWORDS)}
        stack = _col(rows, "stack_id")
        if stack_ids is not None:
            stack = [stack_ids[s] if s >= 0 else -1 for s in stack]
        b.add_samples(ev, _col(rows, "time"), _col(rows, "cpu"), _col(rows, "pid"), _col(rows, "tid"),
                      fields, stack_id=stack, seq=_col(rows, "seq"))


def _col(rows: list[dict], name: str) -> list[int]:
    return [r.get(name, 0) for r in rows]


@pytest.mark.parametrize("seed", range(6))
def test_recording_pairing_matches_the_reference(tmp_path, seed):
    rng = np.random.default_rng(100 + seed)
    prog = Program(rng, threads=3, calls=300, p_lost=0.05)
    b = RecordingBuilder(_probe_formats())
    add_program_rows(b, prog)
    if seed % 2:  # rows of another event in between: pairing reads only the probe rows
        b.add_samples("kmem:kfree", [1500, 1600], 0, 1, 1, {"ptr": [16, 32]}, seq=[10**6, 10**6 + 1])
    path = b.write(tmp_path / "m.parquet", alloc=["t:malloc_ret//ptr=ptr/"], free=["t:free//ptr=ptr/"])
    rec = open_recording(path)
    meta = dict(rec.metadata)
    meta["probes"] = [{"event": event_name(f, ret), "func": f, "kind": "return" if ret else "entry"}
                      for f in ENTRY_ARGS for ret in (False, True) if not (ret and f == "free")]
    sm = load(rec).samples
    got = malloc.malloc_rows(sm, meta)
    want, want_stats = reference([r | {"size": 0} if r["func"] in NO_FIELD and not r["is_return"] else r
                                  for r in prog.rows], prog.words)
    assert got.stats == want_stats
    assert (np.diff(got.row) > 0).all()  # one event per sample row, in file order
    ev = np.array(sm.event_names, object)[sm.event[got.row]]
    rows = sorted(zip(sm.time[got.row].tolist(), sm.seq[got.row].tolist(), sm.tid[got.row].tolist(),
                      sm.pid[got.row].tolist(), sm.cpu[got.row].tolist(), got.is_alloc.tolist(),
                      got.ptr.tolist(), got.size.tolist(), sm.stack_id[got.row].tolist(),
                      [e.split(":")[1].removesuffix("_ret") for e in ev], ev.tolist(), strict=True))
    assert rows == want
    df, stats = malloc.malloc_events(rec.table(["sample"]), meta)  # the DataFrame form agrees
    assert frame_events(df) == want and stats == want_stats


# ---------------------------------------------------------------- reporters: grouped == per entry

UBASE = 0x5555_0000_0000
KSYM = 0xFFFFFFFF81000000


def _user(pids, addrs, times, is_ret):
    """A user resolver whose answer depends on pid and time (as real mmap timelines can)."""
    names = np.array([f"u{p}_{a - UBASE:x}_{t % 7}" for p, a, t in zip(pids, addrs, times, strict=True)],
                     object)
    return names, np.zeros(len(addrs), np.uint64), np.full(len(addrs), "/bin/prog", object)


@pytest.fixture(scope="module")
def event_list_analysis(tmp_path_factory):
    """Event-list mode (no size), per task, user and kernel-only chains, several pids and tids."""
    rng = np.random.default_rng(7)
    b = RecordingBuilder()
    b.add_ksyms([KSYM], ["kfunc"])
    chains = [(K, KSYM + 16), (K, KSYM + 32, U, UBASE + 0x10, UBASE + 0x20), (U, UBASE + 0x30),
              (U, UBASE + 0x10, UBASE + 0x40)]
    sids = b.add_stacks(chains)
    n = 600
    t = np.sort(rng.integers(0, 10**9, n)) + 10**9
    tid = rng.integers(1, 7, n)
    b.add_samples("kmlt_fmt:malloc_ret", t, rng.integers(0, 2, n), 100 + tid % 3, tid,
                  {"__probe_func": 1, "__probe_ret_ip": 2, "ptr": np.arange(n) * 16 + 16},
                  stack_id=np.array(sids + [-1])[rng.integers(0, len(sids) + 1, n)])
    b.add_samples("kmlt_fmt:free_ent", t[::5] + 1, 0, 100, 1, {"__probe_ip": 3, "ptr": np.arange(0, n, 5) * 16 + 16})
    for k in range(1, 7):
        b.add_comm(10**9, 100 + k % 3, k, f"comm{k}")
        b.add_comm(int(t[n // 2]), 100 + k % 3, k, f"late{k}")
    b.add_lost(int(t[n // 3]), 0, 5)
    path = b.write(tmp_path_factory.mktemp("el") / "el.parquet", ["kmlt_fmt:malloc_ret"],
                   ["kmlt_fmt:free_ent"], options={"pids": [100, 101, 102]})
    a = analyze(open_recording(path), AnalyzeOptions(in_memory=True, warn=lambda m: None))
    assert a.mode == EVENT_LIST and a.per_task and len(a.reports) == 2
    return a


def _resolver(a) -> StackResolver:
    return StackResolver(a.stacks, a.ksyms, _user)


def test_flame_graph_event_list_equals_one_step_per_entry(event_list_analysis):
    a = event_list_analysis
    want: dict[str, int] = {}
    stacks = _resolver(a)
    for r in a.reports:
        ents = r.entries[r.entries["selected"] & (r.entries["stack_id"] >= 0)]
        for i in range(len(ents)):
            e = ents.iloc[i]
            root = a.comms.comm(np.array([e["tid"]]), np.array([e["time"]]))[0]
            names = [f.symbol or "Unknown" for f in stacks.frames(int(e["stack_id"]), int(e["pid"]),
                                                                  int(e["time"]))][::-1]
            key = ";".join([root, *names])
            want[key] = want.get(key, 0) + 1
    got = flamegraph.folded(a, _resolver(a))
    assert dict(got) == want
    assert len(got) > 10  # roots and time-dependent user frames make many paths


def test_diff_table_event_list_equals_one_step_per_entry(event_list_analysis):
    a = event_list_analysis
    stacks = _resolver(a)
    want = diff.Table("x", a.result.total_alloc, a.result.total_free, mode=a.mode)
    for r in a.reports:
        ents = r.entries[r.entries["selected"]]
        for i in range(len(ents)):
            sid, pid = int(ents["stack_id"].iloc[i]), int(ents["pid"].iloc[i])
            key, lines = diff._chain(stacks.frames(sid, pid, r.time_ns)) if sid >= 0 else ((), diff.NO_CHAIN)
            want.add(key, lines, 0, 1)
    got = diff.recording_table("x", a, _resolver(a))
    assert got == want
    assert list(got.leaks) == list(want.leaks)  # first-seen order (and first-seen lines) kept


@pytest.mark.parametrize("verbose", [0, 1])
def test_json_events_equal_one_dict_per_entry(event_list_analysis, verbose):
    a = event_list_analysis
    stacks = _resolver(a)
    lines = EventLines(a)
    want = []
    for r in a.reports:
        if r.reason == "lost" and r.num == 0:
            continue
        ents = r.entries if verbose else r.entries[r.entries["selected"]]
        text = lines.render(ents)
        names = a.comms.comm(ents["tid"].to_numpy(), ents["time"].to_numpy())
        evs = []
        for i in range(len(ents)):
            e = ents.iloc[i]
            role = a.roles[int(e["role"])]
            frames = stacks.frames(int(e["stack_id"]), int(e["pid"]), int(e["time"])) \
                if int(e["stack_id"]) >= 0 else []
            evs.append({"time_ns": int(e["time"]), "cpu": int(e["cpu"]), "pid": int(e["pid"]),
                        "tid": int(e["tid"]), "comm": names[i], "event": role.fmt.full_name,
                        "ptr": int(e["ptr"]), "size": int(e["size"]) if role.size is not None else None,
                        "selected": bool(e["selected"]), "line": text[i],
                        "stack": [{"addr": f.addr, "symbol": f.symbol, "offset": f.offset, "dso": f.dso}
                                  for f in frames]})
        want.append(evs)
    doc = json_report.build(a, _resolver(a), "el.parquet", verbose=verbose)
    got = [r["events"] for r in doc["reports"]]
    assert got == want
    assert [list(e) for evs in got for e in evs] == [list(e) for evs in want for e in evs]  # key order


# ---------------------------------------------------------------- user mappings

def test_find_mappings_equals_a_scan_of_the_rows():
    rng = np.random.default_rng(11)
    for _ in range(50):
        k = int(rng.integers(0, 40))
        mm = pa.table({
            "time": pa.array(rng.integers(0, 50, k).astype(np.uint64)),
            "pid": pa.array(rng.integers(1, 5, k).astype(np.int32)),
            "addr": pa.array((rng.integers(0, 20, k) * 0x1000).astype(np.uint64)),
            "len": pa.array((rng.integers(1, 6, k) * 0x1000).astype(np.uint64)),
            "pgoff": pa.array(np.zeros(k, np.uint64)),
            "filename": pa.array([f"/f{int(x)}" for x in rng.integers(0, 3, k)]),
            "build_id": pa.array([None] * k, pa.binary())})
        sym = Machine(mmap=mm)
        q = int(rng.integers(0, 80))
        pid, addr = rng.integers(0, 6, q), rng.integers(0, 26 * 0x1000, q)
        time = rng.integers(0, 60, q)
        got = sym.find_mappings(pid, addr.astype(np.uint64), time.astype(np.uint64))
        rows = mm.to_pylist()
        for i in range(q):  # latest covering mapping at or before the time, else the earliest one
            cover = [j for j, m in enumerate(rows) if m["pid"] == pid[i]
                     and m["addr"] <= addr[i] < m["addr"] + m["len"]]
            before = [j for j in cover if rows[j]["time"] <= time[i]]
            if before:
                want = max(before, key=lambda j: (rows[j]["time"], j))
            elif cover:
                want = min(cover, key=lambda j: (rows[j]["time"], j))
            else:
                want = -1
            assert got[i] == want
        assert sym.find_mappings(pid, addr.astype(np.uint64), time.astype(np.uint64)).tolist() == got.tolist()
