"""`--format html`: one self-contained page to look at (docs/html-report.md): the summary, the
outstanding bytes of the top chains over time, every chain with its class and a sparkline, an
icicle of the leaked bytes (zoom, search) and the leaks per process."""

from __future__ import annotations

from typing import TextIO

import numpy as np

from ..analysis import LEAKED_BYTES, Analysis
from ..symbols.callchain import StackResolver
from . import html_page as hp
from .chains import Chain, chains, frame_name, processes
from .events import wall_clock
from .icicle import layout

MAX_ROWS = 200  # chains listed in the table (the rest are summed in one line)
TOP_LINES = 8  # chains drawn in the time plot
MAX_SUSPECTS = 5
NO_END = 0xFFFFFFFFFFFFFFFF


def render(a: Analysis, stacks: StackResolver, out: TextIO, opts) -> None:
    """The reporter entry point (reports.FORMATS)."""
    out.write(build(a, stacks, opts.recording, sort=opts.sort, utc=opts.utc))


def build(a: Analysis, stacks: StackResolver, recording: str, *, sort: str = "bytes",
          utc: bool = False) -> str:
    cs = chains(a, stacks, sort)
    sized = a.mode == LEAKED_BYTES
    body, roots = [_summary(a, cs, recording, utc)], {}
    lines = _time_lines(cs)
    if lines:
        roots["time"] = _time_plot(a, lines)
        body.append(hp.section(
            "time", "Outstanding bytes over time",
            "{{plot:time}}",
            f"The first {len(lines)} chains of the table: every allocation of the chain live at "
            "each moment (not only those left at the end). Solid: growing, dashed: bounded, "
            "dotted: insufficient data. Grey bands: events were lost; dashed verticals: "
            "reports made early because of lost events. Click a legend entry to hide its line."))
    body.append(_chain_table(a, cs, sized))
    paths = [([(frame_name(f), f.dso or "") for f in reversed(c.frames)],
              float(c.group.bytes if sized else c.group.objects), c.cls == "growing")
             for c in cs if c.frames]
    if paths:
        ic = layout(paths)
        from .html_plots import icicle_plot

        what = "leaked bytes" if sized else "leaked objects"
        roots["flame"] = icicle_plot(ic, what, "bytes" if sized else "objects")
        dropped = (f" {ic.dropped:,} frame{'s' * (ic.dropped != 1)} narrower than 0.01% {'are' if ic.dropped != 1 else 'is'} "
                   "left out.") if ic.dropped else ""
        body.append(hp.section(
            "flame", f"Flame graph of {what} (icicle)", "{{plot:flame}}",
            "Callers above callees, from the root of each call chain down to the allocator; width "
            f"is {what}. Red: the share from growing chains (leak suspects); sand: bounded or "
            "too little data. Click a frame to zoom into it, scroll to zoom, drag to pan; "
            "the search box highlights matching frames in purple and sums their share." + dropped))
    body.append(_process_table(a, sized))
    title = "kmemleak-offline report"
    nav = [("summary", "Summary"), *([("time", "Over time")] if lines else []),
           ("chains", "Call chains"), *([("flame", "Flame graph")] if paths else []),
           ("processes", "Processes")]
    return hp.page(title, recording, nav, "\n".join(body), roots)


# ---- summary ----------------------------------------------------------------------------------

def _summary(a: Analysis, cs: list[Chain], recording: str, utc: bool) -> str:
    m = a.metadata
    host = m.get("host") or {}
    dur = max(a.stop_ns - a.start_ns, 0) / 1e9
    lost = a.result.lost
    leaked_b = sum(c.group.bytes for c in cs)
    leaked_o = sum(c.group.objects for c in cs)
    early = sum(1 for r in a.reports if r.reason == "lost")
    by_cls: dict[str, tuple[int, int]] = {}
    for c in cs:
        n, b = by_cls.get(c.cls, (0, 0))
        by_cls[c.cls] = (n + 1, b + c.group.bytes)
    sized = a.mode == LEAKED_BYTES
    items = [
        ("recording", hp.esc(recording)),
        ("host", hp.esc(host.get("hostname", "?"))),
        ("kernel", hp.esc(f"{host.get('kernel_release', '?')} {host.get('machine', '')}")),
        ("CPUs", hp.esc(host.get("ncpus", "?"))),
        ("started", hp.esc(wall_clock(m, a.start_ns, utc).strip())),
        ("duration", f"{dur:.3f} s"),
        ("alloc events", hp.esc(_events([r.spec.full_name for r in a.roles if r.is_alloc]))),
        ("free events", hp.esc(_events([r.spec.full_name for r in a.roles if not r.is_alloc]))),
        ("allocations", hp.num(a.result.total_alloc)),
        ("frees", hp.num(a.result.total_free)),
        ("lost events", f"{hp.num(a.lost_total)} in {len(lost.count)} LOST records"
                        + (f", {early} early report{'s' if early != 1 else ''}" if early else "")),
        ("producer", hp.esc(f"{m.get('producer', '?')}" + (f" (stopped: {m['stopped']})"
                                                           if m.get("stopped") else ""))),
    ]
    cards = [("leaked", hp.human_bytes(leaked_b) if sized else "-", "", f"{leaked_b:,} bytes"),
             ("objects", hp.num(leaked_o), "", ""), ("call chains", hp.num(len(cs)), "", "")]
    for cls in ("growing", "bounded", "insufficient"):
        if cls in by_cls:
            n, b = by_cls[cls]
            cards.append((cls, f"{n}", cls, f"{hp.human_bytes(b)} in {n} chain{'s' * (n != 1)}"))
    cards.append(("lost events", hp.num(a.lost_total), "", ""))
    card_html = '<div class="cards">' + "".join(
        f'<div class="card {cls}" title="{hp.esc(tip)}"><div class="v">{v}</div>'
        f'<div class="k">{hp.esc(k)}{" chains" if cls else ""}</div></div>'
        for k, v, cls, tip in cards) + "</div>"
    sus = sorted((c for c in cs if c.cls == "growing"), key=lambda c: -c.trend.slope_bytes_per_s)
    rank = {id(c): i + 1 for i, c in enumerate(cs)}
    sus_html = ""
    if sus:
        sus_html = "<h2 style=\"margin-top:14px\">Leak suspects (growing to the end)</h2><ul class=\"suspects\">" + "".join(
            f'<li><a href="#chain-{rank[id(c)]}"><b>{hp.esc(c.headline)}</b></a>: '
            f"{hp.slope_text(c.trend.slope_bytes_per_s)}, {hp.human_bytes(c.group.bytes)} left "
            f"in {hp.num(c.group.objects)} objects (confidence {c.trend.confidence:.2f})</li>"
            for c in sus[:MAX_SUSPECTS]) + "</ul>"
        if len(sus) > MAX_SUSPECTS:
            sus_html += f'<p class="note">and {len(sus) - MAX_SUSPECTS} more growing chains below.</p>'
    elif sized and cs:
        sus_html = ('<p class="note">No chain is growing to the end of the recording: what is '
                    "outstanding looks like caches, pools and one-time allocations.</p>")
    warn = ""
    if a.warnings:
        warn = '<h2 style="margin-top:14px">Warnings</h2><ul>' + "".join(
            f"<li>{hp.esc(w)}</li>" for w in a.warnings) + "</ul>"
    return hp.section("summary", "Summary", hp.facts(items) + card_html + sus_html + warn)


def _events(names: list[str]) -> str:
    """Event names, shortened when they are one group's (a --malloc recording's uprobes: each
    function once, its return probe implied)."""
    groups = {n.split(":", 1)[0] for n in names}
    if len(groups) != 1 or len(names) < 3:
        return " ".join(names)
    base = [n.split(":", 1)[1] for n in names]
    short = [b for b in base if not (b.endswith("_ret") and b[:-4] in base)]
    return f"{groups.pop()}: {' '.join(short)}"


# ---- time plot --------------------------------------------------------------------------------

def _label(rank: int, c: Chain) -> str:
    return f"#{rank} {c.headline}"


def _time_lines(cs: list[Chain]) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    out = []
    for i, c in enumerate(cs):
        if c.trend is not None and len(c.trend.t_ns):
            out.append((_label(i + 1, c), c.cls, c.trend.t_ns / 1e9, c.trend.bytes))
        if len(out) == TOP_LINES:
            break
    return out


def _time_plot(a: Analysis, lines):
    from .html_plots import time_plot

    lost = a.result.lost
    stop = a.stop_ns
    bands = [((int(s) - a.start_ns) / 1e9, ((stop if int(e) == NO_END else int(e)) - a.start_ns) / 1e9)
             for s, e in zip(lost.start.tolist(), lost.end.tolist(), strict=True)]
    resets = [(r.time_ns - a.start_ns) / 1e9 for r in a.reports if r.reason == "lost"]
    return time_plot(lines, bands, resets, max(stop - a.start_ns, 0) / 1e9 or None)


# ---- tables -----------------------------------------------------------------------------------

def _chain_table(a: Analysis, cs: list[Chain], sized: bool) -> str:
    shown = cs[:MAX_ROWS]
    pids = np.array([c.group.user_pid for c in shown], np.int64)
    times = np.array([c.time_ns for c in shown], np.int64)
    comms = a.comms.comm(pids, times).tolist() if len(shown) else []
    rows = []
    for i, (c, comm) in enumerate(zip(shown, comms, strict=True)):
        t = c.trend
        cls_cell = (f'{hp.badge(c.cls)}<div class="muted" style="font-size:11px">confidence '
                    f"{t.confidence:.2f}</div>" if t is not None and c.cls != "insufficient"
                    else hp.badge(c.cls, "no data" if t is None else None))
        slope = hp.slope_text(t.slope_bytes_per_s) if t is not None and c.cls != "insufficient" \
            else "-"
        spark = hp.sparkline(t.bytes if t is not None else None, hp.CLASS_COLOR[c.cls],
                             f"peak {hp.human_bytes(float(t.bytes.max()))}" if t is not None
                             and len(t.bytes) else "")
        rows.append(
            f'<tr id="chain-{i + 1}" class="{"mark" if c.cls == "growing" else ""}">'
            f'<td class="n">{i + 1}</td><td>{cls_cell}</td>'
            f"{hp.bytes_cell(c.group.bytes if sized else None)}"
            f'<td class="n">{hp.num(c.group.objects)}</td><td class="n">{slope}</td>'
            f"<td>{spark}</td><td>{hp.esc(comm)}<div class=\"muted\">pid {c.group.user_pid}</div></td>"
            f"{hp.stack_cell(c.headline, c.lines)}</tr>")
    if len(cs) > MAX_ROWS:
        rest = cs[MAX_ROWS:]
        rows.append(f'<tr><td></td><td colspan="7" class="muted">{len(rest):,} more chains with '
                    f"{hp.human_bytes(sum(c.group.bytes for c in rest))} in "
                    f"{hp.num(sum(c.group.objects for c in rest))} objects "
                    "(all of them are in the text and JSON reports)</td></tr>")
    head = ["#", "class", "bytes", "objects", "slope", "outstanding over time", "process",
            "call chain (leaf first)"]
    note = ("Every call chain that leaked, summed over the reports"
            + (", in perf-prof's order (most bytes first); --sort growth lists growing chains first"
               if sized else " (sizes unknown: objects only)")
            + ". Class (docs/trends.md): growing = still reaching new highs at the end (leak "
            "suspect); bounded = rose, then stayed level (cache, pool, start-up); insufficient = "
            "too few allocations or too short a recording. Slope: over the second half of the "
            "recording. Click a chain to see all its frames.")
    body = hp.table(head, rows, "chains") if rows else '<p class="muted">no leaks</p>'
    return hp.section("chains", "Call chains", body, note)


def _process_table(a: Analysis, sized: bool) -> str:
    procs = processes(a)
    total = sum(p.bytes for p in procs) if sized else sum(p.objects for p in procs)
    rows = []
    for p in procs[:MAX_ROWS]:
        share = (p.bytes if sized else p.objects) / total if total else 0.0
        rows.append(f'<tr><td class="n">{p.pid}</td><td>{hp.esc(p.comm)}</td>'
                    f"{hp.bytes_cell(p.bytes if sized else None)}<td>{hp.share_bar(share)}</td>"
                    f'<td class="n">{share * 100:.1f}%</td><td class="n">{hp.num(p.objects)}</td>'
                    f'<td class="n">{hp.num(p.chains)}</td></tr>')
    if len(procs) > MAX_ROWS:
        rows.append(f'<tr><td colspan="7" class="muted">{len(procs) - MAX_ROWS:,} more '
                    "processes</td></tr>")
    note = ("Leaked bytes and objects by the process that allocated them (its name as of the "
            "report)." + ("" if a.per_task else " The recording is system-wide: kernel "
                          "allocations are charged to whichever task was running."))
    head = ["pid", "process", "bytes", "share", "", "objects", "call chains"]
    return hp.section("processes", "Per process", hp.table(head, rows, "procs") if rows
                      else '<p class="muted">no leaks</p>', note)
