"""`diff`: what leaks grew, appeared or went away between two analyses (regression comparison).

Groups are matched by their symbolised call chain (`sym+0xoff` frames), not by raw addresses or
stack ids, so two recordings of the same kernel/binary line up even though ids differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .analysis import LEAKED_BYTES, Analysis
from .reports.frames import StackResolver


@dataclass
class Side:
    bytes: int = 0
    objects: int = 0


@dataclass
class Change:
    signature: tuple[str, ...]  # frame lines, leaf first
    base: Side
    new: Side

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


def leak_table(a: Analysis, stacks: StackResolver) -> dict[tuple[str, ...], Side]:
    """Leaked bytes/objects per symbolised chain over every report of one analysis."""
    out: dict[tuple[str, ...], Side] = {}
    for r in a.reports:
        if a.mode == LEAKED_BYTES:
            items = [(g.stack_id, g.pid, g.bytes, g.objects) for g in r.groups]
        else:
            ents = r.entries[r.entries["selected"]]
            items = [(int(s), int(p), 0, 1) for s, p in zip(ents["stack_id"], ents["pid"])]
        for sid, pid, b, n in items:
            sig = tuple(f.line().strip() for f in stacks.frames(sid, pid, r.time_ns)) if sid >= 0 \
                else ("(no call chain recorded)",)
            side = out.setdefault(sig, Side())
            side.bytes += b
            side.objects += n
    return out


def compare(base: dict[tuple[str, ...], Side], new: dict[tuple[str, ...], Side]) -> list[Change]:
    """Every chain of either side, biggest absolute byte (then object) change first."""
    changes = [Change(sig, base.get(sig, Side()), new.get(sig, Side())) for sig in set(base) | set(new)]
    changes.sort(key=lambda c: (-abs(c.delta_bytes), -abs(c.delta_objects), c.signature))
    return changes


def render_text(base_name: str, new_name: str, a: Analysis, b: Analysis, changes: list[Change],
                top: int | None, show_same: bool = False) -> str:
    lines = [f"LEAK DIFF: {base_name} -> {new_name}",
             (f"TOTAL alloc {a.result.total_alloc} -> {b.result.total_alloc} "
              f"free {a.result.total_free} -> {b.result.total_free}")]
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
