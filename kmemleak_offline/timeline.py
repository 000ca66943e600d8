"""Who was who, when: comm history per thread from `comm` and `fork` rows.

perf-prof resolves comms when it prints (so exited tasks become `<...>`); offline we know the
history, so a comm is looked up as it was at the given time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

UNKNOWN_COMM = "<...>"


class CommTimeline:
    """Vectorised `comm of tid at time t` lookups."""

    def __init__(self, comm_rows: pa.Table, fork_rows: pa.Table | None = None) -> None:
        c = _frame(comm_rows, ["time", "tid", "comm"])
        c = c[c["comm"].notna() & c["tid"].notna()]
        if fork_rows is not None and fork_rows.num_rows:
            c = _inherit_from_parents(c, _frame(fork_rows, ["time", "tid", "ptid"]))
        c = c.assign(time=c["time"].fillna(0).astype(np.int64), tid=c["tid"].astype(np.int64))
        self._rows = c.sort_values(["time", "tid"], kind="stable").reset_index(drop=True)

    def comm(self, tids: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Comm of each tid as of each time (object array; `<...>` when never seen)."""
        n = len(tids)
        if n == 0:
            return np.zeros(0, dtype=object)
        q = pd.DataFrame({"time": np.asarray(times).astype(np.int64),
                          "tid": np.asarray(tids).astype(np.int64), "q": np.arange(n)})
        q = q.sort_values("time", kind="stable")
        if len(self._rows) == 0:
            return np.full(n, UNKNOWN_COMM, dtype=object)
        back = pd.merge_asof(q, self._rows, on="time", by="tid", direction="backward")
        missing = back["comm"].isna().to_numpy()
        if missing.any():  # thread seen only later (e.g. comm set after the sample): take its first name
            fwd = pd.merge_asof(q[missing], self._rows, on="time", by="tid", direction="forward")
            back.loc[missing, "comm"] = fwd["comm"].to_numpy()
        out = np.empty(n, dtype=object)
        out[back["q"].to_numpy()] = back["comm"].fillna(UNKNOWN_COMM).to_numpy(dtype=object)
        return out


def _frame(table: pa.Table, cols: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: table.column(c).to_pandas() for c in cols})


def _inherit_from_parents(comms: pd.DataFrame, forks: pd.DataFrame, passes: int = 8) -> pd.DataFrame:
    """A forked thread carries its parent's comm from the fork until it renames itself."""
    forks = forks.dropna().astype({"time": np.int64, "tid": np.int64, "ptid": np.int64})
    forks = forks[forks["tid"] != forks["ptid"]].sort_values("time", kind="stable")
    known = comms.assign(time=comms["time"].fillna(0).astype(np.int64), tid=comms["tid"].astype(np.int64))
    done = np.zeros(len(forks), dtype=bool)
    for _ in range(passes):  # each pass resolves one more generation of fork chains
        if done.all():
            break
        rows = known.sort_values("time", kind="stable")
        todo = forks[~done].rename(columns={"tid": "child", "ptid": "tid"})
        got = pd.merge_asof(todo, rows[["time", "tid", "comm"]], on="time", by="tid",
                            direction="backward")
        ok = got["comm"].notna().to_numpy()
        if not ok.any():
            break
        new = pd.DataFrame({"time": got["time"][ok].to_numpy(), "tid": got["child"][ok].to_numpy(),
                            "comm": got["comm"][ok].to_numpy()})
        known = pd.concat([known, new], ignore_index=True)
        idx = np.flatnonzero(~done)
        done[idx[ok]] = True
    return known
