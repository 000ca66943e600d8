"""Kernel symbolisation from the recording's `ksym` rows (the kallsyms snapshot taken at record time).

Rule (perf-prof, trace_helpers.c): the symbol with the largest address <= ip, no size check; when
several share an address the name that sorts last wins. Lookups are vectorised with searchsorted.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class KernelSymbols:
    """Sorted kallsyms snapshot; resolve many addresses at once."""

    def __init__(self, addrs: np.ndarray, names: np.ndarray) -> None:
        addrs = np.asarray(addrs, dtype=np.uint64)
        names = np.asarray(names, dtype=object)
        # sort by (addr, name) so the last of equal addresses is the name that sorts last
        order = np.lexsort((names.astype(str), addrs)) if len(addrs) else np.zeros(0, np.int64)
        a, nm = addrs[order], names[order]
        if len(a):
            keep = np.append(a[1:] != a[:-1], True)  # last entry of each address run
            a, nm = a[keep], nm[keep]
        self.addrs = a
        self.names = nm

    @classmethod
    def from_table(cls, table: pa.Table) -> KernelSymbols:
        """From ksym rows (columns addr, name)."""
        if table.num_rows == 0:
            return cls(np.zeros(0, np.uint64), np.zeros(0, object))
        t = table.filter(pc.is_valid(table.column("addr")))
        return cls(t.column("addr").to_numpy(zero_copy_only=False).astype(np.uint64),
                   np.asarray(t.column("name").to_pylist(), dtype=object))

    def __len__(self) -> int:
        return len(self.addrs)

    def resolve(self, ips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(names (object, None where unknown), offsets uint64) for each ip."""
        ips = np.asarray(ips, dtype=np.uint64)
        if not len(self.addrs):
            return np.full(len(ips), None, dtype=object), np.zeros(len(ips), np.uint64)
        pos = np.searchsorted(self.addrs, ips, side="right") - 1
        ok = pos >= 0
        p = np.clip(pos, 0, None)
        names = np.where(ok, self.names[p], None)
        offs = np.where(ok, ips - self.addrs[p], np.uint64(0)).astype(np.uint64)
        return names, offs

    def lookup(self, ip: int) -> tuple[str, int] | None:
        """Scalar form, for print fmt `%pS`."""
        names, offs = self.resolve(np.array([ip], dtype=np.uint64))
        return None if names[0] is None else (str(names[0]), int(offs[0]))

    def names_only(self, ips: np.ndarray) -> np.ndarray:
        """Names as numpy bytes (`Unknown` if unresolved, or below 0xffff000000000000), for `ksymbol()`."""
        ips = np.asarray(ips, dtype=np.uint64)
        names, _ = self.resolve(ips)
        out = np.where((ips >= np.uint64(0xFFFF000000000000)) & (names != None), names, "Unknown")
        return out.astype("S")
