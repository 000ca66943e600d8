"""Pass 1: stream sample row groups; decode only the replay's columns; spill them by key partition.

A scan range is a run of consecutive row groups read in file order by one worker. Besides the
spilled columns it returns what the merge needs about every ring (the ordering layer works per
ring: seq order, times clamped to never go backwards) and about every LOST record (the clamped
time of the sample before and after it in its ring). Times are clamped within the range; the
carry from earlier ranges is applied at replay time (a max per (range, ring)).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ..load import RING_ID_LIMIT, SAMPLE_COLUMNS, samples_from_table
from ..replay import _ring_seq_order, ring_seq_key
from .spill import PartitionWriters, SpillDir

HASH_MULT = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: the top bits pick the partition
# what the scan reads: tid only matters for event lines, read back for reported rows
SCAN_COLUMNS = [c for c in SAMPLE_COLUMNS if c != "tid"]


@dataclass
class Unit:
    """The sample rows of one row group."""

    file: str
    group: int
    row0: int  # index of its first sample row among all the recording's sample rows
    n: int
    mask: np.ndarray | None = None  # which rows of the group are samples (None: all)


@dataclass
class ScanSetup:
    """Everything a scan worker needs; workers inherit it through fork."""

    evaluate: Callable  # Samples -> analysis.Evaluated
    role_is_alloc: np.ndarray  # bool per role code
    part_bits: int
    spill: SpillDir | None  # None: keep the columns in memory (one small scan)
    lost_ring: np.ndarray  # uint32 ring of each LOST record
    lost_seq: np.ndarray  # uint64
    latest: int | None = None  # later samples are set aside (load.time_limit)


@dataclass
class RangeResult:
    index: int
    ring: np.ndarray  # rings seen, ascending
    first_seq: np.ndarray  # per ring
    last_seq: np.ndarray
    first_time: np.ndarray  # raw time of the ring's first sample in the range
    max_time: np.ndarray  # clamped time of its last sample (the carry into later ranges)
    ordered: bool  # every ring's rows came in seq order
    loss_before: np.ndarray  # per LOST record: clamped time of the last earlier sample here
    has_before: np.ndarray
    loss_after: np.ndarray  # ... of the first later sample here
    has_after: np.ndarray
    samples: int = 0
    events: int = 0  # replayed rows
    fail_counts: dict = field(default_factory=dict)
    parts: dict[int, list[dict[str, np.ndarray]]] = field(default_factory=dict)  # in-memory spill


def partition_of(key: np.ndarray, bits: int) -> np.ndarray:
    if bits == 0:
        return np.zeros(len(key), np.int64)
    return ((key * HASH_MULT) >> np.uint64(64 - bits)).astype(np.int64)


def read_unit(u: Unit, columns: list[str]) -> pa.Table:
    from ..format.recording import RecordingError, _short, open_parquet, read_group

    try:
        t = read_group(u.file, open_parquet(u.file), u.group, columns)
    except (OSError, pa.ArrowException) as exc:
        raise RecordingError(f"{u.file}: cannot read recording data ({_short(exc)}); "
                             "the file is truncated or corrupt") from None
    if u.mask is not None:
        t = t.filter(pa.array(u.mask))
    return t


def _conform_samples(t: pa.Table) -> pa.Table:
    from ..format.recording import _conform

    return _conform(t, SAMPLE_COLUMNS)


class _RingState:
    """Per-ring carry within one range: last seq and clamped time, first seq/time."""

    def __init__(self) -> None:
        self.first_seq: dict[int, int] = {}
        self.first_time: dict[int, int] = {}
        self.last_seq: dict[int, int] = {}
        self.max_time: dict[int, int] = {}


def scan_range(setup: ScanSetup, index: int, units: list[Unit]) -> RangeResult:
    """Scan consecutive row groups; see the module docstring."""
    nl = len(setup.lost_ring)
    res = RangeResult(index=index, ring=np.zeros(0, np.int64), first_seq=np.zeros(0, np.uint64),
                      last_seq=np.zeros(0, np.uint64), first_time=np.zeros(0, np.uint64),
                      max_time=np.zeros(0, np.uint64), ordered=True,
                      loss_before=np.zeros(nl, np.uint64), has_before=np.zeros(nl, bool),
                      loss_after=np.zeros(nl, np.uint64), has_after=np.zeros(nl, bool))
    rings = _RingState()
    writers = PartitionWriters(setup.spill, index) if setup.spill is not None else None
    try:
        for u in units:
            _scan_unit(setup, u, res, rings, writers)
            if not res.ordered:
                break
    finally:
        if writers is not None:
            writers.close()
    ids = sorted(rings.max_time)
    res.ring = np.array(ids, np.int64)
    res.first_seq = np.array([rings.first_seq[r] for r in ids], np.uint64)
    res.last_seq = np.array([rings.last_seq[r] for r in ids], np.uint64)
    res.first_time = np.array([rings.first_time[r] for r in ids], np.uint64)
    res.max_time = np.array([rings.max_time[r] for r in ids], np.uint64)
    return res


def _scan_unit(setup: ScanSetup, u: Unit, res: RangeResult, rings: _RingState,
               writers: PartitionWriters | None) -> None:
    sm = samples_from_table(_conform_samples(read_unit(u, SCAN_COLUMNS)), setup.latest)
    n = len(sm)
    res.samples += n
    if n == 0:
        return
    if int(sm.ring.max()) >= RING_ID_LIMIT:  # the in-memory path renumbers such rings
        res.ordered = False
        return
    by, t = _clamp_unit(sm.ring, sm.seq, sm.time, rings, res, setup)
    if not res.ordered:
        return
    ev = setup.evaluate(sm)
    for k, v in ev.fail_counts.items():
        res.fail_counts[k] = res.fail_counts.get(k, 0) + v
    keep = ev.replayed()
    if keep is not None:  # replayed rows, in (ring, seq) order
        sel = np.flatnonzero(keep[by])
        t, rows = t[sel], by[sel]
    else:
        rows = by
    m = len(rows)
    res.events += m
    if m == 0:
        return
    if setup.part_bits:  # rows of one partition together, (ring, seq) order kept within
        part = partition_of(ev.key[rows], setup.part_bits)
        o = np.argsort(part.astype(np.int16), kind="stable")  # a radix sort
        rows, t = rows[o], t[o]
        ends = np.cumsum(np.bincount(part, minlength=1 << setup.part_bits)).tolist()
    else:
        ends = [m]
    cols = {
        "time": t,
        "rs": (sm.ring[rows].astype(np.uint64) << np.uint64(48)) | (rows + u.row0).astype(np.uint64),
        "key": ev.key[rows],
        "size": ev.size[rows] if ev.size is not None else np.zeros(m, np.uint64),
        "stack_id": sm.stack_id[rows].astype(np.int32),
        "pid": sm.pid[rows],
        "role": ev.role[rows].astype(np.int8),
    }
    lo = 0
    for p, hi in enumerate(ends):
        if hi > lo:
            g = {c: v[lo:hi] for c, v in cols.items()}  # views
            if writers is not None:
                writers.write(p, g)
            else:
                res.parts.setdefault(p, []).append(g)
        lo = hi


def _clamp_unit(ring: np.ndarray, seq: np.ndarray, time: np.ndarray, rings: _RingState,
                res: RangeResult, setup: ScanSetup) -> tuple[np.ndarray, np.ndarray]:
    """(rows in (ring, seq) order, their clamped times): the running max within each ring, carried
    from earlier row groups of the range. A ring whose seqs go back across row groups marks the
    range unordered. Records the LOST records' neighbours."""
    by, bounds = _ring_seq_order(ring, seq)
    present = np.flatnonzero(np.diff(bounds))
    s = seq[by]
    t = time[by].astype(np.uint64, copy=True)
    firsts, lasts = bounds[present], bounds[present + 1] - 1
    back = t[1:] < t[:-1]
    back[firsts[firsts > 0] - 1] = False
    for r, lo, hi in zip(present.tolist(), firsts.tolist(), (lasts + 1).tolist()):
        if r in rings.last_seq:
            if int(s[lo]) <= rings.last_seq[r]:
                res.ordered = False
                return by, t
            carry = rings.max_time[r]
            if int(t[lo]) < carry:
                np.maximum(t[lo:hi], np.uint64(carry), out=t[lo:hi])
        else:
            rings.first_seq[r] = int(s[lo])
            rings.first_time[r] = int(time[by[lo]])
        if hi - lo > 1 and back[lo:hi - 1].any():
            np.maximum.accumulate(t[lo:hi], out=t[lo:hi])
        rings.last_seq[r] = int(s[hi - 1])
        rings.max_time[r] = int(t[hi - 1])
    if len(setup.lost_ring):
        _lost_neighbours(ring[by], s, t, setup, res)
    return by, t


def _lost_neighbours(ring_by: np.ndarray, seq_by: np.ndarray, t_by: np.ndarray, setup: ScanSetup,
                     res: RangeResult) -> None:
    """For each LOST record: the clamped time of the nearest sample before/after it in its ring
    among these rows (which are in (ring, seq) order)."""
    skey = ring_seq_key(ring_by, seq_by)
    lr, ls = setup.lost_ring, setup.lost_seq
    pos = np.searchsorted(skey, ring_seq_key(lr, ls), side="left")
    first = np.searchsorted(skey, ring_seq_key(lr, np.zeros_like(ls)), side="left")
    end = np.searchsorted(skey, ring_seq_key(lr + 1, np.zeros_like(ls)), side="left")
    before = pos > first  # later row groups come later in the ring: they win
    res.loss_before[before] = t_by[pos[before] - 1]
    res.has_before |= before
    after = (pos < end) & ~res.has_after  # the earliest row group with a later sample wins
    res.loss_after[after] = t_by[pos[after]]
    res.has_after |= after
