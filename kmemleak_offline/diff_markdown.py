"""`diff --format markdown`: the comparison as a pull-request comment (GitHub/GitLab markdown).

A verdict line when `--fail-on-growth` is given, the totals, then one table row per chain that
grew, appeared, shrank or went away (unchanged ones are left out), biggest byte change first.
Call chains are shown address-free, `symbol+0xoff (dso)` per frame, leaf first, each frame in its
own code span so that nothing in a symbol (C++ templates, `*`, `_`) is read as markup; a `|`
(which would end the table cell even inside a code span) is escaped, and so is a backtick (by a
longer fence). File names are code spans too.
"""

from __future__ import annotations

import re

from .diff import NO_CHAIN, UNKNOWN, ChainKey, Change, Table

_ARROW = "\u2192"  # →


def code(s: str, cell: bool = True) -> str:
    """s as an inline code span; in a table cell its `|` is escaped (only there does `\\|` read
    as a pipe)."""
    s = s.replace("\r", " ").replace("\n", " ")
    if cell:
        s = s.replace("|", "\\|")
    runs = [len(r) for r in re.findall(r"`+", s)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") or (runs and s.strip() == "") else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def frame(key: tuple[str, int, str]) -> str:
    sym, off, dso = key
    if sym == UNKNOWN and off == 0:
        return f"{UNKNOWN} ({dso})"
    return f"{sym}+0x{off:x} ({dso})"


def chain_cell(key: ChainKey) -> str:
    frames = [frame(k) for k in key] or list(NO_CHAIN)
    return "<br>".join(code(f) for f in frames)


def _bytes(n: int) -> str:
    """Exact bytes, with a 1024-based figure beside big ones."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n:,} ({n / size:.1f} {unit})"
    return f"{n:,}"


def _count(n: int) -> str:
    return f"{n:,}"


def _signed(n: int, fmt=_bytes) -> str:
    return ("+" if n > 0 else "") + fmt(n) if n else "0"


def render(base: Table, new: Table, changes: list[Change], top: int | None = None,
           limit: int | None = None, failing: list[Change] | None = None) -> str:
    """The comment. `limit`/`failing`: the --fail-on-growth threshold and the chains beyond it."""
    lines = [f"### Leak diff: {code(base.name, False)} {_ARROW} {code(new.name, False)}", ""]
    if limit is not None:
        failing = failing or []
        if failing:
            worst = failing[0].delta_bytes
            lines.append(f"**Leak gate failed:** {len(failing)} call chain"
                         f"{'s' if len(failing) != 1 else ''} grew by more than "
                         f"{limit:,} bytes (largest: {worst:+,} bytes).")
        else:
            lines.append(f"**Leak gate passed:** no call chain grew by more than {limit:,} bytes.")
        lines.append("")
    tb = sum(c.base.bytes for c in changes), sum(c.new.bytes for c in changes)
    to = sum(c.base.objects for c in changes), sum(c.new.objects for c in changes)
    lines += ["| | base | new | change |", "|---|---:|---:|---:|",
              f"| leaked bytes | {_bytes(tb[0])} | {_bytes(tb[1])} | {_signed(tb[1] - tb[0])} |",
              f"| leaked objects | {to[0]:,} | {to[1]:,} | {_signed(to[1] - to[0], _count)} |",
              (f"| allocations | {base.total_alloc:,} | {new.total_alloc:,} | "
              f"{_signed(new.total_alloc - base.total_alloc, _count)} |"),
              (f"| frees | {base.total_free:,} | {new.total_free:,} | "
              f"{_signed(new.total_free - base.total_free, _count)} |"), ""]
    shown = [c for c in changes if c.status != "same"]
    if not shown:
        lines.append("No call chain changed.")
        return "\n".join(lines) + "\n"
    over = {id(c) for c in failing or []}
    rows = shown[:top] if top else shown
    lines += ["| status | bytes | objects | base bytes | new bytes | call chain (leaf first) |",
              "|---|---:|---:|---:|---:|---|"]
    for c in rows:
        status = c.status + (" **over limit**" if id(c) in over else "")
        lines.append(f"| {status} | {_signed(c.delta_bytes)} | {_signed(c.delta_objects, _count)} | "
                     f"{_bytes(c.base.bytes)} | {_bytes(c.new.bytes)} | {chain_cell(c.key)} |")
    if len(rows) < len(shown):
        rest = shown[len(rows):]
        lines += ["", (f"{len(rest)} more changed call chain{'s' if len(rest) != 1 else ''} not "
                      f"shown (together {sum(c.delta_bytes for c in rest):+,} bytes).")]
    return "\n".join(lines) + "\n"
