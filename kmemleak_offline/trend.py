"""Growth trend per call chain: is it a leak or a cache? (docs/trends.md)

The outstanding bytes of a chain at a time t are the sizes of its allocations made at or before t
and not yet gone (freed, replaced, or reclaimed by an early report) at t: every allocation, not
only those left at the end. Columns in, columns out: each allocation adds +size at the first grid
point at or after its time and -size at the first one at or after its end; a cumulative sum per
chain gives the series. The sums are additive, so each key partition of the streaming engine
computes its part and the merge adds them up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GRID_POINTS = 200  # automatic grid: points from the recording's start to its stop
MAX_POINTS = 1000  # an -i grid longer than this is thinned (the JSON series stays small)
MIN_POINTS = 20  # grid points after the last early report needed to classify
MIN_ALLOCS = 10  # allocations of a chain needed to classify
RISE = 0.10  # of the peak: the second half's new highs, and its fitted rise, must exceed this
NEAR_END = 0.75  # ... and only if it ends within this fraction of its peak


@dataclass
class Trend:
    cls: str  # growing | bounded | insufficient
    slope_bytes_per_s: float  # least-squares slope over the second half of the judged stretch
    confidence: float  # 0..1, see docs/trends.md
    t_ns: np.ndarray  # grid times relative to the recording's start
    bytes: np.ndarray  # outstanding bytes of the chain at each grid time


@dataclass
class Grid:
    start: int  # the recording's start: series times are relative to it
    times: np.ndarray  # absolute grid times, int64 ns


def grid(start: int, stop: int, bounds: np.ndarray | None = None) -> Grid:
    """The `-i` bounds when given (thinned to MAX_POINTS), else GRID_POINTS evenly from start to
    stop."""
    if bounds is not None and len(bounds):
        g = np.asarray(bounds, np.int64)
        if len(g) > MAX_POINTS:
            g = g[np.unique(np.linspace(0, len(g) - 1, MAX_POINTS).round().astype(np.int64))]
    elif stop <= start:
        g = np.array([start], np.int64)
    else:
        g = start + ((stop - start) * np.arange(1, GRID_POINTS + 1, dtype=np.float64)
                     / GRID_POINTS).astype(np.int64)
    return Grid(int(start), g)


@dataclass
class Parts:
    """Aggregated (chain, column) sums: columns 0..P-1 are grid diffs, P is "after the grid"
    (ignored), P+1 counts allocations. Parts from key partitions concatenate."""

    sid: np.ndarray  # int64 stack id
    col: np.ndarray  # int64
    val: np.ndarray  # float64 (exact below 2**53 bytes)

    @classmethod
    def empty(cls) -> Parts:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))

    @classmethod
    def concat(cls, parts: list[Parts]) -> Parts:
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, c) for p in parts]) for c in ("sid", "col", "val")))


CHUNK = 1 << 18  # allocations per step: temporaries stay in cache and reuse their pages
MAX_CHUNK = 1 << 21  # column_contributions: the longest step, even with many dense cells


def contributions(g: np.ndarray, sid: np.ndarray, size: np.ndarray, t_alloc: np.ndarray,
                  t_end: np.ndarray | None = None, ends: np.ndarray | None = None) -> Parts:
    """Allocations (stack id, size, time) starting to count at their time and, for those in
    `ends` (a mask; all when None), stopping at `t_end`. Summed per (chain, column)."""
    c_end = None if t_end is None else columns(g, t_end)
    return column_contributions(len(g), sid, size, columns(g, t_alloc), c_end, ends)


def columns(g: np.ndarray, t: np.ndarray, t_sorted: bool = False) -> np.ndarray:
    """The grid column of each time: the first grid point at or after it (len(g): after the
    grid). Ascending times take 200 binary searches and a repeat instead of one search each."""
    t = np.asarray(t)
    gt = g.astype(t.dtype) if t.dtype.kind in "ui" and t.dtype != g.dtype else g
    if not t_sorted:
        return np.searchsorted(gt, t, side="left").astype(np.int32)
    b = np.searchsorted(t, gt, side="right")  # times <= each grid point
    return np.repeat(np.arange(len(g) + 1, dtype=np.int32), np.diff(b, prepend=0, append=len(t)))


def column_contributions(p: int, sid: np.ndarray, size: np.ndarray, c_alloc: np.ndarray,
                         c_end: np.ndarray | None = None, ends: np.ndarray | None = None) -> Parts:
    """`contributions` with grid columns already known (`columns`). A chunk at a time: fresh
    pages cost more than the arithmetic on this kind of VM."""
    w = p + 2
    n = len(sid)
    if n == 0:
        return Parts.empty()
    # summing a chunk into dense cells touches every cell: chunks at least that long keep this
    # within the chunk's own work (at most MAX_CHUNK: beyond DENSE_CELLS the sums hash instead)
    step = min(max(CHUNK, (int(np.max(sid)) + 2) * w), MAX_CHUNK)
    e_at = np.zeros(n + 1, np.int64)  # where each chunk's ends start in c_end
    if c_end is not None:
        e_at[1:] = np.cumsum(ends) if ends is not None else np.arange(1, n + 1)
    pieces: list[tuple[np.ndarray, np.ndarray | None]] = []
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        base = np.asarray(sid[lo:hi], np.int64) + 1
        base *= w
        sz = np.asarray(size[lo:hi], np.float64)
        pieces.append((base + c_alloc[lo:hi], sz))
        if c_end is not None:
            m = slice(None) if ends is None else ends[lo:hi]
            pieces.append((base[m] + c_end[e_at[lo]:e_at[hi]], -sz[m]))
        base += w - 1  # the allocation count
        pieces.append((base, None))
        if len(pieces) >= 24:  # bound what is held: fold into one summed piece
            pieces = [_cells_piece(_sum_cells(pieces, w), w)]
    return _sum_cells(pieces, w)


def _cells_piece(p: Parts, w: int) -> tuple[np.ndarray, np.ndarray]:
    return (p.sid + 1) * w + p.col, p.val


DENSE_CELLS = 1 << 23  # (chain, column) cells summed in one dense array below this (64 MB)


def _sum_cells(pieces: list[tuple[np.ndarray, np.ndarray | None]], w: int) -> Parts:
    """Sum values (None: ones) by cell code (stack id + 1) * w + column: one dense bincount per
    piece when the cells fit, else a hash of the codes (pandas.factorize); never a sort."""
    pieces = [(c, v) for c, v in pieces if len(c)]
    if not pieces:
        return Parts.empty()
    cells = max(int(c.max()) for c, _ in pieces) + 1
    if cells <= DENSE_CELLS:
        acc = np.zeros(cells)
        for c, v in pieces:
            acc += np.bincount(c, weights=v, minlength=cells)
        u = np.flatnonzero(acc)
        val = acc[u]
    else:
        import pandas as pd

        code = np.concatenate([c for c, _ in pieces])
        vals = np.concatenate([np.ones(len(c)) if v is None else v for c, v in pieces])
        inv, u = pd.factorize(code, sort=False)
        val = np.bincount(inv, weights=vals, minlength=len(u))
    return Parts(u // w - 1, u % w, val)


def aggregate(parts: Parts, p: int) -> Parts:
    """One row per distinct (chain, column): what crosses a process boundary stays small."""
    return _sum_cells([_cells_piece(parts, p + 2)], p + 2)


def series(parts: Parts, stacks: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """(outstanding bytes, shape (len(stacks), p); allocation count per stack) for the given
    stack ids (ascending, distinct)."""
    w = p + 2
    row = np.searchsorted(stacks, parts.sid)
    ok = (row < len(stacks)) & (stacks[np.minimum(row, len(stacks) - 1)] == parts.sid) \
        if len(stacks) else np.zeros(len(parts.sid), bool)
    acc = np.bincount(row[ok] * w + parts.col[ok], weights=parts.val[ok],
                      minlength=len(stacks) * w).reshape(len(stacks), w)
    return np.cumsum(acc[:, :p], axis=1), acc[:, p + 1]


def classify(y: np.ndarray, t_s: np.ndarray, allocs: np.ndarray) -> tuple[list[str], np.ndarray,
                                                                         np.ndarray]:
    """Class, slope (bytes/s) and confidence of each row of `y` (bytes at times `t_s`, seconds).
    See docs/trends.md for the rule."""
    n = len(y)
    seg, ts = y, t_s
    m = seg.shape[1]
    cls = np.full(n, "insufficient", dtype=object)
    slope = np.zeros(n)
    conf = np.zeros(n)
    if n == 0 or m < MIN_POINTS:
        return cls.tolist(), slope, conf
    h, q = m // 2, (3 * m) // 4
    peak = seg.max(axis=1)
    hi1, hi2 = seg[:, :h].max(axis=1), seg[:, h:].max(axis=1)
    early, late = seg[:, :q].max(axis=1), seg[:, q:].max(axis=1)
    x = ts[h:] - ts[h:].mean()
    yy = seg[:, h:] - seg[:, h:].mean(axis=1, keepdims=True)
    sxx = float((x * x).sum()) or 1.0
    slope = (yy * x).sum(axis=1) / sxx
    ss_tot = (yy * yy).sum(axis=1)
    ss_res = ((yy - slope[:, None] * x) ** 2).sum(axis=1)
    r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), 0.0)
    enough = (allocs >= MIN_ALLOCS) & (peak > 0)
    span = float(ts[-1] - ts[h]) if m > h else 0.0
    growing = enough & (hi2 > hi1 + RISE * peak) & (late > early) & (slope * span > RISE * peak) \
        & (seg[:, -1] >= NEAR_END * peak)
    bounded = enough & ~growing
    cls[growing] = "growing"
    cls[bounded] = "bounded"
    flat = 1 - np.minimum(1.0, np.abs(slope) * span / np.where(peak > 0, peak, 1))
    conf = np.where(growing, np.clip(r2, 0, 1), np.where(bounded, np.clip(flat, 0, 1), 0.0))
    return cls.tolist(), slope, conf


def trends(parts: Parts, stacks: list[int], g: Grid) -> dict[int, Trend]:
    """The Trend of every stack id in `stacks`."""
    if not stacks:
        return {}
    ids = np.unique(np.asarray(stacks, np.int64))
    y, allocs = series(parts, ids, len(g.times))
    rel = (g.times - g.start).astype(np.int64)
    cls, slope, conf = classify(y, rel / 1e9, allocs)
    y = np.clip(y, -(2.0 ** 63), 2.0 ** 63 - 2048)  # float sums: exact below 2**53 bytes
    return {int(s): Trend(cls=cls[i], slope_bytes_per_s=float(slope[i]), confidence=float(conf[i]),
                          t_ns=rel, bytes=y[i].astype(np.int64)) for i, s in enumerate(ids.tolist())}
