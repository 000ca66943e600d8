"""Split drained ring bytes into records and turn them into Arrow tables for the writer.

Runs off the hot loop, once per batch. One Python pass finds record boundaries (records are
variable-sized; the numpy alternative measured slower); everything else is numpy gathers over
all records of a batch. Callchains are deduplicated across the whole recording with a dict keyed
by the chain bytes, so each distinct chain becomes one `stack` row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from recorder import perf_event as pe

_STR_DICT = pa.dictionary(pa.int32(), pa.string())


@dataclass
class EventInfo:
    """What the splitter needs to know about one opened event (by its kernel id)."""

    name: str | None  # `sys:name`, or None for the side-band dummy event
    callchain: bool


@dataclass
class RingBatch:
    """The bytes drained from one ring since the last batch."""

    ring: int
    cpu: int
    data: bytes


def _dict_array(indices: np.ndarray, values: list[str]) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(indices.astype(np.int32)),
                                          pa.array(values, pa.string()))


def _boundaries(data: bytes) -> np.ndarray:
    """Byte offsets of the records in a ring stream (header u16 size at byte 6)."""
    h = memoryview(data).cast("H")
    n = len(h) * 2
    offs = []
    append = offs.append
    off = 0
    while off < n:
        size = h[(off >> 1) + 3]
        if size == 0:  # never valid; stop rather than spin
            break
        append(off)
        off += size
    return np.array(offs, dtype=np.int64)


def _gather_raw(data: bytes, a4: np.ndarray, raw_word: np.ndarray, raw_len: np.ndarray,
                offsets: np.ndarray) -> np.ndarray:
    """Concatenated raw payloads (each starts 4 bytes into word `raw_word`).

    Tracepoint payloads are usually whole u32s, so gather 4-byte units (4x fewer indices);
    otherwise bytes. Ragged gather: repeat each start by its length, add a running index.
    """
    if not (raw_len & 3).any():
        offs4 = offsets[:-1].astype(np.int64) >> 2
        idx = np.repeat(raw_word * 2 + 1 - offs4, raw_len >> 2)
        idx += np.arange(len(idx), dtype=np.int64)
        return a4[idx]
    idx = np.repeat(raw_word * 8 + 4 - offsets[:-1], raw_len)
    idx += np.arange(len(idx), dtype=np.int64)
    return np.frombuffer(data, dtype=np.uint8)[idx]


@dataclass
class Splitter:
    """Stateful across batches: per-ring sequence numbers, the stack dictionary, counters."""

    events: dict[int, EventInfo]
    per_task: bool = False
    seq: dict[int, int] = field(default_factory=dict)
    stacks: dict[bytes, int] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)
    lost_records: dict[str | None, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = sorted(self.events)
        self._ids = np.array(ids, dtype=np.uint64)
        self._names = sorted({e.name for e in self.events.values() if e.name})
        pos = {n: i for i, n in enumerate(self._names)}
        self._name_idx = np.array([pos.get(self.events[i].name, -1) for i in ids], dtype=np.int64)
        self._cc = np.array([self.events[i].callchain for i in ids], dtype=bool)

    def _lookup(self, ident: np.ndarray) -> np.ndarray:
        """Index into the sorted id table; -1 for ids we did not open."""
        if not len(self._ids):
            return np.full(len(ident), -1)
        k = np.searchsorted(self._ids, ident).clip(0, len(self._ids) - 1)
        return np.where(self._ids[k] == ident, k, -1)

    def split(self, batch: RingBatch) -> list[pa.Table | dict]:
        """All rows (sample, stack, lost, side-band) of one ring's bytes."""
        data = batch.data
        offs = _boundaries(data)
        base = self.seq.get(batch.ring, 0)
        self.seq[batch.ring] = base + len(offs)
        if not len(offs):
            return []
        seqs = base + np.arange(len(offs), dtype=np.uint64)
        a8 = np.frombuffer(data, dtype=np.uint64, count=len(data) // 8)
        w = offs >> 3
        hdr = a8[w]
        rtype = (hdr & 0xFFFFFFFF).astype(np.uint32)
        out: list[pa.Table | dict] = []
        is_sample = rtype == pe.RECORD_SAMPLE
        if is_sample.any():
            out.extend(self._samples(data, a8, w[is_sample], seqs[is_sample], batch))
        other = np.nonzero(~is_sample)[0]
        if len(other):
            out.extend(self._others(data, a8, offs[other], hdr[other], seqs[other], batch))
        return out

    def _samples(self, data: bytes, a8: np.ndarray, w: np.ndarray, seqs: np.ndarray,
                 batch: RingBatch) -> list[pa.Table | dict]:
        k = self._lookup(a8[w + 1])
        keep = k >= 0
        w, seqs, k = w[keep], seqs[keep], k[keep]
        n = len(w)
        pidtid = a8[w + 2]
        pid = (pidtid & 0xFFFFFFFF).astype(np.uint32).view(np.int32)
        tid = (pidtid >> 32).astype(np.uint32).view(np.int32)
        time = a8[w + 3]
        cpu = (a8[w + 4] & 0xFFFFFFFF).astype(np.uint32)
        has_cc = self._cc[k]
        nr = np.where(has_cc, a8[np.where(has_cc, w + 5, 0)], 0).astype(np.int64)
        raw_word = w + 5 + np.where(has_cc, 1 + nr, 0)
        a4 = np.frombuffer(data, dtype=np.uint32, count=len(data) // 4)
        raw_len = a4[raw_word * 2].astype(np.int64)
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(raw_len, out=offsets[1:])
        raw_bytes = _gather_raw(data, a4, raw_word, raw_len, offsets)
        raw = pa.BinaryArray.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets),
                                                           pa.py_buffer(raw_bytes)])
        stack_id = np.zeros(n, dtype=np.uint32)
        new_rows: list[bytes] = []
        cc_idx = np.nonzero(has_cc)[0]
        if len(cc_idx):
            stacks = self.stacks
            starts = ((w[cc_idx] + 6) * 8).tolist()
            ends = (np.array(starts) + nr[cc_idx] * 8).tolist()
            ids = []
            for s, e in zip(starts, ends):  # dedupe: one dict probe per chain, no parsing
                key = data[s:e]
                sid = stacks.get(key)
                if sid is None:
                    sid = stacks[key] = len(stacks)
                    new_rows.append(key)
                ids.append(sid)
            stack_id[cc_idx] = ids
        name_idx = self._name_idx[k]
        counts = np.bincount(name_idx, minlength=len(self._names))
        for i, c in enumerate(counts.tolist()):
            if c:
                self.samples[self._names[i]] = self.samples.get(self._names[i], 0) + c
        valid = np.zeros(n, dtype=bool)
        valid[cc_idx] = True
        rows = {
            "kind": _dict_array(np.zeros(n), ["sample"]),
            "time": pa.array(time, pa.uint64()),
            "cpu": pa.array(cpu, pa.uint32()),
            "ring": pa.array(np.full(n, batch.ring, np.uint32)) if self.per_task else None,
            "seq": pa.array(seqs, pa.uint64()),
            "pid": pa.array(pid, pa.int32()),
            "tid": pa.array(tid, pa.int32()),
            "event": _dict_array(name_idx, self._names),
            "raw": raw,
            "stack_id": pa.array(stack_id, pa.uint32(), mask=~valid),
        }
        out: list[pa.Table | dict] = [rows]
        if new_rows:
            first = len(self.stacks) - len(new_rows)
            words = np.frombuffer(b"".join(new_rows), dtype=np.uint64)
            lens = np.array([len(r) // 8 for r in new_rows], dtype=np.int32)
            loffs = np.zeros(len(new_rows) + 1, dtype=np.int32)
            np.cumsum(lens, out=loffs[1:])
            out.append({
                "kind": _dict_array(np.zeros(len(new_rows)), ["stack"]),
                "stack_id": pa.array(np.arange(first, first + len(new_rows), dtype=np.uint32)),
                "callchain": pa.ListArray.from_arrays(pa.array(loffs), pa.array(words, pa.uint64())),
            })
        return out

    def _others(self, data: bytes, a8: np.ndarray, offs: np.ndarray, hdr: np.ndarray,
                seqs: np.ndarray, batch: RingBatch) -> list[dict]:
        """LOST and side-band records: few, so a loop over them is fine."""
        rows: dict[str, list] = {c: [] for c in (
            "kind", "time", "cpu", "ring", "seq", "pid", "tid", "event", "lost", "comm", "exec",
            "ppid", "ptid", "addr", "len", "pgoff", "filename", "build_id")}
        mv = memoryview(data)

        def add(**kw) -> None:
            for c, v in rows.items():
                v.append(kw.get(c))

        for off, h, seq in zip(offs.tolist(), hdr.tolist(), seqs.tolist()):
            rtype = h & 0xFFFFFFFF
            misc = (h >> 32) & 0xFFFF
            size = h >> 48
            w = off >> 3
            end_w = (off + size) >> 3
            time = int(a8[end_w - 3])  # trailer: {pid,tid} {time} {cpu,res} {identifier}
            if rtype == pe.RECORD_LOST:
                ev = self.events.get(int(a8[w + 1]))
                name = ev.name if ev else None
                self.lost_records[name] = self.lost_records.get(name, 0) + int(a8[w + 2])
                add(kind="lost", time=time, cpu=batch.cpu, ring=batch.ring if self.per_task else None,
                    seq=seq, event=name, lost=int(a8[w + 2]))
            elif rtype == pe.RECORD_COMM:
                pid, tid = np.frombuffer(data, np.int32, 2, off + 8).tolist()
                comm = bytes(mv[off + 16: off + size - 32]).split(b"\0", 1)[0]
                add(kind="comm", time=time, seq=seq, pid=pid, tid=tid,
                    comm=comm.decode(errors="replace"), exec=bool(misc & pe.MISC_COMM_EXEC))
            elif rtype in (pe.RECORD_FORK, pe.RECORD_EXIT):
                pid, ppid, tid, ptid = np.frombuffer(data, np.int32, 4, off + 8).tolist()
                add(kind="fork" if rtype == pe.RECORD_FORK else "exit", time=int(a8[w + 3]),
                    seq=seq, pid=pid, tid=tid, ppid=ppid, ptid=ptid)
            elif rtype == pe.RECORD_MMAP2:
                pid, tid = np.frombuffer(data, np.int32, 2, off + 8).tolist()
                build_id = None
                if misc & pe.MISC_MMAP_BUILD_ID:
                    bsize = data[off + 40]
                    build_id = bytes(mv[off + 44: off + 44 + min(bsize, 20)])
                name = bytes(mv[off + 72: off + size - 32]).split(b"\0", 1)[0]
                add(kind="mmap", time=time, seq=seq, pid=pid, tid=tid, addr=int(a8[w + 2]),
                    len=int(a8[w + 3]), pgoff=int(a8[w + 4]),
                    filename=name.decode(errors="replace"), build_id=build_id)
        return [rows] if rows["kind"] else []
