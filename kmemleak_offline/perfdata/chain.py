"""Record boundaries of a perf.data record stream, vectorised.

Why: each record's size says where the next begins, so finding boundaries is a chain; a Python
step per record cost more than everything else of an import. Here every 8-aligned position whose
u64 reads like a record header (known type, size a multiple of 8 and >= 8: perf pads every record
to 8 bytes) is a candidate, and the chain is checked at once with numpy: candidate i is followed by
candidate i+1 iff `start + size` lands on it. Starting from a known record start, a run of checked
links is taken whole; only where a link fails (a payload word that reads like a header, a record
of a type or size the filter does not know, the tracing data that follows a pipe-mode
HEADER_TRACING_DATA record) one record is walked in Python and the run resumes.
"""

from __future__ import annotations

import numpy as np

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
_CANDIDATE = np.zeros(128, bool)
_CANDIDATE[1:22] = True
_CANDIDATE[64:84] = True
_CANDIDATE[REC_HEADER_TRACING_DATA] = False


def record_size(buf: np.ndarray, pos: int, end: int) -> int | None:
    """Bytes the record at `pos` spans (with a pipe-mode tracing data payload); None if its header
    is not all in buf[:end]."""
    if pos + 8 > end:
        return None
    typ = int(buf[pos:pos + 4].view("<u4")[0])
    size = int(buf[pos + 6:pos + 8].view("<u2")[0])
    if typ == REC_HEADER_TRACING_DATA and size >= 12:
        if pos + 12 > end:
            return None
        size += int(buf[pos + 8:pos + 12].view("<u4")[0])
    return size


def record_starts(buf: np.ndarray, end: int, where: str = "perf.data",
                  base: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """(start offsets int64, end offsets int64, consumed) of the whole records in buf[:end], which
    begins with a record; `consumed` is where the first record not wholly inside begins (`end` if
    none). `where` and `base` (buf's offset in its stream) only make error messages."""
    n8 = end // 8
    words = np.frombuffer(buf.data, "<u2", count=n8 * 4).reshape(n8, 4)  # type lo, type hi, misc, size
    size = words[:, 3]
    cand = np.flatnonzero(((size & 7) == 0) & (size != 0))  # cheap test first: few pass
    lo = words[cand, 0]
    cand = cand[(words[cand, 1] == 0) & _CANDIDATE[np.minimum(lo, 127)]]
    nxt = cand * 8 + size[cand]  # byte offset of the record after each candidate
    cand = cand * 8
    broken = np.ones(len(cand), bool)  # link i -> i+1 does not hold (the last has no successor)
    if len(cand) > 1:
        broken[:-1] = nxt[:-1] != cand[1:]
    breaks = np.flatnonzero(broken)
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    pos = 0
    while pos < end:
        j = int(np.searchsorted(cand, pos))
        if j < len(cand) and cand[j] == pos:  # a checked run from here to its first broken link
            k = int(breaks[np.searchsorted(breaks, j)])
            starts.append(cand[j:k + 1])
            ends.append(nxt[j:k + 1])
            pos = int(nxt[k])
            continue
        sz = record_size(buf, pos, end)
        if sz is None:
            break
        if sz < 8:
            raise Damaged(f"{where}: corrupt record at offset {base + pos} (size {sz})", pos)
        starts.append(np.array([pos], np.int64))
        ends.append(np.array([pos + sz], np.int64))
        pos += sz
    if not starts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    s, e = np.concatenate(starts), np.concatenate(ends)
    whole = int(np.searchsorted(e, end, side="right"))  # ends increase: records past `end` trail
    consumed = int(s[whole]) if whole < len(s) else min(pos, end)
    return s[:whole], e[:whole], consumed
