"""The mmap'ed perf ring buffer: copy out the bytes between tail and head, nothing else.

Records never straddle a drain (data_head only advances to record boundaries), so the chunks of
one ring concatenate into a valid record stream. head/tail are read/written as single aligned
8-byte accesses (ctypes), which is the x86-64 (TSO) ring protocol.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct

PAGE_SIZE = mmap.PAGESIZE
FRAME = struct.Struct("<IIQ")  # spool frame header: ring id, kind (0 = ring bytes), length


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

    def drain_to(self, fd: int, ring_id: int) -> int:
        """Append [tail, head) as one spool frame to `fd` straight from the mmap, then release it.

        No intermediate bytes object: writev copies from the ring into the page cache once, as
        perf record does, so the hot loop costs one syscall per ring with data.
        """
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
            bufs = [FRAME.pack(ring_id, 0, n), v[base + start: base + size],
                    v[base: base + start + n - size]]
        else:
            bufs = [FRAME.pack(ring_id, 0, n), v[base + start: base + start + n]]
        want = n + FRAME.size
        done = os.writev(fd, bufs)
        if done < want:  # short write (a signal, a full disk): finish the frame or raise
            flat = b"".join(bytes(b) for b in bufs)
            while done < want:
                w = os.write(fd, flat[done:])
                if w <= 0:
                    raise OSError("the spool file accepts no more bytes")
                done += w
        self._tail.value = head
        self.bytes_read += n
        return n

    def close(self) -> None:
        self._view.release()
        del self._head, self._tail  # views must go before the mmap can close
        self._mm.close()
