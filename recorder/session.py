"""The record loop: open events, write ring chunks, let a converter do the rest, stop.

Processes: this one (SCHED_FIFO while draining) polls the rings and appends their bytes to the open
part file as chunks (recorder.spool, format.chunks), starts a new part about every second, handles
signals and decides when to stop; a forked, niced converter snapshots the initial state and
kallsyms, seals the parts, and after the stop converts the chunks into event rows (or keeps them:
--defer-convert). Nothing here splits records or decodes tracepoint payloads.
"""

from __future__ import annotations

import errno
import gc
import os
import platform
import select
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from kmemleak_offline import __version__
from kmemleak_offline.format.chunks import ring_chunks_meta
from kmemleak_offline.format.layout import new_metadata
from recorder import perf_event as pe
from recorder import procfs
from recorder.errors import RecordError, RecordInputError
from recorder.events import TracedEvent, check_userspace_filter, resolve
from recorder.probes import (
    ProbeDef,
    ProbeError,
    UprobeSet,
    allocator_probes,
    malloc_event_specs,
    mapped_libc,
    probe_metadata,
    remove_stale_groups,
)
from recorder.ring import PAGE_SIZE, Ring
from recorder.spool import CONVERT, DONE, FULL, KEEP, DiskFull, SpooledRecording, is_disk_full

PRODUCER = f"kmemleak-offline {__version__} record"


FLUSH_EVERY_S = 1.0
POLL_MAX_S = 0.1  # longest poll(): bounds stop latency; 10 idle wake-ups/s cost nothing
DRAIN_FIFO_PRIORITY = 10  # SCHED_FIFO for the drain loop only; KMEMLEAK_RECORD_FIFO=0 turns it off


@dataclass
class RecordConfig:
    """Everything `record` was asked to do, already syntax-checked by the command."""

    alloc: str
    free: str
    output: Path
    cpus: list[int] | None = None
    pids: list[int] | None = None
    tids: list[int] | None = None
    mmap_pages: int = 128
    call_graph: bool = False
    duration_s: float | None = None
    command: list[str] = field(default_factory=list)
    verbose: int = 0
    malloc: bool = False  # uprobes on the target's allocator instead of --alloc/--free
    malloc_lib: str | None = None  # default: the libc the target maps
    malloc_prefix: str = ""
    embed_symbols: bool = True  # usym rows for the ELF files traced processes mapped
    defer_convert: bool = False  # leave the ring chunks for `convert`/`analyze` to convert


@dataclass
class _Target:
    """One task to attach to in per-task mode (pid argument of perf_event_open)."""

    tid: int
    inherit: bool


class Session:
    """One recording, from checks to the single stitched file."""

    def __init__(self, cfg: RecordConfig) -> None:
        self.cfg = cfg
        self.fds: list[int] = []
        self.event_fds: dict[str, list[int]] = {}
        self.sideband_fds: list[int] = []  # the dummy events (ring leaders): enabled first
        self.rings: list[Ring] = []
        self.ring_cpu: list[int] = []
        self.stop = threading.Event()
        self.stop_reason = ""
        self.child: int | None = None
        self.child_status: int | None = None
        self.writer: SpooledRecording | None = None
        self._usr1 = False
        self._unread_warned: set[str] = set()
        self._hup: set[int] = set()
        self._go: int | None = None
        self.uprobes: UprobeSet | None = None
        self.probe_defs: list[ProbeDef] = []
        self.disk_full = False
        self._early_signal = ""  # SIGINT/SIGTERM seen during set-up

    # ---------------------------------------------------------------- setup
    def prepare(self) -> None:
        cfg = self.cfg
        if os.geteuid() != 0:
            raise RecordError("record needs root (perf_event_open on tracepoints, "
                              "/proc/kallsyms addresses); run it as root")
        if cfg.mmap_pages < 1 or cfg.mmap_pages & (cfg.mmap_pages - 1):
            raise RecordInputError(f"-m/--mmap-pages must be a power of two, not {cfg.mmap_pages}")
        if sum(x is not None and x != [] for x in (cfg.pids, cfg.tids)) + bool(cfg.command) > 1:
            raise RecordInputError("use only one of -p, -t and -- CMD")
        self._check_output()
        self.tracefs = procfs.tracefs_root()
        if cfg.malloc:
            alloc, free = self._create_probes()
            self.events, _ = resolve(alloc, free, self.tracefs, False)  # stacks: return probes only
            self.call_graph = cfg.call_graph
        else:
            if cfg.malloc_lib or cfg.malloc_prefix:
                raise RecordInputError("--malloc-lib/--malloc-prefix need --malloc")
            self.events, self.call_graph = resolve(cfg.alloc, cfg.free, self.tracefs, cfg.call_graph)
        online = procfs.online_cpus()
        if cfg.cpus is not None:
            bad = [c for c in cfg.cpus if c not in online]
            if bad:
                raise RecordInputError(f"CPU {bad[0]} is not online (online: {online})")
            self.cpus = cfg.cpus
        else:
            self.cpus = online
        self.per_task = bool(cfg.pids or cfg.tids or cfg.command)
        self.targets: list[_Target] = []
        self.traced_pids: list[int] = []
        for pid in cfg.pids or []:
            self.targets += [_Target(t, True) for t in procfs.threads_of(pid)]
            self.traced_pids.append(pid)
        for tid in cfg.tids or []:
            self.traced_pids.append(procfs.tgid_of(tid))
            self.targets.append(_Target(tid, False))
        self.traced_pids = sorted(set(self.traced_pids))
        if cfg.command and shutil.which(cfg.command[0]) is None:
            raise RecordInputError(f"command not found: {cfg.command[0]}")

    def _check_output(self) -> None:
        """Refuse an output that could not be written, before recording anything."""
        out = self.cfg.output
        if out.is_dir():
            raise RecordInputError(f"output {out} is a directory (give a file name, e.g. {out}/kmemleak.parquet)")
        out_dir = out.resolve().parent
        if not out_dir.is_dir():
            raise RecordInputError(f"output folder {out_dir} does not exist")
        if not os.access(out_dir, os.W_OK | os.X_OK):
            raise RecordInputError(f"output folder {out_dir} is not writable")

    def _keep_old_outputs(self) -> None:
        """Like perf (perf.data -> perf.data.old): an existing OUT becomes OUT.old and a crashed
        run's OUT.parts becomes OUT.parts.old (older .old ones are replaced), said in one line."""
        moved = []
        out = self.cfg.output
        for src in (out, Path(str(out) + ".parts")):
            if not (src.exists() or src.is_symlink()):
                continue
            dst = Path(str(src) + ".old")
            if dst.is_dir() and not dst.is_symlink():
                shutil.rmtree(dst)
            elif src.is_dir() and (dst.exists() or dst.is_symlink()):
                dst.unlink()
            os.replace(src, dst)
            moved.append(f"{src} -> {dst.name}")
        if moved:
            print(f"kmemleak-offline record: kept the previous output: {', '.join(moved)}",
                  file=sys.stderr, flush=True)

    def _create_probes(self) -> tuple[str, str]:
        """--malloc: uprobes on the target's allocator; returns the --alloc/--free texts for them."""
        cfg = self.cfg
        if cfg.alloc or cfg.free:
            raise RecordInputError("--malloc replaces --alloc/--free (record kernel and user-space "
                                   "leaks in two recordings)")
        if not (cfg.pids or cfg.tids or cfg.command):
            raise RecordInputError("--malloc needs -p PID, -t TID or -- CMD (probing every "
                                   "process's allocator would slow the whole machine)")
        lib = cfg.malloc_lib or self._target_libc()
        try:
            remove_stale_groups(str(self.tracefs))
            defs = allocator_probes(lib, cfg.malloc_prefix)
        except ProbeError as exc:
            raise RecordInputError(str(exc)) from None
        self.uprobes = UprobeSet(root=str(self.tracefs))
        try:
            self.uprobes.create(defs)
        except ProbeError as exc:
            raise RecordError(str(exc)) from None
        self.probe_defs = defs
        alloc, free = malloc_event_specs(defs, stacks=cfg.call_graph)
        return ",".join(alloc), ",".join(free)

    def _target_libc(self) -> str:
        """The libc the traced processes map (-- CMD: the system one, which the recorder maps too)."""
        pids = [procfs.tgid_of(t) for t in self.cfg.tids or []] + list(self.cfg.pids or [])
        libs = {p: mapped_libc(p) for p in pids} if pids else {"self": mapped_libc("self")}
        found = {os.path.realpath(v) for v in libs.values() if v}
        if not found:
            raise RecordInputError(f"no libc mapped by {', '.join(map(str, libs))} "
                                   "(static binary?); name the allocator with --malloc-lib")
        if len(found) > 1:
            raise RecordInputError(f"the traced processes map different libcs ({', '.join(sorted(found))}); "
                                   "record them separately or choose one with --malloc-lib")
        return next(v for v in libs.values() if v)

    # ----------------------------------------------------------------- open
    def _attr(self, *, tracepoint: TracedEvent | None, leader: bool, inherit: bool) -> pe.PerfEventAttr:
        a = pe.PerfEventAttr()
        flags = pe.FLAG_DISABLED | pe.FLAG_SAMPLE_ID_ALL | pe.FLAG_USE_CLOCKID
        if tracepoint is None:
            a.type, a.config = pe.PERF_TYPE_SOFTWARE, pe.PERF_COUNT_SW_DUMMY
            a.sample_type = pe.SAMPLE_BASE
            flags |= pe.FLAG_COMM | pe.FLAG_COMM_EXEC | pe.FLAG_TASK
            if self.per_task:
                flags |= pe.FLAG_MMAP | pe.FLAG_MMAP2 | pe.FLAG_BUILD_ID
        else:
            a.type, a.config = pe.PERF_TYPE_TRACEPOINT, tracepoint.fmt.id
            a.sample_type = pe.SAMPLE_BASE | pe.PERF_SAMPLE_RAW
            if tracepoint.callchain:
                a.sample_type |= pe.PERF_SAMPLE_CALLCHAIN
                if tracepoint.max_stack:
                    a.sample_max_stack = int(tracepoint.max_stack)
            if not self.per_task:
                flags |= pe.FLAG_EXCLUDE_CALLCHAIN_USER
        a.sample_period = 1
        a.read_format = pe.PERF_FORMAT_LOST
        a.clockid = pe.CLOCK_MONOTONIC
        if inherit:
            flags |= pe.FLAG_INHERIT
        if self.cfg.command:
            flags |= pe.FLAG_ENABLE_ON_EXEC
        if leader:
            flags |= pe.FLAG_WATERMARK
            a.wakeup = self.cfg.mmap_pages * PAGE_SIZE // 4
        a.flags = flags
        return a

    def _open(self, attr: pe.PerfEventAttr, pid: int, cpu: int, what: str) -> int:
        try:
            fd = pe.perf_event_open(attr, pid, cpu)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                raise RecordInputError(f"task {pid} does not exist (it exited?)") from None
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise RecordError(f"perf_event_open({what}) refused: {exc.strerror}; run as root "
                                  "or lower /proc/sys/kernel/perf_event_paranoid") from None
            if exc.errno == errno.EMFILE:
                raise RecordError("too many open files: raise `ulimit -n` (one fd per event, "
                                  "CPU and thread)") from None
            raise RecordError(f"perf_event_open({what}, pid={pid}, cpu={cpu}) failed: "
                              f"{exc.strerror}") from None
        self.fds.append(fd)
        return fd

    def open_events(self) -> None:
        """One ring per CPU (on a side-band dummy leader); every other event SET_OUTPUT to it."""
        self.ids: dict[int, tuple[str | None, bool]] = {}  # kernel id -> (event, call chains)
        self.kernel_filters: dict[str, str] = {}
        self.userspace_filters: dict[str, str] = {}
        tasks = self.targets or ([_Target(-1, False)] if not self.per_task else [])
        if self.cfg.command:
            tasks = [_Target(self._fork_child(), True)]
        for cpu in self.cpus:
            leader = -1
            for task in tasks:
                fd = self._open(self._attr(tracepoint=None, leader=leader < 0, inherit=task.inherit),
                                task.tid, cpu, "side-band dummy")
                self.ids[pe.event_id(fd)] = (None, False)
                self.sideband_fds.append(fd)
                if leader < 0:
                    leader = fd
                    try:
                        self.rings.append(Ring(fd, self.cfg.mmap_pages))
                    except OSError as exc:
                        raise RecordError(f"cannot mmap a {self.cfg.mmap_pages}-page ring on CPU "
                                          f"{cpu}: {exc.strerror}") from None
                    self.ring_cpu.append(cpu)
                else:
                    pe.set_output(fd, leader)
                for ev in self.events:
                    fd = self._open(self._attr(tracepoint=ev, leader=False, inherit=task.inherit),
                                    task.tid, cpu, ev.name)
                    self._apply_filter(ev, fd)
                    pe.set_output(fd, leader)
                    self.ids[pe.event_id(fd)] = (ev.name, ev.callchain)
                    self.event_fds.setdefault(ev.name, []).append(fd)
        for name, flt in self.userspace_filters.items():
            print(f"{name} filters '{flt}' in userspace", flush=True)

    def _apply_filter(self, ev: TracedEvent, fd: int) -> None:
        flt = ev.filter
        if not flt or ev.name in self.userspace_filters:
            return
        try:
            pe.set_filter(fd, flt)
            self.kernel_filters[ev.name] = flt
        except OSError:
            if ev.name in self.kernel_filters:  # accepted on another fd: should not happen
                raise RecordError(f"{ev.name}: the kernel accepted filter '{flt}' on one CPU "
                                  "and refused it on another") from None
            check_userspace_filter(ev)
            self.userspace_filters[ev.name] = flt

    def _fork_child(self) -> int:
        """Fork CMD held on a pipe; it execs once release_child() writes to the pipe."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: wait for the go, then exec (never returns into the recorder)
            try:
                os.close(w)
                if os.read(r, 1) != b"x":  # the recorder died before the events were on
                    os._exit(127)
                os.close(r)
                os.execvp(self.cfg.command[0], self.cfg.command)
            except OSError as exc:
                os.write(2, f"cannot run {self.cfg.command[0]}: {exc.strerror}\n".encode())
            os._exit(127)
        os.close(r)
        self.child, self._go = pid, w
        return pid

    def release_child(self) -> None:
        if self.child is not None and self._go is not None:
            os.write(self._go, b"x")
            os.close(self._go)
            self._go = None

    # ------------------------------------------------------------- metadata
    def _metadata(self) -> dict:
        meta = new_metadata(PRODUCER)
        u = platform.uname()
        meta["host"] = {"hostname": u.node, "kernel_release": u.release, "machine": u.machine,
                        "page_size": PAGE_SIZE, "ncpus": os.cpu_count()}
        meta["events"] = {ev.name: {"id": ev.fmt.id, "format": ev.fmt.text} for ev in self.events}
        meta["alloc"] = [self._canonical(ev) for ev in self.events if ev.role == "alloc"]
        meta["free"] = [self._canonical(ev) for ev in self.events if ev.role == "free"]
        cfg = self.cfg
        meta["options"] = {"cpus": cfg.cpus, "pids": cfg.pids, "tids": cfg.tids,
                           "mmap_pages": cfg.mmap_pages, "call_graph": self.call_graph,
                           "kernel_filters": dict(self.kernel_filters),
                           "userspace_filters": dict(self.userspace_filters),
                           "command": cfg.command or None}
        meta["counts"] = {ev.name: {"samples": 0, "lost": 0} for ev in self.events}
        meta["probes"] = probe_metadata(self.probe_defs)
        if cfg.malloc:
            meta["options"]["malloc"] = {"lib": self.probe_defs[0].path if self.probe_defs else None,
                                         "prefix": cfg.malloc_prefix}
        meta["ring_chunks"] = ring_chunks_meta(self.ids, self.per_task)
        return meta

    @staticmethod
    def _canonical(ev: TracedEvent) -> str:
        """The spec as recorded: `stack/` when the event recorded call chains (-g adds them to
        every alloc event), as import writes it."""
        spec = ev.spec
        if ev.callchain and not spec.stack and spec.max_stack is None:
            spec = replace(spec, stack=True)
        return spec.canonical()

    def _refresh_counts(self) -> None:
        """Kernel counts (PERF_FORMAT_LOST) into the metadata; the converter adds exact samples."""
        meta = self.writer.metadata
        for name, fds in self.event_fds.items():
            count = lost = unread = 0
            for fd in fds:
                try:
                    c, lo = pe.read_count_lost(fd)
                except OSError:
                    unread += 1
                    continue
                count += c
                lost += lo
            old = meta["counts"].get(name, {})
            meta["counts"][name] = {"samples": old.get("samples", 0), "lost": lost,
                                    "kernel_count": count}
            if unread:  # those counts are missing from lost and kernel_count: say so
                meta["counts"][name]["unread_counters"] = unread
                if name not in self._unread_warned:
                    self._unread_warned.add(name)
                    print(f"kmemleak-offline: warning: {name}: {unread} of {len(fds)} kernel "
                          "counters could not be read; its lost and kernel counts are low",
                          file=sys.stderr, flush=True)
        meta["clock"]["stop_ns"] = time.clock_gettime_ns(time.CLOCK_MONOTONIC)

    # ----------------------------------------------------------------- loop
    def _drain_rings(self) -> None:
        """Append every ring's new bytes to the open part (no splitting, no Arrow: see spool.py).
        A full disk raises DiskFull; the ring keeps what could not be written."""
        out = self.writer.writer
        cpus = self.ring_cpu
        try:
            for i, ring in enumerate(self.rings):
                ring.drain_to(out, i, cpus[i])
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull(exc.errno, "no room for ring chunks") from None
            raise

    def _disk_full(self) -> None:
        """No room for the ring chunks: stop recording; the converter seals what was written
        and writes the last metadata into the room set aside (spool.Converter.full)."""
        self.disk_full = True
        self.stop_reason = "disk full"
        self.stop.set()

    def _rotate(self) -> None:
        """Finish the last second's part; the converter seals it."""
        self._refresh_counts()
        self.writer.rotate()

    def _close_in_converter(self) -> None:
        """In the forked converter: drop the perf fds and CMD's go-pipe, so a dead recorder's
        events stop and CMD is not held. (Ring mmaps are VM_DONTCOPY: nothing to unmap.)"""
        for fd in self.fds:
            os.close(fd)
        if self._go is not None:
            os.close(self._go)

    def _realtime(self, on: bool) -> None:
        """SCHED_FIFO for this thread while draining: on a small box saturated by the workload a
        normal-priority reader wakes too late and the ring overflows. Best effort."""
        if os.environ.get("KMEMLEAK_RECORD_FIFO", "1") == "0":
            return
        try:
            if on:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(DRAIN_FIFO_PRIORITY))
            else:
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        except OSError as exc:
            if on:  # not fatal, but the user should know why rings may overflow under load
                print(f"kmemleak-offline: note: the drain loop stays at normal priority (SCHED_FIFO: "
                      f"{exc.strerror}); under heavy load rings may overflow", file=sys.stderr,
                      flush=True)

    def _on_signal(self, signum: int, _frame) -> None:
        if signum == signal.SIGUSR1:
            self._usr1 = True
            return
        if not self.stop_reason:
            self.stop_reason = signal.Signals(signum).name
        self.stop.set()

    def _stats(self) -> str:
        el = max(1e-9, time.monotonic() - self._t0)
        counts = self.writer.metadata["counts"].values()
        lost = sum(v.get("lost", 0) for v in counts)
        n = sum(v.get("kernel_count", 0) for v in counts) - lost
        drained = sum(r.bytes_read for r in self.rings)
        mb = self.writer.bytes_written / 1e6
        return (f"kmemleak-offline record: {el:.0f}s, {n} events ({n / el:.0f}/s), "
                f"{drained / 1e6:.1f} MB drained, {mb:.1f} MB written, {lost} lost")

    def run(self) -> int:
        """Record until stopped; returns the exit status for the command.

        SIGINT/SIGTERM during set-up are only noted, and acted on between steps (KeyboardInterrupt
        naming the signal; the clean-up then closes every fd and removes the uprobes): an
        exception raised wherever the signal lands could orphan a perf fd just opened, or be
        swallowed by a finaliser (the recording then went on as if nothing had happened).
        """
        main = threading.current_thread() is threading.main_thread()
        old = {s: signal.signal(s, self._early) for s in (signal.SIGINT, signal.SIGTERM)} \
            if main else {}
        try:
            self.prepare()
            self._check_early()
            self.open_events()
            self._check_early()
            return self._record()
        finally:
            try:
                self._cleanup()
            finally:
                for s, h in old.items():
                    signal.signal(s, h)

    def _early(self, signum: int, _frame: object) -> None:
        if not self._early_signal:
            self._early_signal = signal.Signals(signum).name

    def _check_early(self) -> None:
        if self._early_signal:
            raise KeyboardInterrupt(self._early_signal)

    def _record(self) -> int:
        cfg = self.cfg
        self._check_early()
        self._keep_old_outputs()
        start = time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # provisional: set again at enable
        meta = self._metadata()
        meta["clock"].update(start_ns=start, stop_ns=start)
        embed = cfg.embed_symbols and self.per_task and self.call_graph
        old = {s: signal.signal(s, self._on_signal)
               for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
        if self._early_signal:  # between the last check and the handlers: stop at once
            self.stop_reason = self._early_signal
            self.stop.set()
        try:
            # The converter is forked before anything is enabled; the slow work (kallsyms, the
            # /proc snapshot, imports) happens there, after enabling, away from the drain.
            self.writer = SpooledRecording(cfg.output, meta, self.traced_pids, embed,
                                           self._close_in_converter, self._orphaned,
                                           verbose=bool(cfg.verbose))
            gc.collect()
            gc.freeze()  # set-up objects (typer, ...) never rescanned: no GC pause mid-drain
            self._realtime(True)
            self._t0 = time.monotonic()
            try:
                self._enable()
                self._t0 = time.monotonic()
                self._announce()
                self.release_child()
                self._main_loop()
            except DiskFull:
                self._disk_full()
            finally:
                self._realtime(False)
            for fd in self.fds:
                try:
                    pe.disable(fd)
                except OSError:
                    pass
            if not self.disk_full:
                try:
                    self._drain_rings()
                except DiskFull:
                    self._disk_full()
            self._refresh_counts()
            self.writer.metadata["stopped"] = self.stop_reason or "stopped"
            self._stop_child()
            if sys.stderr.isatty():
                sys.stderr.write("\r\033[K")
            if cfg.verbose:
                print(self._stats(), f"(stopped: {self.stop_reason})", file=sys.stderr)
            not_kept = sum(ring.unread_events() for ring in self.rings) if self.disk_full else 0
            self._cleanup()  # events closed, uprobes gone now: not after the conversion
            t = time.monotonic()
            answer = (self.writer.close_full() if self.disk_full
                      else self.writer.close(KEEP if cfg.defer_convert else CONVERT))
            if cfg.verbose:
                what = "kept the ring chunks" if cfg.defer_convert else "converted"
                print(f"kmemleak-offline record: converter process {self.writer.converter_cpu_s:.2f} "
                      f"CPU s; {what} in {time.monotonic() - t:.2f} s after the stop", file=sys.stderr)
        finally:
            if isinstance(self.writer, SpooledRecording):
                self.writer.abandon()  # no-op after close; on errors the converter seals the parts
            for s, h in old.items():
                signal.signal(s, h)
        return self._outcome(answer, not_kept)

    def _outcome(self, answer: int, not_kept: int) -> int:
        """The converter's outcome -> the exit status; one line when the recording is not the
        single file OUT (docs/behaviour.md: record, disk full)."""
        out, parts = self.cfg.output, self.writer.parts_dir
        if answer == FULL:
            print(f"kmemleak-offline record: disk full: recording stopped after "
                  f"{time.monotonic() - self._t0:.0f} s; the analysable data is in {parts} "
                  f"({not_kept} events could not be kept)", file=sys.stderr, flush=True)
            return 1
        if answer != DONE:
            print(f"kmemleak-offline record: no room left to join the parts into {out}: the "
                  f"complete recording is {parts} (analyse it as it is)", file=sys.stderr, flush=True)
            return 1
        return 0

    def _enable(self) -> None:
        """Start the clock and the /proc snapshot right at enable time: the side-band (comm, fork,
        exec, mmap) is switched on first, then the converter is told to read /proc (rows at
        start_ns), and the tracepoints go on: a process started at any time has its comm in the
        recording (from /proc, or from its own COMM record).
        With -- CMD every event is enable-on-exec and the command is still held."""
        start = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        self.writer.metadata["clock"].update(start_ns=start, stop_ns=start, anchor={
            "perf_ns": start, "realtime_ns": time.clock_gettime_ns(time.CLOCK_REALTIME)})
        if not self.cfg.command:
            for fd in self.sideband_fds:
                pe.enable(fd)
        self.writer.start()  # the converter reads /proc now: later changes come as records
        if not self.cfg.command:
            side = set(self.sideband_fds)
            for fd in self.fds:
                if fd not in side:
                    pe.enable(fd)

    def _announce(self) -> None:
        """Say the moment events are on: start-up takes a while, and a workload started before
        this line is missed."""
        cfg = self.cfg
        names = len(self.events)
        what = (f"-- {cfg.command[0]}" if cfg.command else
                f"pids {','.join(map(str, self.traced_pids))}" if self.traced_pids else "all CPUs")
        until = f"for {cfg.duration_s:g} s or " if cfg.duration_s else ""
        print(f"kmemleak-offline: recording {names} events ({what}) into {cfg.output}; "
              f"{until}Ctrl-C to stop", file=sys.stderr, flush=True)

    def _orphaned(self) -> None:
        """In the converter, once the recorder died without stopping: remove its uprobes."""
        if self.uprobes is not None:
            self.uprobes.remove()

    def _main_loop(self) -> None:
        """Poll the rings and spool what they hold; every second hand a segment over; stop."""
        cfg = self.cfg
        tty = sys.stderr.isatty()
        deadline = self._t0 + cfg.duration_s if cfg.duration_s else None
        next_flush = time.monotonic() + FLUSH_EVERY_S
        poller = select.poll()
        for ring in self.rings:
            poller.register(ring.fd, select.POLLIN)
        while not self.stop.is_set():
            wait = next_flush if deadline is None else min(next_flush, deadline)
            wait = min(POLL_MAX_S, max(0.0, wait - time.monotonic()))
            for fd, ev in poller.poll(wait * 1000):
                if ev & (select.POLLHUP | select.POLLERR):
                    poller.unregister(fd)
                    self._hup.add(fd)
            self._drain_rings()
            now = time.monotonic()
            if self._hup and len(self._hup) == len(self.rings) and not self.stop_reason:
                self.stop_reason = "all traced tasks exited"
                self.stop.set()
            if deadline is not None and now >= deadline and not self.stop_reason:
                self.stop_reason = "duration"
                self.stop.set()
            if self.child is not None and self.child_status is None:
                pid, status = os.waitpid(self.child, os.WNOHANG)
                if pid:
                    self.child_status = status
                    if not self.stop_reason:
                        self.stop_reason = "command exited"
                    self.stop.set()
            if self._usr1:
                self._usr1 = False
                print(self._stats(), file=sys.stderr, flush=True)
            if now >= next_flush and not self.stop.is_set():
                self._rotate()  # DiskFull: caught by the caller, which stops
                next_flush = now + FLUSH_EVERY_S
                if tty:
                    sys.stderr.write("\r\033[K" + self._stats())
                    sys.stderr.flush()

    def _stop_child(self) -> None:
        if self.child is None or self.child_status is not None:
            return
        try:
            os.kill(self.child, signal.SIGTERM)
            _, self.child_status = os.waitpid(self.child, 0)
        except (ProcessLookupError, ChildProcessError):
            pass

    def _remove_uprobes(self) -> None:
        if self.uprobes is not None:
            try:
                self.uprobes.remove()
            except ProbeError as exc:
                raise RecordError(f"{exc} (remove them by hand: see {self.tracefs}/uprobe_events)") from None

    def _cleanup(self) -> None:
        for ring in self.rings:
            try:
                ring.close()
            except (BufferError, ValueError):
                pass
        self.rings.clear()
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()
        if self.child is not None and self.child_status is None:
            if self._go is not None:
                os.close(self._go)
                self._go = None
            try:
                os.kill(self.child, signal.SIGKILL)
                os.waitpid(self.child, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self._remove_uprobes()  # after the fds are closed (else EBUSY)
