"""Offline user-space symbolisation from the recording's `mmap` timeline (and embedded `usym` rows).

address + pid + time -> the mapping that pid had there at that time (latest `mmap` row at or before
the time) -> file offset -> ELF virtual address via PT_LOAD -> function symbol by binary search.
Symbol sources per file, in order: embedded `usym` rows (so a recording analyses on a machine
without the binaries), `--symfs DIR`, debug files by build-id (/usr/lib/debug/.build-id, ~/.debug),
then the file itself if its build-id matches the recorded one (or none was recorded).

`usym` rows named `[PT_LOAD offset=0x...]` carry the file's segments (addr = p_vaddr,
len = p_filesz, the name holds p_offset: docs/format.md keeps `pgoff` for mmap rows), needed to turn
file offsets into symbol addresses without the file. Recordings of an earlier writer named them
`[PT_LOAD]` with p_offset in `pgoff`; both are read.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from kmemleak_offline.format.elf import SymbolTable, debug_candidates, load_symbols, read_build_id
from kmemleak_offline.format.symrows import SEGMENT_PREFIX
from kmemleak_offline.load import column_array


def _segment_offsets(names: np.ndarray, pgoff: np.ndarray, has_pgoff: np.ndarray) -> np.ndarray:
    """p_offset of each segment row: from its name, else (earlier writer) from `pgoff`."""
    out = pgoff.copy()
    for i, name in enumerate(names.tolist()):  # a few rows per ELF file, not per event
        if not has_pgoff[i] and "offset=" in name:
            out[i] = int(name.split("offset=", 1)[1].rstrip("]"), 16)
    return out
_CHUNK = 4096


def _pylist(col: Any) -> list:
    if isinstance(col, pa.ChunkedArray | pa.Array):
        if pa.types.is_dictionary(col.type):
            col = col.cast(pa.string())
        return col.to_pylist()
    return list(col)


_demangled: dict[str, str] = {}


def demangle(names: Iterable[str]) -> dict[str, str]:
    """C++ (Itanium) names -> demangled, with one `c++filt` call for all new names; identity if absent."""
    todo = sorted({n for n in names if n and n.startswith("_Z") and n not in _demangled})
    if todo:
        out = None
        exe = shutil.which("c++filt")
        if exe:
            try:
                res = subprocess.run([exe], input="\n".join(todo) + "\n", capture_output=True,
                                     text=True, timeout=60, check=False)
                out = res.stdout.splitlines()
            except (OSError, subprocess.SubprocessError):
                out = None
        if out is None or len(out) != len(todo):
            out = todo
        _demangled.update(zip(todo, out, strict=True))
    return {n: _demangled.get(n, n) for n in names if n}


@dataclass
class UserSymbolizer:
    """Resolves user addresses of a recording; build once per analysis (caches per file)."""

    mmaps: pa.Table  # kind=mmap rows: time, pid, addr, len, pgoff, filename, build_id
    usyms: pa.Table | None = None  # kind=usym rows: filename, build_id, addr, len, pgoff, name
    symfs: str | None = None
    use_local_files: bool = True  # False: only embedded rows (tests, strict offline)
    demangle: bool = True
    _tables: dict[tuple[str, bytes | None], SymbolTable | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        m = self.mmaps
        files = _pylist(m.column("filename"))
        keep = np.array([isinstance(f, str) and f.startswith("/") for f in files], bool)
        idx = np.flatnonzero(keep)
        self.m_pid = column_array(m.column("pid"), np.int64)[idx]
        self.m_start = column_array(m.column("addr"), np.uint64)[idx]
        self.m_end = self.m_start + column_array(m.column("len"), np.uint64)[idx]
        self.m_pgoff = column_array(m.column("pgoff"), np.uint64)[idx]
        self.m_time = column_array(m.column("time"), np.uint64)[idx]
        bids = _pylist(m.column("build_id"))
        self.m_file = np.array([files[i] for i in idx], dtype=object)
        self.m_bid = np.array([bids[i] or None for i in idx], dtype=object)
        keys = list(zip(self.m_file.tolist(), self.m_bid.tolist(), strict=True))
        uniq = list(dict.fromkeys(keys))
        self.dso_keys: list[tuple[str, bytes | None]] = uniq
        code_of = {k: i for i, k in enumerate(uniq)}
        self.m_dso = np.array([code_of[k] for k in keys], dtype=np.int64)
        self._usym_index: dict[str, list[int]] = {}
        if self.usyms is not None and self.usyms.num_rows:
            for i, f in enumerate(_pylist(self.usyms.column("filename"))):
                self._usym_index.setdefault(f, []).append(i)

    # ---- symbol sources -------------------------------------------------------------------------
    def _embedded(self, filename: str, bid: bytes | None) -> SymbolTable | None:
        rows = self._usym_index.get(filename)
        if not rows:
            return None
        t = self.usyms.take(pa.array(rows))
        rbids = _pylist(t.column("build_id"))
        names = np.array(_pylist(t.column("name")), dtype=object)
        ok = np.array([bid is None or b is None or b == bid for b in rbids], bool)
        if not ok.any():
            return None
        addr = column_array(t.column("addr"), np.uint64)
        ln = column_array(t.column("len"), np.uint64)
        seg = ok & np.array([str(nm).startswith(SEGMENT_PREFIX) for nm in names], bool)
        sym = ok & ~seg
        pg = _segment_offsets(names[seg], column_array(t.column("pgoff"), np.uint64)[seg],
                              t.column("pgoff").is_valid().to_numpy(zero_copy_only=False)[seg])
        segments = np.stack([addr[seg], ln[seg], pg, ln[seg]], axis=1)
        return SymbolTable.build(addr[sym], ln[sym], names[sym], segments)

    def _from_files(self, filename: str, bid: bytes | None) -> SymbolTable | None:
        real = None
        real_bid = read_build_id(filename)
        if bid is None or real_bid == bid:
            real = load_symbols(filename)
        for cand in debug_candidates(bid, filename, self.symfs):
            c = str(cand)
            if not cand.is_file():
                continue
            cbid = read_build_id(c)
            if bid is not None and cbid is not None and cbid != bid:
                continue
            t = load_symbols(c)
            if t is None or len(t.addrs) == 0:
                continue
            return SymbolTable.build(t.addrs, t.sizes, t.names, self._segments_for(filename, bid, real, t))
        return real

    def _segments_for(self, filename: str, bid: bytes | None, real: SymbolTable | None,
                      debug: SymbolTable) -> np.ndarray:
        """Runtime segments: from the real file, else the embedded rows, else guessed from the debug file.

        Debug files keep p_vaddr but rewrite p_offset; the guess assumes offset = vaddr - first vaddr,
        which holds for the usual linker layouts.
        """
        if real is not None and len(real.segments):
            return real.segments
        emb = self._embedded(filename, bid)
        if emb is not None and len(emb.segments):
            return emb.segments
        seg = debug.segments.copy()
        if len(seg):
            seg[:, 2] = seg[:, 0] - seg[:, 0].min()
            seg[:, 3] = seg[:, 1]
        return seg

    def table_for(self, filename: str, bid: bytes | None) -> SymbolTable | None:
        """The best symbol table for one mapped file (cached)."""
        key = (filename, bid)
        if key not in self._tables:
            t = self._embedded(filename, bid)
            if (t is None or len(t.addrs) == 0) and self.use_local_files:
                t = self._from_files(filename, bid) or t
            self._tables[key] = t
        return self._tables[key]

    # ---- resolution -----------------------------------------------------------------------------
    @functools.cached_property
    def _by_pid(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The mmap rows grouped by pid, sorted once: (pids, rows, start, end, time, rank), where
        rank orders rows by (time, row) (the later mapping of two wins)."""
        n = len(self.m_time)
        rank = np.empty(n, np.int64)
        rank[np.lexsort((np.arange(n), self.m_time))] = np.arange(n)
        rows = np.argsort(self.m_pid, kind="stable")
        return (self.m_pid[rows], rows, self.m_start[rows], self.m_end[rows], self.m_time[rows],
                rank[rows])

    def find_mappings(self, pid: np.ndarray, addr: np.ndarray, time: np.ndarray) -> np.ndarray:
        """Index into the mmap rows of each address's mapping, -1 if none.

        The latest mapping of that pid covering addr at or before time; failing that (a mapping
        recorded a little late), the earliest covering one.
        """
        pid = np.asarray(pid, np.int64)
        addr = np.asarray(addr, np.uint64)
        time = np.asarray(time, np.uint64)
        out = np.full(len(addr), -1, np.int64)
        if not len(addr):
            return out
        pids, rows, start, end, mtime, rank = self._by_pid
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
            m_time, r = mtime[a_:b_][None, :], rank[a_:b_][None, :]
            step = max(64, min(_CHUNK, (1 << 22) // len(m)))  # bounds the (queries, mappings) matrices
            for c in range(0, len(q), step):
                qq = q[c:c + step]
                a, t = addr[qq][:, None], time[qq][:, None]
                cover = (m_start <= a) & (a < m_end)
                before = np.where(cover & (m_time <= t), r, -1)
                best = before.argmax(axis=1)
                got = before.max(axis=1) >= 0
                late = np.where(cover, -r, -np.iinfo(np.int64).max)
                best_late = late.argmax(axis=1)
                got_late = cover.any(axis=1)
                out[qq] = np.where(got, m[best], np.where(got_late, m[best_late], -1))
        return out

    def resolve(self, pid: np.ndarray, addr: np.ndarray, time: np.ndarray,
                is_return: np.ndarray | bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(symbol name or None, offset from symbol start, mapped file or None) per address.

        Return addresses are looked up at addr-1 (the call, not the next statement), but the offset
        is reported from the address itself, as perf does.
        """
        addr = np.asarray(addr, np.uint64)
        n = len(addr)
        is_ret = np.broadcast_to(np.asarray(is_return, bool), (n,))
        names = np.full(n, None, dtype=object)
        offs = np.zeros(n, np.uint64)
        dsos = np.full(n, None, dtype=object)
        mi = self.find_mappings(pid, addr, time)
        has = mi >= 0
        dsos[has] = self.m_file[mi[has]]
        hit = np.flatnonzero(has)
        codes = self.m_dso[mi[hit]]
        for code in np.unique(codes):  # loop over distinct mapped files
            rows = hit[codes == code]
            fname, bid = self.dso_keys[code]
            t = self.table_for(fname, bid)
            if t is None or len(t.addrs) == 0:
                continue
            m = mi[rows]
            foff = addr[rows] - self.m_start[m] + self.m_pgoff[m]
            vaddr, found = t.offset_to_vaddr(foff)
            look = vaddr - (is_ret[rows] & (vaddr > 0)).astype(np.uint64)
            si, sstart = t.lookup(look)
            ok = found & (si >= 0)
            names[rows[ok]] = t.names[si[ok]]
            offs[rows[ok]] = vaddr[ok] - sstart[ok]
        if self.demangle and n:
            found = names.tolist()
            dm = demangle(dict.fromkeys(x for x in found if x is not None))
            if any(k != v for k, v in dm.items()):
                names = np.array([dm.get(x, x) if x is not None else None for x in found], dtype=object)
        return names, offs, dsos


def from_recording(rec: Any, symfs: str | None = None, use_local_files: bool = True) -> UserSymbolizer:
    """A symbolizer over a Recording's mmap and usym rows."""
    mm = rec.table(["mmap"], ["time", "pid", "addr", "len", "pgoff", "filename", "build_id"])
    us = rec.table(["usym"], ["filename", "build_id", "addr", "len", "pgoff", "name"])
    return UserSymbolizer(mm, us, symfs=symfs, use_local_files=use_local_files)
