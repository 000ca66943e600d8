"""Windows of perf.data records -> recording rows, with the state carried from window to window.

Why a class: import streams, so what used to be computed over the whole file is carried instead:
the next `seq` of each cpu, the stack id of every call chain seen (a dict keyed by the chain's
bytes, one entry per distinct chain: a window's chains are deduplicated by Arrow first), sample
counts per event, the time range, perf's LOST_SAMPLES sums. Sample rows go to the writer window
by window (it cuts row groups); side-band rows (comm, mmap, fork, exit, lost: few) are held until
`finish()`, because perf's synthesized initial state has no time and takes the first sample's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from ..format.background import BackgroundWriter
from ..format.gather import groups, payload_bytes
from ..format.recording import RecordingWriter, const_column
from ..format.stacks import StackTable
from .columns import read_at, sample_columns, side_columns, which_attr
from .errors import PerfDataError
from .reader import (
    REC_COMM,
    REC_EXIT,
    REC_FORK,
    REC_LOST,
    REC_LOST_SAMPLES,
    REC_MMAP,
    REC_MMAP2,
    REC_SAMPLE,
    PerfData,
)
from .stream import Window

KINDS = {REC_COMM: "comm", REC_MMAP: "mmap", REC_MMAP2: "mmap", REC_FORK: "fork", REC_EXIT: "exit",
         REC_LOST: "lost"}


class RowBuilder:
    """Feed windows with add(); finish() writes the held side-band rows and says what was seen."""

    def __init__(self, pd_: PerfData, writer: RecordingWriter | BackgroundWriter) -> None:
        self.pd_ = pd_
        self.w = writer
        self.next_seq: dict[int, int] = {}  # cpu (-1: none recorded) -> next seq
        self.stacks = StackTable()  # call chain bytes -> stack id
        self.samples: dict[str, int] = {}  # event -> samples written
        self.skipped = 0  # samples of events without a raw payload
        self.start: int | None = None
        self.stop: int | None = None
        self.side: list[tuple[int, dict[str, Any], np.ndarray]] = []  # (type, row, time)
        self.lost_samples: dict[str, int] | None = None  # PERF_RECORD_LOST_SAMPLES sums
        self.call_graph = False
        self.guessed: dict[int, Any] = {}  # tracepoint id -> formats.Guess (format not from the file)

    # ------------------------------------------------------------------ per window
    def add(self, win: Window) -> None:
        """Convert and write one window's samples; keep its side-band rows."""
        pd_, buf = self.pd_, win.buf
        types, misc = win.types, win.misc
        s_sel = np.flatnonzero(types == REC_SAMPLE)
        cols, _, skipped = sample_columns(pd_, buf, win.offs[s_sel], win.ends[s_sel])
        self.skipped += skipped
        side = side_columns(pd_, buf, win.offs, win.ends, types, misc)
        self._lost_samples(win, types)
        n = len(cols["rec"]) if cols else 0
        recs = ([s_sel[cols["rec"]]] if n else []) + [c["rec"] for c in side.values()]
        cpus = ([cols.get("cpu", np.full(n, -1))] if n else []) + [
            c["cpu"] if c["cpu"] is not None else np.full(len(c["rec"]), -1) for c in side.values()]
        if not recs:
            return
        seqs = np.split(self._seq(np.concatenate(recs), np.concatenate(cpus).astype(np.int64)),
                        np.cumsum([len(r) for r in recs])[:-1])
        if n:
            self._write_samples(win, cols, seqs[0])
            seqs = seqs[1:]
        for (typ, c), sq in zip(side.items(), seqs, strict=True):
            self._keep_side(typ, c, sq)

    def _seq(self, rec: np.ndarray, cpu: np.ndarray) -> np.ndarray:
        """seq: file order within each cpu, over samples and side-band records, across windows."""
        order = np.argsort(rec, kind="stable")  # sorted runs (samples, each side type): merged
        seq = np.empty(len(rec), np.uint64)
        for c, sel in groups(cpu[order] + 1):  # per cpu (0: none recorded), in file order
            first = self.next_seq.get(c - 1, 0)
            seq[order[sel]] = np.arange(first, first + len(sel), dtype=np.uint64)
            self.next_seq[c - 1] = first + len(sel)
        return seq

    def _write_samples(self, win: Window, cols: dict[str, Any], seq: np.ndarray) -> None:
        n = len(cols["rec"])
        times = cols["time"].astype(np.uint64)
        lo, hi = int(times.min()), int(times.max())
        self.start = lo if self.start is None else min(self.start, lo)
        self.stop = hi if self.stop is None else max(self.stop, hi)
        names = sorted({a.name for a in self.pd_.attrs if a.name})
        lut = np.array([names.index(a.name) if a.name else 0 for a in self.pd_.attrs], np.int32)
        idx = lut[cols["attr"]]
        for i, k in enumerate(np.bincount(idx, minlength=len(names)).tolist()):
            if k:
                self.samples[names[i]] = self.samples.get(names[i], 0) + k
        if self.guessed:
            self._check_guessed(cols)
        flat, offs = payload_bytes(win.buf, cols["raw_start"], cols["raw_len"])
        raw = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offs.astype(np.int32)),
                                                     pa.py_buffer(np.ascontiguousarray(flat))])
        cpu = cols.get("cpu")
        self.w.write({"kind": const_column("sample", n), "time": pa.array(times, pa.uint64()),
                      "cpu": None if cpu is None else pa.array(cpu, pa.uint32(), mask=cpu < 0),
                      "seq": pa.array(seq, pa.uint64()),
                      "pid": pa.array(cols.get("pid", np.zeros(n)), pa.int32()),
                      "tid": pa.array(cols.get("tid", np.zeros(n)), pa.int32()),
                      "event": pa.DictionaryArray.from_arrays(pa.array(idx), pa.array(names, pa.string())),
                      "raw": raw, "stack_id": self._stacks(win, cols)})

    def _check_guessed(self, cols: dict[str, Any]) -> None:
        """A format not from the file must fit the payloads: none shorter than its fixed fields."""
        for a in self.pd_.attrs:
            g = self.guessed.get(a.config) if a.name else None
            if g is None:
                continue
            lens = cols["raw_len"][cols["attr"] == a.index]
            if len(lens) and int(lens.min()) < g.min_size:
                raise PerfDataError(
                    f"{self.pd_.path}: the format of {a.name} from {g.source} (matched by {g.by}) does "
                    f"not fit the recorded payloads ({int(lens.min())} bytes, it needs {g.min_size}): the "
                    "target kernel's formats differ; give --formats DIR, a copy of the target's "
                    "/sys/kernel/tracing/events")

    def _stacks(self, win: Window, cols: dict[str, Any]) -> pa.Array:
        """Stack id per sample (null without a call chain); rows for chains not seen before."""
        n = len(cols["rec"])
        if "cc_nr" not in cols:
            return pa.nulls(n, pa.uint32())
        self.call_graph = True
        nr = cols["cc_nr"]
        sid, new_rows = self.stacks.assign(win.buf, cols["cc_start"], nr)
        if new_rows:
            self.w.write(new_rows)
        return pa.array(sid, pa.uint32(), mask=nr == 0)

    def _keep_side(self, typ: int, c: dict[str, Any], seq: np.ndarray) -> None:
        n = len(c["rec"])
        t = c["time"] if c["time"] is not None else np.zeros(n, np.int64)
        if (t > 0).any():  # side-band before the first sample (an exec's COMM) moves the start
            lo = int(t[t > 0].min())
            self.start = lo if self.start is None else min(self.start, lo)
        row = {k: v for k, v in c.items() if k not in ("rec", "time", "cpu")}
        row |= {"kind": const_column(KINDS[typ], n), "seq": pa.array(seq, pa.uint64())}
        if typ == REC_LOST and c["cpu"] is not None:
            row["cpu"] = pa.array(c["cpu"], pa.uint32(), mask=c["cpu"] < 0)
        self.side.append((typ, row, t))

    def _lost_samples(self, win: Window, types: np.ndarray) -> None:
        """PERF_RECORD_LOST_SAMPLES: u64 lost, then the sample_id trailer naming the event; summed
        per event as `perf report --stats` does."""
        sel = np.flatnonzero(types == REC_LOST_SAMPLES)
        if not len(sel):
            return
        o, e = win.offs[sel], win.ends[sel]
        aidx = which_attr(self.pd_, win.buf, o, e, sample=False)
        lost = read_at(win.buf, o + 8, "<u8")
        out = self.lost_samples if self.lost_samples is not None else {}
        for a in self.pd_.attrs:
            if a.name:
                out[a.name] = out.get(a.name, 0) + int(lost[aidx == a.index].sum())
        self.lost_samples = out

    # ------------------------------------------------------------------ at the end
    def lost_records(self) -> list[tuple[str | None, int]]:
        """(event named, lost) of every PERF_RECORD_LOST."""
        out: list[tuple[str | None, int]] = []
        for typ, row, _t in self.side:
            if typ == REC_LOST:
                out += zip(row["event"].tolist(), row["lost"].tolist(), strict=True)
        return out

    def mmaps(self) -> tuple[list, list]:
        """(filename, pgoff) of every MMAP/MMAP2 record, in order."""
        fns: list = []
        pgoffs: list = []
        for typ, row, _t in self.side:
            if typ in (REC_MMAP, REC_MMAP2):
                fns += row["filename"].to_pylist()
                pgoffs += row["pgoff"].tolist()
        return fns, pgoffs

    def finish(self) -> None:
        """Write the side-band rows, perf's synthesized ones (time 0) at the start time."""
        start = self.start or 0
        for _typ, row, t in self.side:
            self.w.write(row | {"time": pa.array(np.where(t <= 0, start, t).astype(np.uint64), pa.uint64())})
        self.side.clear()
