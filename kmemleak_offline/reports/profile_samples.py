"""Leaked memory as profile samples, for the profiler formats (pprof, speedscope).

One sample per (call chain, process, comm) over every report: the leaked bytes and objects the
text report's groups show, split by the process that allocated them and its comm (the text
report's groups are per chain only). Computed from the reports' leaked entries, columns in,
columns out; only the frames of each distinct (chain, process) are resolved, once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..analysis import LEAKED_BYTES, Analysis
from ..symbols.callchain import Frame, StackResolver

NO_CHAIN = "[no call chain recorded]"


@dataclass
class ProfileSample:
    frames: list[Frame]  # leaf first; [] = no call chain recorded
    pid: int
    comm: str
    bytes: int  # 0 in event-list mode (no sizes)
    objects: int


def profile_samples(a: Analysis, stacks: StackResolver) -> list[ProfileSample]:
    """Every leaked (selected) entry of every report, summed per (stack, pid, comm); heaviest
    first (bytes, then objects), then by pid, comm and stack for a stable order."""
    parts = []
    for r in a.reports:
        pos = r.positions[r.selected]
        if not len(pos):
            continue
        col = r.stream.column
        pid = col("pid", pos).astype(np.int64, copy=False)
        df = pd.DataFrame({
            "sid": col("stack_id", pos).astype(np.int64, copy=False), "pid": pid,
            # the comm as the text report's --comm line names it: the process's, at alloc time
            "comm": a.comms.comm(pid, col("time", pos)),
            "bytes": col("size", pos).astype(np.int64) if a.mode == LEAKED_BYTES else 0,
            "time": r.time_ns})
        parts.append(df.groupby(["sid", "pid", "comm"], sort=False)
                     .agg(bytes=("bytes", "sum"), objects=("bytes", "size"), time=("time", "first"))
                     .reset_index())
    if not parts:
        return []
    # one row per key over all reports; frames resolve at the first report's time that had it
    df = (pd.concat(parts, ignore_index=True)
          .groupby(["sid", "pid", "comm"], sort=False)
          .agg(bytes=("bytes", "sum"), objects=("objects", "sum"), time=("time", "first"))
          .reset_index()
          .sort_values(["bytes", "objects", "pid", "comm", "sid"],
                       ascending=[False, False, True, True, True], kind="stable"))
    return [ProfileSample(stacks.frames(s, p, t) if s >= 0 else [], p, c, b, n)
            for s, p, c, b, n, t in zip(df["sid"].tolist(), df["pid"].tolist(),
                                        df["comm"].tolist(), df["bytes"].tolist(),
                                        df["objects"].tolist(), df["time"].tolist(), strict=True)]
