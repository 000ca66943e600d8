"""One recording -> its leak summary: small Parquet tables, `sites` (one row per call chain and
comm) and `stacks` (the frames of each chain, with this recording's addresses, once per chain).

Runs where the recording is (a local worker process, or a Dask worker that reads the file
itself): the recording is analysed as `analyze` does (one process, no nested workers), every
report's leaked allocations are reduced per symbolised call chain - frames keyed by (symbol,
offset, dso), never by address, as `diff` keys them - and comm, and only that table travels.
A recording that cannot be read or analysed gives an error line instead (the fleet goes on).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import __version__
from ..diff import NO_CHAIN, frame_key
from ..symbols.callchain import Frame, StackResolver

FRAME = pa.struct([("addr", pa.uint64()), ("symbol", pa.string()), ("offset", pa.uint64()),
                   ("dso", pa.string()), ("context", pa.string())])
SITES_SCHEMA = pa.schema([
    ("recording", pa.string()),  # the recording as named in the fleet's reports
    ("host", pa.string()),  # metadata host.hostname
    ("kernel", pa.string()),  # metadata host.kernel_release
    ("comm", pa.string()),  # process name at allocation time
    ("chain_id", pa.string()),  # 16 hex digits: blake2b-64 of `chain`
    ("chain", pa.string()),  # "symbol+0xoffset (dso)" per frame, leaf first, one per line
    ("bytes", pa.int64()),  # leaked, summed over every report (early ones included)
    ("objects", pa.int64()),
    ("first_ns", pa.uint64()),  # first/last leaked allocation, perf clock of the recording
    ("last_ns", pa.uint64()),
    ("first_time", pa.timestamp("ns", tz="UTC")),  # the same on the wall clock (null: no anchor)
    ("last_time", pa.timestamp("ns", tz="UTC")),
    ("trend", pa.string()),  # growing | bounded | insufficient | null (docs/trends.md)
    ("slope_bytes_per_s", pa.float64()),
    ("trend_confidence", pa.float64()),
])
STACKS_SCHEMA = pa.schema([
    ("recording", pa.string()),
    ("chain_id", pa.string()),
    ("stack", pa.list_(FRAME)),  # the frames, leaf first, with this recording's addresses
])


@dataclass
class Summary:
    """What a worker sends back: the recording's facts, its sites and stacks as Parquet bytes
    (None when the recording could not be analysed: `error` says why)."""

    index: int
    label: str
    info: dict[str, Any] = field(default_factory=dict)
    sites: bytes | None = None
    stacks: bytes | None = None
    error: str | None = None


def chain_text(frames: list[Frame]) -> str:
    if not frames:
        return NO_CHAIN[0]
    return "\n".join(f"{s}+0x{o:x} ({d})" for s, o, d in
                     (frame_key(f.symbol, f.offset, f.dso) for f in frames))


def chain_id(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def summarise(index: int, label: str, path: str, remote: bool = False,
              tmpdir: str | None = None) -> Summary:
    """The summary of one recording; never raises for a bad recording (error instead)."""
    t0 = time.perf_counter()
    local = None
    try:
        if remote:
            local = tempfile.mkdtemp(prefix="kmlo-fleet-", dir=tmpdir)
            path = _fetch(path, local)
        info, sites, stacks = _summarise(label, path)
        info["seconds"] = round(time.perf_counter() - t0, 3)
        info["worker"] = f"{socket.gethostname()}:{os.getpid()}"
        return Summary(index, label, info, _parquet(sites), _parquet(stacks))
    except Exception as exc:  # noqa: BLE001 - one unreadable recording must not stop the fleet
        from ..format.recording import RecordingError
        from ..roles import AnalysisError

        known = isinstance(exc, (RecordingError, AnalysisError, OSError, ValueError))
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        for prefix in (f"{path}: ", f"{label}: "):  # the label is said once, by the caller
            msg = msg.removeprefix(prefix)
        return Summary(index, label, {"analyser_version": __version__},
                       error=msg if known else f"internal error: {type(exc).__name__}: {msg}")
    finally:
        if local is not None:
            shutil.rmtree(local, ignore_errors=True)


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _fetch(url: str, into: str) -> str:
    """A remote recording copied to a local folder (the analysis reads row groups many times,
    in any order); returns the local path."""
    import fsspec

    fs, rpath = fsspec.core.url_to_fs(url)
    name = os.path.basename(rpath.rstrip("/")) or "recording.parquet"
    dest = os.path.join(into, name)
    if fs.isdir(rpath):
        fs.get(rpath.rstrip("/") + "/", dest + "/", recursive=True)
    else:
        fs.get_file(rpath, dest)
    return dest


def _summarise(label: str, path: str) -> tuple[dict[str, Any], pa.Table, pa.Table]:
    from ..analysis import LEAKED_BYTES, AnalyzeOptions, analyze
    from ..commands.analyze import user_resolver
    from ..format.recording import open_recording

    rec = open_recording(path)
    warnings: list[str] = []
    a = analyze(rec, AnalyzeOptions(trend=True, jobs=1, progress=False, warn=warnings.append))
    stacks = StackResolver(a.stacks, a.ksyms, user_resolver(a, None))
    host = rec.meta.host
    table, frames = _sites(a, stacks, label, host.hostname, host.kernel_release,
                           a.mode == LEAKED_BYTES)
    info = {
        "recording": label, "host": host.hostname, "kernel": host.kernel_release,
        "machine": host.machine, "mode": a.mode,
        "events": int(a.result.total_alloc + a.result.total_free),
        "total_alloc": int(a.result.total_alloc), "total_free": int(a.result.total_free),
        "lost": int(a.lost_total), "start_ns": int(a.start_ns), "stop_ns": int(a.stop_ns),
        "duration_s": max(int(a.stop_ns) - int(a.start_ns), 0) / 1e9,
        "chains": len(set(table.column("chain_id").to_pylist())),
        "leaked_bytes": int(pc.sum(table.column("bytes")).as_py() or 0),
        "leaked_objects": int(pc.sum(table.column("objects")).as_py() or 0),
        "producer": rec.meta.producer, "analyser_version": __version__,
        "warnings": warnings,
    }
    return info, table, frames


def _pids_of(ukey: np.ndarray) -> list[int]:
    """The naming pid of each key (its low 32 bits, signed again)."""
    return (ukey & 0xFFFFFFFF).astype(np.uint32).view(np.int32).astype(np.int64).tolist()


class _Chains:
    """The distinct symbolised chains of one recording, numbered as first seen, with the trend
    each was last given."""

    def __init__(self, stacks: StackResolver) -> None:
        self.stacks = stacks
        self.of: dict[tuple[int, int], int] = {}  # (stack id, naming pid) -> chain index
        self.texts: list[str] = []
        self.frames: list[list[Frame]] = []
        self.trends: dict[int, tuple[int, int, Any]] = {}  # index -> (report, group bytes, Trend)
        self._index_of_text: dict[str, int] = {}
        self._text_of: dict[int, str] = {}  # id(frames list) -> chain text
        self._alive: list[list[Frame]] = []  # ... those lists, alive while their ids are keys

    def index(self, sid: int, pid: int, time: int) -> int:
        ci = self.of.get((sid, pid))
        if ci is not None:
            return ci
        frames = self.stacks.frames(sid, pid, time) if sid >= 0 else []
        # the resolver hands out one list per distinct chain (a kernel-only chain is the same
        # list for every process): name each list once
        text = self._text_of.get(id(frames))
        if text is None:
            text = self._text_of[id(frames)] = chain_text(frames)
            self._alive.append(frames)
        ci = self._index_of_text.get(text)
        if ci is None:
            ci = self._index_of_text[text] = len(self.texts)
            self.texts.append(text)
            self.frames.append(frames)
        self.of[(sid, pid)] = ci
        return ci

    def note_trends(self, report_no: int, groups) -> None:
        """Later reports win; within one report, the chain's biggest group."""
        for g in groups:
            ci = self.of[(g.stack_id, g.user_pid)]
            prev = self.trends.get(ci)
            if prev is None or prev[0] < report_no or g.bytes > prev[1]:
                self.trends[ci] = (report_no, g.bytes, g.trend)

    def stack_column(self) -> pa.ListArray:
        flat = [f for fr in self.frames for f in fr]
        return pa.ListArray.from_arrays(
            pa.array(np.r_[0, np.cumsum([len(fr) for fr in self.frames])].astype(np.int32)),
            pa.StructArray.from_arrays(
                [pa.array([f.addr for f in flat], pa.uint64()),
                 pa.array([f.symbol for f in flat], pa.string()),
                 pa.array([f.offset for f in flat], pa.uint64()),
                 pa.array([f.dso for f in flat], pa.string()),
                 pa.array([f.context for f in flat], pa.string())], fields=list(FRAME)))


def _sites(a, stacks: StackResolver, label: str, hostname: str, kernel: str,
           leaked_bytes: bool) -> tuple[pa.Table, pa.Table]:
    """Every report's leaked (selected) allocations per (chain, comm): bytes, objects, first and
    last allocation time; the chain's trend from the latest report holding it. And the frames
    of each chain."""
    chains = _Chains(stacks)
    parts: list[pd.DataFrame] = []
    st = a.stream
    for ri, r in enumerate(a.reports):
        pos = r.positions[r.selected]
        if not len(pos):
            continue
        sid = st.column("stack_id", pos).astype(np.int64, copy=False)
        pid = st.column("pid", pos).astype(np.int64, copy=False)
        t = st.column("time", pos).astype(np.uint64, copy=False)
        size = (st.column("size", pos).astype(np.int64, copy=False) if leaked_bytes
                else np.zeros(len(pos), np.int64))
        if leaked_bytes:  # user frames are named through the group's latest allocation's process
            gs = np.array([g.stack_id for g in r.groups], np.int64)
            gp = np.array([g.user_pid for g in r.groups], np.int64)
            o = np.argsort(gs)
            name_pid = gp[o][np.searchsorted(gs[o], sid)]
        else:
            name_pid = pid
        # one int64 per (stack id, naming pid): stack ids are u32 (-1: none), pids i32
        ukey, inv = np.unique(((sid + 1) << 32) | (name_pid & 0xFFFFFFFF), return_inverse=True)
        idx = np.array([chains.index(s, p, r.time_ns) for s, p in
                        zip(((ukey >> 32) - 1).tolist(), _pids_of(ukey), strict=True)], np.int64)
        if leaked_bytes:
            chains.note_trends(ri, r.groups)
        parts.append(pd.DataFrame({"chain": idx[inv.reshape(-1)], "comm": a.comms.comm(pid, t),
                                   "bytes": size, "time": t}))
    if not parts:
        return SITES_SCHEMA.empty_table(), STACKS_SCHEMA.empty_table()
    df = pd.concat(parts, ignore_index=True)
    agg = df.groupby(["chain", "comm"], sort=True).agg(
        bytes=("bytes", "sum"), objects=("bytes", "size"), first_ns=("time", "min"),
        last_ns=("time", "max")).reset_index()
    ch = agg["chain"].to_numpy()
    meta = a.recording.meta.clock
    first = agg["first_ns"].to_numpy(np.uint64)
    last = agg["last_ns"].to_numpy(np.uint64)
    anchored = bool(meta.anchor_perf_ns or meta.anchor_realtime_ns)

    def wall(tns: np.ndarray) -> pa.Array:
        if not anchored:
            return pa.nulls(len(tns), pa.timestamp("ns", tz="UTC"))
        w = tns.astype(np.int64) - np.int64(meta.anchor_perf_ns) + np.int64(meta.anchor_realtime_ns)
        return pa.array(w, pa.timestamp("ns", tz="UTC"))

    trends = [chains.trends.get(c, (0, 0, None))[2] for c in range(len(chains.texts))]
    n = len(agg)
    cls = [trends[c].cls if trends[c] is not None else None for c in ch.tolist()]
    slope = [trends[c].slope_bytes_per_s if trends[c] is not None else None for c in ch.tolist()]
    conf = [trends[c].confidence if trends[c] is not None else None for c in ch.tolist()]
    ids = [chain_id(x) for x in chains.texts]
    table = pa.table({
        "recording": pa.array([label] * n, pa.string()),
        "host": pa.array([hostname] * n, pa.string()),
        "kernel": pa.array([kernel] * n, pa.string()),
        "comm": pa.array(agg["comm"].astype(str).tolist(), pa.string()),
        "chain_id": pa.array([ids[c] for c in ch.tolist()], pa.string()),
        "chain": pa.array([chains.texts[c] for c in ch.tolist()], pa.string()),
        "bytes": pa.array(agg["bytes"].to_numpy(np.int64)),
        "objects": pa.array(agg["objects"].to_numpy(np.int64)),
        "first_ns": pa.array(first), "last_ns": pa.array(last),
        "first_time": wall(first), "last_time": wall(last),
        "trend": pa.array(cls, pa.string()), "slope_bytes_per_s": pa.array(slope, pa.float64()),
        "trend_confidence": pa.array(conf, pa.float64()),
    }, schema=SITES_SCHEMA)
    used = np.unique(ch)
    frames = pa.table({"recording": pa.array([label] * len(used), pa.string()),
                       "chain_id": pa.array([ids[c] for c in used.tolist()], pa.string()),
                       "stack": chains.stack_column().take(pa.array(used))}, schema=STACKS_SCHEMA)
    return table, frames
