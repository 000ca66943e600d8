"""Split drained ring bytes into records and turn them into Arrow tables for the writer.

Runs off the hot loop, once per batch, in numpy over all records of a batch. Record boundaries
need a walk (records are variable-sized), but every drained chunk starts on a boundary, so the
walk advances all chunks of a batch in lockstep: as many numpy steps as the longest chunk has
records, instead of one Python step per record. Callchains are gathered into one binary column
and dictionary-encoded by Arrow (exact byte equality); only the distinct chains of a batch meet
the recording-wide dict that gives each one its `stack` row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from kmemleak_offline.format.recording import const_column
from recorder import perf_event as pe

_STR_DICT = pa.dictionary(pa.int32(), pa.string())


@dataclass
class EventInfo:
    """What the splitter needs to know about one opened event (by its kernel id)."""

    name: str | None  # `sys:name`, or None for the side-band dummy event
    callchain: bool


@dataclass
class RingBatch:
    """Bytes drained from one ring. By default all of `data`; with `starts`/`ends`, the spans
    [starts[i], ends[i]) of `data` (one per drain, in drain order, each starting a record)."""

    ring: int
    cpu: int
    data: bytes | memoryview
    starts: np.ndarray | None = None
    ends: np.ndarray | None = None


def _dict_array(indices: np.ndarray, values: list[str]) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(indices.astype(np.int32)),
                                          pa.array(values, pa.string()))


def _boundaries(data: bytes, starts: np.ndarray | None = None,
                ends: np.ndarray | None = None) -> np.ndarray:
    """Byte offsets of the records in ring spans (header u16 size at byte 6), ascending.

    `starts` are known record starts (each drain began on one), `ends` where their spans end
    (default: the next start, the last at the end of `data`): all spans are walked at once. With
    few, long spans a numpy step per record would cost more than a Python loop; use that.
    """
    n = len(data)
    h = np.frombuffer(data, dtype=np.uint16, count=n // 2)
    if starts is None or not len(starts):
        starts = np.zeros(1, np.int64)
    starts = np.asarray(starts, np.int64)
    ends = np.append(starts[1:], n) if ends is None else np.asarray(ends, np.int64)
    if (ends - starts).max(initial=0) * 25 > (ends - starts).sum():  # dominant span: plain loop
        hv = memoryview(data)[: n & ~1].cast("H")
        return np.concatenate([_walk(hv, a, b) for a, b in zip(starts.tolist(), ends.tolist())]
                              + [np.zeros(0, np.int64)])
    keep = starts < ends
    cur, ends = starts[keep], ends[keep]
    steps = []
    while len(cur):
        steps.append(cur)
        size = h[(cur >> 1) + 3].astype(np.int64)
        cur = cur + size
        live = (cur < ends) & (size > 0)  # size 0 is never valid: that chain stops
        cur, ends = cur[live], ends[live]
    offs = np.concatenate(steps) if steps else np.zeros(0, np.int64)
    offs.sort()
    return offs


def _walk(h: memoryview, off: int, end: int) -> np.ndarray:
    offs = []
    append = offs.append
    while off < end:
        size = h[(off >> 1) + 3]
        if size == 0:  # never valid; stop rather than spin
            break
        append(off)
        off += size
    return np.array(offs, dtype=np.int64)


def _ragged(starts: np.ndarray, lens: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Indices start[i] .. start[i]+len[i]-1 for every i, concatenated (`offsets` = cumsum of lens)."""
    idx = np.repeat(starts - offsets[:-1], lens)
    idx += np.arange(len(idx), dtype=np.int64)
    return idx


def _gather_raw(data: bytes, a4: np.ndarray, raw_word: np.ndarray, raw_len: np.ndarray,
                offsets: np.ndarray) -> np.ndarray:
    """Concatenated raw payloads (each starts 4 bytes into word `raw_word`).

    Payload sizes are few (one per event type, usually whole u32s): per size, one row gather
    through a sliding-window view copies each payload as a block. Many sizes (strings): a
    ragged gather of single units.
    """
    if not (raw_len & 3).any():
        src, first, lens, dst = a4, raw_word * 2 + 1, raw_len >> 2, offsets[:-1] >> 2
    else:
        src, first, lens, dst = np.frombuffer(data, dtype=np.uint8), raw_word * 8 + 4, raw_len, offsets[:-1]
    sizes = np.unique(lens)
    if len(sizes) > 16:
        return src[_ragged(first, lens, np.append(dst, dst[-1] + lens[-1]).astype(np.int64))]
    out = np.empty(int(dst[-1] + lens[-1]) if len(lens) else 0, src.dtype)
    for size in sizes.tolist():
        if size:
            rows = np.nonzero(lens == size)[0]
            win = np.lib.stride_tricks.sliding_window_view(out, size, writeable=True)
            win[dst[rows]] = np.lib.stride_tricks.sliding_window_view(src, size)[first[rows]]
    return out


@dataclass
class Splitter:
    """Stateful across batches: per-ring sequence numbers, the stack dictionary, counters."""

    events: dict[int, EventInfo]
    per_task: bool = False
    seq: dict[int, int] = field(default_factory=dict)
    stacks: dict[bytes, int] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)
    # per ring: [its CPU, LOST records, events they report lost]. A LOST record counts the ring's
    # losses but carries the id of whichever event writes next, so it is no per-event figure.
    lost_by_ring: dict[int, list[int]] = field(default_factory=dict)
    max_time: int = 0  # latest record time split so far (clock.stop_ns is never older)

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
        offs = _boundaries(data, batch.starts, batch.ends)
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
        if n:
            self.max_time = max(self.max_time, int(time.max()))
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
        cc_idx = np.nonzero(has_cc)[0]
        new_rows = self._stack_ids(a8, w[cc_idx] + 6, nr[cc_idx], stack_id, cc_idx)
        name_idx = self._name_idx[k]
        counts = np.bincount(name_idx, minlength=len(self._names))
        for i, c in enumerate(counts.tolist()):
            if c:
                self.samples[self._names[i]] = self.samples.get(self._names[i], 0) + c
        valid = np.zeros(n, dtype=bool)
        valid[cc_idx] = True
        rows = {
            "kind": const_column("sample", n),
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
        return [rows, new_rows] if new_rows else [rows]

    def _stack_ids(self, a8: np.ndarray, first_word: np.ndarray, nr: np.ndarray,
                   stack_id: np.ndarray, at: np.ndarray) -> dict | None:
        """Set stack_id[at] to the recording-wide id of each chain (words a8[first:first+nr]);
        return the `stack` rows of chains never seen before (None if none)."""
        if not len(first_word):
            return None
        offsets = np.zeros(len(nr) + 1, dtype=np.int64)
        np.cumsum(nr, out=offsets[1:])
        words = a8[_ragged(first_word, nr, offsets)]
        big = offsets[-1] * 8 >= 1 << 31
        chains = pa.Array.from_buffers(pa.large_binary() if big else pa.binary(), len(nr), [
            None, pa.py_buffer((offsets * 8).astype(np.int64 if big else np.int32)), pa.py_buffer(words)])
        enc = chains.dictionary_encode()  # Arrow hashes and compares the exact bytes
        stacks = self.stacks
        ids, new = [], []
        for key in enc.dictionary.to_pylist():  # distinct chains of this batch only
            sid = stacks.get(key)
            if sid is None:
                sid = stacks[key] = len(stacks)
                new.append(key)
            ids.append(sid)
        stack_id[at] = np.array(ids, dtype=np.uint32)[enc.indices.to_numpy(zero_copy_only=False)]
        if not new:
            return None
        first = len(stacks) - len(new)
        lens = np.array([len(r) // 8 for r in new], dtype=np.int32)
        loffs = np.zeros(len(new) + 1, dtype=np.int32)
        np.cumsum(lens, out=loffs[1:])
        return {
            "kind": const_column("stack", len(new)),
            "stack_id": pa.array(np.arange(first, first + len(new), dtype=np.uint32)),
            "callchain": pa.ListArray.from_arrays(
                pa.array(loffs), pa.array(np.frombuffer(b"".join(new), dtype=np.uint64), pa.uint64())),
        }

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
                # The ring's losses (its leader is the side-band dummy): event stays null, the
                # record's id is just the next event to write (per event: PERF_FORMAT_LOST).
                n_lost = int(a8[w + 2])
                r = self.lost_by_ring.setdefault(batch.ring, [batch.cpu, 0, 0])
                r[1] += 1
                r[2] += n_lost
                add(kind="lost", time=time, cpu=batch.cpu, ring=batch.ring if self.per_task else None,
                    seq=seq, event=None, lost=n_lost)
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
        if rows["kind"]:
            self.max_time = max(self.max_time, max(rows["time"]))
        return [rows] if rows["kind"] else []
