"""The mmap'ed perf ring buffer: copy out the bytes between tail and head, nothing else.

Records never straddle a drain (data_head only advances to record boundaries), so the chunks of
one ring concatenate into a valid record stream. head/tail are read/written as single aligned
8-byte accesses (ctypes), which is the x86-64 (TSO) ring protocol.
"""

from __future__ import annotations

import ctypes
import mmap

PAGE_SIZE = mmap.PAGESIZE


class Ring:
    """One mmap'ed ring of `pages` data pages (a power of two) on the leader fd `fd`."""

    def __init__(self, fd: int, pages: int) -> None:
        self.fd = fd
        self.size = pages * PAGE_SIZE
        self._mm = mmap.mmap(fd, (pages + 1) * PAGE_SIZE, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        self._head = ctypes.c_uint64.from_buffer(self._mm, 1024)
        self._tail = ctypes.c_uint64.from_buffer(self._mm, 1032)
        self._base = PAGE_SIZE
        self.bytes_read = 0

    def drain(self) -> bytes | None:
        """Copy [tail, head) out of the ring and release it to the kernel."""
        head = self._head.value
        tail = self._tail.value
        if head == tail:
            return None
        size = self.size
        start = tail % size
        end = head % size
        base = self._base
        mm = self._mm
        if head - tail >= size or end <= start:
            data = mm[base + start: base + size] + mm[base: base + end]
        else:
            data = mm[base + start: base + end]
        self._tail.value = head
        self.bytes_read += len(data)
        return data

    def close(self) -> None:
        del self._head, self._tail  # views must go before the mmap can close
        self._mm.close()
