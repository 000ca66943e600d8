"""Record boundaries of a perf.data record stream: `format.chain` with perf.data's record types.

perf.data adds perf's user records (64..83) to the kernel's, and pipe mode's HEADER_TRACING_DATA,
whose tracing data follows the record outside its size (never a candidate: always walked).
"""

from __future__ import annotations

import numpy as np

from ..format import chain
from .errors import PerfDataError

REC_HEADER_TRACING_DATA = 66
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
        raise PerfDataError(str(exc)) from None
