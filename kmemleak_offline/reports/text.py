"""perf-prof's text report, byte for byte (docs/behaviour.md), from an Analysis."""

from __future__ import annotations

from typing import TextIO

import numpy as np

from ..analysis import EVENT_LIST, LEAKED_BYTES, Analysis, ReportView, sort_groups
from ..symbols.callchain import StackResolver
from ..trend import Trend
from .events import EventLines, wall_clock

NO_CHAIN = "    (no call chain recorded; use -g or stack)"


def render(a: Analysis, stacks: StackResolver, out: TextIO, opts) -> None:
    """The reporter entry point (reports.FORMATS): perf-prof's report."""
    TextReport(a, stacks, out, opts.err, verbose=opts.verbose, utc=opts.utc, trend=opts.trend,
               sort=opts.sort).write()


def trend_line(t: Trend | None) -> str:
    """`--trend`: the group's class, slope and confidence (docs/trends.md)."""
    if t is None:
        return "    trend: none (no allocations of this chain in the replay)"
    if t.cls == "insufficient":
        return "    trend: insufficient (too few allocations or too short a recording to judge)"
    return f"    trend: {t.cls}, {t.slope_bytes_per_s:+.1f} bytes/s (confidence {t.confidence:.2f})"


class TextReport:
    """Writes stdout text (and perf-prof's stderr lost lines) for one analysis."""

    def __init__(self, a: Analysis, stacks: StackResolver, out: TextIO, err: TextIO, *,
                 verbose: int = 0, utc: bool = False, trend: bool = False,
                 sort: str = "bytes") -> None:
        self.a, self.stacks, self.out, self.err = a, stacks, out, err
        self.verbose, self.utc, self.trend, self.sort = verbose, utc, trend, sort
        self.events = EventLines(a)

    def ts(self, perf_ns: int) -> str:
        return wall_clock(self.a.metadata, perf_ns, self.utc)

    def write(self) -> None:
        a = self.a
        if self.verbose:  # perf-prof -v, on stdout, once per list, expanded or not
            for given, expanded in a.expansions:
                self.out.write(f"Wildcard expansion: '{given}' -> '{expanded}'\n")
        items: list[tuple[int, int, object]] = []  # (time, order, item)
        for st in a.intervals:
            items.append((st.time_ns, 0, st))
        for r in a.reports:
            items.append((r.time_ns, 1, r))
        items.sort(key=lambda x: (x[0], x[1]))
        pos = 0
        lost_total = 0
        for _, _, item in items:
            if isinstance(item, ReportView):
                if self.verbose >= 2:  # perf-prof prints a sample before its lost check
                    end = max(pos, item.position + (item.reason == "lost"))
                    self._samples(pos, end)
                    pos = end
                if item.reason == "lost":
                    lost_total += item.lost_count
                    if self.verbose:  # perf-prof -v: one line per lost record, with its CPU
                        for count, cpu in item.lost_detail:
                            self.err.write(f"{self.ts(item.time_ns)}kmemleak: lost {count} events on CPU #{cpu}\n")
                    else:
                        self.err.write(f"{self.ts(item.time_ns)}kmemleak: lost {lost_total} events (total)\n")
                    if item.num == 0:
                        continue
                    self.out.write(f"{self.ts(item.time_ns)}Report memory leaks in advance due to lost\n")
                self.report(item)
            else:
                self.out.write(f"{self.ts(item.time_ns)}\nKMEMLEAK STATS:\n"
                               f"ALLOC LIST num {item.objects} mem {item.bytes}\n"
                               f"INTERVAL alloc {item.allocs} free {item.frees}\n"
                               f"TOTAL alloc {item.total_alloc} free {item.total_free}\n\n")

    def _samples(self, start: int, end: int) -> None:
        """-vv: every sample as it is replayed (before the lost-window drop, like perf-prof)."""
        if end <= start:
            return
        rows = self.a.stream.frame(slice(start, end))
        lines = self.events.render(rows)
        w = self.out.write
        for line, sid, pid, t in zip(lines, rows["stack_id"].tolist(), rows["pid"].tolist(),
                                     rows["time"].tolist(), strict=True):
            w(line + "\n")
            if sid >= 0:
                for s in self.stacks.lines(sid, pid, t):
                    w(s + "\n")

    def report(self, r: ReportView) -> None:
        a, w = self.a, self.out.write
        if r.total_alloc > 0:
            w(f"{self.ts(r.time_ns)}\nKMEMLEAK STATS:\nTOTAL alloc {r.total_alloc} free {r.total_free}\n\n")
        if r.num == 0:
            return
        if a.mode == EVENT_LIST or self.verbose:
            w(f"KMEMLEAK REPORT: {r.num}\n")
            ents = r.entries
            show = np.ones(len(ents), bool) if self.verbose else ents["selected"].to_numpy()
            shown = ents[show]
            lines = self.events.render(shown)
            for line, sid, pid, t in zip(lines, shown["stack_id"].tolist(), shown["pid"].tolist(),
                                         shown["time"].tolist(), strict=True):
                w(line + "\n")
                if sid >= 0:
                    for s in self.stacks.lines(sid, pid, t):
                        w(s + "\n")
        if a.mode == LEAKED_BYTES:
            w("LEAKED BYTES REPORT:\n")
            for g in sort_groups(r.groups, a.stacks, self.sort):
                w(f"Leak of {g.bytes} bytes in {g.objects} objects allocated from:\n")
                if g.comms:
                    w("    comms:" + "".join(f" {c}({b}/{n})" for c, b, n in g.comms) + "\n")
                if self.trend:
                    w(trend_line(g.trend) + "\n")
                if g.stack_id < 0:
                    w(NO_CHAIN + "\n")
                    continue
                for s in self.stacks.lines(g.stack_id, g.user_pid, r.time_ns):
                    w(s + "\n")

