"""`perf probe` allocator uprobes -> the probe list `record --malloc` writes, so malloc.py pairs them.

A user who ran `perf probe -x libc malloc size=%di` and `perf probe -x libc 'malloc%return $retval'`
has events `probe_libc:malloc` (fields: `__probe_ip`, `size`) and `probe_libc:malloc__return`
(`__probe_func`, `__probe_ret_ip`, `arg1`). We know them by name (any group; perf's `_N` suffix
for a second probe of one name is accepted) and by their uprobe format, and map their fields onto
the contract names of malloc.py (size, nmemb, oldptr, memptr, align, ptr, ret, sp, wN):

* a field named like the parameter (the contract's name, the man page's, or glibc's debug-info
  name such as `bytes`, `oldmem`, `elem_size`) is that parameter;
* an unnamed one, `argN` (perf names the N-th fetch argument so), is the N-th parameter: type the
  registers in order (%di %si %dx on x86-64);
* on a return event the value (`$retval` -> `arg1`, or `ptr=`/`ret=`) is the returned pointer
  (posix_memalign: its int result); `sp` and `w0..w31` are the caller stack words that recover
  posix_memalign's pointer, as `record --malloc` fetches them.

What a capture lacks (sizes, the return value, the freed pointer, a probe of the pair) is said in
`notes()`: one line per kind of gap, naming what to add.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from .format import tracefs

SOURCE = "perf probe"

# C allocators: event name -> (the role malloc.py pairs it as, its parameters in order)
_C = {
    "malloc": ("malloc", ("size",)), "valloc": ("valloc", ("size",)), "pvalloc": ("pvalloc", ("size",)),
    "calloc": ("calloc", ("nmemb", "size")), "realloc": ("realloc", ("oldptr", "size")),
    "reallocarray": ("reallocarray", ("oldptr", "nmemb", "size")),
    "posix_memalign": ("posix_memalign", ("memptr", "align", "size")),
    "aligned_alloc": ("aligned_alloc", ("align", "size")), "memalign": ("memalign", ("align", "size")),
    "free": ("free", ("ptr",)), "cfree": ("free", ("ptr",)),
}
# C++ operator new / delete (Itanium ABI, 64-bit size_t), as perf probe names them: the symbol
_NOTHROW, _ALIGN = "RKSt9nothrow_t", "St11align_val_t"
_CXX = {
    **{f"_Zn{k}m{s}": ("malloc", ("size",)) for k in "wa" for s in ("", _NOTHROW)},
    **{f"_Zn{k}m{_ALIGN}{s}": ("aligned_alloc", ("size", "align")) for k in "wa" for s in ("", _NOTHROW)},
    **{f"_Zd{k}Pv{s}": ("free", ("ptr",)) for k in "la"
       for s in ("", "m", _ALIGN, f"m{_ALIGN}", _NOTHROW, f"{_ALIGN}{_NOTHROW}")},
}
FUNCTIONS: dict[str, tuple[str, tuple[str, ...]]] = {**_C, **_CXX}

# field names that mean a parameter, besides the contract's own (man pages, glibc debug info)
_ALIASES = {"size": "size", "bytes": "size", "elem_size": "size", "sz": "size", "count": "size",
            "nmemb": "nmemb", "align": "align", "alignment": "align", "memptr": "memptr",
            "oldptr": "oldptr", "oldmem": "oldptr", "optr": "oldptr", "ptr": "ptr", "mem": "ptr"}
_ALIASES_OF = {"calloc": {"n": "nmemb"}, "realloc": {"ptr": "oldptr"}, "reallocarray": {"ptr": "oldptr"}}
_RETURN_VALUE = ("ptr", "ret", "retval", "arg1")  # preferred names of a return event's value
_WORD = re.compile(r"w\d+$")
_ARG = re.compile(r"arg(\d+)$")
_DUP = re.compile(r"_\d+$")  # perf probe's suffix for a second event of one name
_PSEUDO = ("__probe_ip", "__probe_func", "__probe_ret_ip")

# the registers a user types for each parameter (docs and notes)
REGISTERS = ("%di", "%si", "%dx")


def _function(name: str) -> tuple[str, str] | None:
    """Event name (no group) -> (symbol, role), or None if it names no allocator. perf probe names
    a return probe `X__return`, and a second event of one name `X_1` (`-f`; a return too)."""
    for n in (name, _DUP.sub("", name)):
        base = n.removesuffix("__return")
        if base in FUNCTIONS:
            return base, FUNCTIONS[base][0]
    return None


def _field_map(symbol: str, is_return: bool, names: list[str]) -> tuple[dict[str, str], list[str]]:
    """(contract name -> field name, fields not understood) for one event's fetch arguments."""
    role, params = FUNCTIONS[symbol]
    out: dict[str, str] = {}
    unknown: list[str] = []
    if is_return:
        value = "ret" if role == "posix_memalign" else "ptr"
        rest = [n for n in names if n != "sp" and not _WORD.match(n)]
        pick = next((n for n in _RETURN_VALUE if n in rest), rest[0] if rest else None)
        if pick is not None:
            out[value] = pick
        for n in names:
            if role == "posix_memalign" and (n == "sp" or _WORD.match(n)):
                out[n] = n
            elif n != pick:
                unknown.append(n)
        return out, unknown
    aliases = {**_ALIASES, **_ALIASES_OF.get(role, {})}
    for n in names:
        m = _ARG.match(n)
        c = params[int(m.group(1)) - 1] if m and 0 < int(m.group(1)) <= len(params) else aliases.get(n)
        if c in params and c not in out:
            out[c] = n
        else:
            unknown.append(n)
    return out, unknown


def recognise(formats: Mapping[str, str]) -> list[dict[str, Any]]:
    """The allocator probes among the events (`sys:name` -> tracefs format text): a `probes` list
    as `record --malloc` writes it, each with `fields` (contract name -> field) and `unknown`.

    An event counts when its name is an allocator's (`X`, `X__return`, `X_N`) and its format is a
    uprobe's: `__probe_ip` at an entry, `__probe_func` at a return (which it is comes from the
    format: perf names a second return probe `X_1`). Returns of free/delete carry nothing to pair
    and are left out."""
    probes = []
    for event in sorted(formats):
        group, _, name = event.partition(":")
        hit = _function(name)
        if hit is None:
            continue
        symbol, role = hit
        try:
            fmt = tracefs.parse_format(formats[event], group)
        except tracefs.FormatError:
            continue
        fields = [f.name for f in fmt.fields if not f.common]
        is_return = "__probe_func" in fields  # a uretprobe's format; an entry has __probe_ip
        if not (is_return or "__probe_ip" in fields) or (is_return and role == "free"):
            continue
        fmap, unknown = _field_map(symbol, is_return, [f for f in fields if f not in _PSEUDO])
        kind = "return" if is_return else "entry"
        shown = [f"{c}={f}" for c, f in fmap.items() if not _WORD.match(c)]
        words = sum(1 for c in fmap if _WORD.match(c))
        shown += [f"w0..w{words - 1}"] if words else []
        probes.append({"event": event, "group": group, "name": name, "kind": kind, "func": role,
                       "symbol": symbol, "fields": fmap, "unknown": unknown, "source": SOURCE,
                       "definition": f"{event}  ({SOURCE}: {symbol} {kind} {' '.join(shown)})"})
    return probes


def is_perf_probe(probes: Iterable[Mapping[str, Any]]) -> bool:
    return any(isinstance(p, Mapping) and p.get("source") == SOURCE for p in probes)


def event_specs(probes: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """--alloc/--free lists naming every probe event (malloc.py pairs them; the specs give the
    analysis its events and roles): as recorder.probes.malloc_event_specs writes them."""
    alloc, free = [], []
    for p in probes:
        ev, f = p["event"], p["fields"]
        if p["func"] == "free":
            free.append(f"{ev}//ptr={f.get('ptr', '__probe_ip')}/")
        elif p["kind"] == "return":
            alloc.append(f"{ev}//ptr={f.get('ptr', '__probe_func')}/stack/")
        else:
            alloc.append(f"{ev}//ptr=__probe_ip/")
    return alloc, free


def _spec(role: str, params: tuple[str, ...]) -> str:
    return " ".join(f"{p}={REGISTERS[i]}" for i, p in enumerate(params))


def notes(probes: Iterable[Mapping[str, Any]]) -> list[str]:
    """One line per kind of gap in a perf-probe capture: what is not counted and what to add."""
    probes = [p for p in probes if isinstance(p, Mapping) and p.get("source") == SOURCE]
    if not probes:
        return []
    entries = {p["symbol"]: p for p in probes if p["kind"] == "entry"}
    returns = {p["symbol"]: p for p in probes if p["kind"] == "return"}
    out = []

    def events(ps: list[Mapping[str, Any]]) -> str:
        return ", ".join(p["event"] for p in ps)

    no_size = [p for p in entries.values() if p["func"] != "free" and
               any(c in FUNCTIONS[p["symbol"]][1] and c not in p["fields"] for c in ("size", "nmemb"))]
    if no_size:
        out.append(f"perf probe: no size argument on {events(no_size)}: their blocks count 0 bytes "
                   "(object counts only); add it, e.g. `perf probe -x LIBC 'malloc size=%di'`")
    no_old = [p for p in entries.values() if "oldptr" in FUNCTIONS[p["symbol"]][1] and "oldptr" not in p["fields"]]
    if no_old:
        out.append(f"perf probe: no old pointer on {events(no_old)}: the blocks realloc frees or moves "
                   "are not seen and stay live; add oldptr=%di")
    no_ret = [p for p in returns.values() if ("ret" if p["func"] == "posix_memalign" else "ptr") not in p["fields"]]
    if no_ret:
        out.append(f"perf probe: no return value on {events(no_ret)}: their allocations are not "
                   "tracked; add $retval, e.g. `perf probe -x LIBC 'malloc%return $retval'`")
    no_words = [p for p in returns.values() if p["func"] == "posix_memalign" and "sp" not in p["fields"]]
    if no_words:
        out.append(f"perf probe: {events(no_words)} fetches no caller stack words (sp=%sp w0=+0(%sp) "
                   "... w31=+248(%sp)): posix_memalign's blocks are not tracked")
    free_no_ptr = [p for p in entries.values() if p["func"] == "free" and "ptr" not in p["fields"]]
    if free_no_ptr:
        out.append(f"perf probe: no pointer on {events(free_no_ptr)}: those frees are not seen; add "
                   "ptr=%di")
    lone_entry = sorted(s for s, p in entries.items() if p["func"] != "free" and s not in returns)
    if lone_entry:
        out.append("perf probe: no return probe for " + ", ".join(lone_entry) + ": their calls are not "
                   "tracked; add e.g. `perf probe -x LIBC '" + lone_entry[0] + "%return $retval'`")
    lone_ret = sorted(s for s in returns if s not in entries)
    if lone_ret:
        out.append("perf probe: no entry probe for " + ", ".join(lone_ret) + ": their calls are not "
                   "tracked; add e.g. `perf probe -x LIBC '" + lone_ret[0] + " "
                   + _spec(*FUNCTIONS[lone_ret[0]]) + "'`")
    if not any(p["func"] == "free" for p in entries.values()):
        out.append("perf probe: no free probe: every block looks leaked; add "
                   "`perf probe -x LIBC 'free ptr=%di'`")
    unknown = [f"{p['event']} {u}" for p in probes for u in p.get("unknown") or []]
    if unknown:
        out.append("perf probe: fields not understood (ignored): " + ", ".join(unknown) + "; name them "
                   "after the parameter (size=, nmemb=, oldptr=, align=, memptr=, ptr=) or leave them "
                   "unnamed in parameter order")
    return out
