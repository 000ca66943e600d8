"""Uprobes on a user-space allocator (libc malloc & co), created in tracefs and always removed.

Why tracefs `uprobe_events` and not the uprobe PMU: tracefs probes fetch the arguments (size, ptr...)
into the raw payload, so samples decode like any tracepoint with the recording's `format` text.

Cost matters (docs/allocators.md, Cost): a probe on an instruction the kernel must single-step out of line
costs ~14x one on an emulated instruction (push/jmp/call). A function that has a return probe has
a breakpoint at +0 anyway (the uretprobe must see the return address on top of the stack), so its
entry probe shares that breakpoint at +0. Entry-only functions (free) get their probe moved to the
first emulated `push` reachable without touching the argument registers (free+9 in glibc 2.36,
which also skips free(NULL), a no-op); when the bytes are not understood the probe stays at +0.
"""

from __future__ import annotations

import atexit
import errno
import os
import re
import select
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO, Self

DEFAULT_LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
GROUP_PREFIX = "kmlo_"
STACK_WORDS = 32  # posix_memalign: caller stack words fetched at return (see docs/allocators.md)

# func -> (entry fetchargs, return fetchargs or None). Field names are the analyser's contract
# (kmemleak_offline/malloc.py): size, nmemb, oldptr, memptr, align, ptr (returned or freed), ret, sp, wN.
_RET_PTR = ["ptr=$retval:x64"]
_PM_RET = ["ret=$retval:s32", "sp=%sp:x64"] + [f"w{i}=+{8 * i}(%sp):x64" for i in range(STACK_WORDS)]
ALLOCATORS: dict[str, tuple[list[str], list[str] | None]] = {
    "malloc": (["size=%di:u64"], _RET_PTR),
    "calloc": (["nmemb=%di:u64", "size=%si:u64"], _RET_PTR),
    "realloc": (["oldptr=%di:x64", "size=%si:u64"], _RET_PTR),
    "reallocarray": (["oldptr=%di:x64", "nmemb=%si:u64", "size=%dx:u64"], _RET_PTR),
    "free": (["ptr=%di:x64"], None),
    "posix_memalign": (["memptr=%di:x64", "align=%si:u64", "size=%dx:u64"], _PM_RET),
    "aligned_alloc": (["align=%di:u64", "size=%si:u64"], _RET_PTR),
    "memalign": (["align=%di:u64", "size=%si:u64"], _RET_PTR),
    "valloc": (["size=%di:u64"], _RET_PTR),
    "pvalloc": (["size=%di:u64"], _RET_PTR),
}
# Argument registers read by each entry probe: the probe may not move past a write to them.
_NULL_IS_NOOP = {"free"}  # a `test %rdi,%rdi; je` skipping the NULL case may be stepped over


class ProbeError(Exception):
    """Probe lookup/creation failed; one-line message."""


@dataclass(frozen=True)
class ProbeDef:
    """One tracefs uprobe: `p:`/`r:` GROUP/NAME PATH:OFFSET FETCHARGS."""

    group: str
    name: str
    kind: str  # "entry" | "return"
    func: str  # allocator role: malloc, calloc, ... (without the symbol prefix)
    symbol: str  # the ELF symbol probed, e.g. "je_malloc"
    path: str
    offset: int  # file offset of the probed instruction
    fetchargs: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()  # other allocator names at the same address (memalign = aligned_alloc)

    @property
    def event(self) -> str:
        """The `sys:name` of the tracefs event."""
        return f"{self.group}:{self.name}"

    @property
    def definition(self) -> str:
        """The line written to uprobe_events."""
        letter = "r" if self.kind == "return" else "p"
        args = " ".join(self.fetchargs)
        return f"{letter}:{self.group}/{self.name} {self.path}:{self.offset:#x}" + (f" {args}" if args else "")


def default_group() -> str:
    """A private group per recorder process, so concurrent recorders never collide."""
    return f"{GROUP_PREFIX}{os.getpid()}"


def _func_symbols(elf: Any, wanted: set[str]) -> dict[str, int]:
    """name -> st_value of defined function symbols (.dynsym first, then .symtab)."""
    from elftools.elf.sections import SymbolTableSection

    found: dict[str, int] = {}
    for secname in (".dynsym", ".symtab"):
        sec = elf.get_section_by_name(secname)
        if sec is None or sec["sh_type"] == "SHT_NOBITS" or not isinstance(sec, SymbolTableSection):
            continue
        for sym in sec.iter_symbols():
            if sym.name in wanted and sym.name not in found and sym["st_value"] and \
                    sym["st_shndx"] != "SHN_UNDEF" and sym["st_info"]["type"] in ("STT_FUNC", "STT_GNU_IFUNC"):
                found[sym.name] = int(sym["st_value"])
    return found


def _vaddr_to_offset(elf: Any, vaddr: int) -> int:
    for seg in elf.iter_segments():
        if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= vaddr < seg["p_vaddr"] + seg["p_filesz"]:
            return vaddr - seg["p_vaddr"] + seg["p_offset"]
    raise ProbeError(f"address {vaddr:#x} is in no PT_LOAD segment")


_PUSH = set(range(0x50, 0x58))


def cheap_entry_offset(code: bytes, null_skip_ok: bool) -> int:
    """Offset of the first emulated `push` reachable from +0 with argument registers untouched.

    Conservative x86-64 decoding of a handful of side-effect-free instruction forms; anything else
    ends the walk and returns 0 (probe at function entry). `null_skip_ok` lets the walk step over
    `test %rdi,%rdi; je` (only for functions where ptr == NULL is a no-op, i.e. free).
    """
    i, tested_rdi = 0, False
    while i < min(len(code), 24):
        b = code[i]
        if b in _PUSH or (b == 0x41 and i + 1 < len(code) and code[i + 1] in _PUSH):
            return i
        if code[i:i + 4] == b"\xf3\x0f\x1e\xfa":  # endbr64
            i += 4
        elif code[i:i + 3] == b"\x48\x85\xff":  # test %rdi,%rdi
            tested_rdi, i = True, i + 3
        elif code[i:i + 2] == b"\x80\x3d":  # cmpb $imm8, disp32(%rip): reads memory, sets flags
            i += 7
        elif b == 0x74 and tested_rdi and null_skip_ok:  # je rel8 (rdi == NULL path skipped)
            i += 2
        elif code[i:i + 2] == b"\x0f\x84" and tested_rdi and null_skip_ok:  # je rel32
            i += 6
        else:
            return 0
    return 0


def _read_code(stream: BinaryIO, offset: int, n: int = 32) -> bytes:
    stream.seek(offset)
    return stream.read(n)


def allocator_probes(lib_path: str = DEFAULT_LIBC, prefix: str = "", group: str | None = None,
                     funcs: Iterable[str] | None = None) -> list[ProbeDef]:
    """Probe definitions for the allocator functions `lib_path` defines (prefix: e.g. `je_`).

    Functions sharing one address (glibc's memalign == aligned_alloc) are probed once, under the
    first name of ALLOCATORS, so a call is never counted twice.
    """
    group = group or default_group()
    want = list(funcs) if funcs is not None else list(ALLOCATORS)
    unknown = [f for f in want if f not in ALLOCATORS]
    if unknown:
        raise ProbeError(f"unknown allocator function(s): {', '.join(unknown)}")
    path = os.path.realpath(lib_path)
    try:
        with open(path, "rb") as stream:
            return _probes_from_elf(stream, lib_path, path, prefix, group, want)
    except OSError as exc:
        raise ProbeError(f"{lib_path}: cannot open allocator library ({exc.strerror})") from None


def _probes_from_elf(stream: BinaryIO, lib_path: str, path: str, prefix: str, group: str,
                     want: list[str]) -> list[ProbeDef]:
    from elftools.common.exceptions import ELFError  # only --malloc pays for pyelftools
    from elftools.elf.elffile import ELFFile

    try:
        elf = ELFFile(stream)
        syms = _func_symbols(elf, {prefix + f for f in want})
        if not syms:
            raise ProbeError(f"{lib_path}: defines none of {prefix}malloc/{prefix}free/... "
                             "(wrong --malloc-lib or --malloc-prefix?)")
        if prefix + "free" not in syms:
            raise ProbeError(f"{lib_path}: no {prefix}free symbol; cannot match frees")
        defs: list[ProbeDef] = []
        by_addr: dict[int, str] = {}
        aliases: dict[str, tuple[str, ...]] = {}
        for func in want:
            sym = prefix + func
            if sym not in syms:
                continue
            vaddr = syms[sym]
            if vaddr in by_addr:  # alias of an already probed function
                aliases[by_addr[vaddr]] = aliases.get(by_addr[vaddr], ()) + (func,)
                continue
            by_addr[vaddr] = func
            off = _vaddr_to_offset(elf, vaddr)
            entry_args, ret_args = ALLOCATORS[func]
            entry_off = off
            if ret_args is None:
                entry_off = off + cheap_entry_offset(_read_code(stream, off), func in _NULL_IS_NOOP)
            defs.append(ProbeDef(group, func, "entry", func, sym, path, entry_off, tuple(entry_args)))
            if ret_args is not None:
                defs.append(ProbeDef(group, f"{func}_ret", "return", func, sym, path, off, tuple(ret_args)))
        defs = [replace(d, aliases=aliases.get(d.func, ())) for d in defs]
    except ELFError as exc:
        raise ProbeError(f"{lib_path}: not an ELF file ({exc})") from None
    return defs


def probe_metadata(defs: Sequence[ProbeDef]) -> list[dict[str, Any]]:
    """The recording's `probes` list: what was created (and removed) on the target."""
    return [{"event": d.event, "group": d.group, "name": d.name, "kind": d.kind, "func": d.func,
             "symbol": d.symbol, "aliases": list(d.aliases), "path": d.path, "offset": d.offset,
             "fetchargs": list(d.fetchargs), "definition": d.definition} for d in defs]


def malloc_event_specs(defs: Sequence[ProbeDef], stacks: bool = True) -> tuple[list[str], list[str]]:
    """`--alloc`/`--free` spec lists that make the recorder open every probe event of a malloc run.

    alloc: every entry and return event except free. Returns carry the stack (the immediate caller
    is present there) and ptr = returned pointer; entries only carry arguments, their `ptr=` is a
    placeholder (__probe_ip) because the analyser pairs them itself (kmemleak_offline.malloc),
    which also gives sizes. free: free's entry, ptr = freed pointer. `stacks=False` (no -g): no
    callchain anywhere.
    """
    st = "stack/" if stacks else ""
    alloc = [f"{d.event}//ptr=ptr/{st}" if d.kind == "return" and "ptr=$retval:x64" in d.fetchargs
             else f"{d.event}//ptr=__probe_func/{st}" if d.kind == "return"
             else f"{d.event}//ptr=__probe_ip/" for d in defs if d.func != "free"]
    free = [f"{d.event}//ptr=ptr/" for d in defs if d.func == "free"]
    return alloc, free


_LIBC_NAME = re.compile(r"/libc(?:-[\d.]+)?\.so(?:\.\d+)*$")


def mapped_libc(pid: int | str = "self") -> str | None:
    """Path of the C library process `pid` maps (from /proc/PID/maps), None if it maps none.

    The default allocator of `record --malloc`: probes sit on a file (inode), so they must be on the
    very libc the target uses. "self" (the recorder's libc) stands for the system libc of `-- CMD`.
    """
    try:
        with open(f"/proc/{pid}/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) == 6 and _LIBC_NAME.search(parts[5].strip()):
            return parts[5].strip()
    return None


def tracefs_root() -> str:
    """The tracefs mount that has uprobe_events, or ProbeError."""
    for root in TRACEFS_CANDIDATES:
        if os.path.exists(os.path.join(root, "uprobe_events")):
            return root
    raise ProbeError("no tracefs with uprobe_events (mount -t tracefs nodev /sys/kernel/tracing)")


def _write_line(path: str, line: str) -> None:
    # Python's open(..., "a") lseeks to the end, which tracefs rejects: use O_APPEND, one line per write.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM (main thread only) so a Ctrl-C cannot split a tracefs change from its bookkeeping."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@dataclass
class CreatedEvent:
    """An event created in tracefs: its id and format text (for the recording's `events`)."""

    probe: ProbeDef
    id: int
    format: str


# How long a probe a closed perf event still holds is retried: the kernel releases a uprobe's perf
# events asynchronously; on the project VM under load that took up to 2.7 s (bench/soak.py).
EBUSY_S = 10.0


def _remove_lines(root: str, defs: Sequence[ProbeDef], ebusy_s: float) -> list[str]:
    """Write `-:GROUP/NAME` for each definition, newest first; EBUSY is retried for `ebusy_s`.
    Returns one message per probe that could not be removed."""
    ev_path = os.path.join(root, "uprobe_events")
    errors = []
    for d in reversed(defs):
        deadline = time.monotonic() + ebusy_s
        while True:
            try:
                _write_line(ev_path, f"-:{d.group}/{d.name}")
                break
            except OSError as exc:
                if exc.errno == errno.ENOENT or exc.errno == errno.EINVAL and not os.path.exists(
                        os.path.join(root, "events", d.group, d.name)):
                    break
                if exc.errno == errno.EBUSY and time.monotonic() < deadline:  # a perf fd is closing
                    time.sleep(0.02)
                    continue
                errors.append(f"{d.event}: {exc.strerror}")
                break
    return errors


def start_guard(root: str, defs: Sequence[ProbeDef]) -> int:
    """Fork a guard that removes `defs` as soon as this process dies (SIGKILL included) without
    having said `done` on the returned pipe. Covers every moment probes exist, also before the
    recorder's converter is forked. The guard is a grandchild in a session of its own (never a
    zombie of the recorder, untouched by a group kill); it sees the death through a pidfd (the
    pipe's write end may be inherited by the converter) or the pipe's end."""
    owner = os.getpid()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked guard
        try:
            if os.fork():
                os._exit(0)
            os.setsid()
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                      signal.SIGUSR1, signal.SIGPIPE):
                signal.signal(s, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            os.closerange(3, r)
            os.closerange(r + 1, 1 << 16)
            _guard(owner, r, root, list(defs))
        finally:
            os._exit(0)
    os.close(r)
    os.waitpid(pid, 0)
    return w


def _guard(owner: int, r: int, root: str, defs: list[ProbeDef]) -> None:  # pragma: no cover
    try:
        pidfd = os.pidfd_open(owner)
    except OSError:  # the owner is gone already
        pidfd = -1
    if pidfd >= 0:
        poller = select.poll()
        poller.register(r, select.POLLIN)
        poller.register(pidfd, select.POLLIN)
        while True:
            fds = dict(poller.poll())
            if r in fds:
                if os.read(r, 16).startswith(b"done"):
                    return
                break  # EOF: every writer is gone
            if pidfd in fds:
                break
    for msg in _remove_lines(root, defs, EBUSY_S):
        os.write(2, f"kmemleak-offline record: could not remove uprobe {msg}\n".encode())


@dataclass
class UprobeSet:
    """Creates uprobes and always removes them: remove() is idempotent, also run by __exit__,
    atexit and, if this process is killed, a guard process (start_guard)."""

    root: str = field(default_factory=tracefs_root)
    created: list[CreatedEvent] = field(default_factory=list)
    _defined: list[ProbeDef] = field(default_factory=list)
    _atexit: bool = False
    _guard_fd: int = -1

    @property
    def events(self) -> dict[str, CreatedEvent]:
        return {c.probe.event: c for c in self.created}

    def create(self, defs: Sequence[ProbeDef]) -> list[CreatedEvent]:
        """Write each definition, then read its id and format; on any failure remove all and raise."""
        if not self._atexit:
            atexit.register(self.remove)
            self._atexit = True
        if self._guard_fd < 0:
            with _signals_deferred():
                self._guard_fd = start_guard(self.root, list(self._defined) + list(defs))
        ev_path = os.path.join(self.root, "uprobe_events")
        try:
            for d in defs:
                # Listed before it exists: a signal between the write and the append must not orphan it.
                self._defined.append(d)
                try:
                    with _signals_deferred():
                        _write_line(ev_path, d.definition)
                except OSError as exc:
                    raise ProbeError(f"cannot create uprobe {d.event} ({exc.strerror}): {d.definition}") from None
                evdir = os.path.join(self.root, "events", d.group, d.name)
                try:
                    with open(os.path.join(evdir, "format")) as f:
                        fmt = f.read()
                    with open(os.path.join(evdir, "id")) as f:
                        ev_id = int(f.read().strip())
                except (OSError, ValueError) as exc:
                    raise ProbeError(f"uprobe {d.event} created but unreadable: {exc}") from None
                self.created.append(CreatedEvent(d, ev_id, fmt))
        except BaseException:
            self.remove()
            raise
        return list(self.created)

    def remove(self) -> None:
        """Remove every probe this set defined (reverse order); EBUSY is retried briefly."""
        with _signals_deferred():
            self._remove_all()

    def _remove_all(self) -> None:
        errors = _remove_lines(self.root, self._defined, EBUSY_S)
        self._defined.clear()
        self.created.clear()
        if self._atexit:
            atexit.unregister(self.remove)
            self._atexit = False
        if self._guard_fd >= 0:  # the guard leaves quietly (or, on errors, retries when we exit)
            try:
                if not errors:
                    os.write(self._guard_fd, b"done")
                os.close(self._guard_fd)
            except OSError:
                pass
            self._guard_fd = -1
        if errors:
            raise ProbeError("could not remove uprobes: " + "; ".join(errors))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def remove_stale_groups(root: str | None = None) -> list[str]:
    """Remove kmlo_<pid> probes left by recorders that died by SIGKILL (their pid is gone)."""
    root = root or tracefs_root()
    removed = []
    with open(os.path.join(root, "uprobe_events")) as f:
        lines = f.read().splitlines()
    for line in lines:
        ident = line.split()[0].split(":", 1)[-1] if line.strip() else ""
        group, _, name = ident.partition("/")
        if not group.startswith(GROUP_PREFIX) or not group[len(GROUP_PREFIX):].isdigit():
            continue
        if os.path.exists(f"/proc/{group[len(GROUP_PREFIX):]}"):
            continue
        try:
            _write_line(os.path.join(root, "uprobe_events"), f"-:{group}/{name}")
            removed.append(f"{group}:{name}")
        except OSError:
            pass
    return removed
