"""User-space allocator calls (uprobe entry/return samples) -> alloc/free events with ptr and size.

A return probe knows the pointer, the entry probe the size: we pair them per thread. Everything is
columnar: rows are sorted by (tid, time, seq); a running call depth per thread (clamped at 0, so a
return whose entry was lost cannot push it negative) gives each entry and return a nesting level,
and an entry pairs with the next row at the same (tid, level) if that is the return of the same
function. Calls made *inside* a paired allocator call (glibc's realloc(NULL, n) calls malloc,
realloc(p, 0) calls free) are the allocator's own business and are dropped, so nothing counts
twice. The field names are the contract with recorder/probes.py (size, nmemb, oldptr, memptr,
ptr, ret, sp, wN). No replay logic here: the output feeds the replay as alloc/free rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from kmemleak_offline import tracefs

SIMPLE = {"malloc", "valloc", "pvalloc", "aligned_alloc", "memalign"}  # ptr = f(size)
ARRAY = {"calloc"}  # size = nmemb * size
REALLOC = {"realloc", "reallocarray"}
FREE = {"free"}
MEMALIGN_OUT = {"posix_memalign"}  # pointer stored through memptr, return value 0 on success
KNOWN = SIMPLE | ARRAY | REALLOC | FREE | MEMALIGN_OUT

OUTPUT_COLUMNS = ("time", "cpu", "ring", "seq", "pid", "tid", "ptr", "size", "stack_id",
                  "is_alloc", "func", "event")
ARG_COLUMNS = ("size", "nmemb", "oldptr", "memptr", "ptr", "ret", "sp")


class MallocError(ValueError):
    """Uprobe samples that cannot be interpreted as allocator calls; one-line message."""


def _col(calls: Mapping[str, Any], name: str, n: int, dtype: Any, default: int = 0) -> np.ndarray:
    v = calls.get(name)
    if v is None:
        return np.full(n, default, dtype=dtype)
    return np.asarray(v).astype(dtype, copy=False)


def _clamped_depth(delta: np.ndarray, group_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Depth after and before each row, per group, as a running sum clamped at 0.

    Clamped running sum = raw cumsum - min(0, running minimum of cumsum); the running minimum is
    made per group by shifting each group far below the previous ones.
    """
    n = len(delta)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    gid = np.cumsum(group_start) - 1
    first = np.maximum.accumulate(np.where(group_start, np.arange(n), 0))  # index of group start
    total = np.cumsum(delta)
    c = total - (total[first] - delta[first])  # running sum within the group
    shift = gid.astype(np.int64) * (2 * n + 2)
    runmin = np.minimum.accumulate(c - shift) + shift
    after = c - np.minimum(runmin, 0)
    before = np.where(group_start, 0, np.concatenate(([0], after[:-1])))
    return after, before


def pair_calls(calls: Mapping[str, Any], words: np.ndarray | None = None) -> tuple[pd.DataFrame, dict[str, int]]:
    """Pair entry/return rows into alloc/free rows.

    `calls`: equal-length columns time, cpu, ring (-1 = none), seq, pid, tid, stack_id (-1 = none),
    func (allocator role, str), is_return (bool), event (sys:name, str) and the probe arguments
    size, nmemb, oldptr, memptr, ptr, ret, sp (absent -> 0). `words` (n, W): caller stack words
    fetched by the posix_memalign return probe (+8*k(%sp)).
    Returns (rows sorted by time, with OUTPUT_COLUMNS; stack_id/ring -1 when none, free rows have
    the entry's stack) and counters (failed, unpaired, nested, memptr_unknown).
    """
    n = len(np.asarray(calls["time"]))
    time = _col(calls, "time", n, np.uint64)
    cpu = _col(calls, "cpu", n, np.uint32)
    ring = _col(calls, "ring", n, np.int64, -1)
    seq = _col(calls, "seq", n, np.uint64)
    pid = _col(calls, "pid", n, np.int32)
    tid = _col(calls, "tid", n, np.int32)
    stack = _col(calls, "stack_id", n, np.int64, -1)
    func = np.asarray(calls["func"], dtype=object) if n else np.zeros(0, object)
    event = np.asarray(calls.get("event", func), dtype=object) if n else np.zeros(0, object)
    is_ret = _col(calls, "is_return", n, bool)
    bad = set(pd.unique(func)) - KNOWN
    if bad:
        raise MallocError(f"unknown allocator function(s) in uprobe samples: {', '.join(map(str, bad))}")
    a = {k: _col(calls, k, n, np.uint64) for k in ARG_COLUMNS}

    order = np.lexsort((seq, time, tid))
    o_tid, o_ret, o_func = tid[order], is_ret[order], func[order]
    is_free = np.isin(o_func, list(FREE)) & ~o_ret
    delta = np.where(o_ret, -1, np.where(is_free, 0, 1)).astype(np.int64)
    start = np.ones(n, bool)
    start[1:] = o_tid[1:] != o_tid[:-1]
    after, before = _clamped_depth(delta, start)
    level = np.where(o_ret, before, after)

    # Pair: among call rows (not frees) ordered by (tid, level, position), entry followed by return.
    call_rows = np.flatnonzero(~is_free)
    k = call_rows[np.lexsort((call_rows, level[call_rows], o_tid[call_rows]))]
    e, r = k[:-1], k[1:]
    ok = (~o_ret[e]) & o_ret[r] & (o_tid[e] == o_tid[r]) & (level[e] == level[r]) & (o_func[e] == o_func[r])
    pe, pr = e[ok], r[ok]  # positions (in sorted order) of paired entries and returns
    # Drop rows strictly inside a paired call of the same thread (the allocator's own calls).
    cover = np.zeros(n + 1, np.int64)
    np.add.at(cover, pe + 1, 1)
    np.add.at(cover, pr, -1)
    inside = np.cumsum(cover)[:n] > 0
    outer = ~inside[pe]
    stats = {"nested": int((~outer).sum() + (is_free & inside).sum()),
             "unpaired": int((~is_free).sum() - 2 * len(pe))}
    pe, pr = pe[outer], pr[outer]
    E, R = order[pe], order[pr]  # original row indices
    f = func[E]
    size, nmemb, oldptr = a["size"][E], a["nmemb"][E], a["oldptr"][E]
    rptr = a["ptr"][R]
    nbytes = np.where(np.isin(f, [*ARRAY, "reallocarray"]), nmemb * size, size)  # wraps like C

    # posix_memalign: success = ret 0; the pointer is the caller-stack word at memptr (if fetched).
    pm = np.isin(f, list(MEMALIGN_OUT))
    pm_ptr = np.zeros(len(E), np.uint64)
    pm_known = np.zeros(len(E), bool)
    if pm.any() and words is not None and len(words):
        w = np.asarray(words, dtype=np.uint64)[R]
        slot = (a["memptr"][E].astype(np.int64) - a["sp"][R].astype(np.int64))
        kk = slot // 8
        pm_known = pm & (slot % 8 == 0) & (kk >= 0) & (kk < w.shape[1])
        pm_ptr = np.where(pm_known, w[np.arange(len(E)), np.clip(kk, 0, w.shape[1] - 1)], 0)
    pm_ok = pm & (a["ret"][R].astype(np.int64).astype(np.int32) == 0)
    stats["memptr_unknown"] = int((pm_ok & ~pm_known).sum())
    ptr = np.where(pm, np.where(pm_ok & pm_known, pm_ptr, 0), rptr)
    alloc_ok = ptr != 0
    stats["null"] = int((~alloc_ok & ~(pm_ok & ~pm_known)).sum())  # failed, or realloc(p, 0)
    # realloc: old block freed on success, or when size 0 returned NULL (glibc frees it then).
    re = np.isin(f, list(REALLOC))
    re_free = re & (oldptr != 0) & (alloc_ok | (nbytes == 0))

    parts = []

    def emit(rows: np.ndarray, ptrs: np.ndarray, sizes: np.ndarray, alloc: bool) -> None:
        parts.append({"time": time[rows], "cpu": cpu[rows], "ring": ring[rows], "seq": seq[rows],
                      "pid": pid[rows], "tid": tid[rows], "ptr": ptrs, "size": sizes,
                      "stack_id": stack[rows], "is_alloc": np.full(len(rows), alloc),
                      "func": func[rows], "event": event[rows]})

    # Old block of realloc: freed at the entry (before the new block is inserted, even in place).
    emit(E[re_free], oldptr[re_free], np.zeros(int(re_free.sum()), np.uint64), False)
    emit(R[alloc_ok], ptr[alloc_ok], nbytes[alloc_ok], True)
    fr = order[is_free & ~inside]
    fr = fr[a["ptr"][fr] != 0]
    emit(fr, a["ptr"][fr], np.zeros(len(fr), np.uint64), False)
    out = {c: np.concatenate([p[c] for p in parts]) for c in OUTPUT_COLUMNS}
    df = pd.DataFrame(out)
    df = df.iloc[np.lexsort((df["seq"].to_numpy(), df["time"].to_numpy()))].reset_index(drop=True)
    for c, dt in (("func", "string"), ("event", "string")):
        df[c] = df[c].astype(dt)
    return df, stats


def probe_roles(metadata: Mapping[str, Any]) -> dict[str, tuple[str, bool]]:
    """event `sys:name` -> (allocator func, is_return) from the recording's `probes` list."""
    roles = {}
    for p in metadata.get("probes") or []:
        if isinstance(p, dict) and p.get("func") in KNOWN and "event" in p:
            roles[p["event"]] = (p["func"], p.get("kind") == "return")
    return roles


def is_malloc_recording(metadata: Mapping[str, Any]) -> bool:
    """True if the recording has allocator uprobes (record --malloc)."""
    return bool(probe_roles(metadata))


def decode_calls(samples: pa.Table, metadata: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Decode the allocator-probe rows of `samples` (kind=sample rows) into pair_calls() columns."""
    roles = probe_roles(metadata)
    events = metadata.get("events") or {}
    ev_col = samples.column("event")
    if pa.types.is_dictionary(ev_col.type):
        ev_col = ev_col.cast(pa.string())
    cols: dict[str, list[np.ndarray]] = {c: [] for c in
                                         ("time", "cpu", "ring", "seq", "pid", "tid", "stack_id",
                                          "func", "is_return", "event", *ARG_COLUMNS)}
    word_parts: list[tuple[int, np.ndarray]] = []
    nw = 0
    total = 0
    for ev, (fn, is_return) in roles.items():
        t = samples.filter(pc.equal(ev_col, ev))
        m = t.num_rows
        if m == 0:
            continue
        if ev not in events or "format" not in events[ev]:
            raise MallocError(f"recording has samples of {ev} but no format text for it")
        fmt = tracefs.parse_format(events[ev]["format"], ev.split(":", 1)[0])
        dec = tracefs.decode(fmt, t.column("raw"))
        for c, dt, dflt in (("time", np.uint64, 0), ("cpu", np.uint32, 0), ("ring", np.int64, -1),
                            ("seq", np.uint64, 0), ("pid", np.int32, 0), ("tid", np.int32, 0),
                            ("stack_id", np.int64, -1)):
            arr = t.column(c)
            cols[c].append(np.asarray(arr.to_numpy(zero_copy_only=False) if arr.null_count == 0
                                      else pc.fill_null(arr.cast(pa.int64()), dflt).to_numpy()).astype(dt))
        cols["func"].append(np.full(m, fn, dtype=object))
        cols["is_return"].append(np.full(m, is_return))
        cols["event"].append(np.full(m, ev, dtype=object))
        for c in ARG_COLUMNS:
            cols[c].append(dec[c].astype(np.uint64) if c in dec else np.zeros(m, np.uint64))
        wn = sorted((int(k[1:]), k) for k in dec if k[:1] == "w" and k[1:].isdigit())
        if wn:
            nw = max(nw, len(wn))
            word_parts.append((total, np.stack([dec[k] for _, k in wn], axis=1).astype(np.uint64)))
        total += m
    out = {c: (np.concatenate(v) if v else np.zeros(0, object if c in ("func", "event") else np.uint64))
           for c, v in cols.items()}
    words = None
    if word_parts:
        words = np.zeros((total, nw), np.uint64)
        for start, w in word_parts:
            words[start:start + len(w), : w.shape[1]] = w
    return out, words


def malloc_events(samples: pa.Table, metadata: Mapping[str, Any]) -> tuple[pd.DataFrame, dict[str, int]]:
    """A recording's allocator-probe samples -> alloc/free rows for the replay (see pair_calls)."""
    calls, words = decode_calls(samples, metadata)
    return pair_calls(calls, words)


def summary(stats: Mapping[str, int]) -> Sequence[str]:
    """Human notes for -v: what pairing skipped and why."""
    notes = []
    if stats.get("unpaired"):
        notes.append(f"{stats['unpaired']} allocator entry/return samples without a partner (lost events?)")
    if stats.get("memptr_unknown"):
        notes.append(f"{stats['memptr_unknown']} posix_memalign results not recovered "
                     "(memptr outside the fetched caller stack words)")
    return notes
