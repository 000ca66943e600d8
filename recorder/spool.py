"""The spool: raw ring bytes on disk between the hot drain loop and a converter process.

Why: splitting records, building Arrow tables and compressing Parquet inside the recording process
competed with the drain for the GIL and the CPUs, and the kernel dropped events. Now the drain loop
only appends ring bytes to a segment file (`Ring.drain_to`), and a forked converter process turns
each finished segment (about 1 s of data) into a Parquet part through `RecordingWriter`, in big
batches. A SIGKILLed recorder loses nothing it drained: the converter sees its control pipe close,
converts the segments left behind and exits, leaving a parts folder `analyze` reads; its metadata
then says "stopped": "recorder killed" and the uprobes the recorder created are removed. The
converter runs in a session of its own, so a group kill (or a terminal hang-up) leaves it to finish.

Segment file = frames, each a 16-byte header (u32 ring, u32 kind, u64 length) + payload. Kinds:
DATA (one drain of ring `ring`), META (JSON: the recording metadata as the recorder knows it),
ROWS (an Arrow IPC stream of rows the recorder adds: the /proc snapshot, symbol tables at stop).
Each frame starts 8-byte aligned (META/ROWS payloads are padded; ring bytes are whole u64s), as
the splitter reads ring records as u64 words where they lie in the mapped segment.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from kmemleak_offline.format.recording import RecordingWriter, to_table
from recorder.errors import RecordError
from recorder.records import RingBatch, Splitter
from recorder.ring import FRAME

DATA, META, ROWS = 0, 1, 2
SEGMENT_GLOB = "spool-*.bin"
CONVERTER_NICE = 10
RESERVE = ".reserve"  # room kept for the last metadata when the disk fills up
RESERVE_BYTES = 1 << 20
FULL_CHUNK_ROWS = 1 << 13  # a full disk: rows written in parts this small, as room allows
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(OSError):
    """The spool could not be written: no room left (ENOSPC, EDQUOT). The segment was cut back
    to its last whole frame."""


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def make_reserve(folder: Path, free_bytes: int) -> int:
    """Set room aside (a file of zeros, allocated) for the last part of a recording the disk
    filled up: its metadata and stop reason. 1 MiB, or 1/8 of what is free on a small disk."""
    size = max(64 << 10, min(RESERVE_BYTES, free_bytes // 8))
    fd = os.open(folder / RESERVE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
    return size


def segment_path(folder: Path, n: int) -> Path:
    return folder / f"spool-{n:06d}.bin"


def frame_spans(buf: bytes | mmap.mmap) -> Iterator[tuple[int, int, int, int]]:
    """(ring, kind, payload start, payload length) of each complete frame; a torn last frame
    (killed writer) is dropped."""
    off, end, hsize = 0, len(buf), FRAME.size
    while off + hsize <= end:
        ring, kind, n = FRAME.unpack_from(buf, off)
        if off + hsize + n > end:
            break
        yield ring, kind, off + hsize, n
        off += hsize + ((n + 7) & ~7)


class Converter:
    """Child side: spool segments -> Splitter rows -> one Parquet part per segment; at a clean
    stop the writer stitches the parts' row groups into the single file (no re-encoding).
    """

    def __init__(self, writer: RecordingWriter, splitter: Splitter, ring_cpu: list[int],
                 orphaned: Callable[[], None] | None = None) -> None:
        self.writer = writer
        self.splitter = splitter
        self.ring_cpu = ring_cpu
        self.meta: dict[str, Any] = writer.metadata
        self.done = -1  # last converted segment number
        self.stopped: str | None = None  # set when the recorder did not stop cleanly
        self.orphaned = orphaned  # run once the recorder died (uprobe removal)
        self.events_on = False  # the recorder said it enabled the events
        self.full = False  # a part could not be written for want of room: its rows wait in memory
        self.dropped: dict[str, int] = {}  # samples that never found room, per event
        self.final_meta: dict[str, Any] | None = None  # sent over the pipe when the disk is full

    def convert(self, path: Path, into_memory: bool = False) -> None:
        """One segment -> one part. The segment is mapped, not read: each ring's records are split
        where they lie (its frames are spans of the map), so ring bytes are never copied again.
        `into_memory` (a full disk): the segment is read and removed first, so its room is free
        for the parts made of it. A part that finds no room keeps its rows queued (self.full)."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if into_memory:
                buf = f.read()
                path.unlink()
            else:
                buf = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) if size else b""
        spans: dict[int, list[tuple[int, int]]] = {}
        for ring, kind, start, n in frame_spans(buf):
            if kind == DATA:
                spans.setdefault(ring, []).append((start, start + n))
            elif kind == META:
                self.meta = json.loads(buf[start:start + n])
            elif kind == ROWS:
                self._write(pa.ipc.open_stream(pa.py_buffer(buf[start:start + n])).read_all())
        for ring in sorted(spans):  # records never straddle drains: each frame starts a record
            starts, ends = np.array(spans[ring], dtype=np.int64).T
            for rows in self.splitter.split(RingBatch(ring, self.ring_cpu[ring], buf, starts, ends)):
                self._write(rows)
        del spans
        self._apply_meta()
        try:
            self.writer.flush_part()
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self.full = True  # the rows stay queued; the segment's room is given back below
        path.unlink(missing_ok=True)

    def _write(self, rows: Mapping[str, Any] | pa.Table) -> None:
        self.writer.write(to_table(rows))

    def finish(self, folder: Path, ack: int) -> None:
        """Clean stop: stitch the parts into the single file, and say how it went on `ack`:
        `done` (one file), `parts` (no room to stitch: the complete recording is the parts
        folder) or `full N` (the disk filled up: see save_full)."""
        if self.full:  # rows still wait for room: the disk is full, not only the spool
            self.stopped = "disk full"
            _answer(ack, f"full {self.save_full(folder)}")
            return
        (folder / RESERVE).unlink(missing_ok=True)
        try:
            self.writer.close()
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            if self.writer.pending_rows:  # the last part found no room
                self.full, self.stopped = True, "disk full"
                _answer(ack, f"full {self.save_full(folder)}")
                return
            _answer(ack, "parts")  # every part is written: only the single file did not fit
            return
        _answer(ack, "done")

    def save_full(self, folder: Path) -> int:
        """The disk is full: convert what the spool holds into the room left, each segment read
        and removed before its parts are written; then the reserve goes, rows are written in
        small parts while room lasts, and the final metadata (stop reason "disk full", counts)
        in a part of its own, newest data parts given back if it needs their room. Rows that
        find no room are dropped and counted. Returns the events the recording could not keep:
        counted by the kernel but neither written nor lost in the ring (info's unaccounted)."""
        for path in sorted(folder.glob(SEGMENT_GLOB)):
            self.convert(path, into_memory=True)
        if self.final_meta is not None:  # newer than any the segments held
            self.meta = self.final_meta
        (folder / RESERVE).unlink(missing_ok=True)
        written = self._flush_as_room_allows()
        while True:
            self._apply_meta()
            try:
                self.writer.flush_part(force=True)
                break
            except OSError as exc:
                if not is_disk_full(exc) or not written:
                    raise
                self.writer.take_pending()
                self.writer.unwrite_last_part()  # the metadata matters more than its rows
                self._drop(written.pop())
        left = 0
        for c in (self.writer.metadata.get("counts") or {}).values():
            kc = c.get("kernel_count")
            if isinstance(kc, int):
                left += max(0, kc - int(c.get("samples") or 0) - int(c.get("lost") or 0))
        return left

    def _flush_as_room_allows(self) -> list[pa.Table]:
        """Queued rows in parts of FULL_CHUNK_ROWS (side-band rows first: stacks name the
        samples' call chains), until one finds no room; the samples left are dropped, counted.
        Returns the tables of the parts written, oldest first."""
        tables = self.writer.take_pending()
        side = [t for t in tables if not _all_samples(t)]
        rest = [t for t in tables if _all_samples(t)]
        chunks = [pa.concat_tables(side)] if side else []
        if rest:
            whole = pa.concat_tables(rest)
            chunks += [whole.slice(i, FULL_CHUNK_ROWS) for i in range(0, whole.num_rows, FULL_CHUNK_ROWS)]
        written = []
        for i, chunk in enumerate(chunks):
            self.writer.write(chunk)
            try:
                self.writer.flush_part()
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                for t in self.writer.take_pending() + chunks[i + 1:]:
                    self._drop(t)
                break
            written.append(chunk)
        return written

    def _drop(self, t: pa.Table) -> None:
        """Samples that never found room: counted per event (metadata counts.samples excludes
        them, so info's `unaccounted` shows them)."""
        if not t.num_rows:
            return
        kind = t.column("kind").cast(pa.string())
        ev = t.column("event").cast(pa.string())
        import pyarrow.compute as pc

        sel = ev.filter(pc.equal(kind, "sample"))
        for item in pc.value_counts(sel).to_pylist():
            if item["values"] is not None:
                self.dropped[item["values"]] = self.dropped.get(item["values"], 0) + item["counts"]

    def _apply_meta(self) -> None:
        """The recorder's metadata, with what only the splitter knows: exact sample counts, the
        LOST records per ring, and a stop time no older than the last record written."""
        meta = json.loads(json.dumps(self.meta))
        sp = self.splitter
        for name, c in meta.get("counts", {}).items():
            c["samples"] = sp.samples.get(name, 0) - self.dropped.get(name, 0)
            c.pop("lost_records", None)
        meta["lost_by_ring"] = [{"ring": ring, "cpu": cpu, "lost_records": n, "lost": lost}
                                for ring, (cpu, n, lost) in sorted(sp.lost_by_ring.items())]
        clock = meta.setdefault("clock", {})
        clock["stop_ns"] = max(int(clock.get("stop_ns") or 0), sp.max_time)
        if self.stopped:
            meta["stopped"] = self.stopped
        self.writer.metadata = meta

    def catch_up(self, folder: Path, upto: int | None) -> None:
        """Convert finished segments in order (all present ones when `upto` is None)."""
        if upto is None:
            todo = sorted(folder.glob(SEGMENT_GLOB))
        else:
            todo = [segment_path(folder, n) for n in range(self.done + 1, upto + 1)]
        for path in todo:
            if path.exists():
                self.convert(path)
            self.done = max(self.done, int(path.stem.split("-")[1]))

    def serve(self, folder: Path, ctrl: int, ack: int) -> None:
        """Follow the recorder's commands: `seg N`, `sync N` (answer when done), `stop N`.

        A vanished recorder (its control pipe closed, or its reply pipe broken: EPIPE) is never
        fatal here: its uprobes are removed first, then the spool is saved with the reason."""
        pending = b""
        while True:
            try:
                chunk = os.read(ctrl, 4096)
            except OSError:
                chunk = b""
            if not chunk:  # the recorder died: its uprobes go, what it spooled becomes parts
                self._recorder_gone(folder)
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                cmd, _, n = line.decode().partition(" ")
                if cmd == "on":  # the events are enabled: a death from now on loses no start-up
                    self.events_on = True
                    continue
                if cmd == "meta":  # the recorder's last metadata (no room left to spool it)
                    self.final_meta = json.loads(n)
                    continue
                if cmd == "full":  # the spool filled the disk: save what fits, say what did not
                    self.stopped = "disk full"
                    _answer(ack, f"full {self.save_full(folder)}")
                    return
                if cmd == "abandon":  # the recorder failed and cleans up itself: save the spool
                    self.stopped = "recorder failed"
                    self.save(folder)
                    return
                self.catch_up(folder, int(n))
                if cmd == "sync":
                    try:
                        os.write(ack, b"ok\n")
                    except OSError:  # EPIPE: the recorder died waiting for this answer
                        self._recorder_gone(folder)
                        return
                elif cmd == "stop":
                    self.finish(folder, ack)
                    return

    def _recorder_gone(self, folder: Path) -> None:
        """The recorder was killed: remove its uprobes at once, then save the spool."""
        self.stopped = self.stopped or self._killed_reason()
        if self.orphaned is not None:
            try:
                self.orphaned()
            except Exception as exc:  # noqa: BLE001 - still save the data
                sys.stderr.write(f"kmemleak-offline record: converter: {exc}\n")
        self.save(folder)

    def _killed_reason(self) -> str:
        """'recorder killed', saying so when it never said its events were on (the recording
        then holds the start-up state only)."""
        return "recorder killed" if self.events_on else "recorder killed before the events were enabled"

    def save(self, folder: Path) -> None:
        """Convert every segment left, then write the final metadata (the stop reason) as a part
        of its own when no segment was left to carry it."""
        before = self.writer.parts_written
        self.catch_up(folder, None)
        if self.writer.parts_written == before:
            self._apply_meta()
            self.writer.flush_part(force=True)


def _answer(ack: int, line: str) -> None:
    try:
        os.write(ack, f"{line}\n".encode())
    except OSError:
        pass  # the recorder is gone: what it would have printed is in the metadata


def _all_samples(t: pa.Table) -> bool:
    import pyarrow.compute as pc

    return bool(pc.all(pc.equal(t.column("kind").cast(pa.string()), "sample")).as_py())


class SpooledRecording:
    """Parent side: the recording as the session sees it (a RecordingWriter stand-in).

    `metadata` stays the recorder's to update; `write` and `flush_part` go through the spool;
    `close` waits for the converter to stitch the parts into the single file.
    """

    def __init__(self, writer: RecordingWriter, splitter: Splitter, ring_cpu: list[int],
                 in_child: Callable[[], None], orphaned: Callable[[], None] | None = None) -> None:
        self.metadata: dict[str, Any] = writer.metadata
        self.path = writer.path
        self.parts_dir: Path = writer.parts_dir
        self.seg = 0
        self.fd = self._open(0)
        self.size = 0  # bytes of whole frames in the current segment
        self.converter_cpu_s = 0.0
        ctrl_r, self._ctrl = os.pipe()
        self._ack, ack_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            code = 1
            try:
                os.setsid()  # a group kill or hang-up of the recorder leaves it to save the spool
                for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP):
                    signal.signal(s, signal.SIG_IGN)  # finish the work; the recorder says when
                os.close(self._ctrl)
                os.close(self._ack)
                os.close(self.fd)
                in_child()
                os.nice(CONVERTER_NICE)  # background work: the workload and the drain come first
                Converter(writer, splitter, ring_cpu, orphaned).serve(self.parts_dir, ctrl_r, ack_w)
                code = 0
            except BaseException as exc:  # noqa: BLE001 - report in one line, never a traceback
                sys.stderr.write(f"kmemleak-offline record: converter: {exc}\n")
            finally:
                os._exit(code)
        os.close(ctrl_r)
        os.close(ack_w)

    def _open(self, n: int) -> int:
        return os.open(segment_path(self.parts_dir, n), os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                       | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def _frame(self, kind: int, payload: bytes) -> None:
        pad = b"\0" * (-len(payload) & 7)  # the next frame starts 8-byte aligned
        data = FRAME.pack(0, kind, len(payload)) + payload + pad
        try:
            done = 0
            while done < len(data):
                done += os.write(self.fd, data[done:])
        except OSError as exc:
            self._cut_back(exc)
        self.size += len(data)

    def drain(self, rings: list) -> None:
        """Append each ring's new bytes as a frame (Ring.drain_to); DiskFull when there is no
        room (the ring keeps what was not written; the segment is cut back to whole frames)."""
        fd = self.fd
        for i, ring in enumerate(rings):
            try:
                n = ring.drain_to(fd, i)
            except OSError as exc:
                self._cut_back(exc)
            if n:
                self.size += FRAME.size + n

    def _cut_back(self, exc: OSError) -> None:
        """A write failed: drop its torn frame (readers stop at the first torn one); DiskFull
        when it failed for want of room."""
        try:
            os.ftruncate(self.fd, self.size)
        except OSError:
            pass
        if exc.errno in DISK_FULL or exc.errno is None:  # None: the file took no more bytes
            raise DiskFull(errno.ENOSPC, f"no room left for the spool in {self.parts_dir}") from None
        raise exc

    def write(self, rows: Mapping[str, Any] | pa.Table | pa.RecordBatch) -> None:
        """Rows for the recording (few: not the hot path), as an Arrow IPC frame."""
        table = to_table(rows)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        self._frame(ROWS, sink.getvalue().to_pybytes())

    def events_enabled(self) -> None:
        """Tell the converter the events are on (a later death is then 'recorder killed')."""
        self._command("on 0")

    def _command(self, line: str) -> None:
        data = f"{line}\n".encode()
        try:
            done = 0
            while done < len(data):
                done += os.write(self._ctrl, data[done:])
        except BrokenPipeError:
            raise RecordError(f"the converter process died; the data spooled so far is in "
                              f"{self.parts_dir}") from None

    def write_metadata(self) -> None:
        """Spool the metadata as known now (the converter applies it to what follows)."""
        self._frame(META, json.dumps(self.metadata).encode())

    def rotate(self, cmd: str = "seg") -> None:
        """Finish the current segment (with the metadata as known now) and start the next."""
        self._frame(META, json.dumps(self.metadata).encode())
        os.close(self.fd)
        self.fd = -1
        done = self.seg
        self.seg += 1
        if cmd != "stop":
            try:
                self.fd = self._open(self.seg)
            except OSError as exc:
                if exc.errno in DISK_FULL:
                    self._command(f"seg {done}")  # the finished segment is the converter's
                    raise DiskFull(errno.ENOSPC, f"no room left for the spool in {self.parts_dir}") from None
                raise
            self.size = 0
        self._command(f"{cmd} {done}")

    def flush_part(self) -> None:
        """Everything spooled so far is in part files when this returns."""
        self.rotate("sync")
        if os.read(self._ack, 3) != b"ok\n":
            raise RecordError(f"the converter process died; the data spooled so far is in "
                              f"{self.parts_dir}")

    def abandon(self) -> None:
        """The recorder failed: let the converter save what was spooled (parts folder), wait."""
        if self._ctrl < 0:
            return
        try:
            self._frame(META, json.dumps(self.metadata).encode())
            os.write(self._ctrl, b"abandon 0\n")  # not a death: the recorder removes its uprobes
        except OSError:
            pass
        os.close(self._ctrl)
        self._ctrl = -1
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        os.close(self._ack)

    def close(self) -> str:
        """Hand over the last segment, let the converter stitch the parts, wait for it. Returns
        its answer: `done` (the single file), `parts` (no room to stitch: the complete recording
        is the parts folder) or `full N` (the disk filled up; N events not kept)."""
        try:
            self.rotate("stop")
        except DiskFull:  # no room even for the last metadata frame: hand it over the pipe
            return self.close_full()
        return self._wait()

    def close_full(self) -> str:
        """The disk is full: give the converter the final metadata through the pipe (no room to
        spool it) and let it save what fits (Converter.save_full). Returns `full N`."""
        if self.fd >= 0:
            try:
                os.ftruncate(self.fd, self.size)
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1
        self._command("meta " + json.dumps(self.metadata))
        self._command(f"full {self.seg}")
        return self._wait()

    def _wait(self) -> str:
        os.close(self._ctrl)
        self._ctrl = -1
        _, status, usage = os.wait4(self.pid, 0)
        self.converter_cpu_s = usage.ru_utime + usage.ru_stime
        answer = os.read(self._ack, 256).decode(errors="replace").strip()
        os.close(self._ack)
        if os.waitstatus_to_exitcode(status) != 0 or not answer:
            raise RecordError(f"the converter process failed; the data recorded so far is in "
                              f"{self.parts_dir}")
        return answer
