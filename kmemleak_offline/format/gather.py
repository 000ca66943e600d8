"""Variable-length byte gathers out of a record window, vectorised.

Why: the raw payloads and call chains of a window's samples are copied out as one flat array plus
offsets (Arrow's binary layout) or as fixed-width rows. A per-byte index (np.repeat) costs 8 index
bytes per payload byte; items of one length (a tracepoint's payload, call chains of one depth)
are instead copied as items of a void dtype `width` bytes wide laid over the window at every byte
(or word): a fancy index copies each with one memcpy (twice as fast as the rows of a 2-D view).
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


def items(buf: np.ndarray, width: int) -> np.ndarray:
    """`buf` (contiguous) as overlapping items of `width` of its elements, one starting at each
    element: items(buf, w)[starts] copies buf[s : s + w] for each s."""
    step = buf.itemsize
    return np.ndarray((max(0, len(buf) - width + 1),), np.dtype((np.void, width * step)),
                      buffer=buf, strides=(step,))


def payload_bytes(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ragged() for byte ranges of a record window (uint8): the items of each distinct length
    (one per tracepoint, a few per window) copied as void items; items of one width that are
    neighbours in the output (callers may order them so) fill one block."""
    lengths = lengths.astype(np.int64)
    offsets = offsets_of(lengths)
    out = np.empty(int(offsets[-1]), np.uint8)
    if not len(out):
        return out, offsets
    by_width = groups(lengths)
    if len(by_width) > 64:  # payloads of many sizes (strings): one index per byte
        return ragged(buf, starts, lengths)
    for width, sel in by_width:
        if not width:
            continue
        src = items(buf, width)[starts[sel]]
        first = int(offsets[sel[0]])
        if int(sel[-1]) - int(sel[0]) + 1 == len(sel):  # items of this width lie together: one block
            out[first:first + width * len(sel)] = src.view(np.uint8)
        else:
            items(out, width)[offsets[sel]] = src
    return out, offsets


FEW = 6  # up to this many distinct values, groups() finds each with a pass instead of a sort


def groups(values: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(value, indices holding it) for each distinct value of a small non-negative int array: one
    O(n) radix sort (stable argsort of uint16), no comparison sort; indices ascend in each group."""
    if not len(values):
        return []
    if int(values.max()) >= 1 << 16:
        uniq, inv = np.unique(values, return_inverse=True)
        return [(int(u), np.flatnonzero(inv == i)) for i, u in enumerate(uniq.tolist())]
    ints = values.view(np.int64) if values.dtype == np.uint64 else values  # < 2**16: same value
    present = np.flatnonzero(np.bincount(ints))
    if len(present) <= FEW:  # a pass per value beats the sort (two payload sizes, one ring)
        return [(v, np.flatnonzero(ints == v)) for v in present.tolist()]
    order = np.argsort(values.astype(np.uint16), kind="stable")
    sv = values[order]
    cut = np.flatnonzero(sv[1:] != sv[:-1]) + 1
    return [(int(sv[a]), order[a:b]) for a, b in zip(np.r_[0, cut].tolist(), np.r_[cut, len(sv)].tolist(),
                                                       strict=True)]


def fixed_rows(words: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """(n, width) array: the `width` items of `words` from each start (a copy)."""
    return items(words, width)[starts].view(words.dtype).reshape(len(starts), width)
