"""The analysis pipeline: recording -> decoded alloc/free columns -> replay -> one result object.

load (recording.py) -> decode payloads (tracefs.py) -> evaluate specs (spec.py, expr.py) ->
replay (replay.py) -> group. Every reporter renders the `Analysis` this returns; none recomputes it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from .format import expr as exprmod
from .format.kernfile import KernelSymbolFile, kernel_map_pgoff
from .format.kernfile import check as check_kernel_file
from .format.metadata import Metadata
from .format.recording import Recording
from .load import SIZE_LIMIT, Samples, column_array, load, load_side, ring_ids
from .malloc import MallocError, is_malloc_recording
from .malloc import summary as malloc_summary
from .replay import Lost, ReplayResult, lost_windows, order_samples, replay_ordered
from .roles import (
    AnalysisError,
    EventRole,
    build_roles,
    evaluate_roles,
    formats_of,
    warn_failures,
)
from .symbols.kernel import KernelSymbols
from .symbols.machine import Machine
from .trend import Grid, Parts, Trend, contributions, trends
from .trend import grid as trend_grid

LEAKED_BYTES = "leaked-bytes"
EVENT_LIST = "event-list"


@dataclass
class AnalyzeOptions:
    alloc: list[str] | None = None  # spec lists overriding the recording's own
    free: list[str] | None = None
    than_ns: int = 0
    comm: bool = False
    verbose: int = 0
    interval_ms: int | None = None
    warn: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr))
    jobs: int | None = None  # worker processes (None: all cores)
    tmpdir: str | None = None  # parent folder of spill files (None: TMPDIR)
    progress: bool | None = None  # progress bar on stderr (None: when it is a terminal)
    in_memory: bool = False  # the whole-recording path (always for -vv and --malloc recordings)
    partitions: int | None = None  # key partitions (None: from the recording's size)
    scan_ranges: int | None = None  # row-group runs read in parallel (None: from the size)
    trend: bool = False  # growth trend per leaked-bytes group (trend.py)
    kernel: KernelSymbolFile | None = None  # --kallsyms/--vmlinux: replaces the ksym rows
    symfs: str | None = None  # --symfs: user ELF files (perf-probe sites are checked against them)


@dataclass
class Group:
    """One LEAKED BYTES group: a distinct call chain (stack_id; -1 = no call chain recorded)."""

    stack_id: int
    bytes: int
    objects: int
    pid: int  # perf-prof's: the latest entry's process in per-task recordings, else 0 (ties, JSON)
    comms: list[tuple[str, int, int]]  # (comm, bytes, count)
    user_pid: int = 0  # the latest entry's process, whatever the mode: names its user frames
    trend: Trend | None = None  # growth of the chain's outstanding bytes (when asked for)


@dataclass
class ReportView:
    """One report ready to render: leaked entries (stream columns) and, in leaked-bytes mode, groups."""

    reason: str
    time_ns: int
    position: int  # stream position where it happens
    num: int
    total_alloc: int
    total_free: int
    positions: np.ndarray  # stream positions of the tree entries, (time, key) order
    selected: np.ndarray  # per entry: passes --than
    groups: list[Group]
    stream: Stream = field(repr=False, default=None)
    lost_detail: list[tuple[int, int]] = field(default_factory=list)  # (events, cpu) per window reclaimed here

    @property
    def lost_count(self) -> int:
        """Events lost in the windows this (early) report reclaimed."""
        return sum(count for count, _ in self.lost_detail)

    @functools.cached_property
    def entries(self) -> pd.DataFrame:
        """One row per tree entry (stream columns + `selected`); built only when a reporter asks."""
        df = self.stream.frame(self.positions)
        df["selected"] = self.selected
        return df


@dataclass
class IntervalStat:
    time_ns: int
    objects: int
    bytes: int
    allocs: int
    frees: int
    total_alloc: int
    total_free: int


@dataclass
class Stream:
    """The replayed stream: one position per alloc/free event in (time, ring, seq) order.

    Columns come from `per_pos` (already one value per position), else from `per_row` (one value
    per sample row, gathered through `rows`), else from the samples. Kernel recordings keep most
    columns per row so the 10M-row case gathers only what a report shows.
    """

    rows: np.ndarray  # sample row of each position (its payload, for event lines)
    samples: Samples
    is_alloc_role: np.ndarray  # per role code
    per_pos: dict[str, np.ndarray]
    per_row: dict[str, np.ndarray]

    COLUMNS = ("time", "cpu", "ring", "seq", "pid", "tid", "role", "is_alloc", "ptr", "size",
               "stack_id", "row", "kept")

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def kept(self) -> np.ndarray:
        return self.per_pos["kept"]

    def column(self, name: str, pos: np.ndarray | slice = slice(None)) -> np.ndarray:
        if name in self.per_pos:
            return self.per_pos[name][pos]
        if name == "row":
            return self.rows[pos]
        if name == "is_alloc":
            return self.is_alloc_role[self.column("role", pos)]
        rows = self.rows[pos]
        if name in self.per_row:
            return self.per_row[name][rows]
        return getattr(self.samples, name)[rows]

    def frame(self, pos: np.ndarray | slice) -> pd.DataFrame:
        """A DataFrame of the given positions (in that order)."""
        return pd.DataFrame({c: self.column(c, pos) for c in self.COLUMNS})


@dataclass
class Analysis:
    recording: Recording
    metadata: dict
    mode: str
    roles: list[EventRole]
    per_task: bool
    stream: Stream  # kept+dropped alloc/free samples in stream order
    result: ReplayResult
    reports: list[ReportView]
    ksyms: KernelSymbols
    comms: Machine
    stacks: dict[int, np.ndarray]  # stack_id -> callchain words
    samples: Samples  # all sample rows; stream column `row` indexes them
    side: dict[str, pa.Table]  # side-band rows by kind (comm, mmap, usym...)
    intervals: list[IntervalStat]
    lost_total: int
    warnings: list[str]
    expansions: list[tuple[str, str]] = field(default_factory=list)  # --alloc/--free lists, expanded
    engine: str = "in-memory"  # or "streaming" (engine/): which path analysed it
    dsos: Any = None  # symbols.user.Dsos the analysis already read ELF files with (perf-probe sites)

    @property
    def start_ns(self) -> int:
        return self.recording.meta.clock.start_ns

    @property
    def stop_ns(self) -> int:
        return self.recording.meta.clock.stop_ns


@contextlib.contextmanager
def _small_pages():
    """Numpy without MADV_HUGEPAGE on its big arrays while analysing (unless NUMPY_MADVISE_HUGEPAGE
    says otherwise). The analysis streams through many fresh 10M-row arrays once each: huge pages
    buy little TLB benefit there, and on VMs a transparent-huge-page fault (zeroing, often
    compaction) was measured at ~0.3 ms per 2 MB, ~0.2 s of system time per 80 MB array, against
    ~0.03 s with 4 kB pages."""
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # pragma: no cover - numpy < 2, or a numpy without the switch
        try:
            from numpy.core.multiarray import _set_madvise_hugepage
        except ImportError:
            _set_madvise_hugepage = None
    if _set_madvise_hugepage is None or "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        yield
        return
    before = _set_madvise_hugepage(False)
    try:
        yield
    finally:
        _set_madvise_hugepage(before)


def _keep_freed_memory() -> None:
    """glibc: keep freed blocks (up to 256 MB at the heap top, blocks up to 32 MB off mmap) for
    reuse. The analysis frees and reallocates the same few-MB arrays per row group and partition;
    returning them to the kernel each time cost as much system time as the work itself (page
    faults are dear on VMs): 3.7 s -> 1.7 s of system time at 10M events. Peak memory is
    unchanged (only memory that was in use is kept). No-op elsewhere."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 256 << 20)


def analyze(rec: Recording, opts: AnalyzeOptions) -> Analysis:
    """Run the whole analysis of one recording."""
    _keep_freed_memory()
    with _small_pages():
        return _analyze(rec, opts)


def _analyze(rec: Recording, opts: AnalyzeOptions) -> Analysis:
    meta = rec.metadata
    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        opts.warn(msg)

    for msg in rec.warnings:  # stray or missing parts of a parts folder
        warn(msg)
    formats = formats_of(meta)
    alloc = opts.alloc if opts.alloc else list(meta.get("alloc") or [])
    free = opts.free if opts.free else list(meta.get("free") or [])
    expansions: list[tuple[str, str]] = []
    roles = build_roles(meta, alloc, free, formats, warn, opts.verbose, expansions)
    names = [r.spec.full_name for r in roles]
    mode = LEAKED_BYTES if all(r.size is not None for r in roles if r.is_alloc) else EVENT_LIST
    per_task = rec.meta.options.per_task
    malloc = is_malloc_recording(meta) and not (opts.alloc or opts.free)
    side = load_side(rec)
    if opts.kernel is not None:
        side["ksym"] = _kernel_rows(opts.kernel, meta, side, warn)
    ksyms = KernelSymbols.from_table(side["ksym"])
    comms = Machine.from_side(side)
    lost_t = side["lost"]
    l_cpu = column_array(lost_t.column("cpu"), np.uint32)
    common = {"recording": rec, "metadata": meta, "roles": roles, "per_task": per_task,
              "ksyms": ksyms, "comms": comms, "side": side, "warnings": warnings,
              "expansions": expansions, "dsos": None}
    a = None
    if not (malloc or opts.in_memory or opts.verbose >= 2):
        from .engine.streamed import streamed  # the engine builds on this module's types

        a = streamed(rec, roles, names, mode, opts, warn, ksyms, comms, side, l_cpu, common)
    if a is None:
        a = _in_memory(rec, meta, roles, names, mode, malloc, opts, warn, ksyms, comms, side,
                       l_cpu, common)
    return a


def _kernel_rows(kernel: KernelSymbolFile, meta: dict, side: dict[str, pa.Table],
                 warn: Callable[[str], None]) -> pa.Table:
    """ksym rows of --kallsyms/--vmlinux, checked against the kernel the recording names."""
    bid_hex = (meta.get("host") or {}).get("kernel_build_id")
    try:
        bid = bytes.fromhex(bid_hex) if isinstance(bid_hex, str) else None
    except ValueError:
        bid = None
    mm = side["mmap"]
    text_pgoff = kernel_map_pgoff(mm.column("filename").to_pylist(), mm.column("pgoff").to_pylist())
    for msg in check_kernel_file(kernel, bid, text_pgoff):
        warn(f"warning: {msg}")
    return pa.table({k: kernel.rows[k] for k in ("addr", "name")})


def _lost_total(lost: Lost, meta: Metadata) -> int:
    total = int(lost.count.sum()) if len(lost.count) else 0
    return max(total, meta.lost_counted)


def _expr_env(ksyms: KernelSymbols, comms: Machine, stop_ns: int) -> exprmod.ExprEnv:
    return exprmod.ExprEnv(ksymbol=ksyms.names_only, comm_get=lambda pids: comms.comm(
        pids, np.full(len(pids), stop_ns, np.uint64)).astype("S"))


def _in_memory(rec, meta, roles, names, mode, malloc, opts, warn, ksyms, comms, side, l_cpu,
               common) -> Analysis:
    """The whole recording's samples in memory: -vv (every sample, in stream order), --malloc
    recordings, and files whose rings are not in seq order."""
    loaded = load(rec, side)
    sm = loaded.samples
    # role code of each event name (its first role, as in perf-prof); the last entry is for nulls
    role_lut = np.array([names.index(e) if e in names else -1 for e in sm.event_names] + [-1],
                        np.int32)

    # lost windows are computed over every sample of the ring, before any filtering
    lost_t = side["lost"]
    l_ring = sm.ring_of(ring_ids(lost_t))
    # the malloc stream orders its own events: every sample's order is needed only for its windows
    order = order_samples(sm.ring, sm.seq, sm.time) if not malloc or len(l_ring) else None
    lost = lost_windows(order, sm.ring, sm.seq, l_ring, column_array(lost_t.column("seq"), np.uint64),
                        column_array(lost_t.column("lost"), np.uint64), column_array(lost_t.column("time"), np.uint64),
                        rec.meta.clock.start_ns)
    lost.cpu = l_cpu

    # a killed recorder's metadata may predate its last samples: the final report is never
    # earlier than the last sample (else --than would see young allocations as old)
    stop_ns = max(rec.meta.clock.stop_ns, int(sm.time.max(initial=0)))
    if malloc:
        mode = LEAKED_BYTES
        stream, res = _malloc_stream(rec, meta, sm, roles, names, lost, stop_ns, opts, warn, common)
    else:
        stream, res = _kernel_stream(sm, order, roles, names, role_lut, lost, stop_ns, opts, warn,
                                     _expr_env(ksyms, comms, stop_ns))

    # stack ids in use: per position when the stream has its own (malloc), else any sample's
    used = stream.per_pos.get("stack_id", sm.stack_id)
    stacks = _stacks(side["stack"], used)

    reports = [_report_view(r, stream, mode, common["per_task"], opts, comms, lost)
               for r in res.reports]
    intervals = _intervals(stream, res, opts.interval_ms, rec.meta) if opts.interval_ms else []
    if opts.trend and mode == LEAKED_BYTES and len(stream):
        start = rec.meta.clock.start_ns or int(res.time[0])
        bounds = interval_grid(start, stop_ns, opts.interval_ms) if opts.interval_ms else None
        g = trend_grid(start, stop_ns, bounds)
        attach_trends(reports, _trend_parts(stream, res, g.times), g)
    return Analysis(mode=mode, stream=stream, result=res, reports=reports, stacks=stacks,
                    samples=sm, intervals=intervals, lost_total=_lost_total(lost, rec.meta), **common)


def _kernel_stream(sm: Samples, order, roles: list[EventRole], names: list[str],
                   role_lut: np.ndarray, lost: Lost, stop_ns: int, opts: AnalyzeOptions,
                   warn: Callable[[str], None],
                   env: exprmod.ExprEnv | None = None) -> tuple[Stream, ReplayResult]:
    """Tracepoint recordings held in memory: evaluate ptr/size/filter per event type, then replay.

    The replay's columns are gathered once into stream order, which is nearly file order (rings
    interleaved within a segment), so those gathers stay cache-friendly."""
    ev = evaluate_roles(sm, roles, names, role_lut, env)
    warn_failures(ev.fail_counts, warn)
    st, t = order.stream, order.time
    keep = ev.replayed()
    if keep is not None:
        keep_s = keep[st]
        if not keep_s.all():  # only the replayed positions
            st, t = st[keep_s], t[keep_s]
    role_s = ev.role[st]
    key_s = ev.key[st]
    size_s = ev.size[st] if ev.size is not None else np.zeros(len(st), np.uint64)
    del ev
    is_alloc_role = np.array([r.is_alloc for r in roles], bool)
    res = replay_ordered(time=t, is_alloc=is_alloc_role[role_s], key=key_s, lost=lost,
                         stop_ns=stop_ns, than_ns=opts.than_ns,
                         want_death=bool(opts.interval_ms), want_ends=opts.trend)
    stream = Stream(rows=st, samples=sm, is_alloc_role=is_alloc_role,
                    per_pos={"time": res.time, "kept": res.kept, "role": role_s, "ptr": key_s,
                             "size": size_s},
                    per_row={})
    return stream, res


def _malloc_stream(rec: Recording, meta: dict, sm: Samples, roles: list[EventRole], names: list[str],
                   lost: Lost, stop_ns: int, opts: AnalyzeOptions, warn: Callable[[str], None],
                   common: dict[str, Any]) -> tuple[Stream, ReplayResult]:
    """`record --malloc` recordings and imported perf-probe captures: pair uprobe entry/return
    per thread into alloc/free events with sizes (malloc.py), then replay those.

    Pairing reads the loaded sample columns and payloads (no second read of the recording). Each
    event is one sample row (a return for allocations, an entry for frees), so cpu, ring, seq,
    pid, tid come from that row; only what pairing computes is kept per position."""
    from .malloc import malloc_rows
    from .perfprobe import is_perf_probe
    from .perfprobe import notes as probe_notes

    probes = meta.get("probes") or []
    site_ok = None
    if is_perf_probe(probes):  # say what the capture lacks; check where perf put the probes
        for note in probe_notes(probes):
            warn(f"note: {note}")
        site_ok, common["dsos"] = _site_check(common["comms"], common["side"], opts.symfs)
    try:
        ev = malloc_rows(sm, meta, site_ok)
    except MallocError as exc:
        raise AnalysisError(str(exc)) from None
    fails = dict(sm.implausible)
    huge = ev.is_alloc & (ev.size > np.uint64(SIZE_LIMIT))
    if huge.any():  # a successful call of that size cannot happen: left out, counted
        names_h, counts_h = np.unique(sm.event[ev.row[huge]], return_counts=True)
        for code, cnt in zip(names_h.tolist(), counts_h.tolist()):
            fails[(sm.event_names[code] if code >= 0 else "(no event)", "huge size")] = cnt
        ok = ~huge
        ev = replace(ev, row=ev.row[ok], ptr=ev.ptr[ok], size=ev.size[ok], is_alloc=ev.is_alloc[ok])
    warn_failures(fails, warn)
    if opts.verbose:
        for note in malloc_summary(ev.stats):
            warn(note)
    rows = ev.row  # ascending: each ring's events in seq order, as order_samples likes them
    o = order_samples(sm.ring[rows], sm.seq[rows], sm.time[rows])
    p = o.stream
    is_alloc, ptr = ev.is_alloc[p], ev.ptr[p]
    key = process_keys(sm.pid[rows[p]], ptr)
    res = replay_ordered(time=o.time, is_alloc=is_alloc, key=key, lost=lost,
                         stop_ns=stop_ns, than_ns=opts.than_ns,
                         want_death=bool(opts.interval_ms), want_ends=opts.trend)
    prow = rows[p]
    # role code per event-name code (its first role); the last entry is for null events
    role_lut = np.array([names.index(e) if e in names else -1 for e in sm.event_names] + [-1],
                        np.int32)
    per_pos = {"time": res.time, "kept": res.kept, "role": np.maximum(role_lut[sm.event[prow]], 0),
               "ptr": ptr, "size": ev.size[p], "stack_id": sm.stack_id[prow], "is_alloc": is_alloc}
    stream = Stream(rows=prow, samples=sm, is_alloc_role=np.array([r.is_alloc for r in roles]),
                    per_pos=per_pos, per_row={})
    return stream, res


def _site_check(comms: Machine, side: dict[str, pa.Table], symfs: str | None):
    """((pids, addrs, times) -> False where the address lies in an ELF file whose symbols were
    read and is not the first instruction of a function there (a PLT stub); True where it is, or
    where nothing can be said (no mapping, file unreadable)), and the Dsos it reads them with (the
    reports reuse it: libc's tables are read once)."""
    from .symbols.callchain import UserResolver
    from .symbols.user import Dsos

    dsos = Dsos(side["usym"], symfs=symfs)
    user = UserResolver(comms, dsos, demangle=False)

    def ok(pid: np.ndarray, addr: np.ndarray, time: np.ndarray) -> np.ndarray:
        names, offs, dsos = user.resolve(pid, addr, time, is_return=False)
        bad = user.unreadable
        known = np.array([d is not None and d not in bad for d in dsos.tolist()], bool)
        at_start = np.array([x is not None for x in names.tolist()], bool) & (offs == 0)
        return at_start | ~known

    return ok, dsos


def _trend_parts(stream: Stream, res: ReplayResult, g: np.ndarray) -> Parts:
    """Every kept allocation, ending where the next event of its key frees or replaces it, in
    whatever epoch: an early report empties the tree, not the process's memory."""
    ap, ends, ep = res.ends
    return contributions(g, stream.column("stack_id", ap), stream.column("size", ap), res.time[ap],
                         res.time[ep], ends)


def attach_trends(reports: list[ReportView], parts: Parts, g: Grid) -> None:
    """Each leaked-bytes group's Trend over the whole recording."""
    by_sid = trends(parts, sorted({gr.stack_id for r in reports for gr in r.groups}), g)
    for r in reports:
        for gr in r.groups:
            gr.trend = by_sid.get(gr.stack_id)


def process_keys(pid: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """User-space replay keys: (pid, pointer) as one uint64, so that a block of one process is
    never freed or replaced by another's with the same address (after fork() parent and child
    hand out the same addresses). Exact: the process's dense index in the high bits when the
    pointers leave room (47-bit user space), else a dense id per distinct pair."""
    ptr = ptr.astype(np.uint64, copy=False)
    if not len(ptr):
        return ptr
    lo, hi = int(pid.min()), int(pid.max())
    if lo == hi:  # one process: the pointer is the key
        return ptr
    if hi - lo < 4 * len(pid) + (1 << 16):  # dense pids: index of each among the distinct ones
        present = np.bincount(pid - lo, minlength=hi - lo + 1) > 0
        upid = np.flatnonzero(present)
        inv = (np.cumsum(present, dtype=np.int64) - 1)[pid - lo]
    else:
        upid, inv = np.unique(pid, return_inverse=True)
    bits = (len(upid) - 1).bit_length()
    if int(ptr.max()) >> (64 - bits) == 0:
        return (inv.reshape(-1).astype(np.uint64) << np.uint64(64 - bits)) | ptr
    pairs = np.stack([inv.reshape(-1).astype(np.uint64), ptr], axis=1)
    return np.unique(pairs, axis=0, return_inverse=True)[1].reshape(-1).astype(np.uint64)


def _used_ids(ids: np.ndarray) -> np.ndarray:
    """Sorted distinct ids >= 0 (-1 = none): counted when the ids are dense, else hashed."""
    if not len(ids):
        return np.zeros(0, np.int64)
    lo, hi = int(ids.min()), int(ids.max())
    if hi < 0:
        return np.zeros(0, np.int64)
    if lo >= -1 and hi < 4 * len(ids) + (1 << 16):
        return np.flatnonzero(np.bincount(ids + 1, minlength=hi + 2)[1:])
    return np.unique(ids[ids >= 0])


def _stacks(t: pa.Table, ids: np.ndarray) -> dict[int, np.ndarray]:
    """Callchain words of the stack ids the stream uses."""
    want = _used_ids(ids)
    if not len(want) or not t.num_rows:
        return {}
    sid = column_array(t.column("stack_id"), np.int64, -1)
    mask = np.isin(sid, want)
    chains = t.column("callchain").filter(pa.array(mask)).combine_chunks()
    sid = sid[mask]
    offs = chains.offsets.to_numpy()
    vals = chains.values.to_numpy(zero_copy_only=False).astype(np.uint64)
    return {int(s): vals[offs[i]:offs[i + 1]] for i, s in enumerate(sid)}


def _report_view(r, stream: Stream, mode: str, per_task: bool, opts: AnalyzeOptions,
                 comms: Machine, lost: Lost) -> ReportView:
    groups: list[Group] = []
    if mode == LEAKED_BYTES:
        pos = r.leaked[r.selected]
        sid = stream.column("stack_id", pos).astype(np.int64, copy=False)
        size = stream.column("size", pos)
        pid = stream.column("pid", pos)
        if len(pos):
            comm_lists = _comm_lists(sid, size, pid, stream.column("time", pos), comms) \
                if opts.comm else {}
            groups = [Group(stack_id=g, bytes=b, objects=o, pid=p if per_task else 0,
                            comms=comm_lists.get(g, []), user_pid=p)
                      for g, b, o, p in _group_leaks(sid, size, pid)]
    return ReportView(reason=r.reason, time_ns=r.time_ns, position=r.position, num=len(r.leaked),
                      total_alloc=r.total_alloc, total_free=r.total_free,
                      positions=r.leaked, selected=r.selected, groups=groups, stream=stream,
                      lost_detail=list(zip(lost.count[r.lost_idx].tolist(),
                                           lost.cpu_of_ring[r.lost_idx].tolist())))


def _comm_lists(sid: np.ndarray, size: np.ndarray, pid: np.ndarray, time: np.ndarray,
                comms: Machine) -> dict[int, list[tuple[str, int, int]]]:
    """Per stack id: (comm, bytes, count) of its leaked entries, bytes desc, count desc, comm."""
    cdf = pd.DataFrame({"stack_id": sid, "comm": comms.comm(pid, time), "size": size})
    ca = cdf.groupby(["stack_id", "comm"], sort=False).agg(
        bytes=("size", "sum"), count=("size", "size")).reset_index()
    ca = ca.sort_values(["stack_id", "bytes", "count", "comm"],
                        ascending=[True, False, False, True], kind="stable")
    return {int(s): list(zip(sub["comm"], sub["bytes"].astype(int), sub["count"].astype(int)))
            for s, sub in ca.groupby("stack_id", sort=False)}


def _group_leaks(sid: np.ndarray, size: np.ndarray,
                 pid: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(stack_id, bytes, objects, pid of the last entry) per stack id, in order of first
    appearance - what a pandas groupby(sort=False) gives - with numpy only: one stable sort of the
    ids (a radix sort when they are dense) and counts."""
    n = len(sid)
    lo, hi = int(sid.min()), int(sid.max())
    code = sid - lo
    span = hi - lo + 1
    if span < (1 << 15):
        code = code.astype(np.int16)  # numpy's stable sort of 16-bit keys is a radix sort
    o = np.argsort(code, kind="stable")
    cs = code[o]
    starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
    ends = np.r_[starts[1:], n]
    first, last = o[starts], o[ends - 1]
    objects = ends - starts
    sz = size[o].astype(np.uint64, copy=False)
    if n and int(sz.max()) * n < (1 << 53):  # float sums are exact below 2**53
        byts = np.add.reduceat(sz.astype(np.float64), starts).astype(np.uint64)
    else:  # wrap like uint64 arithmetic
        byts = np.add.reduceat(sz, starts) if n else np.zeros(0, np.uint64)
    ids = sid[first]
    pids = pid[last]
    g = np.argsort(first, kind="stable")
    return list(zip(ids[g].tolist(), byts[g].tolist(), objects[g].tolist(), pids[g].tolist()))


SORTS = ("bytes", "growth")


def sort_groups(groups: list[Group], stacks: dict[int, np.ndarray], by: str = "bytes") -> list[Group]:
    """perf-prof's order: bytes desc, pid asc, objects desc, then stack addresses asc (no chain
    sorts last). `growth`: growing chains first, steepest first, then the rest in that order."""
    def chain(g: Group) -> tuple:
        c = stacks.get(g.stack_id)
        return (1, ()) if c is None else (0, tuple(int(x) for x in c))

    out = sorted(groups, key=lambda g: (-g.bytes, g.pid, -g.objects, chain(g)))
    if by == "growth":
        def growth(g: Group) -> tuple:
            t = g.trend
            return (0, -t.slope_bytes_per_s) if t is not None and t.cls == "growing" else (1, 0.0)

        out.sort(key=growth)  # stable: ties keep perf-prof's order
    return out


MAX_INTERVALS = 10_000_000


def interval_grid(start: int, stop: int, interval_ms: int) -> np.ndarray:
    """`-i`: the trace times at which live totals are printed: every interval after start, the
    last one clamped to stop (int64 ns, computed without overflow whatever the interval)."""
    step = int(interval_ms) * 1_000_000
    if step <= 0 or stop <= start:
        return np.zeros(0, np.int64)
    n = -(-(stop - start) // step)
    if n > MAX_INTERVALS:
        raise AnalysisError(f"-i {interval_ms}: {n:,} intervals over this recording's "
                            f"{(stop - start) / 1e9:,.0f} s; use a larger interval")
    inner = start + step * np.arange(1, n, dtype=np.int64) if n > 1 else np.zeros(0, np.int64)
    return np.append(inner, np.int64(stop))


def _intervals(stream: Stream, res: ReplayResult, interval_ms: int,
               meta: Metadata) -> list[IntervalStat]:
    """Outstanding objects/bytes at each interval boundary of trace time (`-i`)."""
    n = len(stream)
    start = meta.clock.start_ns or (int(res.time[0]) if n else 0)
    stop = meta.clock.stop_ns or (int(res.time[-1]) if n else start)
    bounds = interval_grid(start, stop, interval_ms)
    if not len(bounds):
        return []
    kept = stream.kept
    is_alloc = stream.column("is_alloc")
    alloc = is_alloc & kept
    free = ~is_alloc & kept
    size = stream.column("size").astype(np.int64)
    t = res.time.astype(np.int64)
    delta_n = np.zeros(n + 1, np.int64)
    delta_b = np.zeros(n + 1, np.int64)
    ap = np.flatnonzero(alloc)
    np.add.at(delta_n, ap, 1)
    np.add.at(delta_b, ap, size[ap])
    np.add.at(delta_n, res.death[ap], -1)
    np.add.at(delta_b, res.death[ap], -size[ap])
    live_n = np.cumsum(delta_n)
    live_b = np.cumsum(delta_b)
    ca = np.cumsum(alloc)
    cf = np.cumsum(free)
    pos = np.searchsorted(t, bounds, side="right")  # samples with time <= bound
    out: list[IntervalStat] = []
    pa_, pf_ = 0, 0
    for b, p in zip(bounds, pos):
        objs = int(live_n[p - 1]) if p else 0
        byts = int(live_b[p - 1]) if p else 0
        ta = int(ca[p - 1]) if p else 0
        tf = int(cf[p - 1]) if p else 0
        out.append(IntervalStat(time_ns=int(b), objects=objs, bytes=byts, allocs=ta - pa_,
                                frees=tf - pf_, total_alloc=ta, total_free=tf))
        pa_, pf_ = ta, tf
    return out


__all__ = [
    "EVENT_LIST",
    "LEAKED_BYTES",
    "SORTS",
    "Analysis",
    "AnalysisError",
    "AnalyzeOptions",
    "Lost",
    "analyze",
    "sort_groups",
]
