"""Pass 2: replay one key partition against the recording-wide lost windows.

Every report quantity is additive over a partition of the keys: matching and replace-on-double-
alloc look at one key; lost windows drop and reset by time, the same for every key. Reports split
the stream into epochs at the lost windows' starts ("fine epochs": an event with time t belongs
to epoch #{starts < t}); the merge turns the globally non-empty ones into perf-prof's reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import trend
from ..replay import _group_by_ring, _live_allocs, dropped_mask, kept_alloc_ends
from . import spill

ENTRY_COLUMNS = ("time", "rs", "key", "size", "stack_id", "pid", "role")


@dataclass
class ReplaySetup:
    """Recording-wide inputs of every partition replay (inherited through fork)."""

    spill: spill.SpillDir | None
    role_is_alloc: np.ndarray
    carry: dict[int, tuple[np.ndarray, np.ndarray]]  # scan range -> (rings, min clamped time)
    win_start: np.ndarray  # uint64, lost windows (any order)
    win_end: np.ndarray
    starts: np.ndarray  # distinct window starts, ascending: the fine-epoch boundaries
    interval_bounds: np.ndarray | None = None  # -i: trace times to report live totals at
    trend_grid: np.ndarray | None = None  # growth trends: the grid (trend.py)


@dataclass
class PartResult:
    part: int
    events: np.ndarray  # per fine epoch: replayed events (kept or dropped)
    first_time: np.ndarray  # per fine epoch: time of its first event (U64 max if none)
    allocs: np.ndarray  # per fine epoch: kept allocs
    frees: np.ndarray
    live: list[dict[str, np.ndarray]]  # per fine epoch: allocs still in the tree at its end
    # -i: per bound, kept allocs/frees with time <= bound and allocs freed (or replaced) within
    # their epoch by then (count and bytes); allocs reclaimed at a report are the merge's business
    iv: dict[str, np.ndarray] = field(default_factory=dict)
    # trends: this partition's allocations, ending where freed or replaced within their epoch
    # (those reclaimed at an early report end there: the merge knows when)
    trend: trend.Parts | None = None


def load_part(setup: ReplaySetup, part: int,
              mem: list[tuple[int, dict[str, np.ndarray]]] | None = None) -> dict[str, np.ndarray]:
    """The partition's columns from every scan range, with the ranges' time carry applied."""
    pieces: list[tuple[int, dict[str, np.ndarray]]] = []
    if mem is not None:
        pieces = mem
    elif setup.spill is not None:
        pieces = [(r, spill.read(f)) for r, f in setup.spill.files(part)]
    if not pieces:
        return {c: np.zeros(0, spill.SCHEMA.field(c).type.to_pandas_dtype()) for c in spill.COLUMNS}
    for r, cols in pieces:
        rings, carry = setup.carry.get(r, (None, None))
        if rings is None or not len(rings):
            continue
        lut = np.zeros(int(rings.max()) + 1, np.uint64)
        lut[rings] = carry
        ring = (cols["rs"] >> np.uint64(48)).astype(np.int64)
        inside = ring < len(lut)
        floor = np.where(inside, lut[np.minimum(ring, len(lut) - 1)], np.uint64(0))
        cols["time"] = np.maximum(cols["time"], floor)
    if len(pieces) == 1:
        return dict(pieces[0][1])
    return {c: np.concatenate([p[c] for _, p in pieces]) for c in spill.COLUMNS}


def replay_task(_shared: object, setup: ReplaySetup, part: int,
                mem: list[tuple[int, dict[str, np.ndarray]]] | None = None) -> PartResult:
    """`replay_part` as a worker task (the workers' shared set-up is the scan's)."""
    return replay_part(setup, part, mem)


def replay_part(setup: ReplaySetup, part: int,
                mem: list[tuple[int, dict[str, np.ndarray]]] | None = None) -> PartResult:
    cols = load_part(setup, part, mem)
    n = len(cols["time"])
    ne = len(setup.starts) + 1
    # stream order within the partition: (clamped time, ring, row), as the in-memory ordering
    # layer does: group by ring (rows ascend within a ring), then a stable sort by time
    ring = (cols["rs"] >> np.uint64(48)).astype(np.int64)
    by, bounds = _group_by_ring(ring) if n else (np.zeros(0, np.int64), np.zeros(1, np.int64))
    t = cols["time"][by]
    o = np.argsort(t, kind="stable") if len(bounds) > 2 else np.arange(n)
    order = by[o]
    t = t[o]
    del by, ring, o
    key = cols["key"][order]
    alloc = setup.role_is_alloc[cols["role"][order]]
    kept = dropped_mask(t, setup.win_start, setup.win_end)
    eb = np.concatenate(([0], np.searchsorted(t, setup.starts, side="right"), [n])).astype(np.int64)
    events = np.diff(eb)
    first = np.full(ne, np.iinfo(np.uint64).max, np.uint64)
    has = events > 0
    first[has] = t[eb[:-1][has]]
    ka, kf = kept & alloc, kept & ~alloc
    ca = np.concatenate(([0], np.cumsum(ka)))
    cf = np.concatenate(([0], np.cumsum(kf)))
    live = []
    tparts: list[trend.Parts] = []
    tg = setup.trend_grid
    # stream order is time order (clamped times: a running max per ring), checked, not assumed
    tcol = trend.columns(tg, t, t_sorted=bool((t[1:] >= t[:-1]).all())) if tg is not None else None
    if tg is not None:
        # one sort over every epoch: trends follow a key across early reports (an allocation
        # made before a lost window and freed after it ends at that free), while what each
        # epoch leaves in the tree is what the replay keeps: no later event in the same epoch
        apos, ends, epos, survivors = kept_alloc_ends(key, alloc, kept, eb)
        tparts.append(_trend_part(len(tg), cols, order, tcol, apos, ends, epos))
        del apos, ends, epos
    for e in range(ne):
        lo, hi = int(eb[e]), int(eb[e + 1])
        if hi == lo:
            live.append({k: v[:0] for k, v in cols.items()})
            continue
        if tg is not None:
            pos = survivors[np.searchsorted(survivors, lo):np.searchsorted(survivors, hi)]
        else:
            kpos = lo + np.arange(hi - lo) if kept[lo:hi].all() else lo + np.flatnonzero(kept[lo:hi])
            pos = kpos[_live_allocs(key[kpos], alloc[kpos])]
        src = order[pos]  # only the live entries' other columns are gathered
        live.append({k: (t[pos] if k == "time" else v[src]) for k, v in cols.items()})
    res = PartResult(part=part, events=events, first_time=first,
                     allocs=np.diff(ca[eb]), frees=np.diff(cf[eb]),
                     live=live)
    if setup.trend_grid is not None:
        res.trend = trend.aggregate(trend.Parts.concat(tparts), len(setup.trend_grid))
    if setup.interval_bounds is not None:
        res.iv = _interval_parts(t, key, cols["size"][order], ka, kf, kept, eb,
                                 setup.interval_bounds)
    return res


def _trend_part(p: int, cols: dict[str, np.ndarray], order: np.ndarray, col: np.ndarray,
                apos: np.ndarray, ended: np.ndarray, epos: np.ndarray) -> trend.Parts:
    """Kept allocs at stream positions `apos`; `ended`: those freed or replaced later, at
    positions `epos` (the others are still there at the end); `col`: each stream position's
    grid column."""
    src = order[apos]
    return trend.column_contributions(p, cols["stack_id"][src], cols["size"][src], col[apos],
                                      col[epos], ended)


def _interval_parts(t: np.ndarray, key: np.ndarray, size: np.ndarray, ka: np.ndarray,
                    kf: np.ndarray, kept: np.ndarray, eb: np.ndarray,
                    bounds: np.ndarray) -> dict[str, np.ndarray]:
    """Cumulative counts at each bound: allocs, frees, and allocs that died within their epoch
    (the next kept event of the same key in the same epoch frees or replaces them)."""
    n = len(t)
    kpos = np.flatnonzero(kept)
    epoch = np.searchsorted(eb, kpos, side="right") - 1
    # next kept event of the same key in the same epoch: sort by (epoch, key, position)
    o = np.lexsort((kpos, key[kpos], epoch))
    sp, sk, se = kpos[o], key[kpos][o], epoch[o]
    if len(sp) > 1:
        d = (sk[1:] == sk[:-1]) & (se[1:] == se[:-1]) & ka[sp[:-1]]  # sp[i] dies at sp[i + 1]
        d_at, d_sz = t[sp[1:][d]], size[sp[:-1][d]].astype(np.int64)
    else:
        d_at, d_sz = np.zeros(0, np.uint64), np.zeros(0, np.int64)
    od = np.argsort(d_at, kind="stable")
    d_at, d_sz = d_at[od], d_sz[od]
    bt = bounds.astype(np.uint64)
    ap = np.flatnonzero(ka)
    a_sz = np.concatenate(([0], np.cumsum(size[ap].astype(np.int64))))
    d_cum = np.concatenate(([0], np.cumsum(d_sz)))
    pa_ = np.searchsorted(t[ap], bt, side="right") if n else np.zeros(len(bt), np.int64)
    pf_ = np.searchsorted(t[np.flatnonzero(kf)], bt, side="right") if n else np.zeros(len(bt), np.int64)
    pd_ = np.searchsorted(d_at, bt, side="right")
    return {"allocs": pa_.astype(np.int64), "frees": pf_.astype(np.int64),
            "alloc_bytes": a_sz[pa_], "died": pd_.astype(np.int64), "died_bytes": d_cum[pd_]}
