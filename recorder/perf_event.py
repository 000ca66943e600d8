"""ctypes bindings for perf_event_open: the attr struct, the syscall, ioctls and constants.

Pure Python (no compiled code). Offsets follow <linux/perf_event.h> PERF_ATTR_SIZE_VER8 (136 bytes),
which 6.x kernels accept; docs/format.md says what the recording keeps of each record.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct

PERF_TYPE_SOFTWARE = 1
PERF_TYPE_TRACEPOINT = 2
PERF_COUNT_SW_DUMMY = 9

# sample_type bits
PERF_SAMPLE_TID = 1 << 1
PERF_SAMPLE_TIME = 1 << 2
PERF_SAMPLE_CPU = 1 << 7
PERF_SAMPLE_CALLCHAIN = 1 << 5
PERF_SAMPLE_RAW = 1 << 10
PERF_SAMPLE_IDENTIFIER = 1 << 16

PERF_FORMAT_LOST = 1 << 4

# flag bits of the u64 bitfield at offset 40
FLAG_DISABLED = 1 << 0
FLAG_INHERIT = 1 << 1
FLAG_MMAP = 1 << 8
FLAG_COMM = 1 << 9
FLAG_ENABLE_ON_EXEC = 1 << 12
FLAG_TASK = 1 << 13
FLAG_WATERMARK = 1 << 14
FLAG_SAMPLE_ID_ALL = 1 << 18
FLAG_EXCLUDE_CALLCHAIN_USER = 1 << 22
FLAG_MMAP2 = 1 << 23
FLAG_COMM_EXEC = 1 << 24
FLAG_USE_CLOCKID = 1 << 25
FLAG_BUILD_ID = 1 << 34

PERF_FLAG_FD_CLOEXEC = 1 << 3
CLOCK_MONOTONIC = 1

IOC_ENABLE = 0x2400
IOC_DISABLE = 0x2401
IOC_SET_OUTPUT = 0x2405
IOC_SET_FILTER = 0x40082406
IOC_ID = 0x80082407

# record types
RECORD_MMAP = 1
RECORD_LOST = 2
RECORD_COMM = 3
RECORD_EXIT = 4
RECORD_FORK = 7
RECORD_SAMPLE = 9
RECORD_MMAP2 = 10

MISC_COMM_EXEC = 1 << 13
MISC_MMAP_BUILD_ID = 1 << 14

# The sample_id_all trailer and the sample head share these fields (IDENTIFIER first in samples,
# last in trailers): identifier, {pid,tid}, time, {cpu,res}.
SAMPLE_BASE = PERF_SAMPLE_IDENTIFIER | PERF_SAMPLE_TID | PERF_SAMPLE_TIME | PERF_SAMPLE_CPU

_NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}.get(os.uname().machine, 298)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr, VER8 layout (136 bytes); `flags` is the u64 bitfield word."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),
        ("config2", ctypes.c_uint64),
        ("branch_sample_type", ctypes.c_uint64),
        ("sample_regs_user", ctypes.c_uint64),
        ("sample_stack_user", ctypes.c_uint32),
        ("clockid", ctypes.c_int32),
        ("sample_regs_intr", ctypes.c_uint64),
        ("aux_watermark", ctypes.c_uint32),
        ("sample_max_stack", ctypes.c_uint16),
        ("_reserved_2", ctypes.c_uint16),
        ("aux_sample_size", ctypes.c_uint32),
        ("_reserved_3", ctypes.c_uint32),
        ("sig_data", ctypes.c_uint64),
        ("config3", ctypes.c_uint64),
    ]


assert ctypes.sizeof(PerfEventAttr) == 136


def perf_event_open(attr: PerfEventAttr, pid: int, cpu: int, group_fd: int = -1,
                    flags: int = PERF_FLAG_FD_CLOEXEC) -> int:
    """The raw syscall; OSError(errno) on failure."""
    attr.size = ctypes.sizeof(PerfEventAttr)
    fd = _libc.syscall(ctypes.c_long(_NR_PERF_EVENT_OPEN), ctypes.byref(attr), ctypes.c_long(pid),
                       ctypes.c_long(cpu), ctypes.c_long(group_fd), ctypes.c_ulong(flags))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(fd)


def enable(fd: int) -> None:
    fcntl.ioctl(fd, IOC_ENABLE, 0)


def disable(fd: int) -> None:
    fcntl.ioctl(fd, IOC_DISABLE, 0)


def set_output(fd: int, target_fd: int) -> None:
    """Redirect fd's records into target_fd's ring (same CPU, same clock, fd not mmapped)."""
    fcntl.ioctl(fd, IOC_SET_OUTPUT, target_fd)


def set_filter(fd: int, text: str) -> None:
    """Install a trace-event filter; OSError (EINVAL) when the kernel rejects it."""
    fcntl.ioctl(fd, IOC_SET_FILTER, text.encode() + b"\0")


def event_id(fd: int) -> int:
    """The kernel's id of this event (what PERF_SAMPLE_IDENTIFIER carries)."""
    buf = bytearray(8)
    fcntl.ioctl(fd, IOC_ID, buf, True)
    return struct.unpack("=Q", buf)[0]


def read_count_lost(fd: int) -> tuple[int, int]:
    """(count, lost) of an event opened with read_format = PERF_FORMAT_LOST."""
    data = os.read(fd, 16)
    if len(data) < 16:
        return 0, 0
    count, lost = struct.unpack("=QQ", data)
    return count, lost
