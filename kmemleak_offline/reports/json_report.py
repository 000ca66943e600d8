"""`--format json` (shared/spec/report-json.md): the same content as the text report."""

from __future__ import annotations

import json
from typing import Any, TextIO

from ..analysis import LEAKED_BYTES, Analysis, sort_groups
from .events import EventLines
from .frames import StackResolver


def _frames(stacks: StackResolver, sid: int, pid: int, t: int) -> list[dict[str, Any]]:
    return [{"addr": f.addr, "symbol": f.symbol, "offset": f.offset, "dso": f.dso}
            for f in stacks.frames(sid, pid, t)] if sid >= 0 else []


def build(a: Analysis, stacks: StackResolver, recording: str, *, verbose: int = 0,
          comm: bool = False) -> dict[str, Any]:
    lines = EventLines(a)
    reports = []
    for r in a.reports:
        if r.reason == "lost" and r.num == 0:
            continue
        groups = []
        if a.mode == LEAKED_BYTES:
            for g in sort_groups(r.groups, a.stacks):
                d: dict[str, Any] = {"bytes": g.bytes, "objects": g.objects, "pid": g.pid}
                if comm:
                    d["comms"] = [{"comm": c, "bytes": b, "count": n} for c, b, n in g.comms]
                d["stack"] = _frames(stacks, g.stack_id, g.pid, r.time_ns)
                groups.append(d)
        events = []
        if a.mode != LEAKED_BYTES or verbose:
            ents = r.entries if verbose else r.entries[r.entries["selected"]]
            text = lines.render(ents)
            names = a.comms.comm(ents["tid"].to_numpy(), ents["time"].to_numpy())
            for i, (_, e) in enumerate(ents.iterrows()):
                events.append({
                    "time_ns": int(e["time"]), "cpu": int(e["cpu"]), "pid": int(e["pid"]),
                    "tid": int(e["tid"]), "comm": names[i],
                    "event": a.roles[int(e["role"])].fmt.full_name, "ptr": int(e["ptr"]),
                    "size": int(e["size"]) if a.roles[int(e["role"])].size is not None else None,
                    "selected": bool(e["selected"]), "line": text[i],
                    "stack": _frames(stacks, int(e["stack_id"]), int(e["pid"]), int(e["time"])),
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


def write(a: Analysis, stacks: StackResolver, recording: str, out: TextIO, **kw) -> None:
    json.dump(build(a, stacks, recording, **kw), out, indent=1)
    out.write("\n")
