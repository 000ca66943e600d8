"""Plan, run and merge a streaming analysis of one tracepoint recording.

plan: the sample row groups, numbered; how many key partitions and scan ranges.
scan: pass 1 per range (scan.py); then the rings' carry between ranges and the lost windows.
replay: pass 2 per partition (partition.py); merge: reports from the per-partition results.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .. import trend
from ..format.recording import (
    Recording,
    RecordingError,
    _conform,
    _group_kind,
    _short,
    kind_mask,
    open_parquet,
    read_group,
)
from ..load import SAMPLE_COLUMNS, samples_from_table, time_limit
from ..replay import U64_MAX, Lost, Report
from . import partition, scan
from .pool import Workers
from .progress import Progress
from .spill import SpillDir

PART_EVENTS = 2_000_000  # replayed events per partition to aim for (bounds a worker's memory)
SMALL = 2_000_000  # sample rows below which everything stays in one process, in memory


@dataclass
class Plan:
    units: list[scan.Unit]
    samples: int
    max_time: int | None  # of any sample, from row-group statistics (None: unknown)
    part_bits: int
    ranges: list[list[scan.Unit]]
    jobs: int
    spill: bool
    latest: int | None = None  # samples timed later are set aside (load.time_limit)


@dataclass
class Merged:
    """What the analysis needs from a streaming run."""

    entries: dict[str, np.ndarray]  # all reports' leaked entries, concatenated (ENTRY_COLUMNS)
    reports: list[Report]  # `leaked` index into `entries`
    lost: Lost
    total_alloc: int
    total_free: int
    interval_stats: list[tuple[int, int, int, int, int]] | None  # (bound, objs, bytes, allocs, frees)
    fail_counts: dict
    units: list[scan.Unit]
    sample_max_time: int = 0  # largest (clamped = raw) time of any sample row
    trend: trend.Parts | None = None  # growth trends: every partition's sums
    trend_grid: trend.Grid | None = None


def sample_units(rec: Recording) -> tuple[list[scan.Unit], int | None]:
    """Every row group holding sample rows, in file order, with the index of its first one; and
    the largest sample time the statistics know (None when some group has none)."""
    units: list[scan.Unit] = []
    row0 = 0
    tmax: int | None = 0
    for f in rec.files:
        pf = open_parquet(f)
        md = pf.metadata
        col = next((j for j in range(md.num_columns) if md.schema.column(j).path == "kind"), None)
        tcol = next((j for j in range(md.num_columns) if md.schema.column(j).path == "time"), None)
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            if rg.num_rows == 0:
                continue
            k = _group_kind(rg, col)
            mask = None
            if k is None:
                try:
                    kind = read_group(f, pf, g, ["kind"]).column("kind")
                except (OSError, pa.ArrowException) as exc:
                    raise RecordingError(f"{f}: cannot read recording data ({_short(exc)}); "
                                         "the file is truncated or corrupt") from None
                m = kind_mask(kind, ["sample"])
                mask = m.to_numpy(zero_copy_only=False)
                if not mask.any():
                    continue
                n = int(mask.sum())
                if n == rg.num_rows:
                    mask = None
            elif k != "sample":
                continue
            else:
                n = rg.num_rows
            units.append(scan.Unit(file=str(f), group=g, row0=row0, n=n, mask=mask))
            row0 += n
            st = rg.column(tcol).statistics if tcol is not None else None
            if tmax is not None and mask is None and st is not None and st.has_min_max:
                tmax = max(tmax, int(st.max))
            else:
                tmax = None
    return units, tmax


def make_plan(rec: Recording, jobs: int | None, partitions: int | None = None,
              ranges: int | None = None) -> Plan:
    units, tmax = sample_units(rec)
    total = sum(u.n for u in units)
    jobs = max(1, jobs or len(os.sched_getaffinity(0)))
    if partitions is None:
        want = 1 if total <= SMALL else max(-(-total // PART_EVENTS), 2 * jobs)
    else:
        want = max(1, partitions)
    bits = max(0, (want - 1).bit_length())
    bits = min(bits, 12)
    if ranges is None:
        nr = 1 if total <= SMALL else min(len(units), max(4 * jobs, 8))  # progress steps too
    else:
        nr = max(1, min(ranges, len(units)))
    return Plan(units=units, samples=total, max_time=tmax, part_bits=bits, ranges=_split(units, nr), jobs=jobs,
                spill=bits > 0 or nr > 1, latest=time_limit(rec))


def _split(units: list[scan.Unit], k: int) -> list[list[scan.Unit]]:
    """k runs of consecutive units with about equal rows."""
    if k <= 1 or len(units) <= 1:
        return [units]
    cum = np.cumsum([u.n for u in units])
    cuts = np.searchsorted(cum, cum[-1] * np.arange(1, k) / k, side="left") + 1
    edges = sorted({0, *np.minimum(cuts, len(units)).tolist(), len(units)})
    return [units[a:b] for a, b in itertools.pairwise(edges) if b > a]


def run(rec: Recording, plan: Plan, *, evaluate: Callable, role_is_alloc: np.ndarray,
        lost_ring: np.ndarray, lost_seq: np.ndarray, lost_count: np.ndarray, lost_time: np.ndarray,
        start_ns: int, interval: Callable[[int | None, int | None], np.ndarray] | None,
        tmpdir: str | None, progress: Progress,
        trend_grid: Callable[..., trend.Grid | None] | None = None) -> Merged | None:
    """The streaming analysis; None when the file's rings are not in seq order (the caller then
    analyses in memory)."""
    spill = SpillDir(tmpdir) if plan.spill else None
    try:
        return _run(plan, spill, evaluate, role_is_alloc, lost_ring, lost_seq, lost_count,
                    lost_time, start_ns, interval, progress, trend_grid)
    finally:
        if spill is not None:
            spill.remove()


def _run(plan: Plan, spill: SpillDir | None, evaluate, role_is_alloc, lost_ring, lost_seq,
         lost_count, lost_time, start_ns, interval, progress: Progress, trend_grid) -> Merged | None:
    setup = scan.ScanSetup(evaluate=evaluate, role_is_alloc=role_is_alloc, part_bits=plan.part_bits,
                           spill=spill, lost_ring=lost_ring.astype(np.uint32),
                           lost_seq=lost_seq.astype(np.uint64), latest=plan.latest)
    progress.stage("reading", plan.samples)
    with Workers(plan.jobs, setup) as workers:
        done = _passes(plan, spill, setup, workers, lost_ring, lost_count, lost_time, start_ns,
                       interval, progress, role_is_alloc, trend_grid)
    # merged with the workers gone: while forked children share its pages, each page the parent
    # touches first costs ~5x more system time (0.55 s vs 0.15 s to merge at 10M events)
    if done is None:
        return None
    rr, results, lost, starts, bounds, tgrid = done
    m = _merge(results, lost, starts, bounds, tgrid)
    m.fail_counts = {}
    for r in rr:
        for k, v in r.fail_counts.items():
            m.fail_counts[k] = m.fail_counts.get(k, 0) + v
    m.units = plan.units
    m.sample_max_time = max((int(r.max_time.max()) for r in rr if len(r.max_time)), default=0)
    return m


def _passes(plan, spill, setup, workers, lost_ring, lost_count, lost_time, start_ns, interval,
            progress, role_is_alloc, trend_grid):
    """Both passes over the workers: (scan results, partition results, lost windows, fine-epoch
    starts, -i bounds, trend grid), or None when the rings are not in seq order."""
    ranges: list[scan.RangeResult | None] = [None] * len(plan.ranges)
    tasks = [(i, units) for i, units in enumerate(plan.ranges)]
    for i, r in workers.run(scan.scan_range, tasks):
        ranges[i] = r
        progress.advance(r.samples)
        if not r.ordered:
            return None
    rr: list[scan.RangeResult] = ranges  # type: ignore[assignment]
    carry = _carry(rr)
    if carry is None:
        return None
    lost = _lost_windows(rr, carry, lost_ring, lost_count, lost_time, start_ns)
    starts = np.unique(lost.start)

    # pass 2: replay each partition
    nparts = 1 << plan.part_bits
    rsetup = partition.ReplaySetup(spill=spill, role_is_alloc=role_is_alloc, carry=carry,
                                   win_start=lost.start, win_end=lost.end, starts=starts)
    mem = None
    if spill is None:
        mem = {p: [(r.index, c) for r in rr for c in r.parts.get(p, [])] for p in range(nparts)}
        for r in rr:
            r.parts = {}
    # -i needs the replayed stream's first/last times for its grid when metadata lacks them
    bounds = interval(None, None) if interval is not None else None
    if interval is not None and bounds is None:
        bounds = interval(*_replayed_span(rsetup, nparts, mem))
    # trends: from the recording's start (else the first replayed event) to the final report
    smax = max((int(r.max_time.max()) for r in rr if len(r.max_time)), default=0)
    tgrid = trend_grid(None, smax, bounds) if trend_grid is not None else None
    if trend_grid is not None and tgrid is None:
        tgrid = trend_grid(_replayed_span(rsetup, nparts, mem)[0], smax, bounds)
    rsetup.interval_bounds = bounds
    rsetup.trend_grid = tgrid.times if tgrid is not None else None
    progress.stage("replaying", sum(r.events for r in rr))
    results: list[partition.PartResult] = []
    tasks2 = [(rsetup, p, mem.get(p) if mem is not None else None) for p in range(nparts)]
    for _, res in workers.run(partition.replay_task, tasks2):
        results.append(res)
        progress.advance(int(res.events.sum()))
    return rr, results, lost, starts, bounds, tgrid


def _replayed_span(rsetup, nparts, mem) -> tuple[int | None, int | None]:
    lo, hi = None, None
    for p in range(nparts):
        c = partition.load_part(rsetup, p, mem.get(p) if mem is not None else None)
        if len(c["time"]):
            a, b = int(c["time"].min()), int(c["time"].max())
            lo = a if lo is None else min(lo, a)
            hi = b if hi is None else max(hi, b)
    return lo, hi


def _carry(rr: list[scan.RangeResult]) -> dict[int, tuple[np.ndarray, np.ndarray]] | None:
    """Per range: the clamped time each ring reached in earlier ranges (its floor here); None if a
    ring's seqs go back across ranges."""
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    last_seq: dict[int, int] = {}
    reached: dict[int, int] = {}
    for r in rr:
        rings, floor = [], []
        for j, ring in enumerate(r.ring.tolist()):
            if ring in last_seq and int(r.first_seq[j]) <= last_seq[ring]:
                return None
            if ring in reached and reached[ring] > int(r.first_time[j]):
                rings.append(ring)
                floor.append(reached[ring])
            last_seq[ring] = int(r.last_seq[j])
            reached[ring] = max(reached.get(ring, 0), int(r.max_time[j]))
        if rings:
            out[r.index] = (np.array(rings, np.int64), np.array(floor, np.uint64))
    return out


def _floor_of(carry, index: int, ring: int) -> int:
    rings, floor = carry.get(index, (None, None))
    if rings is None:
        return 0
    hit = np.flatnonzero(rings == ring)
    return int(floor[hit[0]]) if len(hit) else 0


def _lost_windows(rr, carry, lost_ring, lost_count, lost_time, start_ns) -> Lost:
    n = len(lost_ring)
    start = np.full(n, np.uint64(start_ns), np.uint64)
    end = np.full(n, U64_MAX, np.uint64)
    got_end = np.zeros(n, bool)
    for r in rr:  # ranges in file order: the last one with an earlier sample gives the start
        for i in np.flatnonzero(r.has_before).tolist():
            start[i] = max(int(r.loss_before[i]), _floor_of(carry, r.index, int(lost_ring[i])))
        for i in np.flatnonzero(r.has_after & ~got_end).tolist():
            end[i] = max(int(r.loss_after[i]), _floor_of(carry, r.index, int(lost_ring[i])))
            got_end[i] = True
    return Lost(ring=lost_ring.astype(np.uint32), count=lost_count.astype(np.uint64), start=start,
                end=end, time=lost_time.astype(np.uint64))


def _merge(results: list[partition.PartResult], lost: Lost, starts: np.ndarray,
           bounds: np.ndarray | None, tgrid: np.ndarray | None = None) -> Merged:
    ne = len(starts) + 1
    events = np.sum([r.events for r in results], axis=0) if results else np.zeros(ne, np.int64)
    first = np.min([r.first_time for r in results], axis=0) if results \
        else np.full(ne, U64_MAX, np.uint64)
    allocs = np.sum([r.allocs for r in results], axis=0) if results else np.zeros(ne, np.int64)
    frees = np.sum([r.frees for r in results], axis=0) if results else np.zeros(ne, np.int64)
    cum_a = np.concatenate(([0], np.cumsum(allocs))).tolist()
    cum_f = np.concatenate(([0], np.cumsum(frees))).tolist()

    # windows in perf-prof's reclaim order: ascending start (stable), grouped by boundary
    w = np.argsort(lost.start, kind="stable")
    boundary = np.searchsorted(starts, lost.start[w]) + 1  # window -> fine-epoch boundary j
    parts: list[dict[str, np.ndarray]] = []  # every report's live entries, part by part
    spans: list[tuple[int, int]] = []  # each report's rows in the concatenation of `parts`
    reports: list[Report] = []
    offset = 0
    prev = -1  # last non-empty fine epoch
    early: list[tuple[int, int, int]] = []  # (time, objects, bytes) reclaimed by early reports

    def add(reason: str, t: int, epoch: int, upto: int, lost_idx: np.ndarray) -> None:
        nonlocal offset
        mine = [r.live[epoch] for r in results if len(r.live[epoch]["time"])] if epoch >= 0 else []
        k = sum(len(p["time"]) for p in mine)
        parts.extend(mine)
        spans.append((offset, offset + k))
        reports.append(Report(reason=reason, time_ns=t, position=0,
                              leaked=np.arange(offset, offset + k, dtype=np.int64),
                              selected=np.ones(k, bool), total_alloc=int(cum_a[upto]),
                              total_free=int(cum_f[upto]), lost_idx=lost_idx))
        offset += k
        if reason == "lost":
            early.append((t, k, int(sum(int(p["size"].astype(np.int64).sum()) for p in mine))))

    for m in range(ne):
        if events[m] == 0:
            continue
        if m >= 1:
            lo = max(prev, 0)
            sel = (boundary > lo) & (boundary <= m)
            add("lost", int(first[m]), prev, m, w[sel])
        prev = m
    add("final", 0, prev, ne, np.zeros(0, np.int64))
    entries = _entries(parts, spans)
    merged = Merged(entries=entries, reports=reports, lost=lost, total_alloc=int(cum_a[-1]),
                    total_free=int(cum_f[-1]),
                    interval_stats=None, fail_counts={}, units=[])
    if bounds is not None:
        merged.interval_stats = _intervals(results, bounds, early)
    if tgrid is not None:
        merged.trend = trend.Parts.concat([r.trend for r in results if r.trend is not None])
        merged.trend_grid = tgrid
    return merged


def _entries(parts: list[dict[str, np.ndarray]], spans: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """All reports' entries in one set of columns (one concatenation, one gather), each report's
    in perf-prof's tree order: (time, key). Each part is sorted by time already, so a stable sort
    by time merges the runs; keys break ties only where times are equal."""
    def column(c: str) -> np.ndarray:
        return np.concatenate([p[c] for p in parts]) if parts else np.zeros(0, _dtype(c))

    t, key = column("time"), column("key")
    order = np.empty(len(t), np.int64)
    for lo, hi in spans:
        o = np.argsort(t[lo:hi], kind="stable")
        ts = t[lo:hi][o]
        if np.any(ts[1:] == ts[:-1]):
            o = np.lexsort((key[lo:hi], t[lo:hi]))
        order[lo:hi] = o
        order[lo:hi] += lo
    out = {"time": t[order], "key": key[order]}
    del t, key
    for c in partition.ENTRY_COLUMNS:  # one column at a time: its concatenation's pages are reused
        if c not in out:
            out[c] = column(c)[order].astype(_dtype(c), copy=False)
    return {c: out[c] for c in partition.ENTRY_COLUMNS}


def _dtype(c: str):
    return {"pid": np.int32, "role": np.int8, "stack_id": np.int64}.get(c, np.uint64)


def _intervals(results, bounds: np.ndarray, early) -> list[tuple[int, int, int, int, int]]:
    tot = {k: np.sum([r.iv[k] for r in results], axis=0) if results else np.zeros(len(bounds), np.int64)
           for k in ("allocs", "frees", "alloc_bytes", "died", "died_bytes")}
    objs = tot["allocs"] - tot["died"]
    byts = tot["alloc_bytes"] - tot["died_bytes"]
    for t, k, b in early:  # entries reclaimed at an early report leave the tree there
        after = bounds >= t
        objs[after] -= k
        byts[after] -= b
    return list(zip(bounds.tolist(), objs.tolist(), byts.tolist(), tot["allocs"].tolist(),
                    tot["frees"].tolist()))


def fetch_rows(units: list[scan.Unit], rows: np.ndarray):
    """Samples of the given sorted sample rows only (for event lines and JSON events)."""
    import pyarrow as pa

    row0 = np.array([u.row0 for u in units], np.int64)
    which = np.searchsorted(row0, rows, side="right") - 1
    tables = []
    for ui in np.unique(which).tolist():
        u = units[ui]
        local = rows[which == ui] - u.row0
        t = _conform(scan.read_unit(u, SAMPLE_COLUMNS), SAMPLE_COLUMNS)
        tables.append(t.take(pa.array(local)))
    if not tables:
        from ..format.recording import to_table
        return samples_from_table(_conform(to_table({"kind": []}), SAMPLE_COLUMNS))
    return samples_from_table(pa.concat_tables(tables).combine_chunks())
