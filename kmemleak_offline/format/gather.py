"""Variable-length byte gathers out of a record window, vectorised.

Why: the raw payloads and call chains of a window's samples are copied out as one flat array plus
offsets (Arrow's binary layout) or as fixed-width rows. A per-byte index (np.repeat) costs 8 index
bytes per payload byte; items of one length (a tracepoint's payload, call chains of one depth)
are instead copied as the rows of a 2-D strided view of the window: one memcpy per item.
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


def payload_bytes(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ragged() for byte ranges of a record window: the items of each distinct length (one per
    tracepoint, a few per window) copied as the rows of a 2-D view, into rows of the output.
    Rows are copied in the widest unit (8, 4 or 2 bytes) every start and length is a multiple of
    (tracepoint payloads follow a u32 size in u64-aligned records: 4), not byte by byte; items of
    one width that are neighbours in the output (callers may order them so) fill one block."""
    lengths = lengths.astype(np.int64)
    offsets = offsets_of(lengths)
    out = np.empty(int(offsets[-1]), np.uint8)
    if not len(out):
        return out, offsets
    by_width = groups(lengths)
    if len(by_width) > 64:  # payloads of many sizes (strings): one index per byte
        return ragged(buf, starts, lengths)
    both = np.bitwise_or.reduce(starts.astype(np.int64)) | np.bitwise_or.reduce(lengths)
    unit = next(u for u in (8, 4, 2, 1) if not both & (u - 1))
    dt = np.dtype(f"u{unit}")
    src_all = buf[: len(buf) - len(buf) % unit].view(dt)
    out_all = out.view(dt)  # len(out) is a sum of multiples of unit
    for width, sel in by_width:
        if not width:
            continue
        w = width // unit
        src = np.lib.stride_tricks.as_strided(src_all, shape=(len(src_all) - w + 1, w),
                                              strides=(unit, unit), writeable=False)
        first = int(offsets[sel[0]]) // unit
        if int(sel[-1]) - int(sel[0]) + 1 == len(sel):  # items of this width lie together: one block
            out_all[first:first + w * len(sel)].reshape(-1, w)[:] = src[starts[sel] // unit]
            continue
        dst = np.lib.stride_tricks.as_strided(out_all, shape=(len(out_all) - w + 1, w),
                                              strides=(unit, unit))
        dst[offsets[sel] // unit] = src[starts[sel] // unit]
    return out, offsets


def groups(values: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(value, indices holding it) for each distinct value of a small non-negative int array: one
    O(n) radix sort (stable argsort of uint16), no comparison sort."""
    if not len(values):
        return []
    if int(values.max()) >= 1 << 16:
        uniq, inv = np.unique(values, return_inverse=True)
        return [(int(u), np.flatnonzero(inv == i)) for i, u in enumerate(uniq.tolist())]
    order = np.argsort(values.astype(np.uint16), kind="stable")
    sv = values[order]
    cut = np.flatnonzero(sv[1:] != sv[:-1]) + 1
    return [(int(sv[a]), order[a:b]) for a, b in zip(np.r_[0, cut].tolist(), np.r_[cut, len(sv)].tolist(),
                                                       strict=True)]


def fixed_rows(words: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """(n, width) array: the `width` items of `words` from each start (a copy)."""
    view = np.lib.stride_tricks.as_strided(words, shape=(len(words) - width + 1, width),
                                           strides=(words.itemsize, words.itemsize), writeable=False)
    return view[starts]
