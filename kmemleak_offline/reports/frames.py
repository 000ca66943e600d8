"""Call chains -> symbolised frames, shared by every reporter.

Kernel frames resolve through the recording's kallsyms snapshot (all distinct ips at once);
user frames through the recording's mmap timeline and embedded/available ELF symbols.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

PERF_CONTEXT_MAX = np.uint64(0xFFFFFFFFFFFFF001)  # words >= -4095 are context markers
CTX_KERNEL = 0xFFFFFFFFFFFFFF80  # -128
CTX_USER = 0xFFFFFFFFFFFFFE00  # -512
KERNEL_DSO = "[kernel.kallsyms]"

# user resolver: (pids, addrs, times, is_return) -> (names, offsets, dsos), object arrays (None = unknown)
UserResolver = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                        tuple[np.ndarray, np.ndarray, np.ndarray]]


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

    def __init__(self, stacks: dict[int, np.ndarray], ksyms, user: UserResolver | None = None) -> None:
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

    def lines(self, stack_id: int, pid: int = 0, time: int = 0) -> list[str]:
        ck = self._key(stack_id, pid)
        hit = self._lines.get(ck)
        if hit is None:
            hit = self._lines[ck] = [f.line() for f in self.frames(stack_id, pid, time)]
        return hit
