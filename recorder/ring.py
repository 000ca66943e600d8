"""The mmap'ed perf ring buffer: copy out the bytes between tail and head, nothing else.

Records never straddle a drain (data_head only advances to record boundaries), so the chunks of
one ring concatenate into a valid record stream. head/tail are read/written as single aligned
8-byte accesses (ctypes), which is the x86-64 (TSO) ring protocol.
"""

from __future__ import annotations

import ctypes
import mmap

from kmemleak_offline.format.chunks import ChunkWriter

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
        self._view = memoryview(self._mm)
        self.bytes_read = 0

    def drain_to(self, out: ChunkWriter, ring_id: int, cpu: int) -> int:
        """Append [tail, head) to the open part as one chunk straight from the mmap, then release it.

        No intermediate bytes object: writev copies from the ring into the page cache once, as
        perf record does, so the hot loop costs one page write (and a small index write) per ring
        with data."""
        head = self._head.value
        tail = self._tail.value
        n = head - tail
        if not n:
            return 0
        size = self.size
        start = tail % size
        base = self._base
        v = self._view
        if start + n > size:
            views = [v[base + start: base + size], v[base: base + start + n - size]]
        else:
            views = [v[base + start: base + start + n]]
        out.append(ring_id, cpu, self.bytes_read, views, n)
        self._tail.value = head
        self.bytes_read += n
        return n

    def unread_events(self) -> int:
        """Events still in the ring (never written: the disk was full): its samples, plus the
        events its LOST records count. A header walk from tail to head (records are 8-aligned,
        so no header wraps); only run once, after the stop."""
        head, pos = self._head.value, self._tail.value
        size, base, mm = self.size, self._base, self._mm
        n = 0
        while pos + 8 <= head:
            at = base + pos % size
            typ = int.from_bytes(mm[at:at + 4], "little")
            rsize = int.from_bytes(mm[at + 6:at + 8], "little")
            if rsize < 8:
                break
            if typ == 9:  # PERF_RECORD_SAMPLE
                n += 1
            elif typ == 2 and rsize >= 24:  # PERF_RECORD_LOST: id, lost
                lo = base + (pos + 16) % size
                n += int.from_bytes(mm[lo:lo + 8], "little")
            pos += rsize
        return n

    def close(self) -> None:
        self._view.release()
        del self._head, self._tail  # views must go before the mmap can close
        self._mm.close()
