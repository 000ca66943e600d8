"""Folded stacks (`root;...;leaf weight`) for flamegraph.pl, from the reported leaks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ..analysis import LEAKED_BYTES, Analysis
from .frames import StackResolver


def folded_path(p: str) -> Path:
    """perf-prof writes `P.folded`; we do not double the suffix when it is already there."""
    return Path(p if p.endswith(".folded") else p + ".folded")


def folded(a: Analysis, stacks: StackResolver) -> Counter[str]:
    """Weight per root-to-leaf symbol path: leaked bytes in leaked-bytes mode, else objects.

    In per-task mode the thread's comm is the root frame, as perf-prof does.
    """
    acc: Counter[str] = Counter()
    for r in a.reports:
        if a.mode == LEAKED_BYTES:
            for g in r.groups:
                if g.stack_id < 0:
                    continue
                root = (a.comms.comm(np.array([g.pid]), np.array([r.time_ns]))[0]
                        if a.per_task else None)
                acc[_path(stacks, g.stack_id, g.pid, r.time_ns, root)] += g.bytes
            continue
        ents = r.entries[r.entries["selected"] & (r.entries["stack_id"] >= 0)]
        if not len(ents):
            continue
        roots = (a.comms.comm(ents["tid"].to_numpy(), ents["time"].to_numpy())
                 if a.per_task else [None] * len(ents))
        for sid, pid, t, root in zip(ents["stack_id"], ents["pid"], ents["time"], roots):
            acc[_path(stacks, int(sid), int(pid), int(t), root)] += 1
    return acc


def _path(stacks: StackResolver, sid: int, pid: int, t: int, root: str | None) -> str:
    names = [f.symbol or "Unknown" for f in stacks.frames(sid, pid, t)]
    names.reverse()
    if root is not None:
        names.insert(0, root)
    return ";".join(names)


def write_folded(a: Analysis, stacks: StackResolver, target: str) -> Path | None:
    """Write the folded file; returns its path when non-empty (then the hint is printed)."""
    path = folded_path(target)
    acc = folded(a, stacks)
    with open(path, "w") as f:
        f.writelines(f"{line} {weight}\n" for line, weight in sorted(acc.items(), key=lambda kv: (-kv[1], kv[0])))
    return path if acc else None


def hint(path: Path) -> str:
    svg = str(path)[: -len(".folded")] + ".svg"
    return ("To generate the flame graph, running THIS shell command:\n\n"
            f"  flamegraph.pl {path} > {svg}\n\n")
