"""Call chains -> symbolised frames (perf's machine__resolve_callchain), for every reporter and diff.

Kernel frames resolve through the recording's kallsyms snapshot (all distinct ips at once);
user frames through the machine (which process had which file mapped where, and when:
symbols/machine.py) and the DSOs' symbol tables (symbols/user.py): `UserResolver`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .machine import Machine
from .user import Dsos, demangle

PERF_CONTEXT_MAX = np.uint64(0xFFFFFFFFFFFFF001)  # words >= -4095 are context markers
CTX_KERNEL = 0xFFFFFFFFFFFFFF80  # -128
CTX_USER = 0xFFFFFFFFFFFFFE00  # -512
KERNEL_DSO = "[kernel.kallsyms]"

# user resolver: (pids, addrs, times, is_return) -> (names, offsets, dsos), object arrays (None = unknown)
UserLookup = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                        tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass
class UserResolver:
    """(pids, addrs, times, is_return) -> (symbol name or None, offset, mapped file or None)."""

    machine: Machine
    dsos: Dsos = field(default_factory=Dsos)
    demangle: bool = True

    @classmethod
    def from_recording(cls, rec, symfs: str | None = None, use_local_files: bool = True) -> UserResolver:
        """Over a Recording's side-band rows (comm, fork, exit, mmap) and embedded usym rows."""
        from ..load import load_side

        side = load_side(rec)
        return cls(Machine.from_side(side), Dsos(side["usym"], symfs=symfs,
                                                 use_local_files=use_local_files))

    @property
    def unreadable(self) -> dict[str, str]:
        """ELF files that could not be read while resolving, path -> why (their frames: Unknown)."""
        return self.dsos.unreadable

    def __call__(self, pid: np.ndarray, addr: np.ndarray, time: np.ndarray,
                 is_return: np.ndarray | bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.resolve(pid, addr, time, is_return)

    def resolve(self, pid: np.ndarray, addr: np.ndarray, time: np.ndarray,
                is_return: np.ndarray | bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per address: its process's mapping at that time -> file offset -> ELF address via
        PT_LOAD -> function. Return addresses are looked up at addr-1 (the call, not the next
        statement), but the offset is reported from the address itself, as perf does."""
        addr = np.asarray(addr, np.uint64)
        n = len(addr)
        is_ret = np.broadcast_to(np.asarray(is_return, bool), (n,))
        names = np.full(n, None, dtype=object)
        offs = np.zeros(n, np.uint64)
        dsos = np.full(n, None, dtype=object)
        maps = self.machine.maps
        mi = maps.find(pid, addr, time)
        has = mi >= 0
        dsos[has] = maps.file[mi[has]]
        hit = np.flatnonzero(has)
        codes = maps.dso[mi[hit]]
        for code in np.unique(codes):  # loop over distinct mapped files
            rows = hit[codes == code]
            fname, bid = maps.dso_keys[code]
            t = self.dsos.table_for(fname, bid)
            if t is None or len(t.addrs) == 0:
                continue
            m = mi[rows]
            foff = addr[rows] - maps.start[m] + maps.pgoff[m]
            vaddr, found = t.offset_to_vaddr(foff)
            look = vaddr - (is_ret[rows] & (vaddr > 0)).astype(np.uint64)
            si, sstart = t.lookup(look)
            ok = found & (si >= 0)
            names[rows[ok]] = t.names[si[ok]]
            offs[rows[ok]] = vaddr[ok] - sstart[ok]
        if self.demangle and n:
            found = names.tolist()
            dm = demangle(dict.fromkeys(x for x in found if x is not None))
            if any(k != v for k, v in dm.items()):
                names = np.array([dm.get(x, x) if x is not None else None for x in found], dtype=object)
        return names, offs, dsos


@dataclass(frozen=True)
class Frame:
    addr: int
    symbol: str | None
    offset: int
    dso: str | None
    context: str  # "kernel", "user" or "none" (before any marker)

    def line(self) -> str:
        """perf-prof's stack line (stack_helpers.c)."""
        if self.context == "kernel":
            return f"    {self.addr:016x} {self.symbol or 'Unknown'}+0x{self.offset:x} ({KERNEL_DSO})"
        if self.context == "user":
            if self.dso is None:
                return f"    {self.addr:016x} Unknown"
            return f"    {self.addr:016x} {self.symbol or 'Unknown'}+0x{self.offset:x} ({self.dso})"
        return f"    {self.addr:016x}"


class StackResolver:
    """Frames of (stack_id, pid, time); kernel part resolved once for all stacks."""

    def __init__(self, stacks: dict[int, np.ndarray], ksyms, user: UserLookup | None = None) -> None:
        self.stacks = stacks
        self.user = user
        self._cache: dict[tuple[int, int], list[Frame]] = {}
        self._lines: dict[tuple[int, int], list[str]] = {}
        self._has_user: dict[int, bool] = {}
        words = np.concatenate(list(stacks.values())) if stacks else np.zeros(0, np.uint64)
        uniq = np.unique(words[words < PERF_CONTEXT_MAX]) if len(words) else words
        names, offs = ksyms.resolve(uniq)
        self._k = {int(a): (n, int(o)) for a, n, o in zip(uniq, names, offs)}

    def frames(self, stack_id: int, pid: int = 0, time: int = 0) -> list[Frame]:
        chain = self.stacks.get(stack_id)
        if chain is None:
            return []
        ck = self._key(stack_id, pid)
        hit = self._cache.get(ck)
        if hit is not None:
            return hit
        out: list[Frame] = []
        ctx = "none"
        user_idx: list[int] = []
        for w in chain.tolist():
            if w >= int(PERF_CONTEXT_MAX):
                ctx = "kernel" if w == CTX_KERNEL else "user" if w == CTX_USER else "other"
                continue
            if ctx == "kernel":
                name, off = self._k.get(w, (None, 0))
                out.append(Frame(w, name, off if name else 0, KERNEL_DSO, "kernel"))
            elif ctx == "user":
                user_idx.append(len(out))
                out.append(Frame(w, None, 0, None, "user"))
            else:
                out.append(Frame(w, None, 0, None, "none"))
        if user_idx and self.user is not None:
            addrs = np.array([out[i].addr for i in user_idx], dtype=np.uint64)
            # every user frame but the first is a return address (look up at addr-1)
            is_ret = np.ones(len(addrs), bool)
            names, offs, dsos = self.user(np.full(len(addrs), pid), addrs,
                                          np.full(len(addrs), time, dtype=np.uint64), is_ret)
            for j, i in enumerate(user_idx):
                f = out[i]
                out[i] = Frame(f.addr, names[j], int(offs[j] or 0), dsos[j], "user")
        self._cache[ck] = out
        return out

    def _key(self, stack_id: int, pid: int) -> tuple[int, int]:
        """Cache key: kernel-only chains resolve the same for every process."""
        has_user = self._has_user.get(stack_id)
        if has_user is None:
            chain = self.stacks.get(stack_id)
            has_user = chain is not None and bool(np.any(chain == np.uint64(CTX_USER)))
            self._has_user[stack_id] = has_user
        return (stack_id, pid if has_user else 0)

    @property
    def unreadable(self) -> dict[str, str]:
        """ELF files the user resolver could not read (path -> why), as far as resolved so far."""
        return dict(getattr(self.user, "unreadable", None) or {})

    def lines(self, stack_id: int, pid: int = 0, time: int = 0) -> list[str]:
        ck = self._key(stack_id, pid)
        hit = self._lines.get(ck)
        if hit is None:
            hit = self._lines[ck] = [f.line() for f in self.frames(stack_id, pid, time)]
        return hit
