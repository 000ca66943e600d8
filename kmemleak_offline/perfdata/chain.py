"""Record boundaries of a perf.data record stream: `format.chain` with perf.data's record types.

perf.data adds perf's user records (64..83) to the kernel's, and pipe mode's HEADER_TRACING_DATA,
whose tracing data follows the record outside its size (never a candidate: always walked).
"""

from __future__ import annotations

import numpy as np

from ..format import chain
from .errors import PerfDataError


class Damaged(PerfDataError):
    """A record header that cannot start a record (size < 8): the stream is damaged at `at`
    (an offset in the buffer walked)."""

    def __init__(self, msg: str, at: int) -> None:
        super().__init__(msg)
        self.at = at


REC_HEADER_TRACING_DATA = 66  # pipe mode: the tracing data follows the record, outside its size
# record types that may be candidates: kernel records 1..21, perf's user records 64..83 but the
# tracing data (its payload is not counted in header.size)
PERF_DATA_TYPES = chain.KERNEL_TYPES.copy()
PERF_DATA_TYPES[64:84] = True
PERF_DATA_TYPES[REC_HEADER_TRACING_DATA] = False


def record_size(buf: np.ndarray, pos: int, end: int) -> int | None:
    """Bytes the record at `pos` spans (with a pipe-mode tracing data payload); None if its header
    is not all in buf[:end]."""
    size = chain.header_size(buf, pos, end)
    if size is None:
        return None
    typ = int(buf[pos:pos + 4].view("<u4")[0])
    if typ == REC_HEADER_TRACING_DATA and size >= 12:
        if pos + 12 > end:
            return None
        size += int(buf[pos + 8:pos + 12].view("<u4")[0])
    return size


def record_starts(buf: np.ndarray, end: int, where: str = "perf.data",
                  base: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """chain.record_starts for perf.data; a corrupt record is a PerfDataError."""
    try:
        return chain.record_starts(buf, end, where, base, candidates=PERF_DATA_TYPES,
                                   size_of=record_size)
    except chain.ChainError as exc:
        raise Damaged(str(exc), exc.at) from None
