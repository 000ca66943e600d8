"""Recording-wide stack ids: each distinct call chain gets one id and one `stack` row.

Why: grouping samples by raw call chain must be grouping by `stack_id`, across every window of an
import or a conversion. Chains of one depth are rows of a fixed width: Arrow hashes them
(dictionary_encode), and only the distinct chains of a window meet the Python dict of all chains
(one entry per distinct chain, never one step per sample). Shared by `perfdata/` and `convert`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kmemleak_offline.format.gather import fixed_rows, groups, offsets_of
from kmemleak_offline.format.recording import const_column


class StackTable:
    """Call chain bytes -> stack id, carried from window to window."""

    def __init__(self) -> None:
        self.ids: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def assign(self, buf: np.ndarray, start: np.ndarray, nr: np.ndarray) -> tuple[np.ndarray, dict[str, Any] | None]:
        """Stack ids (uint32) of the chains of `nr[i]` u64 words at byte `start[i]` of `buf`
        (uint8); and the `stack` rows of chains never seen before (None if none). Entries with
        nr 0 get id 0: the caller masks them."""
        sid = np.zeros(len(nr), np.uint32)
        new: list[bytes] = []
        for k, sel in groups(nr):  # one step per distinct depth (<= 127 by default)
            if not k:
                continue
            rows = fixed_rows(buf, start[sel], 8 * k)
            enc = pc.dictionary_encode(pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(8 * k), len(sel), [None, pa.py_buffer(rows)]))
            gid = np.empty(len(enc.dictionary), np.uint32)
            ids = self.ids
            for j, key in enumerate(enc.dictionary.to_pylist()):
                g = ids.get(key)
                if g is None:
                    g = ids[key] = len(ids)
                    new.append(key)
                gid[j] = g
            sid[sel] = gid[enc.indices.to_numpy(zero_copy_only=False)]
        if not new:
            return sid, None
        first = len(self.ids) - len(new)
        offsets = offsets_of(np.array([len(k) // 8 for k in new], np.int64)).astype(np.int32)
        flat = np.frombuffer(b"".join(new), "<u8").astype(np.uint64)
        return sid, {"kind": const_column("stack", len(new)),
                     "stack_id": pa.array(np.arange(first, first + len(new)), pa.uint32()),
                     "callchain": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))}
