"""Event-spec grammar: `sys:name[/FILTER/[ATTR/]...]` lists, as perf-prof's tep.c parses them.

Kept separate from expression compiling and event lookup so the same text can be parsed on the
recording machine (to open events) and on the analysing one (to re-interpret a recording).
Where perf-prof fails silently or quirkily (a missing second '/', `--than 10x`) we raise a
one-line SpecError instead.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

from kmemleak_offline.format import tracefs

__all__ = [
    "EventSpec", "SpecError", "expand_wildcards", "parse_duration", "parse_event", "parse_list",
    "split_list", "with_defaults",
]

MAX_STACK_DEPTH = 127  # PERF_MAX_STACK_DEPTH, perf-prof caps max-stack= at it
# attributes perf-prof accepts that kmemleak does not use (tep.c:909-1019)
IGNORED_ATTRS = frozenset({
    "alias", "key", "cpus", "comm", "top-by", "top_by", "top-add", "top_add", "num", "role",
    "printkey", "exec", "untraced", "trigger", "vm", "index", "push", "pull",
})
_WILDCARD = re.compile(r"[*?\[]")
_DURATION = re.compile(r"([0-9]+)(s|ms|us|ns)?")
_UNITS = {None: 1, "ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}


class SpecError(ValueError):
    """A malformed event spec or option value; the message is one line."""


@dataclass(frozen=True)
class EventSpec:
    """One parsed `--alloc`/`--free` event."""

    system: str
    name: str
    filter: str | None = None     # None: no /.../ section; '' for `sys:name//`
    ptr: str | None = None
    size: str | None = None
    stack: bool = False
    max_stack: int | None = None  # max-stack=N implies stack
    ignored: tuple[tuple[str, str], ...] = ()
    text: str = ""

    @property
    def full_name(self) -> str:
        return f"{self.system}:{self.name}"

    def canonical(self) -> str:
        """The spec written back in perf-prof syntax (parse_event(canonical()) round-trips)."""
        attrs = []
        if self.ptr is not None:
            attrs.append(f"ptr={_quote(self.ptr)}")
        if self.size is not None:
            attrs.append(f"size={_quote(self.size)}")
        if self.max_stack is not None:
            attrs.append(f"max-stack={self.max_stack}")
        elif self.stack:
            attrs.append("stack")
        attrs += [f"{k}={_quote(v)}" if v else k for k, v in self.ignored]
        if self.filter is None and not attrs:
            return self.full_name
        return f"{self.full_name}/{_quote(self.filter or '')}/" + "".join(a + "/" for a in attrs)


def _next_sep(s: str, i: int, c: str) -> int | None:
    """tep.c's next_sep: index of `c`, skipping '..', "..." and balanced (...)."""
    n = len(s)
    while i < n:
        ch = s[i]
        if ch == c:
            return i
        if ch in "'\"":
            i += 1
            while i < n:
                i += 1
                if s[i - 1] == ch:
                    break
        elif ch == "(":
            j = _next_sep(s, i + 1, ")")
            if j is None:
                return None
            i = j + 1
        else:
            i += 1
    return None


def _rm_quotes(s: str) -> str:
    """Remove one pair of matching single or double quotes around `s`."""
    if s and s[0] in "'\"" and s[-1] == s[0]:
        return s[1:-1]
    return s


def _quote(s: str) -> str:
    """Quote a value if it would otherwise split at '/' or ','."""
    if _next_sep(s, 0, "/") is None and _next_sep(s, 0, ",") is None:
        return s
    q = "'" if '"' in s else '"'
    return f"{q}{s}{q}"


def split_list(text: str) -> list[str]:
    """Split `EVENT,EVENT,...` at commas outside quotes and parentheses (a trailing ',' is dropped)."""
    out, i = [], 0
    while (j := _next_sep(text, i, ",")) is not None:
        out.append(text[i:j])
        i = j + 1
    if text[i:]:
        out.append(text[i:])
    return out


def parse_event(text: str) -> EventSpec:
    """Parse one `sys:name[/FILTER/[ATTR/]...]`."""
    head, filt, rest = text, None, None
    slash = _next_sep(text, 0, "/")
    if slash is not None:
        head = text[:slash]
        end = _next_sep(text, slash + 1, "/")
        if end is None:
            raise SpecError(f"missing '/' after filter in '{text}'")
        filt, rest = _rm_quotes(text[slash + 1:end]), text[end + 1:]
    system, colon, name = head.partition(":")
    if not colon:
        raise SpecError(f"missing ':' in event '{text}' (expected sys:name)")
    name = _rm_quotes(name)
    if not system or not name:
        raise SpecError(f"empty system or event name in '{text}'")
    vals: dict[str, object] = {"ptr": None, "size": None, "stack": False, "max_stack": None}
    ignored: list[tuple[str, str]] = []
    while rest is not None and (j := _next_sep(rest, 0, "/")) is not None:
        item, rest = rest[:j], rest[j + 1:]
        eq = _next_sep(item, 0, "=")
        attr, value = (item, None) if eq is None else (item[:eq], _rm_quotes(item[eq + 1:]))
        if attr == "stack":
            vals["stack"] = True
        elif attr == "max-stack":
            if value is None or not re.fullmatch(r"[0-9]+", value):
                raise SpecError(f"bad max-stack value '{value or ''}' in '{text}'")
            # at most 127 anyway: a longer digit string is that too (no huge-int conversion)
            big = len(value.lstrip("0")) > 3
            vals["stack"], vals["max_stack"] = True, MAX_STACK_DEPTH if big else min(int(value), MAX_STACK_DEPTH)
        elif attr in ("ptr", "size"):
            if value is None:
                raise SpecError(f"Syntax error: {attr} needs '=EXPR' in '{text}'")
            vals[attr] = value
        elif attr in IGNORED_ATTRS:
            ignored.append((attr, value or ""))
        elif attr:
            raise SpecError(f"Syntax error: Unknown attr {attr}")
    if rest:
        raise SpecError(f"Syntax error: {rest}")
    return EventSpec(system, name, filt, ignored=tuple(ignored), text=text, **vals)


def parse_list(text: str) -> list[EventSpec]:
    """Parse a comma-separated `--alloc`/`--free` value."""
    items = split_list(text)
    if not items:
        raise SpecError("empty event list")
    for it in items:
        if not it:
            raise SpecError(f"empty event in list '{text}'")
    return [parse_event(it) for it in items]


def expand_wildcards(specs: list[EventSpec], available: Iterable[str]) -> list[EventSpec]:
    """Replace specs whose `sys:name` has * ? [ by one copy per matching available event."""
    names = list(available)
    out: list[EventSpec] = []
    for sp in specs:
        pat = sp.full_name
        if not _WILDCARD.search(pat):
            out.append(sp)
            continue
        hits = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise SpecError(f"No events matching pattern '{pat}'")
        slash = sp.text.find("/")
        suffix = sp.text[slash:] if slash >= 0 else ""
        for h in hits:
            system, _, name = h.partition(":")
            out.append(dataclasses.replace(sp, system=system, name=name, text=h + suffix))
    return out


def with_defaults(spec: EventSpec, fmt: tracefs.EventFormat) -> EventSpec:
    """perf-prof's defaults: ptr=ptr and size=bytes_alloc when the event has those fields."""
    ptr = spec.ptr if spec.ptr is not None else ("ptr" if fmt.has_field("ptr") else None)
    size = spec.size
    if size is None and fmt.has_field("bytes_alloc"):
        size = "bytes_alloc"
    if ptr is None:
        raise SpecError(f"{spec.full_name}//ptr=?/ ptr attribute is not set")
    return dataclasses.replace(spec, ptr=ptr, size=size)


def parse_duration(text: str) -> int:
    """`--than`: N (ns), Ns, Nms, Nus, Nns -> nanoseconds. Stricter than perf-prof on purpose."""
    m = _DURATION.fullmatch(text)
    if not m:
        raise SpecError(f"invalid duration '{text}': expected N, Ns, Nms, Nus or Nns")
    digits = m.group(1).lstrip("0")
    ns = int(digits or "0") * _UNITS[m.group(2)] if len(digits) <= 20 else 1 << 64
    if ns >= 1 << 64:
        raise SpecError(f"duration '{text}' is beyond 2^64 ns (584 years)")
    return ns
