"""The machine: processes and threads over time, from the recording's side-band rows.

Like Linux perf's util/machine.c + thread.c + maps: one timeline per pid/tid, built once from the
`comm`, `fork`, `exit` and `mmap` rows, answering for many queries at once:

- the comm of a thread at a time: a forked thread carries its parent's comm from the fork until it
  renames itself; a thread seen only later takes its first name; `<...>` when never seen (perf-prof
  resolves comms when it prints, so exited tasks become `<...>`; offline we know the history);
- the mapping of a process covering an address at a time. A process made by fork() without exec
  starts with a copy of its parent's maps as of the fork (perf: thread__clone_maps ->
  maps__copy_from; the kernel reports no new mmap for inherited maps), an exec (a `comm` row with
  exec=true) starts a fresh map set, and a new mapping adds to the set of its process. Among the
  mappings alive at the time, the latest recorded wins; when none covers the address (a mapping
  recorded a little late), the earliest covering one the process itself mapped after the time
  (copies made by a fork are exact as of the fork, never late).

Mappings are rows of the recording's `mmap` rows (those naming a file: path starting with `/`);
`find_mappings` returns row indices into `Maps`, whose DSO codes key the symbol tables by
(path, build-id) (symbols/user.py).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ..load import column_array

UNKNOWN_COMM = "<...>"
_NEVER = np.iinfo(np.uint64).max  # "until" of a mapping no exec or fork ended
_CHUNK = 4096


def _pylist(col: Any) -> list:
    if isinstance(col, pa.ChunkedArray | pa.Array):
        if pa.types.is_dictionary(col.type):
            col = col.cast(pa.string())
        return col.to_pylist()
    return list(col)


def _col(table: pa.Table | None, name: str, dtype, fill: int = 0) -> np.ndarray:
    if table is None or name not in table.column_names:
        return np.full(0 if table is None else table.num_rows, fill, dtype)
    return column_array(table.column(name), dtype, fill)


class Maps:
    """The file mappings of every process over time (perf's maps per thread, with history)."""

    def __init__(self, mmap: pa.Table | None, comm: pa.Table | None = None,
                 fork: pa.Table | None = None) -> None:
        n_all = 0 if mmap is None else mmap.num_rows
        files = _pylist(mmap.column("filename")) if n_all else []
        idx = np.flatnonzero(np.array([isinstance(f, str) and f.startswith("/") for f in files], bool))
        self.pid = _col(mmap, "pid", np.int64)[idx]
        self.start = _col(mmap, "addr", np.uint64)[idx]
        self.end = self.start + _col(mmap, "len", np.uint64)[idx]
        self.pgoff = _col(mmap, "pgoff", np.uint64)[idx]
        self.time = _col(mmap, "time", np.uint64)[idx]
        bids = _pylist(mmap.column("build_id")) if n_all else []
        self.file = np.array([files[i] for i in idx], dtype=object)
        self.build_id = np.array([bids[i] or None for i in idx], dtype=object)
        keys = list(zip(self.file.tolist(), self.build_id.tolist(), strict=True))
        self.dso_keys: list[tuple[str, bytes | None]] = list(dict.fromkeys(keys))
        code_of = {k: i for i, k in enumerate(self.dso_keys)}
        self.dso = np.array([code_of[k] for k in keys], dtype=np.int64)
        seq = _col(mmap, "seq", np.uint64)[idx] if n_all else np.zeros(0, np.uint64)
        has_seq = (mmap.column("seq").is_valid().to_numpy(zero_copy_only=False)[idx]
                   if n_all and "seq" in mmap.column_names else np.zeros(len(idx), bool))
        self._entries(comm, fork, seq, has_seq)

    def __len__(self) -> int:
        return len(self.start)

    def _entries(self, comm, fork, seq, has_seq) -> None:
        """Who had which mapping when: (pid, row, from, until, own) per entry, from the events in
        time order (exec ends a process's map set, fork copies the parent's set into the child's;
        own: mapped by the process itself, not a fork's copy)."""
        n = len(self.start)
        ex_t = _col(comm, "time", np.uint64)
        ex = np.zeros(len(ex_t), bool)
        if comm is not None and "exec" in comm.column_names and comm.num_rows:
            ex = comm.column("exec").fill_null(False).to_numpy(zero_copy_only=False).astype(bool)
        ex_pid, ex_t = _col(comm, "pid", np.int64)[ex], ex_t[ex]
        ex_seq, ex_has = _col(comm, "seq", np.uint64)[ex], _valid(comm, "seq")[ex]
        f_pid, f_ppid = _col(fork, "pid", np.int64, -1), _col(fork, "ppid", np.int64, -1)
        f = (f_pid != f_ppid) & (f_pid >= 0) & (f_ppid >= 0)  # new processes, not threads
        f_pid, f_ppid = f_pid[f], f_ppid[f]
        f_t, f_seq, f_has = _col(fork, "time", np.uint64)[f], _col(fork, "seq", np.uint64)[f], \
            _valid(fork, "seq")[f]
        if not len(ex_t) and not len(f_t):  # every mapping is its own process's, for ever
            self.e_pid, self.e_row = self.pid, np.arange(n)
            self.e_from, self.e_until = self.time, np.full(n, _NEVER, np.uint64)
            self.e_own = np.ones(n, bool)
            return
        # events sorted by (time, seq; rows without seq - read from /proc - first, kind: exec,
        # fork, mmap), one Python step each: side-band rows are few
        kind = np.concatenate([np.zeros(len(ex_t)), np.ones(len(f_t)), np.full(n, 2)]).astype(np.int8)
        t = np.concatenate([ex_t, f_t, self.time])
        sq = np.concatenate([ex_seq, f_seq, seq])
        has = np.concatenate([ex_has, f_has, has_seq])
        who = np.concatenate([ex_pid, f_pid, self.pid])
        arg = np.concatenate([np.zeros(len(ex_t), np.int64), f_ppid, np.arange(n)])
        order = np.lexsort((kind, sq, has, t))
        cur: dict[int, list[int]] = {}
        e_pid: list[int] = []
        e_row: list[int] = []
        e_from: list[int] = []
        e_until: list[int] = []
        own: list[int] = []
        for k, tt, p, a in zip(kind[order].tolist(), t[order].tolist(), who[order].tolist(),
                               arg[order].tolist(), strict=True):
            if k == 2:  # a new mapping of process p
                cur.setdefault(p, []).append(len(e_pid))
                own.append(len(e_pid))
                e_pid.append(p), e_row.append(a), e_from.append(tt), e_until.append(int(_NEVER))
                continue
            for e in cur.pop(p, []):  # exec, or fork into p (a reused pid): p's maps end here
                e_until[e] = tt
            if k == 1:  # fork of p from a: a copy of a's maps as they are now
                cur[p] = list(range(len(e_pid), len(e_pid) + len(cur.get(a, []))))
                for e in cur.get(a, []):
                    e_pid.append(p), e_row.append(e_row[e]), e_from.append(tt)
                    e_until.append(int(_NEVER))
        self.e_pid = np.array(e_pid, np.int64)
        self.e_row = np.array(e_row, np.int64)
        self.e_from = np.array(e_from, np.uint64)
        self.e_until = np.array(e_until, np.uint64)
        self.e_own = np.arange(len(e_pid)) < 0
        self.e_own[np.array(own, np.int64)] = True

    @functools.cached_property
    def _by_pid(self) -> tuple[np.ndarray, ...]:
        """Entries grouped by pid, sorted once: (pids, rows, start, end, from, until, own, rank),
        where rank orders the mapping rows by (time, row): the later mapping of two wins."""
        n = len(self.time)
        rank = np.empty(n, np.int64)
        rank[np.lexsort((np.arange(n), self.time))] = np.arange(n)
        o = np.argsort(self.e_pid, kind="stable")
        rows = self.e_row[o]
        return (self.e_pid[o], rows, self.start[rows], self.end[rows], self.e_from[o],
                self.e_until[o], self.e_own[o], rank[rows])

    def find(self, pid: np.ndarray, addr: np.ndarray, time: np.ndarray) -> np.ndarray:
        """Row of each address's mapping in process pid at time, -1 if none (see the module doc)."""
        pid = np.asarray(pid, np.int64)
        addr = np.asarray(addr, np.uint64)
        time = np.asarray(time, np.uint64)
        out = np.full(len(addr), -1, np.int64)
        if not len(addr) or not len(self.e_pid):
            return out
        pids, rows, start, end, vfrom, vuntil, vown, rank = self._by_pid
        if (pid == pid[0]).all():  # the usual call: one chain, one process
            upid, by, bounds = pid[:1], np.arange(len(pid)), [0, len(pid)]
        else:
            upid, inv = np.unique(pid, return_inverse=True)
            inv = inv.reshape(-1)
            by = np.argsort(inv, kind="stable")  # queries grouped by process
            bounds = np.searchsorted(inv[by], np.arange(len(upid) + 1)).tolist()
        lo = np.searchsorted(pids, upid, side="left").tolist()
        hi = np.searchsorted(pids, upid, side="right").tolist()
        for i in range(len(upid)):  # loop over processes, vectorised within
            a_, b_ = lo[i], hi[i]
            if a_ == b_:
                continue
            q = by[bounds[i]:bounds[i + 1]]
            m = rows[a_:b_]
            m_start, m_end = start[a_:b_][None, :], end[a_:b_][None, :]
            m_from, m_until, r = vfrom[a_:b_][None, :], vuntil[a_:b_][None, :], rank[a_:b_][None, :]
            m_own = vown[a_:b_][None, :]
            step = max(64, min(_CHUNK, (1 << 22) // len(m)))  # bounds the (queries, entries) matrices
            for c in range(0, len(q), step):
                qq = q[c:c + step]
                a, t = addr[qq][:, None], time[qq][:, None]
                cover = (m_start <= a) & (a < m_end)
                alive = np.where(cover & (m_from <= t) & (t < m_until), r, -1)
                best = alive.argmax(axis=1)
                got = alive.max(axis=1) >= 0
                late_ok = cover & m_own & (m_from > t)
                late = np.where(late_ok, -r, -np.iinfo(np.int64).max)
                best_late = late.argmax(axis=1)
                got_late = late_ok.any(axis=1)
                out[qq] = np.where(got, m[best], np.where(got_late, m[best_late], -1))
        return out


def _valid(table: pa.Table | None, name: str) -> np.ndarray:
    if table is None or name not in table.column_names:
        return np.zeros(0 if table is None else table.num_rows, bool)
    return table.column(name).is_valid().to_numpy(zero_copy_only=False).astype(bool)


class Machine:
    """Threads and processes of one recording over time: comms and maps (see the module doc).

    Built from the side-band tables of `load.load_side` (or any tables with those columns); the
    maps are built on first use (only stacks with user frames need them).
    """

    def __init__(self, comm: pa.Table | None = None, fork: pa.Table | None = None,
                 mmap: pa.Table | None = None, exit: pa.Table | None = None) -> None:
        self._comm_t, self._fork_t, self._mmap_t, self._exit_t = comm, fork, mmap, exit

    @functools.cached_property
    def _comms(self) -> pd.DataFrame:
        """(time, tid, comm) rows sorted by time, forked threads inheriting their parent's comm;
        built on first use (a report that names no comm never pays for it)."""
        comm, fork = self._comm_t, self._fork_t
        c = (_frame(comm, ["time", "tid", "comm"]) if comm is not None
             else pd.DataFrame({"time": [], "tid": [], "comm": []}))
        c = c[c["comm"].notna() & c["tid"].notna()]
        if fork is not None and fork.num_rows:
            c = _inherit_from_parents(c, _frame(fork, ["time", "tid", "ptid"]))
        c = c.assign(time=c["time"].fillna(0).astype(np.int64), tid=c["tid"].astype(np.int64))
        return c.sort_values(["time", "tid"], kind="stable").reset_index(drop=True)

    @classmethod
    def from_side(cls, side: dict[str, pa.Table]) -> Machine:
        return cls(side.get("comm"), side.get("fork"), side.get("mmap"), side.get("exit"))

    @classmethod
    def from_recording(cls, rec: Any) -> Machine:
        from ..load import load_side

        return cls.from_side(load_side(rec))

    # ---- comms ----------------------------------------------------------------------------------
    def comm(self, tids: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Comm of each tid as of each time (object array; `<...>` when never seen)."""
        n = len(tids)
        if n == 0:
            return np.zeros(0, dtype=object)
        q = pd.DataFrame({"time": np.asarray(times).astype(np.int64),
                          "tid": np.asarray(tids).astype(np.int64), "q": np.arange(n)})
        q = q.sort_values("time", kind="stable")
        if len(self._comms) == 0:
            return np.full(n, UNKNOWN_COMM, dtype=object)
        back = pd.merge_asof(q, self._comms, on="time", by="tid", direction="backward")
        missing = back["comm"].isna().to_numpy()
        if missing.any():  # thread seen only later (e.g. comm set after the sample): take its first name
            fwd = pd.merge_asof(q[missing], self._comms, on="time", by="tid", direction="forward")
            back.loc[missing, "comm"] = fwd["comm"].to_numpy()
        out = np.empty(n, dtype=object)
        out[back["q"].to_numpy()] = back["comm"].fillna(UNKNOWN_COMM).to_numpy(dtype=object)
        return out

    # ---- maps -----------------------------------------------------------------------------------
    @functools.cached_property
    def maps(self) -> Maps:
        return Maps(self._mmap_t, self._comm_t, self._fork_t)

    def find_mappings(self, pid: np.ndarray, addr: np.ndarray, time: np.ndarray) -> np.ndarray:
        """Row in `maps` of each address's mapping in process pid at time, -1 if none."""
        return self.maps.find(pid, addr, time)


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
