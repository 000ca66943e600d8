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
  of its own, so a group kill (or a terminal hang-up) leaves it to finish.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kmemleak_offline.format import chunks
from kmemleak_offline.format.layout import PartsExistError, make_parts_dir
from recorder.errors import RecordError, RecordInputError

CONVERTER_NICE = 10
CONVERT, KEEP = "convert", "keep"


class Converter:
    """Child side: follows the recorder's commands on the control pipe (see the module doc)."""

    def __init__(self, folder: Path, out: Path, meta: dict[str, Any], traced_pids: Sequence[int],
                 embed_symbols: bool, orphaned: Callable[[], None] | None = None,
                 verbose: bool = False) -> None:
        self.verbose = verbose
        self.folder = folder
        self.out = out
        self.meta = meta
        self.traced_pids = list(traced_pids)
        self.embed_symbols = embed_symbols
        self.orphaned = orphaned
        self.enabled = False
        self.last = 0  # highest part number written or sealed

    def serve(self, ctrl: int) -> None:
        from kmemleak_offline.format.convert import skip_pandas_probe

        skip_pandas_probe()  # this process never needs pandas: 0.3 CPU s saved
        pending = b""
        while True:
            data = os.read(ctrl, 1 << 16)
            if not data:  # the recorder died: its uprobes go, what it wrote is sealed
                self.died("recorder killed", orphan=True)
                return
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
                    return
                elif cmd == "stop":
                    n, mode = arg.split()
                    self.seal(int(n))
                    self.finish(mode)
                    return

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
        write_part(self.folder, 0, rows, self.meta)

    def seal(self, n: int) -> None:
        _, meta = chunks.read_index(chunks.open_names(self.folder, n)[1])
        if chunks.seal(self.folder, n, self.meta) is not None:
            self.last = max(self.last, n)
        if meta is not None:
            self.meta = meta

    def died(self, reason: str, orphan: bool) -> None:
        from kmemleak_offline.format.recording import write_part

        if orphan and self.orphaned is not None:
            try:
                self.orphaned()
            except Exception as exc:  # noqa: BLE001 - still save the data
                sys.stderr.write(f"kmemleak-offline record: converter: {exc}\n")
        if not self.enabled:  # never recording: nothing to keep
            shutil.rmtree(self.folder, ignore_errors=True)
            return
        for n in chunks.open_parts(self.folder):
            self.seal(n)
        self.meta["stopped"] = reason
        write_part(self.folder, self.last + 1, [], self.meta)  # the newest part: its metadata counts

    def finish(self, mode: str) -> None:
        """Clean stop: user symbols, then the single file OUT (converted, or the chunks kept)."""
        from kmemleak_offline.format.convert import convert_recording, mapped_files
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
                write_part(self.folder, self.last + 1, rows, self.meta)
            stitch_files(sorted(self.folder.glob("part-*.parquet")), self.out, _arrow_schema_kv(self.meta))
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
        self.n = 1
        self.writer: chunks.ChunkWriter | None = None
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
                Converter(self.parts_dir, out, metadata, traced_pids, embed_symbols,
                          orphaned, verbose).serve(ctrl_r)
                code = 0
            except BaseException as exc:  # noqa: BLE001 - report in one line, never a traceback
                sys.stderr.write(f"kmemleak-offline record: converter: {exc}\n")
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
        self.writer = chunks.ChunkWriter(self.parts_dir, self.n)
        self._send("on " + json.dumps(self.metadata))

    def rotate(self) -> None:
        """Finish the open part (with the metadata as known now); the converter seals it."""
        self.writer.add_metadata(self.metadata)
        self.writer.close()
        self._send(f"seal {self.n}")
        self.n += 1
        self.writer = chunks.ChunkWriter(self.parts_dir, self.n)

    def _end(self, line: str) -> int:
        try:
            if self.writer is not None:
                w, self.writer = self.writer, None
                try:
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

    def close(self, mode: str = CONVERT) -> Path:
        """Hand over the last part; the converter leaves the single file OUT. Waits for it."""
        if self._end(f"stop {self.n} {mode}") != 0:
            raise RecordError(f"the converter process failed; the data recorded so far is in "
                              f"{self.parts_dir}")
        return self.path

    def abandon(self) -> None:
        """The recorder failed: let the converter seal what was written (parts folder), wait."""
        if self._ctrl < 0:
            return
        try:
            self._end(f"abandon {self.n}")
        except (OSError, RecordError, ChildProcessError):
            pass
