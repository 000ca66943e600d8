"""`diff --format html`: both runs on one page (docs/html-report.md): their totals, the leaked
bytes of the chains that changed most in each run side by side, and every changed chain with its
status (new and grown chains marked) and its growth trend in each run."""

from __future__ import annotations

from ..diff import Change, Table
from . import html_page as hp
from .chains import pick_headline

MAX_ROWS = 500
TOP_BARS = 20
MARKED = ("new", "grown")
STATUSES = ("new", "grown", "shrunk", "gone", "same")


def headline(c: Change) -> str:
    return pick_headline([sym if sym != "Unknown" else f"[{dso.rsplit('/', 1)[-1]}]"
                          for sym, _, dso in c.key]) if c.key else "(no call chain recorded)"


def build(base: Table, new: Table, changes: list[Change], top: int | None = None) -> str:
    shown = [c for c in changes if c.status != "same"]
    if top:
        shown = shown[:top]
    body = [_summary(base, new, changes)]
    roots = {}
    bars = shown[:TOP_BARS]
    if bars:
        from .html_plots import diff_bars

        roots["diff"] = diff_bars([f"{headline(c)} [{c.status}]" for c in bars],
                                  [c.base.bytes for c in bars], [c.new.bytes for c in bars],
                                  [c.status for c in bars], base.name, new.name)
        body.append(hp.section("bars", "Leaked bytes in both runs", "{{plot:diff}}",
                               f"The {len(bars)} largest changes: grey = base run, orange = new "
                               "run."))
    body.append(_table(shown))
    nav = [("summary", "Summary"), *([("bars", "Both runs")] if bars else []),
           ("changes", "Changed chains")]
    return hp.page("kmemleak-offline diff", f"{base.name} -> {new.name}", nav, "\n".join(body),
                   roots)


def _summary(base: Table, new: Table, changes: list[Change]) -> str:
    def side_rows(t: Table, pick) -> list[str]:
        sides = [pick(c) for c in changes]
        b = sum(s.bytes for s in sides)
        o = sum(s.objects for s in sides)
        chains = sum(1 for s in sides if s.objects)
        growing = sum(1 for s in sides if (tr := s.trend()) is not None and tr.cls == "growing")
        has_trend = any(s.trends for s in sides)
        return [hp.num(t.total_alloc), hp.num(t.total_free), hp.human_bytes(b), hp.num(o),
                hp.num(chains), hp.num(growing) if has_trend else "-"]

    rb, rn = side_rows(base, lambda c: c.base), side_rows(new, lambda c: c.new)
    labels = ["allocations", "frees", "leaked bytes", "leaked objects", "call chains",
              "growing chains"]
    rows = [f"<tr><td>{k}</td><td class=\"n\">{a}</td><td class=\"n\">{b}</td></tr>"
            for k, a, b in zip(labels, rb, rn, strict=True)]
    tbl = hp.table(["", f"base: {hp.esc(base.name)}", f"new: {hp.esc(new.name)}"], rows, "sides")
    counts = {s: sum(1 for c in changes if c.status == s) for s in STATUSES}
    cards = '<div class="cards">' + "".join(
        f'<div class="card {"growing" if s in MARKED and n else ""}"><div class="v">{n}</div>'
        f'<div class="k">{s} chains</div></div>' for s, n in counts.items()) + "</div>"
    return hp.section("summary", "Summary", tbl + cards,
                      "Call chains are matched by symbol, offset and binary (never by address), "
                      "so runs from different boots or program starts line up.")


def _trend_cell(side) -> str:
    t = side.trend()
    if t is None:
        return '<td class="muted">-</td>'
    return (f'<td>{hp.badge(t.cls)}{hp.sparkline(t.bytes, hp.CLASS_COLOR.get(t.cls, "#8c8c8c"))}'
            "</td>")


def _table(shown: list[Change]) -> str:
    rows = []
    for i, c in enumerate(shown[:MAX_ROWS]):
        rows.append(
            f'<tr class="{"mark" if c.status in MARKED else ""}"><td class="n">{i + 1}</td>'
            f"<td>{hp.badge(c.status)}</td>"
            f'<td class="n" title="{c.delta_bytes:+,} bytes">{"+" if c.delta_bytes >= 0 else ""}'
            f"{hp.human_bytes(c.delta_bytes)}</td>"
            f"{hp.bytes_cell(c.base.bytes)}{hp.bytes_cell(c.new.bytes)}"
            f'<td class="n">{c.delta_objects:+,}</td>'
            f'<td class="n">{hp.num(c.base.objects)} &rarr; {hp.num(c.new.objects)}</td>'
            f"{_trend_cell(c.base)}{_trend_cell(c.new)}"
            f"{hp.stack_cell(headline(c), list(c.signature))}</tr>")
    if len(shown) > MAX_ROWS:
        rows.append(f'<tr><td></td><td colspan="9" class="muted">{len(shown) - MAX_ROWS:,} more '
                    "changed chains (all of them are in the text and JSON output)</td></tr>")
    head = ["#", "status", "&Delta; bytes", "base bytes", "new bytes", "&Delta; objects",
            "objects", "trend in base", "trend in new", "call chain (leaf first)"]
    note = ("Every chain whose leak changed, largest change first; new and grown chains are "
            "marked. Trend: the chain's outstanding bytes over each run (docs/trends.md), when "
            "the side is a recording or a JSON report with trends.")
    body = hp.table(head, rows, "changes") if rows else '<p class="muted">no changes</p>'
    return hp.section("changes", "Changed chains", body, note)
