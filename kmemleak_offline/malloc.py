"""User-space allocator calls (uprobe entry/return samples) -> alloc/free events with ptr and size.

A return probe knows the pointer, the entry probe the size: we pair them per thread. Everything is
columnar: rows are sorted by (tid, time, seq); a running call depth per thread (clamped at 0, so a
return whose entry was lost cannot push it negative) gives each entry and return a nesting level,
and an entry pairs with the next row at the same (tid, level) if that is the return of the same
function. Calls made *inside* a paired allocator call (glibc's realloc(NULL, n) calls malloc,
realloc(p, 0) calls free) are the allocator's own business and are dropped, so nothing counts
twice. The field names are the contract with recorder/probes.py (size, nmemb, oldptr, memptr,
ptr, ret, sp, wN). No replay logic here: the output feeds the replay as alloc/free rows.

Functions and events are small integer codes (FUNCS, and the recording's event-name table), so no
step does a Python operation per row; payloads are decoded where they were loaded (no copies).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from kmemleak_offline import tracefs
from kmemleak_offline.load import Samples, _codes, column_array, ring_ids

SIMPLE = {"malloc", "valloc", "pvalloc", "aligned_alloc", "memalign"}  # ptr = f(size)
ARRAY = {"calloc"}  # size = nmemb * size
REALLOC = {"realloc", "reallocarray"}
FREE = {"free"}
MEMALIGN_OUT = {"posix_memalign"}  # pointer stored through memptr, return value 0 on success
KNOWN = SIMPLE | ARRAY | REALLOC | FREE | MEMALIGN_OUT

# function codes: index into FUNCS; per-code properties as lookup tables
FUNCS = ("malloc", "valloc", "pvalloc", "aligned_alloc", "memalign", "calloc", "realloc",
         "reallocarray", "free", "posix_memalign")
FUNC_CODE = {f: i for i, f in enumerate(FUNCS)}
_F_FREE = np.array([f in FREE for f in FUNCS])
_F_TIMES_NMEMB = np.array([f in ARRAY or f == "reallocarray" for f in FUNCS])  # wraps like C
_F_REALLOC = np.array([f in REALLOC for f in FUNCS])
_F_MEMALIGN_OUT = np.array([f in MEMALIGN_OUT for f in FUNCS])

OUTPUT_COLUMNS = ("time", "cpu", "ring", "seq", "pid", "tid", "ptr", "size", "stack_id",
                  "is_alloc", "func", "event")
ARG_COLUMNS = ("size", "nmemb", "oldptr", "memptr", "ptr", "ret", "sp")


class MallocError(ValueError):
    """Uprobe samples that cannot be interpreted as allocator calls; one-line message."""


@dataclass
class Paired:
    """Alloc/free events of pair_codes(), numpy columns, one per input row `src` (a row yields at
    most one event): realloc's freed old blocks, then allocations, then free() calls."""

    src: np.ndarray  # int64 input row: the return (allocs), the entry (frees, realloc's old block)
    ptr: np.ndarray  # uint64
    size: np.ndarray  # uint64, 0 for frees
    is_alloc: np.ndarray  # bool
    stats: dict[str, int] = field(default_factory=dict)  # failed/nested/unpaired/memptr_unknown


@dataclass
class MallocRows:
    """A recording's alloc/free events as sample rows (file order) with their pointer and size."""

    row: np.ndarray  # int64 sample row of each event (ascending)
    ptr: np.ndarray  # uint64
    size: np.ndarray  # uint64
    is_alloc: np.ndarray  # bool
    stats: dict[str, int]


def _levels(is_return: np.ndarray, is_free: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """Nesting level of each row (rows grouped by thread, in call order): the call depth after an
    entry, before a return; free() entries do not nest.

    Depth is a running sum per group (+1 entry, -1 return) clamped at 0, so a return whose entry
    was lost cannot push it negative: clamped sum = raw sum - min(0, running minimum of raw sum).
    Usually no group ever goes negative and the raw sum is the depth; otherwise the running
    minimum is computed for the rows of the groups that do, shifting each group far below the
    previous ones so one accumulate serves them all.
    """
    n = len(is_return)
    if n == 0:
        return np.zeros(0, np.int64)
    wide = np.int64 if n >= (1 << 31) - 1 else np.int32
    delta = (~is_free).view(np.int8) - (is_return.view(np.int8) << 1)  # +1, -1, free 0
    depth = np.cumsum(delta, dtype=wide)
    first = np.flatnonzero(group_start)  # group_start[0] is True
    lens = np.diff(np.append(first, n))
    if len(first) > 1:
        depth -= np.repeat(depth[first] - delta[first], lens)  # raw depth after, per group
    if depth.min() >= 0:  # nothing clamped: depth before a return = depth after + 1
        depth += is_return.view(np.int8)
        return depth
    low = np.minimum.reduceat(depth, first) < 0
    sub = np.flatnonzero(np.repeat(low, lens))  # rows of the groups that go below 0
    c = depth[sub].astype(np.int64)
    shift = np.repeat(np.arange(int(low.sum()), dtype=np.int64) * (2 * n + 2), lens[low])
    runmin = np.minimum.accumulate(c - shift) + shift
    depth[sub] = c - np.minimum(runmin, 0)  # clamped depth after each row
    before = np.empty_like(depth)
    before[0] = 0
    before[1:] = depth[:-1]
    before[first] = 0
    return np.where(is_return, before, depth)


def _thread_order(tid: np.ndarray, time: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """Rows in (tid, time, seq) order, as np.lexsort((seq, time, tid)) gives them.

    Usually (tid, time) packs into one uint64 and has no ties: one stable sort of that key (rows
    come in nearly time-sorted runs, which timsort merges quickly)."""
    n = len(tid)
    if n < 2:
        return np.arange(n, dtype=np.int64)
    t0, t1 = int(time.min()), int(time.max())
    i0, i1 = int(tid.min()), int(tid.max())
    tbits = (t1 - t0).bit_length()
    if tbits + (i1 - i0).bit_length() > 64:
        return np.lexsort((seq, time, tid))
    key = time - np.uint64(t0)
    if i1 > i0:
        hi = (tid - np.int32(i0)).astype(np.uint64) if i1 - i0 < (1 << 31) else \
            (tid.astype(np.int64) - i0).astype(np.uint64)
        hi <<= np.uint64(tbits)
        key |= hi
        del hi
    o = np.argsort(key, kind="stable")
    ks = key[o]
    if np.any(ks[1:] == ks[:-1]):  # same thread, same time: seq decides
        return np.lexsort((seq, key))
    return o


def _at(a: Mapping[str, np.ndarray | None], name: str, idx: np.ndarray) -> np.ndarray:
    v = a.get(name)
    return np.zeros(len(idx), np.uint64) if v is None else v[idx].astype(np.uint64, copy=False)


def pair_codes(tid: np.ndarray, time: np.ndarray, seq: np.ndarray, func: np.ndarray,
               is_return: np.ndarray, args: Mapping[str, np.ndarray | None],
               words: np.ndarray | None = None, word_rows: np.ndarray | None = None) -> Paired:
    """Pair entry/return rows into alloc/free events (the columnar core of pair_calls).

    `func`: code into FUNCS per row; `args`: the probe arguments (ARG_COLUMNS, uint64, None when
    no row has them). `words` (k, W): caller stack words fetched by the posix_memalign return
    probe, for the rows `word_rows` (ascending), or for every row when word_rows is None.
    """
    n = len(tid)
    func = np.asarray(func)
    order = _thread_order(tid, time, seq)
    o_tid, o_ret, o_func = tid[order], is_return[order], func[order]
    is_free = _F_FREE[o_func] & ~o_ret
    start = np.ones(n, bool)
    start[1:] = o_tid[1:] != o_tid[:-1]
    level = _levels(o_ret, is_free, start)
    del start

    # Pair: among call rows (not frees) ordered by (tid, level, position), entry followed by return.
    # Rows are already in tid order: a stable sort of (thread, level) gives that order.
    call_rows = np.flatnonzero(~is_free)
    if len(call_rows):
        lv = level[call_rows].astype(np.int64)
        tk = o_tid[call_rows].astype(np.int64)
        tk -= int(tk[0])  # o_tid is ascending
        tk *= int(lv.max()) + 1
        tk += lv
        del lv
        s = np.argsort(tk, kind="stable")
        ks = tk[s]
        del tk
        k = call_rows[s]
        del s
        same = ks[1:] == ks[:-1]  # same thread and level
        del ks
    else:
        k, same = call_rows, np.zeros(0, bool)
    rk, fk = o_ret[k], o_func[k]
    ok = same & ~rk[:-1] & rk[1:] & (fk[:-1] == fk[1:])
    del same, rk, fk
    pe, pr = k[:-1][ok], k[1:][ok]  # positions (in sorted order) of paired entries and returns
    del k, ok
    # Drop rows strictly inside a paired call of the same thread (the allocator's own calls).
    if np.array_equal(pr, pe + 1):  # no call has rows inside
        inside = np.zeros(n, bool)
        outer = np.ones(len(pe), bool)
    else:
        cover = np.zeros(n + 1, np.int32)
        cover[pe + 1] = 1  # positions are distinct within pe, and within pr
        cover[pr] -= 1
        inside = np.cumsum(cover, dtype=np.int32)[:n] > 0
        del cover
        outer = ~inside[pe]
    stats = {"nested": int((~outer).sum() + (is_free & inside).sum()),
             "unpaired": int(len(call_rows) - 2 * len(pe))}
    del call_rows
    pe, pr = pe[outer], pr[outer]
    E, R = order[pe], order[pr]  # input row indices
    f = func[E]
    size, nmemb, oldptr = _at(args, "size", E), _at(args, "nmemb", E), _at(args, "oldptr", E)
    rptr = _at(args, "ptr", R)
    nbytes = np.where(_F_TIMES_NMEMB[f], nmemb * size, size)  # wraps like C

    # posix_memalign: success = ret 0; the pointer is the caller-stack word at memptr (if fetched).
    pm = _F_MEMALIGN_OUT[f]
    pm_ptr = np.zeros(len(E), np.uint64)
    pm_known = np.zeros(len(E), bool)
    ret = np.zeros(len(E), np.uint64)
    if pm.any():
        ret = _at(args, "ret", R)
        if words is not None and len(words):
            q = np.flatnonzero(pm)  # only these rows read words
            Rq = R[q]
            w_all = np.asarray(words, dtype=np.uint64)
            if word_rows is None:
                w = w_all[Rq]
            else:  # rows without words read zeros, as rows of a dense matrix would
                j = np.clip(np.searchsorted(word_rows, Rq), 0, len(word_rows) - 1)
                w = np.where((word_rows[j] == Rq)[:, None], w_all[j], np.uint64(0))
            slot = _at(args, "memptr", E[q]).astype(np.int64) - _at(args, "sp", Rq).astype(np.int64)
            kk = slot // 8
            known = (slot % 8 == 0) & (kk >= 0) & (kk < w.shape[1])
            pm_known[q] = known
            pm_ptr[q] = np.where(known, w[np.arange(len(q)), np.clip(kk, 0, w.shape[1] - 1)], 0)
    pm_ok = pm & (ret.astype(np.int64).astype(np.int32) == 0)
    stats["memptr_unknown"] = int((pm_ok & ~pm_known).sum())
    ptr = np.where(pm, np.where(pm_ok & pm_known, pm_ptr, 0), rptr)
    alloc_ok = ptr != 0
    stats["null"] = int((~alloc_ok & ~(pm_ok & ~pm_known)).sum())  # failed, or realloc(p, 0)
    # realloc: old block freed on success, or when size 0 returned NULL (glibc frees it then).
    re_free = _F_REALLOC[f] & (oldptr != 0) & (alloc_ok | (nbytes == 0))

    fr = order[is_free & ~inside]
    fptr = _at(args, "ptr", fr)
    keep = fptr != 0
    fr, fptr = fr[keep], fptr[keep]
    n_re, n_al = int(re_free.sum()), int(alloc_ok.sum())
    # Old block of realloc: freed at the entry (before the new block is inserted, even in place).
    return Paired(src=np.concatenate([E[re_free], R[alloc_ok], fr]).astype(np.int64, copy=False),
                  ptr=np.concatenate([oldptr[re_free], ptr[alloc_ok], fptr]),
                  size=np.concatenate([np.zeros(n_re, np.uint64), nbytes[alloc_ok],
                                       np.zeros(len(fr), np.uint64)]),
                  is_alloc=np.concatenate([np.zeros(n_re, bool), np.ones(n_al, bool),
                                           np.zeros(len(fr), bool)]),
                  stats=stats)


def _col(calls: Mapping[str, Any], name: str, n: int, dtype: Any, default: int = 0) -> np.ndarray:
    v = calls.get(name)
    if v is None:
        return np.full(n, default, dtype=dtype)
    return np.asarray(v).astype(dtype, copy=False)


def _codes_of(values: Any, n: int) -> tuple[np.ndarray, list]:
    """(code per row, distinct values) of a column of names."""
    if not n:
        return np.zeros(0, np.int64), []
    codes, uniq = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=False)
    return codes, list(uniq)


def _frame(cols: Mapping[str, np.ndarray], p: Paired, func_names: Sequence, func_code: np.ndarray,
           event_names: Sequence, event_code: np.ndarray) -> pd.DataFrame:
    """The events as a DataFrame (OUTPUT_COLUMNS, func/event as strings), sorted by (time, seq)."""
    s = p.src
    out = {c: cols[c][s] for c in ("time", "cpu", "ring", "seq", "pid", "tid")}
    out.update(ptr=p.ptr, size=p.size, stack_id=cols["stack_id"][s], is_alloc=p.is_alloc)
    df = pd.DataFrame(out)
    for c, names, code in (("func", func_names, func_code), ("event", event_names, event_code)):
        table = np.empty(len(names), dtype=object)
        table[:] = list(names)
        df[c] = pd.array(table[code[s]], dtype="string")
    return df.iloc[np.lexsort((out["seq"], out["time"]))].reset_index(drop=True)


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
    fcode, fnames = _codes_of(calls["func"], n)
    bad = [f for f in fnames if f not in FUNC_CODE]
    if bad:
        raise MallocError(f"unknown allocator function(s) in uprobe samples: {', '.join(map(str, bad))}")
    func = np.array([FUNC_CODE[f] for f in fnames], np.int8)[fcode] if n else np.zeros(0, np.int8)
    ecode, enames = _codes_of(calls.get("event", calls["func"]), n)
    cols = {c: _col(calls, c, n, dt, dflt) for c, dt, dflt in (
        ("time", np.uint64, 0), ("cpu", np.uint32, 0), ("ring", np.int64, -1), ("seq", np.uint64, 0),
        ("pid", np.int32, 0), ("tid", np.int32, 0), ("stack_id", np.int64, -1))}
    args = {c: np.asarray(calls[c]).astype(np.uint64) if c in calls else None for c in ARG_COLUMNS}
    p = pair_codes(cols["tid"], cols["time"], cols["seq"], func, _col(calls, "is_return", n, bool),
                   args, words)
    return _frame(cols, p, FUNCS, func, enames, ecode), p.stats


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


def _pair_samples(sm: Samples, metadata: Mapping[str, Any]) -> tuple[Paired, np.ndarray | None]:
    """Pair the allocator-probe rows of `sm`; (events, the sample rows pairing saw (None: all))."""
    roles = probe_roles(metadata)
    events = metadata.get("events") or {}
    names = list(sm.event_names)
    nn = len(names)
    # per event code (the last entry is for null events): function code (-1: not a probe), return?
    f_lut = np.full(nn + 1, -1, np.int8)
    r_lut = np.zeros(nn + 1, bool)
    for i, ev in enumerate(names):
        if ev in roles:
            f_lut[i] = FUNC_CODE[roles[ev][0]]
            r_lut[i] = roles[ev][1]
    ev_code = np.where(sm.event < 0, nn, sm.event)
    counts = np.bincount(ev_code, minlength=nn + 1)
    fc = f_lut[ev_code]
    sel = None
    if (counts[f_lut < 0] > 0).any():  # rows of other events: pair only the probe rows
        sel = np.flatnonzero(fc >= 0)
        ev_code, fc = ev_code[sel], fc[sel]
    n = len(fc)
    args: dict[str, np.ndarray | None] = dict.fromkeys(ARG_COLUMNS)
    word_parts: list[tuple[np.ndarray, np.ndarray]] = []
    for code in np.flatnonzero(counts[:nn] * (f_lut[:nn] >= 0)).tolist():
        ev = names[code]
        if ev not in events or "format" not in events[ev]:
            raise MallocError(f"recording has samples of {ev} but no format text for it")
        fmt = tracefs.parse_format(events[ev]["format"], ev.split(":", 1)[0])
        have = {f.name for f in fmt.fields}
        wn = sorted((int(k[1:]), k) for k in have if k[:1] == "w" and k[1:].isdigit())
        want = [c for c in ARG_COLUMNS if c in have]
        if not want and not wn:
            continue
        pos = np.flatnonzero(ev_code == code)  # rows of this event (in pairing coordinates)
        srows = pos if sel is None else sel[pos]
        dec = sm.decode(fmt, srows, fields=want + [k for _, k in wn])
        for c in want:
            if args[c] is None:
                args[c] = np.zeros(n, np.uint64)
            args[c][pos] = dec[c].astype(np.uint64, copy=False)
        if wn:
            word_parts.append((pos, np.stack([dec[k] for _, k in wn], axis=1).astype(np.uint64)))
    words = word_rows = None
    if word_parts:  # only the rows that have words (posix_memalign returns), sparse
        word_rows = np.concatenate([p for p, _ in word_parts])
        words = np.zeros((len(word_rows), max(w.shape[1] for _, w in word_parts)), np.uint64)
        at = 0
        for p, w in word_parts:
            words[at:at + len(p), : w.shape[1]] = w
            at += len(p)
        o = np.argsort(word_rows, kind="stable")
        word_rows, words = word_rows[o], words[o]
    pick = (lambda a: a) if sel is None else (lambda a: a[sel])
    p = pair_codes(pick(sm.tid), pick(sm.time), pick(sm.seq), fc, r_lut[ev_code], args, words,
                   word_rows)
    return p, sel


def malloc_rows(sm: Samples, metadata: Mapping[str, Any]) -> MallocRows:
    """A recording's allocator-probe samples -> alloc/free events for the replay, as the sample
    rows they come from (ascending, so (ring, seq) order within a ring) plus ptr, size, is_alloc.
    Every other column of an event is its sample row's."""
    p, sel = _pair_samples(sm, metadata)
    n = len(sm) if sel is None else len(sel)
    where = np.full(n, -1, np.int64)  # each row yields at most one event
    where[p.src] = np.arange(len(p.src))
    rows = np.flatnonzero(where >= 0)
    k = where[rows]
    return MallocRows(row=rows if sel is None else sel[rows], ptr=p.ptr[k], size=p.size[k],
                      is_alloc=p.is_alloc[k], stats=p.stats)


def malloc_events(samples: pa.Table, metadata: Mapping[str, Any]) -> tuple[pd.DataFrame, dict[str, int]]:
    """A recording's allocator-probe samples (a table of kind=sample rows) -> alloc/free rows as a
    DataFrame (see pair_calls)."""
    ev, ev_names = _codes(samples.column("event"))
    cols = {"time": column_array(samples.column("time"), np.uint64),
            "cpu": column_array(samples.column("cpu"), np.uint32),
            "ring": column_array(samples.column("ring"), np.int64, -1),
            "seq": column_array(samples.column("seq"), np.uint64),
            "pid": column_array(samples.column("pid"), np.int32),
            "tid": column_array(samples.column("tid"), np.int32),
            "stack_id": column_array(samples.column("stack_id"), np.int64, -1)}
    sm = Samples(time=cols["time"], cpu=cols["cpu"], ring=ring_ids(samples).astype(np.uint32),
                 seq=cols["seq"], pid=cols["pid"], tid=cols["tid"], stack_id=cols["stack_id"],
                 event=ev, event_names=ev_names, raw=list(samples.column("raw").chunks))
    p, sel = _pair_samples(sm, metadata)
    if sel is not None:
        p.src = sel[p.src]
    roles = probe_roles(metadata)
    fnames = [roles.get(e, ("", False))[0] for e in ev_names] + [""]
    evc = np.where(ev < 0, len(ev_names), ev)
    return _frame(cols, p, fnames, evc, [*ev_names, ""], evc), p.stats


def summary(stats: Mapping[str, int]) -> Sequence[str]:
    """Human notes for -v: what pairing skipped and why."""
    notes = []
    if stats.get("unpaired"):
        notes.append(f"{stats['unpaired']} allocator entry/return samples without a partner (lost events?)")
    if stats.get("memptr_unknown"):
        notes.append(f"{stats['memptr_unknown']} posix_memalign results not recovered "
                     "(memptr outside the fetched caller stack words)")
    return notes
