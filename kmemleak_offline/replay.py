"""Alloc/free matching (behaviour §3), vectorised: ordering, lost windows, replace-on-double-alloc.

perf-prof replays events one by one through a tree. The same result follows from columns:
an alloc is still in the tree at a report iff no later kept sample of the same epoch has its key
(a later free deletes it, a later alloc replaces it), where epochs are the stretches between
reports. So: sort, mark dropped samples, number the epochs, keep the last event per (epoch, key).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

U64_MAX = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass
class Lost:
    """One PERF_RECORD_LOST turned into a window over the merged stream."""

    ring: np.ndarray  # uint32
    count: np.ndarray  # uint64 events lost
    start: np.ndarray  # uint64 time of the last sample before it in its ring (or recording start)
    end: np.ndarray  # uint64 time of the first sample after it in its ring (U64_MAX if none)
    time: np.ndarray  # uint64 the LOST record's own time


@dataclass
class Report:
    """One report: early (reason "lost") or final."""

    reason: str  # "lost" | "final"
    time_ns: int  # reference time (triggering sample / recording stop)
    position: int  # index into the ordered stream where it happens (samples before it count)
    leaked: np.ndarray  # positions (in ordered stream) of allocs in the tree, by (time, key)
    selected: np.ndarray  # bool per leaked entry: passes --than
    total_alloc: int
    total_free: int
    lost_count: int = 0  # events lost in the windows that triggered it


@dataclass
class ReplayResult:
    order: np.ndarray  # ordered stream position -> input row
    time: np.ndarray  # clamped times, in stream order
    kept: np.ndarray  # bool, in stream order: not dropped by a lost window
    reports: list[Report]
    total_alloc: int
    total_free: int
    lost: Lost
    death: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # per stream pos


def ring_seq_key(ring: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """One uint64 sort key for (ring, seq): ring in the top 16 bits (seq < 2**48 in practice)."""
    return (ring.astype(np.uint64) << np.uint64(48)) | seq.astype(np.uint64)


def clamp_per_ring(ring: np.ndarray, seq: np.ndarray, time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order rows by (ring, seq) and clamp times so they never decrease within a ring.

    Returns (row order by ring/seq, clamped times in that order).
    """
    key = ring_seq_key(ring, seq)
    idx = np.arange(len(key)) if np.all(key[1:] >= key[:-1]) else np.argsort(key)
    t = time[idx].astype(np.uint64)
    r = ring[idx]
    if len(t) > 1:
        back = (t[1:] < t[:-1]) & (r[1:] == r[:-1])
        if back.any():  # segmented running max, only when some ring actually goes backwards
            t = pd.Series(t).groupby(r, sort=False).cummax().to_numpy(np.uint64)
    return idx, t


def order_stream(ring: np.ndarray, seq: np.ndarray, time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stable order by (clamped time, ring, seq). Returns (input rows in stream order, their times)."""
    idx, t = clamp_per_ring(ring, seq, time)
    o = np.argsort(t, kind="stable")  # input is already (ring, seq) ordered: ties keep that order
    return idx[o], t[o]


def lost_windows(s_ring: np.ndarray, s_seq: np.ndarray, s_time: np.ndarray,
                 l_ring: np.ndarray, l_seq: np.ndarray, l_count: np.ndarray, l_time: np.ndarray,
                 start_ns: int) -> Lost:
    """Window of each loss: last sample before and first sample after it in the same ring.

    `s_time` must be the clamped sample times. A loss before a ring's first sample starts at
    `start_ns`; a loss after a ring's last sample has no end (U64_MAX).
    """
    n = len(l_ring)
    start = np.full(n, np.uint64(start_ns), dtype=np.uint64)
    end = np.full(n, U64_MAX, dtype=np.uint64)
    if n and len(s_ring):
        # composite sort key: ring major, seq minor (seq < 2**48 in practice)
        skey = ring_seq_key(s_ring, s_seq)
        so = np.argsort(skey)
        skey_s, stime_s, sring_s = skey[so], s_time[so], s_ring[so]
        lkey = ring_seq_key(l_ring, l_seq)
        pos = np.searchsorted(skey_s, lkey, side="left")  # first sample after the loss
        before = pos - 1
        has_before = (before >= 0) & (sring_s[np.clip(before, 0, None)] == l_ring)
        start[has_before] = stime_s[before[has_before]]
        has_after = (pos < len(skey_s)) & (sring_s[np.clip(pos, None, len(skey_s) - 1)] == l_ring)
        end[has_after] = stime_s[pos[has_after]]
    return Lost(ring=l_ring.astype(np.uint32), count=l_count.astype(np.uint64), start=start, end=end,
                time=l_time.astype(np.uint64))


def replay(*, ring: np.ndarray, seq: np.ndarray, time: np.ndarray, is_alloc: np.ndarray,
           key: np.ndarray, lost: Lost, stop_ns: int, than_ns: int = 0,
           want_death: bool = False) -> ReplayResult:
    """Replay samples (already filtered to alloc/free events) and compute every report.

    `time` here is raw; ordering clamps it. `lost` windows must come from `lost_windows` over ALL
    sample rows of the recording (the ring really held them).
    """
    order, t = order_stream(ring, seq, time)
    n = len(order)
    alloc = is_alloc[order]
    k = key[order].astype(np.uint64)

    # lost windows: drop (start, end) exclusive from every ring; report at the first sample after start
    w = np.argsort(lost.start, kind="stable")
    ws, we, wc = lost.start[w], lost.end[w], lost.count[w]
    first_after = np.searchsorted(t, ws, side="right")  # first stream pos with time > start
    last_in = np.searchsorted(t, we, side="left")  # first pos with time >= end
    diff = np.zeros(n + 1, dtype=np.int64)
    np.add.at(diff, first_after, 1)
    np.add.at(diff, np.maximum(last_in, first_after), -1)
    kept = np.cumsum(diff[:-1]) == 0 if n else np.zeros(0, bool)

    # report points: each window with a sample after its start triggers one at that sample
    trig = first_after[first_after < n]
    trig_counts = wc[first_after < n]
    report_pos, inv = np.unique(trig, return_inverse=True) if len(trig) else (np.zeros(0, np.int64), None)
    lost_per_report = np.zeros(len(report_pos), dtype=np.uint64)
    if len(trig):
        np.add.at(lost_per_report, inv, trig_counts)

    epoch = np.searchsorted(report_pos, np.arange(n), side="right")  # reports before/at pos -> epoch
    kpos = np.flatnonzero(kept)
    kk, ke, ka = k[kpos], epoch[kpos], alloc[kpos]
    frame = pd.DataFrame({"e": ke, "k": kk})
    last = ~frame.duplicated(keep="last").to_numpy()
    live = kpos[last & ka]  # stream positions of allocs still in the tree at their epoch's end

    death = np.zeros(0, np.int64)
    if want_death:
        death = _death_positions(kpos, ke, kk, report_pos, n)

    alloc_cum = np.cumsum(kept & alloc)
    free_cum = np.cumsum(kept & ~alloc)
    reports: list[Report] = []
    live_epoch = epoch[live]
    for i, pos in enumerate(list(report_pos) + [n]):
        final = i == len(report_pos)
        entries = live[live_epoch == i]
        # report order: (alloc time, key)
        entries = entries[np.lexsort((k[entries], t[entries]))]
        ref = int(stop_ns) if final else int(t[pos])
        if than_ns:
            age = np.uint64(ref) - t[entries]  # unsigned: "future" entries wrap and are selected
            selected = age > np.uint64(than_ns)
        else:
            selected = np.ones(len(entries), dtype=bool)
        ta = int(alloc_cum[pos - 1]) if pos > 0 else 0
        tf = int(free_cum[pos - 1]) if pos > 0 else 0
        reports.append(Report(reason="final" if final else "lost", time_ns=ref, position=int(pos),
                              leaked=entries, selected=selected, total_alloc=ta, total_free=tf,
                              lost_count=0 if final else int(lost_per_report[i])))
    return ReplayResult(order=order, time=t, kept=kept, reports=reports,
                        total_alloc=int(alloc_cum[-1]) if n else 0,
                        total_free=int(free_cum[-1]) if n else 0, lost=lost, death=death)


def _death_positions(kpos: np.ndarray, epoch: np.ndarray, key: np.ndarray,
                     report_pos: np.ndarray, n: int) -> np.ndarray:
    """For each kept sample: stream position where its tree entry disappears.

    The next kept sample of the same (epoch, key), else the epoch's report position (the tree is
    emptied there), else n (alive at the end).
    """
    df = pd.DataFrame({"e": epoch, "k": key, "p": kpos})
    nxt = df.groupby(["e", "k"], sort=False)["p"].shift(-1).to_numpy()
    ends = np.append(report_pos, n)[epoch]
    out = np.where(np.isnan(nxt), ends, np.nan_to_num(nxt, nan=0)).astype(np.int64)
    death = np.full(n, n, dtype=np.int64)
    death[kpos] = out
    return death
