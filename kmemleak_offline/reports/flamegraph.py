"""Folded stacks (`root;...;leaf weight`) for flamegraph.pl, from the reported leaks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis import LEAKED_BYTES, Analysis
from ..symbols.callchain import StackResolver


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
            gs = [g for g in r.groups if g.stack_id >= 0]
            roots = (a.comms.comm(np.array([g.pid for g in gs], np.int64),
                                  np.full(len(gs), r.time_ns, np.int64)).tolist()
                     if a.per_task else [None] * len(gs))
            for g, root in zip(gs, roots, strict=True):
                acc[_path(stacks, g.stack_id, g.user_pid, r.time_ns, root)] += g.bytes
            continue
        ents = r.entries[r.entries["selected"] & (r.entries["stack_id"] >= 0)]
        if not len(ents):
            continue
        # one step per distinct (stack, pid, root), in order of first appearance: the frames of a
        # (stack, pid) are resolved once, at the time first asked, so the first entry's time
        # stands for its group
        sid, pid, t = (ents[c].to_numpy() for c in ("stack_id", "pid", "time"))
        key = pd.DataFrame({"sid": sid, "pid": pid})
        roots = None
        if a.per_task:
            roots = a.comms.comm(ents["tid"].to_numpy(), t)
            key["root"] = pd.factorize(roots)[0]
        grp = key.groupby(list(key.columns), sort=False).ngroup().to_numpy()
        first = np.flatnonzero(~key.duplicated().to_numpy())  # ascending: first appearance
        counts = np.bincount(grp)[grp[first]].tolist()
        for s, p, tt, root, n in zip(sid[first].tolist(), pid[first].tolist(), t[first].tolist(),
                                     roots[first].tolist() if roots is not None else [None] * len(first),
                                     counts, strict=True):
            acc[_path(stacks, s, p, tt, root)] += n
    return acc


def _path(stacks: StackResolver, sid: int, pid: int, t: int, root: str | None) -> str:
    names = [f.symbol or "Unknown" for f in stacks.frames(sid, pid, t)]
    names.reverse()
    if root is not None:
        names.insert(0, root)
    return ";".join(names)


def _lines(acc: Counter[str]) -> list[str]:
    return [f"{line} {weight}\n" for line, weight in sorted(acc.items(), key=lambda kv: (-kv[1], kv[0]))]


def render(a: Analysis, stacks: StackResolver, out, opts) -> None:
    """The reporter entry point (reports.FORMATS): folded stacks, heaviest first."""
    out.writelines(_lines(folded(a, stacks)))


def write_folded(a: Analysis, stacks: StackResolver, target: str) -> Path | None:
    """Write the folded file (--flame-graph, as perf-prof); returns its path when non-empty (then
    the hint is printed)."""
    path = folded_path(target)
    acc = folded(a, stacks)
    with open(path, "w") as f:
        f.writelines(_lines(acc))
    return path if acc else None


def hint(path: Path) -> str:
    svg = str(path)[: -len(".folded")] + ".svg"
    return ("To generate the flame graph, running THIS shell command:\n\n"
            f"  flamegraph.pl {path} > {svg}\n\n")
