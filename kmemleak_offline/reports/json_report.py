"""`--format json` (docs/json-report.md): the same content as the text report."""

from __future__ import annotations

import itertools
import json
from typing import Any, TextIO

from ..analysis import LEAKED_BYTES, Analysis, sort_groups
from ..symbols.callchain import StackResolver
from ..trend import Trend
from .events import EventLines


def _frames(stacks: StackResolver, sid: int, pid: int, t: int) -> list[dict[str, Any]]:
    return [{"addr": f.addr, "symbol": f.symbol, "offset": f.offset, "dso": f.dso}
            for f in stacks.frames(sid, pid, t)] if sid >= 0 else []


def trend_dict(t: Trend | None) -> dict[str, Any] | None:
    """A group's `trend` (docs/json-report.md): class, slope, confidence, series."""
    if t is None:
        return None
    return {"class": t.cls, "slope_bytes_per_s": round(t.slope_bytes_per_s, 3),
            "confidence": round(t.confidence, 3),
            "series": {"t_ns": t.t_ns.tolist(), "bytes": t.bytes.tolist()}}


def build(a: Analysis, stacks: StackResolver, recording: str, *, verbose: int = 0,
          comm: bool = False, sort: str = "bytes") -> dict[str, Any]:
    lines = EventLines(a)
    event_name = [role.fmt.full_name for role in a.roles]
    # a size where one is known: a size= expression, or a --malloc recording's paired calls
    has_size = [role.size is not None or a.mode == LEAKED_BYTES for role in a.roles]
    reports = []
    for r in a.reports:
        if r.reason == "lost" and r.num == 0:
            continue
        groups = []
        if a.mode == LEAKED_BYTES:
            for g in sort_groups(r.groups, a.stacks, sort):
                d: dict[str, Any] = {"bytes": g.bytes, "objects": g.objects, "pid": g.pid}
                if comm:
                    d["comms"] = [{"comm": c, "bytes": b, "count": n} for c, b, n in g.comms]
                d["stack"] = _frames(stacks, g.stack_id, g.user_pid, r.time_ns)
                d["trend"] = trend_dict(g.trend)
                groups.append(d)
        events = []
        if a.mode != LEAKED_BYTES or verbose:
            ents = r.entries if verbose else r.entries[r.entries["selected"]]
            text = lines.render(ents)
            names = a.comms.comm(ents["tid"].to_numpy(), ents["time"].to_numpy())
            # one list per column (Python ints/bools), then one dict per event
            col = {c: ents[c].tolist() for c in ("time", "cpu", "pid", "tid", "role", "ptr", "size",
                                                 "selected", "stack_id")}
            stack_of: dict[tuple[int, int], list[dict[str, Any]]] = {}
            for i, (t, role, sid, pid) in enumerate(zip(col["time"], col["role"], col["stack_id"],
                                                        col["pid"], strict=True)):
                st = stack_of.get((sid, pid))
                if st is None:  # frames depend on (stack, pid): the first time seen resolves them
                    st = stack_of[(sid, pid)] = _frames(stacks, sid, pid, t)
                events.append({
                    "time_ns": t, "cpu": col["cpu"][i], "pid": pid,
                    "tid": col["tid"][i], "comm": names[i],
                    "event": event_name[role], "ptr": col["ptr"][i],
                    "size": col["size"][i] if has_size[role] else None,
                    "selected": col["selected"][i], "line": text[i],
                    "stack": st,
                })
        reports.append({"reason": r.reason, "time_ns": r.time_ns, "num": r.num,
                        "total_alloc": r.total_alloc, "total_free": r.total_free,
                        "groups": groups, "events": events})
    lost = a.result.lost
    return {
        "format_version": 1,
        "recording": recording,
        "mode": a.mode,
        "stats": {"total_alloc": a.result.total_alloc, "total_free": a.result.total_free,
                  "lost_events": a.lost_total},
        "reports": reports,
        "lost": [{"cpu": int(lost.cpu_of_ring[i]), "count": int(lost.count[i]),
                  "start_ns": int(lost.start[i]),
                  "end_ns": None if int(lost.end[i]) == 0xFFFFFFFFFFFFFFFF else int(lost.end[i])}
                 for i in range(len(lost.count))],
        "intervals": [st.__dict__ for st in a.intervals],
        "warnings": a.warnings,
    }


def render(a: Analysis, stacks: StackResolver, out: TextIO, opts) -> None:
    """The reporter entry point (reports.FORMATS)."""
    write(a, stacks, opts.recording, out, verbose=opts.verbose, comm=opts.comm, sort=opts.sort)


def write(a: Analysis, stacks: StackResolver, recording: str, out: TextIO, **kw) -> None:
    """json.dump(..., indent=1), its pieces written a few thousand at a time (one write call per
    piece cost more than the encoding)."""
    pieces = json.JSONEncoder(indent=1).iterencode(build(a, stacks, recording, **kw))
    out.writelines(iter(lambda: "".join(itertools.islice(pieces, 8192)), ""))
    out.write("\n")
