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

    def convert(self, path: Path) -> None:
        """One segment -> one part. The segment is mapped, not read: each ring's records are split
        where they lie (its frames are spans of the map), so ring bytes are never copied again."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
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
        self.writer.flush_part()
        path.unlink()

    def _write(self, rows: Mapping[str, Any] | pa.Table) -> None:
        self.writer.write(to_table(rows))

    def finish(self) -> None:
        """Clean stop: stitch the parts into the single file."""
        self.writer.close()

    def _apply_meta(self) -> None:
        """The recorder's metadata, with what only the splitter knows: exact sample counts, the
        LOST records per ring, and a stop time no older than the last record written."""
        meta = json.loads(json.dumps(self.meta))
        sp = self.splitter
        for name, c in meta.get("counts", {}).items():
            c["samples"] = sp.samples.get(name, 0)
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
                cmd, n = line.decode().split()
                if cmd == "on":  # the events are enabled: a death from now on loses no start-up
                    self.events_on = True
                    continue
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
                    self.finish()
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
        os.write(self.fd, FRAME.pack(0, kind, len(payload)) + payload + pad)

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
        try:
            os.write(self._ctrl, f"{line}\n".encode())
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
        done = self.seg
        self.seg += 1
        if cmd != "stop":
            self.fd = self._open(self.seg)
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

    def close(self) -> Path:
        """Hand over the last segment, let the converter stitch the parts, wait for it."""
        self.rotate("stop")
        os.close(self._ctrl)
        self._ctrl = -1
        _, status, usage = os.wait4(self.pid, 0)
        self.converter_cpu_s = usage.ru_utime + usage.ru_stime
        os.close(self._ack)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RecordError(f"the converter process failed; the data recorded so far is in "
                              f"{self.parts_dir}")
        return self.path
