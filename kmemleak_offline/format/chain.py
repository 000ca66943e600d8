"""Record boundaries of a perf record stream (perf.data, or a perf ring's bytes), vectorised.

Why: each record's size says where the next begins, so finding boundaries is a chain; a Python
step per record cost more than everything else of an import or a conversion. Here every 8-aligned
position whose u64 reads like a record header (a type the caller expects, size a multiple of 8
and >= 8: the kernel and perf pad every record to 8 bytes) is a candidate, and the chain is
checked at once with numpy: candidate i is followed by candidate i+1 iff `start + size` lands on
it. Starting from a known record start, a run of checked links is taken whole; only where a link
fails (a payload word that reads like a header, a record of a type or size the filter does not
know, perf's pipe-mode tracing data that follows its record) one record is walked in Python and
the run resumes.

Shared by `perfdata/` (import) and `convert` (the ring chunks `record` stores).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# record types a ring buffer holds: the kernel's PERF_RECORD_* (1..21)
KERNEL_TYPES = np.zeros(128, bool)
KERNEL_TYPES[1:22] = True


class ChainError(ValueError):
    """A record whose size cannot be right (0..7 bytes): the stream is corrupt at `at` (an offset
    in the buffer walked). One line."""

    def __init__(self, msg: str, at: int) -> None:
        super().__init__(msg)
        self.at = at


def header_size(buf: np.ndarray, pos: int, end: int) -> int | None:
    """Bytes of the record at `pos` (its header's u16 size); None if the header is not all in
    buf[:end]."""
    if pos + 8 > end:
        return None
    return int(buf[pos + 6:pos + 8].view("<u2")[0])


def record_starts(buf: np.ndarray, end: int, where: str = "records", base: int = 0, *,
                  candidates: np.ndarray = KERNEL_TYPES,
                  size_of: Callable[[np.ndarray, int, int], int | None] = header_size,
                  ) -> tuple[np.ndarray, np.ndarray, int]:
    """(start offsets int64, end offsets int64, consumed) of the whole records in buf[:end] (uint8),
    which begins with a record; `consumed` is where the first record not wholly inside begins
    (`end` if none). `candidates[type]` says which record types may be linked without a walk (types
    >= len(candidates) never are); `size_of` sizes a record the walk meets. `where` and `base`
    (buf's offset in its stream) only make error messages."""
    n8 = end // 8
    head = np.frombuffer(buf.data, "<u8", count=n8)  # u32 type, u16 misc, u16 size
    bits = (len(candidates) - 1).bit_length()
    # one test per word: the type below 2**bits, the size a non-zero multiple of 8 (few pass)
    zero = np.uint64((7 << 48) | (0xFFFFFFFF & ~((1 << bits) - 1)))
    ok = (head & zero) == 0
    ok &= head >= np.uint64(1 << 48)
    cand = np.flatnonzero(ok)
    h = head[cand]
    lo = (h & np.uint64(0xFFFF)).astype(np.intp)
    top = len(candidates) - 1
    keep = candidates[np.minimum(lo, top)] & (lo <= top)
    cand = cand[keep]
    nxt = cand * 8 + (h[keep] >> np.uint64(48)).astype(np.int64)  # the record after each
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
        sz = size_of(buf, pos, end)
        if sz is None:
            break
        if sz < 8:
            raise ChainError(f"{where}: corrupt record at offset {base + pos} (size {sz})", pos)
        starts.append(np.array([pos], np.int64))
        ends.append(np.array([pos + sz], np.int64))
        pos += sz
    if not starts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    s, e = np.concatenate(starts), np.concatenate(ends)
    whole = int(np.searchsorted(e, end, side="right"))  # ends increase: records past `end` trail
    consumed = int(s[whole]) if whole < len(s) else min(pos, end)
    return s[:whole], e[:whole], consumed
