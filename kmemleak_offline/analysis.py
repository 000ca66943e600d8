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
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from .format import expr as exprmod
from .format import spec as specmod
from .format.metadata import Metadata
from .format.recording import Recording
from .format.tracefs import EventFormat, FormatError, parse_format
from .load import RING_ID_LIMIT, Samples, column_array, load, load_side, ring_ids
from .malloc import MallocError, is_malloc_recording
from .malloc import summary as malloc_summary
from .replay import Lost, ReplayResult, lost_windows, order_samples, replay_ordered
from .symbols.kernel import KernelSymbols
from .timeline import CommTimeline

LEAKED_BYTES = "leaked-bytes"
EVENT_LIST = "event-list"


class AnalysisError(ValueError):
    """Bad input to the analysis (unknown event, bad expression...). Message may be multi-line for
    expressions (caret + available fields), else one line."""


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


@dataclass
class EventRole:
    """One --alloc/--free event after defaults, with its compiled expressions."""

    spec: specmod.EventSpec
    fmt: EventFormat
    is_alloc: bool
    ptr: exprmod.Expr
    size: exprmod.Expr | None
    filter: exprmod.Expr | None  # applied offline (the kernel did not apply it)
    code: int = -1  # index in Analysis.roles


@dataclass
class Group:
    """One LEAKED BYTES group: a distinct call chain (stack_id; -1 = no call chain recorded)."""

    stack_id: int
    bytes: int
    objects: int
    pid: int
    comms: list[tuple[str, int, int]]  # (comm, bytes, count)


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
    comms: CommTimeline
    stacks: dict[int, np.ndarray]  # stack_id -> callchain words
    samples: Samples  # all sample rows; stream column `row` indexes them
    side: dict[str, pa.Table]  # side-band rows by kind (comm, mmap, usym...)
    intervals: list[IntervalStat]
    lost_total: int
    warnings: list[str]
    expansions: list[tuple[str, str]] = field(default_factory=list)  # --alloc/--free lists, expanded
    engine: str = "in-memory"  # or "streaming" (engine/): which path analysed it

    @property
    def start_ns(self) -> int:
        return self.recording.meta.clock.start_ns

    @property
    def stop_ns(self) -> int:
        return self.recording.meta.clock.stop_ns


def _formats(meta: dict) -> dict[str, EventFormat]:
    out = {}
    for name, ev in meta.get("events", {}).items():
        system = name.split(":", 1)[0]
        try:
            out[name] = parse_format(ev.get("format", ""), system)
        except FormatError as exc:
            raise AnalysisError(f"recording metadata: bad format text for {name}: {exc}") from None
    return out


def build_roles(meta: dict, alloc: list[str], free: list[str], formats: dict[str, EventFormat],
                warn: Callable[[str], None], verbose: int = 0,
                expansions: list[tuple[str, str]] | None = None) -> list[EventRole]:
    """Parse spec lists against the recording's formats; compile ptr/size/filter expressions.
    `expansions` collects (list as given, list after wildcard expansion), for -v."""
    kernel_filters = (meta.get("options") or {}).get("kernel_filters") or {}
    roles: list[EventRole] = []
    for is_alloc, texts in ((True, alloc), (False, free)):
        specs: list[specmod.EventSpec] = []
        try:
            for t in texts:
                expanded = specmod.expand_wildcards(specmod.parse_list(t), formats.keys())
                if expansions is not None:
                    expansions.append((t, ",".join(sp.text for sp in expanded)))
                specs.extend(expanded)
        except specmod.SpecError as exc:
            raise AnalysisError(str(exc)) from None
        for sp in specs:
            fmt = formats.get(sp.full_name)
            if fmt is None:
                raise AnalysisError(f"{sp.full_name} not found in the recording (it has: "
                                    f"{', '.join(sorted(formats)) or 'no events'})")
            try:
                sp = specmod.with_defaults(sp, fmt)
            except specmod.SpecError as exc:
                raise AnalysisError(str(exc)) from None
            if verbose and sp.ignored:
                warn(f"{sp.full_name}: ignoring attributes not used by kmemleak: "
                     + ", ".join(f"{k}={v}" if v else k for k, v in sp.ignored))
            try:
                ptr = exprmod.compile_expr(sp.ptr, fmt.fields)
                size = exprmod.compile_expr(sp.size, fmt.fields) if (is_alloc and sp.size) else None
                flt = None
                if sp.filter and kernel_filters.get(sp.full_name) != sp.filter:
                    flt = exprmod.compile_expr(sp.filter, fmt.fields)
                    if verbose:
                        warn(f"{sp.full_name} filters '{sp.filter}' in userspace")
            except exprmod.ExprError as exc:
                raise AnalysisError(str(exc)) from None
            roles.append(EventRole(spec=sp, fmt=fmt, is_alloc=is_alloc, ptr=ptr, size=size,
                                   filter=flt, code=len(roles)))
    if not any(r.is_alloc for r in roles):
        raise AnalysisError("no --alloc event given (and the recording names none)")
    if not any(not r.is_alloc for r in roles):
        raise AnalysisError("no --free event given (and the recording names none)")
    return roles


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

    formats = _formats(meta)
    alloc = opts.alloc if opts.alloc else list(meta.get("alloc") or [])
    free = opts.free if opts.free else list(meta.get("free") or [])
    expansions: list[tuple[str, str]] = []
    roles = build_roles(meta, alloc, free, formats, warn, opts.verbose, expansions)
    names = [r.spec.full_name for r in roles]
    mode = LEAKED_BYTES if all(r.size is not None for r in roles if r.is_alloc) else EVENT_LIST
    per_task = rec.meta.options.per_task
    malloc = is_malloc_recording(meta) and not (opts.alloc or opts.free)
    side = load_side(rec)
    ksyms = KernelSymbols.from_table(side["ksym"])
    comms = CommTimeline(side["comm"], side["fork"])
    lost_t = side["lost"]
    l_cpu = column_array(lost_t.column("cpu"), np.uint32)
    common = {"recording": rec, "metadata": meta, "roles": roles, "per_task": per_task,
              "ksyms": ksyms, "comms": comms, "side": side, "warnings": warnings,
              "expansions": expansions}
    a = None
    if not (malloc or opts.in_memory or opts.verbose >= 2):
        a = _streamed(rec, meta, roles, names, mode, opts, warn, ksyms, comms, side, l_cpu, common)
    if a is None:
        a = _in_memory(rec, meta, roles, names, mode, malloc, opts, warn, ksyms, comms, side,
                       l_cpu, common)
    return a


def _lost_total(lost: Lost, meta: Metadata) -> int:
    total = int(lost.count.sum()) if len(lost.count) else 0
    return max(total, meta.lost_counted)


def _expr_env(ksyms: KernelSymbols, comms: CommTimeline, stop_ns: int) -> exprmod.ExprEnv:
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
    order = order_samples(sm.ring, sm.seq, sm.time)
    lost = lost_windows(order, sm.ring, sm.seq, l_ring, column_array(lost_t.column("seq"), np.uint64),
                        column_array(lost_t.column("lost"), np.uint64), column_array(lost_t.column("time"), np.uint64),
                        rec.meta.clock.start_ns)
    lost.cpu = l_cpu

    # a killed recorder's metadata may predate its last samples: the final report is never
    # earlier than the last sample (else --than would see young allocations as old)
    stop_ns = max(rec.meta.clock.stop_ns, int(sm.time.max(initial=0)))
    if malloc:
        mode = LEAKED_BYTES
        stream, res = _malloc_stream(rec, meta, sm, roles, names, lost, stop_ns, opts, warn)
    else:
        stream, res = _kernel_stream(sm, order, roles, names, role_lut, lost, stop_ns, opts, warn,
                                     _expr_env(ksyms, comms, stop_ns))

    # stack ids in use: per position when the stream has its own (malloc), else any sample's
    used = stream.per_pos.get("stack_id", sm.stack_id)
    stacks = _stacks(side["stack"], used)

    reports = [_report_view(r, stream, mode, common["per_task"], opts, comms, lost)
               for r in res.reports]
    intervals = _intervals(stream, res, opts.interval_ms, rec.meta) if opts.interval_ms else []
    return Analysis(mode=mode, stream=stream, result=res, reports=reports, stacks=stacks,
                    samples=sm, intervals=intervals, lost_total=_lost_total(lost, rec.meta), **common)


class _Remap:
    """A column of the fetched rows, indexed by the recording's sample row numbers."""

    def __init__(self, values: np.ndarray, rows: np.ndarray) -> None:
        self.values, self.rows = values, rows

    def __getitem__(self, idx):
        return self.values[np.searchsorted(self.rows, np.asarray(idx))]


class LazySamples:
    """Stands for the recording's samples where only reported rows are ever asked for: reads
    those rows on first use (only event lines and JSON events need payloads, cpu, seq or tid).
    Indexed, like Samples, by the recording's sample row numbers."""

    def __init__(self, fetch: Callable[[np.ndarray], Samples], rows: np.ndarray) -> None:
        self._fetch, self._want = fetch, rows
        self._sm: Samples | None = None
        self._rows = np.zeros(0, np.int64)

    def _samples(self) -> Samples:
        if self._sm is None:
            r = np.sort(self._want)
            self._rows = r[np.r_[True, r[1:] != r[:-1]]] if len(r) else r
            self._sm = self._fetch(self._rows)
        return self._sm

    def decode(self, fmt: EventFormat, rows: np.ndarray, fields=None) -> dict[str, np.ndarray]:
        sm = self._samples()
        return sm.decode(fmt, np.searchsorted(self._rows, rows), fields)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        v = getattr(self._samples(), name)
        if isinstance(v, np.ndarray) and len(v) == len(self._rows):
            return _Remap(v, self._rows)
        return v


def _streamed(rec, meta, roles, names, mode, opts, warn, ksyms, comms, side, l_cpu,
              common) -> Analysis | None:
    """The streaming engine (engine/): memory follows the allocations outstanding, not the
    recording's length. None when the file does not allow it (the caller reads it in memory)."""
    from .engine import run as engine
    from .engine.progress import Progress
    from .engine.spill import SpillError

    lost_t = side["lost"]
    l_ring = ring_ids(lost_t)
    if len(l_ring) and int(l_ring.max()) >= RING_ID_LIMIT:
        return None
    plan = engine.make_plan(rec, opts.jobs, opts.partitions, opts.scan_ranges)
    meta_stop = rec.meta.clock.stop_ns
    stop_guess = max(meta_stop, plan.max_time or 0)
    env = _expr_env(ksyms, comms, stop_guess)
    names_lut: dict[tuple[str, ...], np.ndarray] = {}

    def evaluate(sm: Samples) -> Evaluated:
        key = tuple(sm.event_names)
        lut = names_lut.get(key)
        if lut is None:
            lut = names_lut[key] = np.array(
                [names.index(e) if e in names else -1 for e in sm.event_names] + [-1], np.int32)
        return evaluate_roles(sm, roles, names, lut, env)

    is_alloc_role = np.array([r.is_alloc for r in roles], bool)
    start_meta = rec.meta.clock.start_ns

    def grid(first: int | None, last: int | None) -> np.ndarray | None:
        start = start_meta or first
        stop = meta_stop or last
        if start is None or stop is None:
            return None
        return interval_grid(start, stop, int(opts.interval_ms))

    try:
        with Progress(enabled=opts.progress) as progress:
            m = engine.run(rec, plan, evaluate=evaluate, role_is_alloc=is_alloc_role,
                           lost_ring=l_ring, lost_seq=column_array(lost_t.column("seq"), np.uint64),
                           lost_count=column_array(lost_t.column("lost"), np.uint64),
                           lost_time=column_array(lost_t.column("time"), np.uint64),
                           start_ns=start_meta, interval=grid if opts.interval_ms else None,
                           tmpdir=opts.tmpdir, progress=progress)
    except SpillError as exc:
        raise AnalysisError(str(exc)) from None
    if m is None:
        return None
    if plan.max_time is None or plan.max_time != m.sample_max_time:
        stop_guess = None  # expressions that read comm_get() saw another stop time: redo
    if stop_guess is None and any(_uses_comm(r) for r in roles):
        return None
    warn_failures(m.fail_counts, warn)
    stop_ns = max(meta_stop, m.sample_max_time)
    lost = m.lost
    lost.cpu = l_cpu
    ent = m.entries
    rows = (ent["rs"] & np.uint64((1 << 48) - 1)).astype(np.int64)
    units = m.units
    samples = LazySamples(lambda want: engine.fetch_rows(units, want), rows)
    n = len(rows)
    stream = Stream(rows=rows, samples=samples,  # type: ignore[arg-type]
                    is_alloc_role=is_alloc_role,
                    per_pos={"time": ent["time"], "kept": np.ones(n, bool),
                             "role": ent["role"].astype(np.int32), "ptr": ent["key"],
                             "size": ent["size"], "stack_id": ent["stack_id"],
                             "pid": ent["pid"], "ring": (ent["rs"] >> np.uint64(48)).astype(np.uint32)},
                    per_row={})
    for r in m.reports:
        if r.reason == "final":
            r.time_ns = stop_ns
        if opts.than_ns:
            age = np.uint64(r.time_ns) - ent["time"][r.leaked]  # unsigned, as replay_ordered
            r.selected = age > np.uint64(opts.than_ns)
    res = ReplayResult(order=np.arange(n), time=ent["time"], kept=np.ones(n, bool),
                       reports=m.reports, total_alloc=m.total_alloc, total_free=m.total_free,
                       lost=lost)
    stacks = _stacks(side["stack"], ent["stack_id"])
    reports = [_report_view(r, stream, mode, common["per_task"], opts, comms, lost)
               for r in res.reports]
    intervals = []
    prev_a = prev_f = 0
    for b, objs, byts, ta, tf in m.interval_stats or []:
        intervals.append(IntervalStat(time_ns=int(b), objects=int(objs), bytes=int(byts),
                                      allocs=ta - prev_a, frees=tf - prev_f, total_alloc=ta,
                                      total_free=tf))
        prev_a, prev_f = ta, tf
    return Analysis(mode=mode, stream=stream, result=res, reports=reports, stacks=stacks,
                    samples=samples, intervals=intervals, lost_total=_lost_total(lost, rec.meta),
                    engine="streaming", **common)


def _uses_comm(role: EventRole) -> bool:
    return any(e is not None and "comm_get" in e.text for e in (role.ptr, role.size, role.filter))


@dataclass
class Evaluated:
    """Per sample row: its role (-1: not replayed), key and size, and whether a filter kept it."""

    role: np.ndarray  # int32 role code per row, -1 = not an alloc/free event
    key: np.ndarray  # uint64
    size: np.ndarray | None  # uint64, None when no role has a size
    keep: np.ndarray | None  # bool per row, only when some role filters
    fail_counts: dict[tuple[str, str], int]

    def replayed(self) -> np.ndarray | None:
        """Bool per row: replayed (an alloc/free event that passed its filter); None = all rows."""
        if self.keep is not None:
            return self.keep
        if len(self.role) and self.role.min() < 0:
            return self.role >= 0
        return None


def evaluate_roles(sm: Samples, roles: list[EventRole], names: list[str], role_lut: np.ndarray,
                   env: exprmod.ExprEnv | None = None) -> Evaluated:
    """Evaluate ptr/size/filter of every alloc/free row, decoding only the fields they read.

    Payloads are decoded in file order (each chunk's rows of one event are read front to back).
    `env` gives expressions the recording's kallsyms (`ksymbol()`) and comms (`comm_get()`)."""
    n = len(sm)
    role_r = role_lut[sm.event]  # per sample row; -1: not an alloc/free event (or a null event)
    key = np.zeros(n, np.uint64)
    size = np.zeros(n, np.uint64) if any(r.size is not None for r in roles) else None
    keep = None
    fail_counts: dict[tuple[str, str], int] = {}
    for role in roles:
        if names.index(role.spec.full_name) != role.code:
            continue  # an event listed twice (or in both lists) belongs to its first role
        rows = np.flatnonzero(role_r == role.code)
        if not len(rows):
            continue
        cols = _decode_for(role, sm, rows)
        m = len(rows)
        if role.filter is not None:
            fr = role.filter.evaluate(cols, m, env)
            if keep is None:
                keep = role_r >= 0
            keep[rows] = exprmod.filter_mask(fr)
            _count_fail(fail_counts, role.spec.full_name, "filter", fr)
        pr = role.ptr.evaluate(cols, m, env)
        _count_fail(fail_counts, role.spec.full_name, "ptr", pr)
        key[rows] = exprmod.as_ptr(pr)
        if role.size is not None:
            sr = role.size.evaluate(cols, m, env)
            _count_fail(fail_counts, role.spec.full_name, "size", sr)
            size[rows] = exprmod.as_size(sr)
    return Evaluated(role=role_r, key=key, size=size, keep=keep, fail_counts=fail_counts)


def warn_failures(fail_counts: dict[tuple[str, str], int], warn: Callable[[str], None]) -> None:
    for (ev, what), cnt in fail_counts.items():
        warn(f"warning: {ev}: {what} expression failed (division by zero) on {cnt} samples")


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
                         stop_ns=stop_ns, than_ns=opts.than_ns, want_death=bool(opts.interval_ms))
    stream = Stream(rows=st, samples=sm, is_alloc_role=is_alloc_role,
                    per_pos={"time": res.time, "kept": res.kept, "role": role_s, "ptr": key_s,
                             "size": size_s},
                    per_row={})
    return stream, res


def _malloc_stream(rec: Recording, meta: dict, sm: Samples, roles: list[EventRole], names: list[str],
                   lost: Lost, stop_ns: int, opts: AnalyzeOptions,
                   warn: Callable[[str], None]) -> tuple[Stream, ReplayResult]:
    """`record --malloc` recordings: pair uprobe entry/return per thread into alloc/free events
    with sizes (malloc.py), then replay those.

    Pairing reads the loaded sample columns and payloads (no second read of the recording). Each
    event is one sample row (a return for allocations, an entry for frees), so cpu, ring, seq,
    pid, tid come from that row; only what pairing computes is kept per position."""
    from .malloc import malloc_rows

    try:
        ev = malloc_rows(sm, meta)
    except MallocError as exc:
        raise AnalysisError(str(exc)) from None
    if opts.verbose:
        for note in malloc_summary(ev.stats):
            warn(note)
    rows = ev.row  # ascending: each ring's events in seq order, as order_samples likes them
    o = order_samples(sm.ring[rows], sm.seq[rows], sm.time[rows])
    p = o.stream
    is_alloc, key = ev.is_alloc[p], ev.ptr[p]
    res = replay_ordered(time=o.time, is_alloc=is_alloc, key=key, lost=lost,
                         stop_ns=stop_ns, than_ns=opts.than_ns, want_death=bool(opts.interval_ms))
    prow = rows[p]
    # role code per event-name code (its first role); the last entry is for null events
    role_lut = np.array([names.index(e) if e in names else -1 for e in sm.event_names] + [-1],
                        np.int32)
    per_pos = {"time": res.time, "kept": res.kept, "role": np.maximum(role_lut[sm.event[prow]], 0),
               "ptr": key, "size": ev.size[p], "stack_id": sm.stack_id[prow], "is_alloc": is_alloc}
    stream = Stream(rows=prow, samples=sm, is_alloc_role=np.array([r.is_alloc for r in roles]),
                    per_pos=per_pos, per_row={})
    return stream, res


def _decode_for(role: EventRole, sm: Samples, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Decode only the fields the role's expressions read (and `_cpu`/`_pid` when they do)."""
    need = set(role.ptr.fields_used) | role.ptr.specials_used
    for e in (role.size, role.filter):
        if e is not None:
            need |= set(e.fields_used) | e.specials_used
    cols = sm.decode(role.fmt, rows, fields=need)
    if "_cpu" in need:
        cols["_cpu"] = sm.cpu[rows].astype(np.int64)
    if "_pid" in need:
        cols["_pid"] = sm.pid[rows].astype(np.int64)
    return cols


def _count_fail(acc: dict, ev: str, what: str, r: exprmod.EvalResult) -> None:
    c = int(np.count_nonzero(r.failed))
    if c:
        acc[(ev, what)] = acc.get((ev, what), 0) + c


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
                 comms: CommTimeline, lost: Lost) -> ReportView:
    groups: list[Group] = []
    if mode == LEAKED_BYTES:
        pos = r.leaked[r.selected]
        sid = stream.column("stack_id", pos).astype(np.int64, copy=False)
        size = stream.column("size", pos)
        pid = stream.column("pid", pos) if (per_task or opts.comm) else None
        if len(pos):
            comm_lists = _comm_lists(sid, size, pid, stream.column("time", pos), comms) \
                if opts.comm else {}
            groups = [Group(stack_id=g, bytes=b, objects=o, pid=p if per_task else 0,
                            comms=comm_lists.get(g, []))
                      for g, b, o, p in _group_leaks(sid, size, pid)]
    return ReportView(reason=r.reason, time_ns=r.time_ns, position=r.position, num=len(r.leaked),
                      total_alloc=r.total_alloc, total_free=r.total_free,
                      positions=r.leaked, selected=r.selected, groups=groups, stream=stream,
                      lost_detail=list(zip(lost.count[r.lost_idx].tolist(),
                                           lost.cpu_of_ring[r.lost_idx].tolist())))


def _comm_lists(sid: np.ndarray, size: np.ndarray, pid: np.ndarray, time: np.ndarray,
                comms: CommTimeline) -> dict[int, list[tuple[str, int, int]]]:
    """Per stack id: (comm, bytes, count) of its leaked entries, bytes desc, count desc, comm."""
    cdf = pd.DataFrame({"stack_id": sid, "comm": comms.comm(pid, time), "size": size})
    ca = cdf.groupby(["stack_id", "comm"], sort=False).agg(
        bytes=("size", "sum"), count=("size", "size")).reset_index()
    ca = ca.sort_values(["stack_id", "bytes", "count", "comm"],
                        ascending=[True, False, False, True], kind="stable")
    return {int(s): list(zip(sub["comm"], sub["bytes"].astype(int), sub["count"].astype(int)))
            for s, sub in ca.groupby("stack_id", sort=False)}


def _group_leaks(sid: np.ndarray, size: np.ndarray,
                 pid: np.ndarray | None) -> list[tuple[int, int, int, int]]:
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
    pids = pid[last] if pid is not None else np.zeros(len(starts), np.int64)
    g = np.argsort(first, kind="stable")
    return list(zip(ids[g].tolist(), byts[g].tolist(), objects[g].tolist(), pids[g].tolist()))


def sort_groups(groups: list[Group], stacks: dict[int, np.ndarray]) -> list[Group]:
    """bytes desc, pid asc, objects desc, then stack addresses asc (no chain sorts last)."""
    def chain(g: Group) -> tuple:
        c = stacks.get(g.stack_id)
        return (1, ()) if c is None else (0, tuple(int(x) for x in c))

    return sorted(groups, key=lambda g: (-g.bytes, g.pid, -g.objects, chain(g)))


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
    "Analysis",
    "AnalysisError",
    "AnalyzeOptions",
    "Lost",
    "analyze",
    "sort_groups",
]
