"""Resolve --alloc/--free spec texts against this kernel's tracefs: formats, ids, stacks, filters."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmemleak_offline.format.tracefs import EventFormat, FormatError, parse_format
from recorder.errors import RecordInputError

_C_WORDS = {"char", "short", "int", "long", "unsigned", "signed", "u8", "u16", "u32", "u64",
            "s8", "s16", "s32", "s64", "x", "function", "ustring", "CPUS", "COMM", "CPU", "comm"}


@dataclass
class TracedEvent:
    """One tracepoint to open, with what the spec asks of it."""

    spec: Any  # kmemleak_offline.format.spec.EventSpec (defaults applied)
    fmt: EventFormat
    role: str  # "alloc" or "free"
    callchain: bool
    max_stack: int | None

    @property
    def name(self) -> str:
        return self.fmt.full_name

    @property
    def filter(self) -> str | None:
        return self.spec.filter or None


def available_events(tracefs: Path) -> list[str]:
    """All `sys:name` tracepoints this kernel offers."""
    try:
        return [line.strip() for line in (tracefs / "available_events").read_text().splitlines()
                if line.strip()]
    except OSError:
        return sorted(f"{p.parent.parent.name}:{p.parent.name}"
                      for p in (tracefs / "events").glob("*/*/format"))


def read_format(tracefs: Path, system: str, name: str) -> EventFormat:
    path = tracefs / "events" / system / name / "format"
    try:
        return parse_format(path.read_text(), system)
    except FileNotFoundError:
        raise RecordInputError(f"{system}:{name} not found") from None
    except (OSError, FormatError) as exc:
        raise RecordInputError(f"{system}:{name}: cannot read its tracefs format ({exc})") from None


def resolve(alloc: str, free: str, tracefs: Path, call_graph: bool) -> tuple[list[TracedEvent], bool]:
    """Parse both lists, expand wildcards, load formats, apply defaults.

    Returns the events and whether call graphs are on (-g, or every alloc spec has `stack`, as in
    perf-prof). Any spec problem becomes RecordInputError with the spec module's one-line message.
    """
    from kmemleak_offline.format import spec as specmod

    avail = available_events(tracefs)
    out: list[TracedEvent] = []
    seen: set[str] = set()
    groups = []
    for role, text in (("alloc", alloc), ("free", free)):
        if not text or not text.strip():
            raise RecordInputError(f"--{role} is required (e.g. --{role} "
                                   f"{'kmem:kmalloc' if role == 'alloc' else 'kmem:kfree'})")
        try:
            specs = specmod.expand_wildcards(specmod.parse_list(text), avail)
        except ValueError as exc:
            raise RecordInputError(str(exc).splitlines()[0]) from None
        groups.append((role, specs))
    alloc_specs = groups[0][1]
    if alloc_specs and all(s.stack for s in alloc_specs):
        call_graph = True
    for role, specs in groups:
        for s in specs:
            full = f"{s.system}:{s.name}"
            if full in seen:
                raise RecordInputError(f"{full} is given more than once in --alloc/--free")
            seen.add(full)
            fmt = read_format(tracefs, s.system, s.name)
            try:
                s = specmod.with_defaults(s, fmt)
            except ValueError as exc:
                raise RecordInputError(str(exc).splitlines()[0]) from None
            _check_expressions(s, fmt, role)
            cc = bool(s.stack) or (role == "alloc" and call_graph)
            out.append(TracedEvent(spec=s, fmt=fmt, role=role, callchain=cc,
                                   max_stack=getattr(s, "max_stack", None)))
    return out, call_graph


def _check_expressions(s: Any, fmt: EventFormat, role: str) -> None:
    """ptr=/size= must compile now: a recording whose own analysis would refuse it is no use."""
    from kmemleak_offline.format import expr

    for attr, text in (("ptr", s.ptr), ("size", s.size if role == "alloc" else None)):
        if not text:
            continue
        try:
            expr.compile_expr(text, fmt.fields)
        except expr.ExprError as exc:
            raise RecordInputError(f"{fmt.full_name} {attr}={text}: {exc.message}\n{exc}") from None


def check_userspace_filter(ev: TracedEvent) -> None:
    """A filter the kernel refused must at least compile as an expression over the event's fields."""
    try:
        from kmemleak_offline.format import expr  # written by the analyser engineer
    except ImportError:
        expr = None
    fields = {f.name for f in ev.fmt.fields} | {"_cpu", "_pid"}
    unknown = [w for w in re.findall(r"\b[A-Za-z_]\w*",
                                      re.sub(r"\"[^\"]*\"|'[^']*'", "", ev.filter or ""))
               if w not in fields and w not in _C_WORDS]
    if unknown:
        raise RecordInputError(f"{ev.name} filter '{ev.filter}' failed: rejected by the kernel, "
                               f"and '{unknown[0]}' is not a field of {ev.name} "
                               f"(fields: {', '.join(f.name for f in ev.fmt.fields)})")
    if expr is None:
        return
    try:
        expr.compile_expr(ev.filter, ev.fmt.fields)
    except expr.ExprError as exc:
        raise RecordInputError(f"{ev.name} filter '{ev.filter}' failed: rejected by the kernel, "
                               f"and not a valid expression ({exc.message})\n{exc}") from None
