"""User-space allocator calls (uprobe entry/return samples) -> alloc/free events with ptr and size.

A return probe knows the pointer, the entry probe the size: we pair them per thread. Everything is
columnar: rows are sorted by (tid, time, seq); a running call depth per thread (clamped at 0, so a
return whose entry was lost cannot push it negative) gives each entry and return a nesting level,
and an entry pairs with the next row at the same (tid, level) if that is the return of the same
function. Calls made *inside* a paired allocator call (glibc's realloc(NULL, n) calls malloc,
realloc(p, 0) calls free) are the allocator's own business and are dropped, so nothing counts
twice. The field names are the contract with recorder/probes.py (size, nmemb, oldptr, memptr,
ptr, ret, sp, wN). No replay logic here: the output feeds the replay as alloc/free rows.

Functions and events are small integer codes (FUNCS, and the recording's event-name table). The
analysis reads malloc_rows(): sample rows with ptr/size, no Python operation per row, payloads
decoded where they were loaded (no copies), only the fields and rows pairing needs. pair_calls()
and malloc_events() give the same events as a DataFrame with function and event names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from kmemleak_offline.format import tracefs
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


RADIX_KEYS = 1 << 15  # sort keys below this are cast to int16: numpy radix-sorts them


def _dense_codes(v: np.ndarray) -> np.ndarray:
    """Small integer codes of `v` in the order of its values (equal values, equal codes), as the
    narrowest integer type that holds them: 16 bits when they fit, for numpy's stable sort of
    16-bit keys is a radix sort (one linear pass) where wider keys take a merge sort."""
    lo, hi = int(v.min()), int(v.max())
    if hi - lo < RADIX_KEYS:
        return (v - lo).astype(np.int16)
    uniq, inv = np.unique(v, return_inverse=True)
    return inv.reshape(-1).astype(np.int16 if len(uniq) <= RADIX_KEYS else np.int64)


def _index_type(n: int) -> type:
    """The narrowest signed integer type that indexes n rows (memory is speed: fewer pages)."""
    return np.int32 if n < (1 << 31) - 1 else np.int64


TIE_CHUNK = 1 << 20  # rows per step of the tie check (bounds its temporaries)


def _thread_order(tid: np.ndarray, time: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """Rows in (tid, time, seq) order, as np.lexsort((seq, time, tid)) gives them (as int32
    indices when they fit).

    Two stable sorts: by time (rows come in nearly time-sorted runs, one per ring and segment,
    which timsort merges in near-linear time), then by thread (a radix sort of 16-bit dense thread
    codes). Equal (thread, time) pairs are rare: seq decides among them, with a lexsort."""
    n = len(tid)
    if n < 2:
        return np.arange(n, dtype=np.int64)
    code = _dense_codes(tid)
    o = np.argsort(time, kind="stable").astype(_index_type(n))
    c = code[o]
    del code
    s = np.argsort(c, kind="stable")
    o = o[s]
    c = c[s]
    del s
    for lo in range(0, n - 1, TIE_CHUNK):  # adjacent rows of one thread with equal times?
        hi = min(lo + TIE_CHUNK + 1, n)
        t = time[o[lo:hi]]
        if np.any((t[1:] == t[:-1]) & (c[lo + 1:hi] == c[lo:hi - 1])):
            return np.lexsort((seq, time, tid))
    return o


# probe arguments: a column per name (None: no row has it), or a function (name, rows) -> the
# values at those rows (None: no row has it), so callers can decode only the rows pairing reads
Args = Mapping[str, np.ndarray | None] | Callable[[str, np.ndarray], np.ndarray | None]
# caller stack words of the posix_memalign return probe: an (n, W) matrix, or rows -> (len, W)
Words = np.ndarray | Callable[[np.ndarray], np.ndarray] | None


def _at(args: Args, name: str, idx: np.ndarray) -> np.ndarray:
    if callable(args):
        v = args(name, idx)
    else:
        v = args.get(name)
        v = v[idx] if v is not None else None
    return np.zeros(len(idx), np.uint64) if v is None else v.astype(np.uint64, copy=False)


def pair_codes(tid: np.ndarray, time: np.ndarray, seq: np.ndarray, func: np.ndarray,
               is_return: np.ndarray, args: Args, words: Words = None) -> Paired:
    """Pair entry/return rows into alloc/free events (the columnar core of pair_calls).

    `tid` (int32), `time`, `seq` (uint64), `func` (code into FUNCS) and `is_return` per row;
    `args`: the probe arguments (ARG_COLUMNS; see Args); `words`: the caller stack words fetched
    by the posix_memalign return probe (+8*k(%sp)), read only at posix_memalign returns.
    """
    n = len(tid)
    tid, time, seq = np.asarray(tid), np.asarray(time, np.uint64), np.asarray(seq, np.uint64)
    func, is_return = np.asarray(func), np.asarray(is_return, bool)
    order = _thread_order(tid, time, seq)
    o_ret, o_func = is_return[order], func[order]
    is_free = _F_FREE[o_func] & ~o_ret
    start = np.ones(n, bool)
    o_tid = tid[order]
    start[1:] = o_tid[1:] != o_tid[:-1]
    del o_tid
    level = _levels(o_ret, is_free, start)

    # Pair: among call rows (not frees) ordered by (tid, level, position), entry followed by return.
    # Rows are already in tid order: a stable sort of (thread, level) gives that order.
    idx = _index_type(n)
    call_rows = np.flatnonzero(~is_free).astype(idx)
    n_calls = len(call_rows)
    if n_calls:
        lv = level[call_rows]
        del level
        nlv = int(lv.max()) + 1
        nthr = int(np.count_nonzero(start))
        wide = np.int16 if nthr * nlv <= RADIX_KEYS else np.int64  # 16 bits: a radix sort
        tk = np.cumsum(start, dtype=np.int32 if nthr < (1 << 31) else np.int64)[call_rows]
        tk -= 1  # dense thread number (o_tid ascends)
        tk = tk.astype(wide, copy=False)
        tk *= nlv
        tk += lv.astype(wide, copy=False)
        del lv
        s = np.argsort(tk, kind="stable")
        ks = tk[s]
        del tk
        k = call_rows[s]
        del s, call_rows
        same = ks[1:] == ks[:-1]  # same thread and level
        del ks
    else:
        del level
        k, same = call_rows, np.zeros(0, bool)
    del start
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
             "unpaired": int(n_calls - 2 * len(pe))}
    E, R = order[pe[outer]], order[pr[outer]]  # input row indices
    fr = order[is_free & ~inside]  # free() calls of the program
    del order, o_ret, o_func, is_free, inside, pe, pr, outer
    f = func[E]
    nbytes = _at(args, "size", E)
    q = np.flatnonzero(_F_TIMES_NMEMB[f])
    if len(q):
        nbytes[q] *= _at(args, "nmemb", E[q])  # wraps like C
    ptr = _at(args, "ptr", R)

    # posix_memalign: success = ret 0; the pointer is the caller-stack word at memptr (if fetched).
    q = np.flatnonzero(_F_MEMALIGN_OUT[f])
    unknown = 0
    if len(q):
        Eq, Rq = E[q], R[q]
        ok_q = _at(args, "ret", Rq).astype(np.int64).astype(np.int32) == 0
        known = np.zeros(len(q), bool)
        got = np.zeros(len(q), np.uint64)
        if words is not None and (callable(words) or len(words)):
            w = words(Rq) if callable(words) else np.asarray(words, dtype=np.uint64)[Rq]
            slot = _at(args, "memptr", Eq).astype(np.int64) - _at(args, "sp", Rq).astype(np.int64)
            kk = slot // 8
            known = (slot % 8 == 0) & (kk >= 0) & (kk < w.shape[1])
            got = w[np.arange(len(q)), np.clip(kk, 0, w.shape[1] - 1)]
        ptr[q] = np.where(ok_q & known, got, 0)
        unknown = int((ok_q & ~known).sum())
    stats["memptr_unknown"] = unknown
    alloc_ok = ptr != 0
    stats["null"] = int(len(ptr) - np.count_nonzero(alloc_ok)) - unknown  # failed, or realloc(p, 0)
    # realloc: old block freed on success, or when size 0 returned NULL (glibc frees it then).
    q = np.flatnonzero(_F_REALLOC[f])
    oldptr = _at(args, "oldptr", E[q])
    q_ok = (oldptr != 0) & (alloc_ok[q] | (nbytes[q] == 0))
    re_src, re_ptr = E[q[q_ok]], oldptr[q_ok]

    fptr = _at(args, "ptr", fr)
    keep = fptr != 0
    fr, fptr = fr[keep], fptr[keep]
    n_re, n_al = len(re_src), int(np.count_nonzero(alloc_ok))
    # Old block of realloc: freed at the entry (before the new block is inserted, even in place).
    return Paired(src=np.concatenate([re_src, R[alloc_ok], fr]).astype(np.int64, copy=False),
                  ptr=np.concatenate([re_ptr, ptr[alloc_ok], fptr]),
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


def probe_fields(metadata: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """event `sys:name` -> {contract name: field name} where a probe's fields are named otherwise
    (perf probe captures: `arg1`, `bytes`, ...; perfprobe.py); identity for the others."""
    return {p["event"]: dict(p["fields"]) for p in metadata.get("probes") or []
            if isinstance(p, dict) and isinstance(p.get("fields"), dict) and "event" in p}


# (pids, site addresses, times) -> True where the probe site is the function's first instruction
SiteCheck = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def is_malloc_recording(metadata: Mapping[str, Any]) -> bool:
    """True if the recording has allocator uprobes (record --malloc)."""
    return bool(probe_roles(metadata))


def _pair_samples(sm: Samples, metadata: Mapping[str, Any],
                  site_ok: SiteCheck | None = None) -> tuple[Paired, np.ndarray | None]:
    """Pair the allocator-probe rows of `sm`; (events, the sample rows pairing saw (None: all)).

    Only the rows pairing asks for are decoded, straight from the loaded payloads. `site_ok`, for
    perf-probe captures: rows of probes sitting elsewhere than at a function's start are dropped
    (perf probe with debug info also puts `calloc` on libc's realloc@plt, `realloc` on strnlen's)."""
    roles = probe_roles(metadata)
    renames = probe_fields(metadata)
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
    ev_code = sm.event
    if len(ev_code) and ev_code.min() < 0:
        ev_code = np.where(ev_code < 0, nn, ev_code)
    counts = np.bincount(ev_code, minlength=nn + 1)
    fc = f_lut[ev_code]
    sel = None
    if counts[f_lut < 0].any():  # rows of other events: pair only the probe rows
        sel = np.flatnonzero(fc >= 0)
        ev_code, fc = ev_code[sel], fc[sel]
    fmts: dict[int, tuple[tracefs.EventFormat, set[str]]] = {}
    rename: dict[int, dict[str, str]] = {}
    for code in np.flatnonzero((counts[:nn] > 0) & (f_lut[:nn] >= 0)).tolist():
        ev = names[code]
        text = (events.get(ev) or {}).get("format")
        if not text:
            raise MallocError(f"recording has samples of {ev} but no format text for it")
        try:
            fmt = tracefs.parse_format(text, ev.split(":", 1)[0])
        except tracefs.FormatError as exc:
            raise MallocError(f"recording metadata: bad format text for {ev}: {exc}") from None
        if ev in renames:  # contract name -> field: only what the probe fetched
            rename[code] = renames[ev]
            fmts[code] = (fmt, {c for c, f in renames[ev].items() if fmt.has_field(f)})
        else:
            fmts[code] = (fmt, {f.name for f in fmt.fields})
    site_stats: dict[str, int] = {}
    if rename:  # perf-probe captures: probes off a function's start, two probes on one function
        sel, ev_code, fc, site_stats = _probe_sites(sm, sel, ev_code, fc, fmts, roles, names, site_ok)

    # rows of each event (ascending, so payloads are read front to back) and each row's index
    # among them: a field is decoded once per event, for all its rows, when pairing first asks
    n = len(fc)
    in_event = np.zeros(n, np.int32)
    rows_of: dict[int, np.ndarray] = {}
    for code in fmts:
        pos = np.flatnonzero(ev_code == code)
        in_event[pos] = np.arange(len(pos), dtype=np.int32)
        rows_of[code] = pos if sel is None else sel[pos]

    def column(code: int, name: str) -> np.ndarray:
        """One field of all rows of one event."""
        field = rename.get(code, {}).get(name, name)
        return sm.decode(fmts[code][0], rows_of[code], fields=[field])[field]

    # per field: the values of every event that has it, end to end after a 0, and per event code
    # where its values start there (0: the event has no such field, its rows read the 0)
    flat: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def arg(name: str, idx: np.ndarray) -> np.ndarray | None:
        """Field `name` at pairing rows idx (0 for rows of events without it; None: no event has it)."""
        if name not in flat:
            codes = [c for c, (_, have) in fmts.items() if name in have]
            if not codes:
                flat[name] = None
            else:
                parts = [np.zeros(1, np.uint64)] + [column(c, name).astype(np.uint64, copy=False)
                                                    for c in codes]
                start = np.zeros(nn + 1, np.int64)
                start[codes] = np.cumsum([len(v) for v in parts])[:-1]
                flat[name] = (np.concatenate(parts), start)
        if flat[name] is None:
            return None
        values, start = flat[name]
        at = start[ev_code[idx]]
        at = np.where(at > 0, at + in_event[idx], 0)
        return values[at]

    def word_names(have: set[str]) -> list[str]:
        return [k for _, k in sorted((int(k[1:]), k) for k in have if k[:1] == "w" and k[1:].isdigit())]

    nw = max((len(word_names(have)) for _, have in fmts.values()), default=0)

    def words(idx: np.ndarray) -> np.ndarray:
        """Caller stack words at pairing rows idx: (len(idx), nw), zeros where an event has fewer."""
        out = np.zeros((len(idx), nw), np.uint64)
        ec = ev_code[idx]
        for c, (_, have) in fmts.items():
            j = np.flatnonzero(ec == c)
            for w, name in enumerate(word_names(have) if len(j) else []):
                out[j, w] = column(c, name)[in_event[idx[j]]]  # a few rows: decoded as needed
        return out

    pick = (lambda a: a) if sel is None else (lambda a: a[sel])
    p = pair_codes(pick(sm.tid), pick(sm.time), pick(sm.seq), fc, r_lut[ev_code], arg,
                   words if nw else None)
    p.stats.update(site_stats)
    return p, sel


def _probe_sites(sm: Samples, sel: np.ndarray | None, ev_code: np.ndarray, fc: np.ndarray,
                 fmts: Mapping[int, tuple[tracefs.EventFormat, set[str]]],
                 roles: Mapping[str, tuple[str, bool]], names: Sequence[str],
                 site_ok: SiteCheck | None) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, dict[str, int]]:
    """Rows of perf-probe captures that must not be paired, by probe address (entries:
    __probe_ip, returns: __probe_func; per process):

    * off_site: `site_ok` says the address is no function's first instruction (perf probe with
      debug info also puts `calloc` on libc's realloc@plt); each (pid, address) is judged once;
    * alias: another probe event of the same kind sits on the same address (glibc's memalign and
      aligned_alloc are one function): only the event with the lowest code counts there, for
      the kernel reports both probes of one hit in the same order at entry and at return, which
      is no nesting.

    Returns the narrowed (sel, ev_code, fc) and the counts of rows dropped."""
    n = len(fc)
    site = np.zeros(n, np.uint64)
    have = np.zeros(n, bool)
    ret = np.zeros(n, bool)
    for code, (fmt, _) in fmts.items():
        is_ret = roles[names[code]][1]
        field = "__probe_func" if is_ret else "__probe_ip"
        if not fmt.has_field(field):
            continue
        pos = np.flatnonzero(ev_code == code)
        rows = pos if sel is None else sel[pos]
        site[pos] = sm.decode(fmt, rows, fields=[field])[field].astype(np.uint64, copy=False)
        have[pos] = True
        ret[pos] = is_ret
    rows = np.arange(n) if sel is None else sel
    pid = sm.pid[rows].astype(np.int64)
    order = np.lexsort((ev_code, ret, site, pid))  # by (pid, site, kind), lowest event first
    ps, ss, rs, cs = pid[order], site[order], ret[order], ev_code[order]
    new_site = np.ones(n, bool)
    new_site[1:] = (ps[1:] != ps[:-1]) | (ss[1:] != ss[:-1])
    new_kind = new_site.copy()
    new_kind[1:] |= rs[1:] != rs[:-1]
    first_code = cs[np.flatnonzero(new_kind)][np.cumsum(new_kind) - 1]
    alias = np.empty(n, bool)
    alias[order] = cs != first_code
    off = np.zeros(n, bool)
    if site_ok is not None:
        at = order[new_site]  # one row per distinct (pid, site): the checks are few
        ok = np.asarray(site_ok(pid[at], site[at], sm.time[rows[at]]), bool)
        off[order] = ~ok[np.cumsum(new_site) - 1]
    off &= have
    alias &= have & ~off
    stats = {k: int(np.count_nonzero(v)) for k, v in (("off_site", off), ("alias", alias)) if v.any()}
    if not stats:
        return sel, ev_code, fc, stats
    k = np.flatnonzero(~(off | alias))
    return rows[k], ev_code[k], fc[k], stats


def malloc_rows(sm: Samples, metadata: Mapping[str, Any], site_ok: SiteCheck | None = None) -> MallocRows:
    """A recording's allocator-probe samples -> alloc/free events for the replay, as the sample
    rows they come from (ascending, so (ring, seq) order within a ring) plus ptr, size, is_alloc.
    Every other column of an event is its sample row's. `site_ok`: see _pair_samples."""
    p, sel = _pair_samples(sm, metadata, site_ok)
    n = len(sm) if sel is None else len(sel)
    where = np.full(n, -1, np.int32 if n < (1 << 31) else np.int64)  # a row yields <= 1 event
    where[p.src] = np.arange(len(p.src), dtype=where.dtype)
    rows = np.flatnonzero(where >= 0)
    k = where[rows]
    return MallocRows(row=rows if sel is None else sel[rows], ptr=p.ptr[k], size=p.size[k],
                      is_alloc=p.is_alloc[k], stats=p.stats)


def malloc_events(samples: pa.Table, metadata: Mapping[str, Any],
                  site_ok: SiteCheck | None = None) -> tuple[pd.DataFrame, dict[str, int]]:
    """A recording's allocator-probe samples (a table of kind=sample rows) -> alloc/free rows as a
    DataFrame (see pair_calls; `site_ok`: see _pair_samples)."""
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
    p, sel = _pair_samples(sm, metadata, site_ok)
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
    if stats.get("off_site"):
        notes.append(f"{stats['off_site']} probe hits at addresses that are no function's start "
                     "ignored (perf probe put the probe on a PLT stub too)")
    if stats.get("alias"):
        notes.append(f"{stats['alias']} probe hits on a function another probe event also traces "
                     "(e.g. glibc's memalign is aligned_alloc) counted once")
    if stats.get("memptr_unknown"):
        notes.append(f"{stats['memptr_unknown']} posix_memalign results not recovered "
                     "(memptr outside the fetched caller stack words)")
    return notes
