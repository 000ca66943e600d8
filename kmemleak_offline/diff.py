"""`diff`: what leaks grew, appeared or went away between two analyses (regression comparison).

Either side is a recording (analysed here) or a JSON report written by `analyze --format json`
(docs/json-report.md), told apart by content: a file whose first non-blank byte is `{` (or
`[`) is read as JSON, and must then be such a report.

Groups are matched by their call chain as (symbol, offset, dso) per frame, never by raw addresses
or stack ids: the same leak after a reboot (KASLR moves the kernel) or in a new run of a PIE
program (another load base) lines up, and so does a recording against a JSON report. A frame that
did not resolve is keyed on its dso alone ("Unknown" when not even that is known). Addresses are
kept for display only (those of the later side when both sides have the chain).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .analysis import EVENT_LIST, LEAKED_BYTES, Analysis
from .symbols.callchain import KERNEL_DSO, Frame, StackResolver

UNKNOWN = "Unknown"
NO_CHAIN = ("(no call chain recorded)",)

FrameKey = tuple[str, int, str]  # (symbol, offset, dso)
ChainKey = tuple[FrameKey, ...]  # leaf first; () = no call chain


class ReportError(ValueError):
    """A JSON side that cannot be read or is not an `analyze --format json` report (one line)."""


def frame_key(symbol: str | None, offset: int, dso: str | None) -> FrameKey:
    """Address-free identity of a frame: unresolved frames collapse to their dso."""
    if symbol is None:
        return (UNKNOWN, 0, dso or UNKNOWN)
    return (symbol, int(offset), dso or UNKNOWN)


@dataclass
class Series:
    """A chain's growth trend on one side (from the recording's analysis or the JSON report)."""

    cls: str
    t_ns: np.ndarray
    bytes: np.ndarray


@dataclass
class Side:
    bytes: int = 0
    objects: int = 0
    lines: tuple[str, ...] = ()  # display lines of the chain (first group seen), leaf first
    # trends of the groups keyed to this chain, once per source chain (stack id, or a JSON
    # group's addresses): several reports of one chain are not counted twice
    trends: dict[object, Series] = field(default_factory=dict)

    def trend(self) -> Series | None:
        """The chain's trend: its groups' series added up; growing when any of them grows."""
        ts = list(self.trends.values())
        if not ts:
            return None
        n = min(len(t.bytes) for t in ts)
        y = np.sum([t.bytes[:n] for t in ts], axis=0)
        classes = {t.cls for t in ts}
        cls = next((c for c in ("growing", "bounded") if c in classes), "insufficient")
        return Series(cls, ts[0].t_ns[:n], y)


@dataclass
class Table:
    """One side of a diff: its name, totals and leaks per chain."""

    name: str
    total_alloc: int
    total_free: int
    leaks: dict[ChainKey, Side] = field(default_factory=dict)
    mode: str = LEAKED_BYTES  # EVENT_LIST: no sizes, bytes are all 0

    def add(self, key: ChainKey, lines: tuple[str, ...], b: int, n: int,
            trend: tuple[object, Series] | None = None) -> None:
        side = self.leaks.get(key)
        if side is None:
            side = self.leaks[key] = Side(lines=lines or NO_CHAIN)
        side.bytes += b
        side.objects += n
        if trend is not None:
            side.trends.setdefault(*trend)


@dataclass
class Change:
    key: ChainKey
    base: Side
    new: Side

    @property
    def signature(self) -> tuple[str, ...]:
        """Frame lines to show, leaf first (the later side's addresses when both have the chain)."""
        return self.new.lines or self.base.lines or NO_CHAIN

    @property
    def delta_bytes(self) -> int:
        return self.new.bytes - self.base.bytes

    @property
    def delta_objects(self) -> int:
        return self.new.objects - self.base.objects

    @property
    def status(self) -> str:
        if not self.base.objects:
            return "new"
        if not self.new.objects:
            return "gone"
        return "grown" if (self.delta_bytes, self.delta_objects) > (0, 0) else \
            "shrunk" if (self.delta_bytes, self.delta_objects) < (0, 0) else "same"


# ---- recording side -------------------------------------------------------------------------------

def _chain(frames: list[Frame]) -> tuple[ChainKey, tuple[str, ...]]:
    return (tuple(frame_key(f.symbol, f.offset, f.dso) for f in frames),
            tuple(f.line().strip() for f in frames))


def leak_table(a: Analysis, stacks: StackResolver) -> dict[ChainKey, Side]:
    """Leaked bytes/objects per chain over every report of one analysis."""
    return recording_table("", a, stacks).leaks


def recording_table(name: str, a: Analysis, stacks: StackResolver) -> Table:
    t = Table(name, a.result.total_alloc, a.result.total_free, mode=a.mode)
    chains: dict[tuple[int, int], tuple[ChainKey, tuple[str, ...]]] = {}  # per (stack, pid)
    for r in a.reports:
        trend_of: dict[int, tuple[object, Series]] = {}
        if a.mode == LEAKED_BYTES:
            items = [(g.stack_id, g.user_pid, g.bytes, g.objects) for g in r.groups]  # names user frames
            trend_of = {g.stack_id: (g.stack_id, Series(g.trend.cls, g.trend.t_ns, g.trend.bytes))
                        for g in r.groups if g.trend is not None}
        else:  # one item per distinct (stack, pid), in order of first appearance, with its count
            ents = r.entries[r.entries["selected"]]
            sids, pids = ents["stack_id"].to_numpy(), ents["pid"].to_numpy()
            key = pd.DataFrame({"sid": sids, "pid": pids})
            grp = key.groupby(["sid", "pid"], sort=False).ngroup().to_numpy()
            first = np.flatnonzero(~key.duplicated().to_numpy())  # ascending: first appearance
            items = list(zip(sids[first].tolist(), pids[first].tolist(), [0] * len(first),
                             np.bincount(grp)[grp[first]].tolist(), strict=True))
        for sid, pid, b, n in items:
            ck = chains.get((sid, pid))
            if ck is None:  # frames of a (stack, pid) resolve once (the first time asked)
                ck = chains[(sid, pid)] = (_chain(stacks.frames(sid, pid, r.time_ns)) if sid >= 0
                                           else ((), NO_CHAIN))
            t.add(ck[0], ck[1], b, n, trend_of.get(sid))
    return t


# ---- JSON side ----------------------------------------------------------------------------------

def read_report(path: Path) -> dict[str, Any] | None:
    """The parsed JSON report at path, or None when path is not JSON (a recording or parts folder).

    Raises ReportError for a file that starts like JSON but does not parse.
    """
    p = Path(path)
    try:
        if not p.is_file():
            return None
    except OSError:
        return None  # the recording loader reports it
    try:
        with open(p, "rb") as f:
            head = f.read(4096).lstrip()
            if not head.startswith((b"{", b"[")):
                return None
            data = head + f.read()
    except OSError:
        return None  # the recording loader reports it
    if _nesting(data) > MAX_JSON_DEPTH:
        raise ReportError(f"{path}: JSON nested deeper than {MAX_JSON_DEPTH} levels; not an "
                          "analyze report")
    try:
        doc = json.loads(data)
    except RecursionError:  # unreachable below MAX_JSON_DEPTH; kept as a guard
        raise ReportError(f"{path}: JSON nested too deeply; not an analyze report") from None
    except ValueError as exc:  # bad UTF-8, bad JSON, a number with thousands of digits
        raise ReportError(f"{path}: not valid JSON ({_first_line(exc)})") from None
    return doc


MAX_JSON_DEPTH = 200  # an analyze report nests 6 levels deep
_OPEN = np.zeros(256, np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


def _nesting(data: bytes) -> int:
    """Deepest bracket nesting of a JSON text, counted without parsing (vectorised; brackets
    inside strings count too, which only errs towards refusing)."""
    step = _OPEN[np.frombuffer(data, np.uint8)]
    return int(np.cumsum(step, dtype=np.int64).max(initial=0))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


_KIND = {int: "a number", str: "a string", list: "a list", dict: "an object"}


U64 = (1 << 64) - 1


def _need(obj: Any, key: str, kind: type, where: str, optional: bool = False) -> Any:
    """obj[key], checked to be of `kind` (None allowed when optional); ReportError naming the spot.
    Numbers in a report are counts, sizes or addresses: 0..2**64-1."""
    if not isinstance(obj, dict):
        raise ReportError(f"{where} is not an object")
    if key not in obj:
        raise ReportError(f"{where} has no {key!r}")
    v = obj[key]
    if v is None and optional:
        return None
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise ReportError(f"{where}.{key} is not {_KIND[kind]}")
    if kind is int and not 0 <= v <= U64:
        raise ReportError(f"{where}.{key} is {v}, outside 0..2**64-1")
    return v


def _json_chain(stack: list, where: str) -> tuple[ChainKey, tuple[str, ...]]:
    keys, lines = [], []
    for i, fr in enumerate(stack):
        w = f"{where}.stack[{i}]"
        addr = _need(fr, "addr", int, w)
        sym = _need(fr, "symbol", str, w, optional=True)
        off = _need(fr, "offset", int, w)
        dso = _need(fr, "dso", str, w, optional=True)
        keys.append(frame_key(sym, off, dso))
        # context is not in the report: the kernel's dso says kernel, anything else was user space
        ctx = "kernel" if dso == KERNEL_DSO else "user"
        lines.append(Frame(addr & 0xFFFFFFFFFFFFFFFF, sym, off if sym else 0, dso, ctx).line().strip())
    return tuple(keys), tuple(lines)


def _json_trend(g: dict, stack: list) -> tuple[object, Series] | None:
    """A JSON group's `trend` (docs/json-report.md), keyed by its addresses; None when absent or
    not in that shape (reports from before trends were added still compare)."""
    tr = g.get("trend")
    if not isinstance(tr, dict) or not isinstance(tr.get("series"), dict):
        return None
    try:
        t = np.asarray(tr["series"]["t_ns"], np.int64)
        y = np.asarray(tr["series"]["bytes"], np.int64)
        cls = str(tr["class"])
    except (KeyError, TypeError, ValueError, OverflowError):  # OverflowError: past int64, inf
        return None
    if t.shape != y.shape or t.ndim != 1:
        return None
    return tuple(fr.get("addr") for fr in stack), Series(cls, t, y)


def report_table(name: str, doc: Any) -> Table:
    """Leaks per chain of an `analyze --format json` report (version 1)."""
    try:
        return _report_table(name, doc)
    except ReportError as exc:
        raise ReportError(f"{name}: not a kmemleak-offline analyze JSON report: {exc}") from None


def _report_table(name: str, doc: Any) -> Table:
    if not isinstance(doc, dict):
        raise ReportError("the document is not an object")
    if "changes" in doc and "reports" not in doc:
        raise ReportError("this is the output of diff, not of analyze")
    version = _need(doc, "format_version", int, "report")
    if version != 1:
        raise ReportError(f"format_version {version} (this version reads 1)")
    mode = _need(doc, "mode", str, "report")
    if mode not in (LEAKED_BYTES, EVENT_LIST):
        raise ReportError(f"unknown mode {mode!r}")
    stats = _need(doc, "stats", dict, "report")
    t = Table(name, _need(stats, "total_alloc", int, "stats"), _need(stats, "total_free", int, "stats"),
              mode=mode)
    for ri, r in enumerate(_need(doc, "reports", list, "report")):
        where = f"reports[{ri}]"
        if mode == LEAKED_BYTES:
            for gi, g in enumerate(_need(r, "groups", list, where)):
                gw = f"{where}.groups[{gi}]"
                b, n = _need(g, "bytes", int, gw), _need(g, "objects", int, gw)
                stack = _need(g, "stack", list, gw)
                key, lines = _json_chain(stack, gw)
                t.add(key, lines, b, n, _json_trend(g, stack))
        else:
            for ei, e in enumerate(_need(r, "events", list, where)):
                ew = f"{where}.events[{ei}]"
                if isinstance(e, dict) and e.get("selected", True) is False:
                    continue  # -v lists every sample; only the leaked (selected) ones count
                key, lines = _json_chain(_need(e, "stack", list, ew), ew)
                t.add(key, lines, 0, 1)
    return t


# ---- the growth gate ----------------------------------------------------------------------------

_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)", re.IGNORECASE)
# 1024-based: K/M/G/T as the kernel's memparse (and ulimit) read them, and the IEC KiB/MiB/...;
# 1000-based only when spelled the SI way with a B: kB/KB, MB, GB, TB
_SIZE_UNITS = {"": 1, "b": 1,
               **{u: 1024 ** (i + 1) for i, us in enumerate((("k", "kib"), ("m", "mib"),
                                                            ("g", "gib"), ("t", "tib")))
                  for u in us},
               **{u: 1000 ** (i + 1) for i, u in enumerate(("kb", "mb", "gb", "tb"))}}


def parse_size(text: str) -> int:
    """`--fail-on-growth SIZE`: bytes, with an optional K/M/G/T (1024-based, also KiB/MiB/GiB/TiB)
    or kB/MB/GB/TB (1000-based) suffix, any case; a fraction must come to whole bytes (1.5K).
    ValueError with a one-line message otherwise."""
    m = _SIZE.fullmatch(text.strip())
    unit = _SIZE_UNITS.get(m.group(2).lower()) if m else None
    if unit is None:
        raise ValueError(f"invalid size {text!r}: expected bytes, optionally with a suffix "
                         "K, M, G, T (1024-based; also KiB, MiB, GiB, TiB) or kB, MB, GB, TB "
                         "(1000-based), e.g. 4096, 64K, 1.5M")
    whole, _, frac = m.group(1).partition(".")
    scale = 10 ** len(frac)
    num = int(whole + frac) * unit  # exact: no float rounding of big values
    if num % scale:
        raise ValueError(f"invalid size {text!r}: not a whole number of bytes")
    return num // scale


def describe(key: ChainKey, frames: int = 3) -> str:
    """A one-line name for a chain: its first frames, leaf first."""
    if not key:
        return NO_CHAIN[0]
    names = [f"{s}+0x{o:x}" if s != UNKNOWN else f"{UNKNOWN} ({d})" for s, o, d in key[:frames]]
    return " <- ".join(names) + (" <- ..." if len(key) > frames else "")


def over_limit(changes: list[Change], limit: int) -> list[Change]:
    """Chains whose leaked bytes grew by more than `limit` (a new chain grew from 0), biggest first."""
    return sorted((c for c in changes if c.delta_bytes > limit),
                  key=lambda c: (-c.delta_bytes, c.key))


# ---- comparison and output ----------------------------------------------------------------------

def compare(base: dict[ChainKey, Side], new: dict[ChainKey, Side]) -> list[Change]:
    """Every chain of either side, biggest absolute byte (then object) change first."""
    changes = [Change(k, base.get(k, Side()), new.get(k, Side())) for k in set(base) | set(new)]
    changes.sort(key=lambda c: (-abs(c.delta_bytes), -abs(c.delta_objects), c.key, c.signature))
    return changes


def render_text(base: Table, new: Table, changes: list[Change], top: int | None,
                show_same: bool = False) -> str:
    lines = [f"LEAK DIFF: {base.name} -> {new.name}",
             (f"TOTAL alloc {base.total_alloc} -> {new.total_alloc} "
              f"free {base.total_free} -> {new.total_free}")]
    tb = sum(c.base.bytes for c in changes), sum(c.new.bytes for c in changes)
    to = sum(c.base.objects for c in changes), sum(c.new.objects for c in changes)
    lines.append(f"LEAKED bytes {tb[0]} -> {tb[1]} ({tb[1] - tb[0]:+d}) objects {to[0]} -> {to[1]} "
                 f"({to[1] - to[0]:+d})")
    lines.append("")
    shown = [c for c in changes if show_same or c.status != "same"]
    for c in shown[:top] if top else shown:
        lines.append(f"{c.status.upper()}: {c.delta_bytes:+d} bytes {c.delta_objects:+d} objects "
                     f"({c.base.bytes} -> {c.new.bytes} bytes, {c.base.objects} -> {c.new.objects} objects)")
        lines.extend(f"    {f}" for f in c.signature)
    return "\n".join(lines) + "\n"


def to_json(base_name: str, new_name: str, changes: list[Change]) -> dict[str, Any]:
    return {"format_version": 1, "base": base_name, "new": new_name,
            "changes": [{"status": c.status, "delta_bytes": c.delta_bytes,
                         "delta_objects": c.delta_objects,
                         "base": {"bytes": c.base.bytes, "objects": c.base.objects},
                         "new": {"bytes": c.new.bytes, "objects": c.new.objects},
                         "stack": list(c.signature)} for c in changes]}
