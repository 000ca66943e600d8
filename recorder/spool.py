"""The recorder's two processes: the drain loop writes ring chunks; a niced converter does the rest.

Why: splitting records, deduplicating stacks and encoding Parquet on the target while the workload
runs cost 4x perf record's CPU. Now the drain loop only appends ring bytes to the open part file
(`format.chunks.ChunkWriter`: one Parquet page per drain, one kernel copy, like perf record), and
a forked converter process, niced, does everything else away from the hot loop:

- at enable (`on`): the initial state (comm of every thread, executable mappings of the traced
  processes) and the kallsyms snapshot, as part 0;
- every second (`seal N`): seals the finished part N (columns and footer: `chunks.seal`);
- at a clean stop (`stop N convert|keep`): seals the last part, embeds user symbols, then either
  converts the chunks into event rows (`format.convert`) or keeps them (`record --defer-convert`:
  converted later by `convert` or `analyze`), and leaves the single file OUT;
- when the recorder dies (its control pipe closes): removes the recorder's uprobes, seals what
  was written (a torn last page is cut off) and marks the metadata "stopped": "recorder killed".
  The parts folder it leaves is a (raw) recording `analyze` reads. The converter runs in a session
  of its own, so a group kill (or a terminal hang-up) leaves it to finish;
- when the disk fills up (`full N`, then the recorder's last metadata as `meta JSON`: the index
  may have no room for it): the room set aside at the start (RESERVE) is given back, the open
  parts are sealed and a last part carries the metadata with "stopped": "disk full" (newest
  chunk parts are given back if it needs their room). The parts folder is the recording.

Every part carries its number and the recording's id, and the folder's manifest lists it
(format/recording.py notices a missing or stray part). The converter's outcome is its exit
status: 0 the single file OUT, PARTS_ONLY the complete parts folder (no room for OUT), FULL.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kmemleak_offline.format import chunks
from kmemleak_offline.format.layout import (
    PartsExistError,
    make_parts_dir,
    new_recording_id,
    unwrite_part,
)
from recorder.errors import RecordError, RecordInputError

CONVERTER_NICE = 10
CONVERT, KEEP = "convert", "keep"
RESERVE = ".reserve"  # room kept for the last metadata when the disk fills up
RESERVE_BYTES = 1 << 20
START_ROOM = 512 << 10  # room the converter's first part (kallsyms, the /proc snapshot) needs
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
DONE, PARTS_ONLY, FULL = 0, 3, 4  # the converter's exit status: how the recording ended


class DiskFull(OSError):
    """A part could not be written: no room left (ENOSPC, EDQUOT)."""


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT, or a write that took no more bytes (errno None)."""
    return isinstance(exc, OSError) and (exc.errno in DISK_FULL or exc.errno is None)


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


def _say(line: str) -> None:
    """One line on stderr from the converter; a closed stderr (EPIPE: the recorder's terminal or
    pipe is gone) never stops it from saving the recording."""
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class Converter:
    """Child side: follows the recorder's commands on the control pipe (see the module doc)."""

    def __init__(self, folder: Path, out: Path, meta: dict[str, Any], traced_pids: Sequence[int],
                 embed_symbols: bool, orphaned: Callable[[], None] | None = None,
                 verbose: bool = False, recording: str | None = None) -> None:
        self.verbose = verbose
        self.recording = recording or new_recording_id()  # every part says it is one of ours
        self.folder = folder
        self.out = out
        self.meta = meta
        self.traced_pids = list(traced_pids)
        self.embed_symbols = embed_symbols
        self.orphaned = orphaned
        self.enabled = False
        self.last = 0  # highest part number written or sealed

    def serve(self, ctrl: int) -> int:
        """Follow the commands until the end; returns the outcome (DONE, PARTS_ONLY, FULL)."""
        from kmemleak_offline.format.convert import skip_pandas_probe
        from kmemleak_offline.format.hugepages import small_pages

        skip_pandas_probe()  # this process never needs pandas: 0.3 CPU s saved
        small_pages()
        pending = b""
        full: int | None = None
        while True:
            try:
                data = os.read(ctrl, 1 << 16)
            except OSError:
                data = b""
            if not data:  # the recorder died: its uprobes go, what it wrote is sealed
                if full is not None:  # it died after saying the disk is full
                    return self.full(full, None)
                self.died("recorder killed", orphan=True)
                return DONE
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                cmd, _, arg = line.decode().partition(" ")
                if cmd == "on":
                    self.meta = json.loads(arg)
                    self.snapshot()
                elif cmd == "seal":
                    self.seal(int(arg))
                elif cmd == "abandon":  # the recorder failed and cleans up itself: save the parts
                    self.died("recorder failed", orphan=False)
                    return DONE
                elif cmd == "full":  # no room left: its last metadata follows
                    full = int(arg)
                elif cmd == "meta" and full is not None:
                    return self.full(full, json.loads(arg))
                elif cmd == "stop":
                    n, mode = arg.split()
                    self.seal(int(n))
                    return self.finish(mode)

    def snapshot(self) -> None:
        """Part 0: the state at enable (read now: the side-band is on, so whatever starts later
        has its own records) and the kallsyms snapshot."""
        from kmemleak_offline.format.recording import write_part
        from recorder import procfs

        self.enabled = True
        start = int(self.meta["clock"]["start_ns"])
        rows = [procfs.initial_comms(start)]
        rows += [procfs.initial_maps(pid, start) for pid in self.traced_pids]
        rows.append(procfs.kallsyms())
        try:
            write_part(self.folder, 0, rows, self.meta, recording=self.recording)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            _say("kmemleak-offline record: converter: no room for the kallsyms and /proc snapshot "
                 "(part 0): the disk is full")

    def seal(self, n: int) -> None:
        _, meta = chunks.read_index(chunks.open_names(self.folder, n)[1])
        if chunks.seal(self.folder, n, self.meta, recording=self.recording) is not None:
            self.last = max(self.last, n)
        if meta is not None:
            self.meta = meta

    def full(self, n: int, meta: dict[str, Any] | None) -> int:
        """The disk is full: the reserve goes, the open parts are sealed (a part that finds no
        room is given up), and the last metadata ("stopped": "disk full") goes into a part of its
        own, the newest chunk parts given back while it needs their room."""
        from kmemleak_offline.format.recording import write_part

        (self.folder / RESERVE).unlink(missing_ok=True)
        if meta is not None:
            self.meta = meta
        final = dict(self.meta)
        for k in chunks.open_parts(self.folder):
            try:
                self.seal(k)
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                for p in chunks.open_names(self.folder, k):
                    p.unlink(missing_ok=True)
        final["stopped"] = "disk full"
        self.meta = final
        while True:
            try:
                write_part(self.folder, self.last + 1, [], final, recording=self.recording)
                return FULL
            except OSError as exc:
                if not is_disk_full(exc) or self.last < 1:
                    raise
                unwrite_part(self.folder, self.last)  # the stop reason and counts matter more than its chunks
                self.last -= 1

    def died(self, reason: str, orphan: bool) -> None:
        from kmemleak_offline.format.recording import write_part

        if orphan and self.orphaned is not None:
            try:
                self.orphaned()
            except Exception as exc:  # noqa: BLE001 - still save the data
                _say(f"kmemleak-offline record: converter: {exc}")
        if not self.enabled:  # never recording: nothing to keep
            shutil.rmtree(self.folder, ignore_errors=True)
            return
        (self.folder / RESERVE).unlink(missing_ok=True)  # its room is for the parts below
        for n in chunks.open_parts(self.folder):
            self.seal(n)
        self.meta["stopped"] = reason
        # the newest part: its metadata counts
        write_part(self.folder, self.last + 1, [], self.meta, recording=self.recording)

    def finish(self, mode: str) -> int:
        """Clean stop: user symbols, then the single file OUT (converted, or the chunks kept).
        No room for OUT: the complete parts folder stays (PARTS_ONLY)."""
        (self.folder / RESERVE).unlink(missing_ok=True)
        try:
            self._finish(mode)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            for p in (self.out.with_name(self.out.name + ".tmp"),
                      self.out.with_name(self.out.name + ".converting")):
                p.unlink(missing_ok=True)
            return PARTS_ONLY
        return DONE

    def _finish(self, mode: str) -> None:
        from kmemleak_offline.format.convert import convert_recording, mapped_files
        from kmemleak_offline.format.integrity import seal
        from kmemleak_offline.format.layout import PART_KEY
        from kmemleak_offline.format.recording import _arrow_schema_kv, open_recording, write_part
        from kmemleak_offline.format.stitch import stitch_files

        def usym(names: set[str]) -> list:
            from kmemleak_offline.format.symrows import usym_rows

            return [usym_rows(sorted(n for n in names if n.startswith("/")))] if self.embed_symbols else []

        rec = open_recording(self.folder)
        if mode == CONVERT:
            import time

            t, c = time.monotonic(), time.process_time()
            res = convert_recording(rec, self.out, extra_rows=usym)
            if self.verbose:
                cpu = time.process_time() - c
                sys.stderr.write(f"kmemleak-offline record: converted {res.events} events "
                                 f"({res.chunk_bytes / 1e6:.1f} MB of ring chunks) in "
                                 f"{time.monotonic() - t:.2f} s, {cpu:.2f} CPU s "
                                 f"({1e6 * cpu / max(1, res.events):.3f} us/event)\n")
        else:
            rows = usym(mapped_files(rec)) if self.embed_symbols else []
            if rows:
                write_part(self.folder, self.last + 1, rows, self.meta, recording=self.recording)
                rec = open_recording(self.folder)
            stitch_files(rec.files, self.out, _arrow_schema_kv(self.meta), drop_keys=[PART_KEY],
                         seal=seal)
        shutil.rmtree(self.folder)


class SpooledRecording:
    """Parent side: the parts folder, the open chunk part, and the converter process.

    `metadata` is the recorder's to update; it goes into each part as that part is finished."""

    def __init__(self, out: Path, metadata: dict[str, Any], traced_pids: Sequence[int],
                 embed_symbols: bool, in_child: Callable[[], None],
                 orphaned: Callable[[], None] | None = None, verbose: bool = False) -> None:
        self.path = out
        self.metadata = metadata
        try:
            self.parts_dir = make_parts_dir(out)
        except PartsExistError as exc:
            raise RecordInputError(str(exc)) from None
        try:  # room for the last metadata if the disk fills up, and for the first part
            st = os.statvfs(self.parts_dir)
            free = st.f_bavail * st.f_frsize
            reserved = make_reserve(self.parts_dir, free)
            if free - reserved < START_ROOM:
                raise OSError(errno.ENOSPC, "no room for the first part")
        except OSError as exc:
            shutil.rmtree(self.parts_dir, ignore_errors=True)
            if not is_disk_full(exc):
                raise
            raise RecordError(f"no room to record in {self.parts_dir.parent} (disk full): "
                              "nothing was recorded") from None
        self.recording = new_recording_id()
        self.n = 1
        self.writer: chunks.ChunkWriter | None = None
        self._closed_bytes = 0  # ring bytes in parts already handed to the converter
        self.converter_cpu_s = 0.0
        ctrl_r, self._ctrl = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            code = 1
            try:
                os.setsid()  # a group kill or hang-up of the recorder leaves it to save the parts
                for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP):
                    signal.signal(s, signal.SIG_IGN)  # finish the work; the recorder says when
                os.close(self._ctrl)
                in_child()
                os.nice(CONVERTER_NICE)  # background work: the workload and the drain come first
                code = Converter(self.parts_dir, out, metadata, traced_pids, embed_symbols,
                                 orphaned, verbose, self.recording).serve(ctrl_r)
            except BaseException as exc:  # noqa: BLE001 - report in one line, never a traceback
                _say(f"kmemleak-offline record: converter: {exc}")
            finally:
                os._exit(code)
        os.close(ctrl_r)

    def _send(self, line: str) -> None:
        try:
            os.write(self._ctrl, line.encode() + b"\n")
        except BrokenPipeError:
            raise RecordError(f"the converter process died; the data recorded so far is in "
                              f"{self.parts_dir}") from None

    def start(self) -> None:
        """Events are being enabled: open part 1, let the converter snapshot the initial state."""
        try:
            self.writer = chunks.ChunkWriter(self.parts_dir, self.n)
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull(exc.errno, f"no room for part {self.n}") from None
            raise
        self._send("on " + json.dumps(self.metadata))

    def rotate(self) -> None:
        """Finish the open part (with the metadata as known now); the converter seals it. A full
        disk raises DiskFull (the converter is told at close_full)."""
        try:
            self.writer.add_metadata(self.metadata)
            self.writer.close()
            self._closed_bytes += self.writer.pos
            self.writer = None
            self._send(f"seal {self.n}")
            self.n += 1
            self.writer = chunks.ChunkWriter(self.parts_dir, self.n)
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull(exc.errno, f"no room for part {self.n}") from None
            raise

    @property
    def bytes_written(self) -> int:
        """Bytes written to part files so far (counted, not stat()ed: asked every second)."""
        return self._closed_bytes + (self.writer.pos if self.writer is not None else 0)

    def _end(self, line: str, meta: bool = True) -> int:
        try:
            if self.writer is not None:
                w, self.writer = self.writer, None
                try:
                    if meta:
                        w.add_metadata(self.metadata)  # may fail (a full disk): the command still goes
                finally:
                    w.close()
        finally:
            self._send_and_close(line)
        _, status, usage = os.wait4(self.pid, 0)
        self.converter_cpu_s = usage.ru_utime + usage.ru_stime
        return os.waitstatus_to_exitcode(status)

    def _send_and_close(self, line: str) -> None:
        try:
            self._send(line)
        finally:
            os.close(self._ctrl)
            self._ctrl = -1

    def close(self, mode: str = CONVERT) -> int:
        """Hand over the last part; the converter leaves the single file OUT (DONE) or, with no
        room for it, the complete parts folder (PARTS_ONLY). Waits for it."""
        code = self._end(f"stop {self.n} {mode}")
        if code not in (DONE, PARTS_ONLY):
            raise RecordError(f"the converter process failed; the data recorded so far is in "
                              f"{self.parts_dir}")
        return code

    def close_full(self) -> int:
        """The disk is full: the converter seals what was written and writes the last metadata
        (stop reason "disk full") into the room set aside. Returns FULL."""
        if self._end(f"full {self.n}\nmeta " + json.dumps(self.metadata), meta=False) != FULL:
            raise RecordError(f"the disk is full and the converter process failed; the data "
                              f"recorded so far is in {self.parts_dir}")
        return FULL

    def abandon(self) -> None:
        """The recorder failed: let the converter seal what was written (parts folder), wait."""
        if self._ctrl < 0:
            return
        try:
            self._end(f"abandon {self.n}")
        except (OSError, RecordError, ChildProcessError):
            pass
