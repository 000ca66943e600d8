"""RecordingWriter.write() on a thread of its own.

Why: Arrow's casts and the Parquet encoder (zstd) release the GIL, so with the writes on a second
thread they overlap the parsing of the next window instead of following it (on 2 cores: -0.2 s of
1.6 s for 1M samples). The queue is short, so memory stays bounded by a few windows' rows.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping
from typing import Any

from kmemleak_offline.format.recording import RecordingWriter

_STOP = object()


class BackgroundWriter:
    """write() queues rows for `writer`; join() waits for them and re-raises what writing raised."""

    def __init__(self, writer: RecordingWriter, depth: int = 3) -> None:
        self.writer = writer
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="recording-writer", daemon=True)
        self._thread.start()

    def write(self, rows: Mapping[str, Any]) -> None:
        if self._error is not None:
            self.join()
        if not self._thread.is_alive():  # after join(): write here
            self.writer.write(rows)
            return
        self._q.put(rows)

    def _run(self) -> None:
        while (rows := self._q.get()) is not _STOP:
            if self._error is None:
                try:
                    self.writer.write(rows)
                except BaseException as exc:  # noqa: BLE001 (handed to the caller by join())
                    self._error = exc

    def join(self) -> None:
        """Wait until every queued write is done; raise the first error of one."""
        if self._thread.is_alive():
            self._q.put(_STOP)
            self._thread.join()
        if self._error is not None:
            err, self._error = self._error, None
            raise err
