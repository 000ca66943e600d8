"""The streaming engine as an analysis path: plan and run it (run.py), then build the same
`Analysis` the whole-recording path builds, over the reported entries only (payloads and
cpu/seq/tid of reported rows are read back lazily, when a reporter asks)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import trend
from ..analysis import (
    Analysis,
    IntervalStat,
    Stream,
    _expr_env,
    _lost_total,
    _report_view,
    _stacks,
    attach_trends,
    interval_grid,
)
from ..format.tracefs import EventFormat
from ..load import RING_ID_LIMIT, Samples, column_array, ring_ids
from ..replay import ReplayResult
from ..roles import AnalysisError, Evaluated, evaluate_roles, uses_comm, warn_failures
from . import run as engine
from .progress import Progress
from .spill import SpillError


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


def streamed(rec, roles, names, mode, opts, warn, ksyms, comms, side, l_cpu,
             common) -> Analysis | None:
    """The streaming engine (engine/): memory follows the allocations outstanding, not the
    recording's length. None when the file does not allow it (the caller reads it in memory)."""
    lost_t = side["lost"]
    l_ring = ring_ids(lost_t)
    if len(l_ring) and int(l_ring.max()) >= RING_ID_LIMIT:
        return None
    plan = engine.make_plan(rec, opts.jobs, opts.partitions, opts.scan_ranges)
    if plan.latest is not None and plan.max_time is not None and plan.max_time > plan.latest:
        return None  # samples timed far past the stop (damaged data): the in-memory path sets them aside
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

    def tgrid(first: int | None, last: int, bounds: np.ndarray | None) -> trend.Grid | None:
        start = start_meta or first
        return None if start is None else trend.grid(start, max(meta_stop, last), bounds)

    try:
        with Progress(enabled=opts.progress) as progress:
            m = engine.run(rec, plan, evaluate=evaluate, role_is_alloc=is_alloc_role,
                           lost_ring=l_ring, lost_seq=column_array(lost_t.column("seq"), np.uint64),
                           lost_count=column_array(lost_t.column("lost"), np.uint64),
                           lost_time=column_array(lost_t.column("time"), np.uint64),
                           start_ns=start_meta, interval=grid if opts.interval_ms else None,
                           tmpdir=opts.tmpdir, progress=progress,
                           trend_grid=tgrid if opts.trend else None)
    except SpillError as exc:
        raise AnalysisError(str(exc)) from None
    if m is None:
        return None
    if plan.max_time is None or plan.max_time != m.sample_max_time:
        stop_guess = None  # expressions that read comm_get() saw another stop time: redo
    if stop_guess is None and any(uses_comm(r) for r in roles):
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
    if m.trend is not None:
        attach_trends(reports, m.trend, m.trend_grid)
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
