"""Variable-length byte gathers out of a record window, vectorised.

Why: the raw payloads and call chains of a window's samples are copied out as one flat array plus
offsets (Arrow's binary layout). A per-byte index (np.repeat) costs 8 index bytes per payload
byte; when the lengths are close (tracepoint payloads: one size per event) a 2-D row view of the
window copies each payload as a row and a mask drops the tail of the shorter ones, and call chains
(u64 words at 8-aligned offsets) are gathered a word at a time.
"""

from __future__ import annotations

import numpy as np


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    """int64 offsets (n+1) of items of these lengths laid end to end."""
    out = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def ragged(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate buf[starts[i] : starts[i]+lengths[i]] -> (flat, int64 offsets n+1); flat has
    buf's dtype. Any buffer, any lengths: a per-item index."""
    lengths = lengths.astype(np.int64)
    offsets = offsets_of(lengths)
    total = int(offsets[-1])
    if total == 0:
        return np.zeros(0, buf.dtype), offsets
    idx = np.repeat(starts.astype(np.int64) - offsets[:-1], lengths) + np.arange(total, dtype=np.int64)
    return buf[idx], offsets


def payload_bytes(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                  valid: int) -> tuple[np.ndarray, np.ndarray]:
    """ragged() for byte ranges inside buf[:valid]: rows of a 2-D view when buf has room for the
    longest past `valid` (record windows are padded) and few bytes would be copied in vain."""
    lengths = lengths.astype(np.int64)
    n = len(lengths)
    if n == 0:
        return np.zeros(0, np.uint8), np.zeros(1, np.int64)
    width = int(lengths.max())
    total = int(lengths.sum())
    if width == 0 or valid + width > len(buf) or n * width > 2 * total + 4096:
        return ragged(buf, starts, lengths)
    rows = np.lib.stride_tricks.as_strided(buf, shape=(len(buf) - width + 1, width), strides=(1, 1),
                                           writeable=False)[starts]
    if total == n * width:
        return rows.reshape(-1), offsets_of(lengths)
    return rows[np.arange(width) < lengths[:, None]], offsets_of(lengths)


def u64_words(buf: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The u64 arrays of `counts[i]` words at byte offsets `starts` -> (flat uint64 words, int64
    word offsets n+1); a word-at-a-time gather when every start is 8-aligned (as in perf records)."""
    counts = counts.astype(np.int64)
    if len(starts) and not (starts & 7).any() and buf.ctypes.data % 8 == 0:
        words = np.frombuffer(buf.data, "<u8", count=len(buf) // 8)
        flat, offs = ragged(words, starts // 8, counts)
        return flat.astype(np.uint64, copy=False), offs
    flat, offs = ragged(buf, starts, counts * 8)
    return np.frombuffer(flat.tobytes(), "<u8").astype(np.uint64), offs // 8
