"""perf.data -> recording: `kmemleak-offline import`.

Takes what `reader` parsed (header features, tracepoint formats, sample and side-band columns) and
writes a recording: call chains deduplicated into stack rows, per-cpu seq, metadata (host, clock,
counts, default --alloc/--free), kernel symbols (embedded kallsyms, else this machine's when it runs
the same kernel). Everything the reader had to leave out of a damaged file is said through
`notice` and kept in the recording's notes.
"""

from __future__ import annotations

import os
import platform
import stat
import struct
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmemleak_offline import __version__

from .. import perfprobe
from ..format import spec as specmod
from ..format.background import BackgroundWriter
from ..format.kernfile import KernelSymbolFile, kernel_map_pgoff
from ..format.kernfile import check as check_kernel_file
from ..format.recording import RecordingWriter, new_metadata
from ..format.symrows import ksym_rows
from . import formats as fmtsrc
from .cmdline import record_target
from .errors import PerfDataError
from .pipe import absorb
from .reader import (
    F_ARCH,
    F_CLOCK_DATA,
    F_CMDLINE,
    F_HOSTNAME,
    F_NRCPUS,
    F_OSRELEASE,
    F_VERSION,
    PERF_TYPE_TRACEPOINT,
    REC_SAMPLE,
    PerfData,
    read_perf_data,
    read_pipe_stream,
    record_windows,
)
from .rows import RowBuilder
from .stream import WINDOW

PRODUCER = f"kmemleak-offline {__version__} import"
CLOCK_NAMES = {0: "realtime", 1: "monotonic", 4: "monotonic_raw", 7: "boottime", 11: "tai"}

# --alloc/--free defaults when the file has these events: (alloc spec, free spec)
DEFAULT_PAIRS = (
    ("kmem:kmalloc", "kmem:kmalloc//ptr=ptr/size=bytes_alloc/stack/", "kmem:kfree", "kmem:kfree//ptr=ptr/"),
    ("kmem:kmalloc_node", "kmem:kmalloc_node//ptr=ptr/size=bytes_alloc/stack/", "kmem:kfree",
     "kmem:kfree//ptr=ptr/"),
    ("kmem:kmem_cache_alloc", "kmem:kmem_cache_alloc//ptr=ptr/size=bytes_alloc/stack/",
     "kmem:kmem_cache_free", "kmem:kmem_cache_free//ptr=ptr/"),
    ("kmem:kmem_cache_alloc_node", "kmem:kmem_cache_alloc_node//ptr=ptr/size=bytes_alloc/stack/",
     "kmem:kmem_cache_free", "kmem:kmem_cache_free//ptr=ptr/"),
    ("kmem:mm_page_alloc", "kmem:mm_page_alloc//ptr=pfn/size={page}<<order/stack/",
     "kmem:mm_page_free", "kmem:mm_page_free//ptr=pfn/"),
    ("percpu:percpu_alloc_percpu", "percpu:percpu_alloc_percpu//ptr=ptr/size=bytes_alloc/stack/",
     "percpu:percpu_free_percpu", "percpu:percpu_free_percpu//ptr=ptr/"),
)


@dataclass
class Converted:
    """Result of convert(): what was written, for the command's summary line."""

    output: Path
    samples: dict[str, int]
    skipped: int
    stacks: int
    notices: list[str]
    metadata: dict[str, Any]


def running_kernel_build_id() -> bytes | None:
    """GNU build-id of the running kernel from /sys/kernel/notes (ELF notes)."""
    try:
        notes = Path("/sys/kernel/notes").read_bytes()
    except OSError:
        return None
    pos = 0
    while pos + 12 <= len(notes):
        nsz, dsz, typ = struct.unpack_from("<III", notes, pos)
        name_end = pos + 12 + ((nsz + 3) & ~3)
        if typ == 3 and notes[pos + 12:pos + 12 + nsz].rstrip(b"\0") == b"GNU":
            return notes[name_end:name_end + dsz]
        pos = name_end + ((dsz + 3) & ~3)
    return None


def kernel_symbols(pd_: PerfData, osrelease: str | None, kernel: KernelSymbolFile | None = None,
                   text_pgoff: int | None = None) -> tuple[dict[str, Any] | None, str, list[str]]:
    """ksym rows, a one-line note on where they came from (or why there are none), and warnings
    where a --kallsyms/--vmlinux file does not fit the recorded kernel."""
    if kernel is not None:
        warns = check_kernel_file(kernel, pd_.build_ids.get("[kernel.kallsyms]"), text_pgoff)
        return kernel.rows, f"kernel symbols: {kernel.count} from {kernel.source}", warns
    rows, msg = _kernel_symbols(pd_, osrelease)
    return rows, msg, []


def _kernel_symbols(pd_: PerfData, osrelease: str | None) -> tuple[dict[str, Any] | None, str]:
    if pd_.kallsyms.strip():
        return ksym_rows(pd_.kallsyms), "kernel symbols: from the kallsyms embedded in the perf.data"
    here = platform.release()
    if osrelease is None and pd_.damage:
        return None, ("kernel symbols: none (the damaged perf.data does not say its kernel: give "
                      "--kallsyms or --vmlinux); kernel addresses will print as Unknown")
    if osrelease != here:
        return None, (f"kernel symbols: none (perf.data from kernel {osrelease or '?'}, this machine "
                      f"runs {here}); kernel addresses will print as Unknown")
    recorded = pd_.build_ids.get("[kernel.kallsyms]")
    running = running_kernel_build_id()
    if recorded and running and recorded != running:
        return None, ("kernel symbols: none (the kernel build-id in the perf.data differs from the "
                      "running kernel's); kernel addresses will print as Unknown")
    try:
        text = Path("/proc/kallsyms").read_bytes()
    except OSError as exc:
        return None, f"kernel symbols: none (cannot read /proc/kallsyms: {exc.strerror})"
    rows = ksym_rows(text)
    if not any(rows["addr"].to_numpy(zero_copy_only=False)):
        return None, "kernel symbols: none (/proc/kallsyms addresses are hidden; run as root)"
    return rows, "kernel symbols: /proc/kallsyms of this machine (same kernel release and build-id)"


def default_specs(names: Iterable[str], page_size: int) -> tuple[list[str], list[str]]:
    """--alloc/--free for the known allocator events present in the file."""
    have = set(names)
    alloc: list[str] = []
    free: list[str] = []
    for a_name, a_spec, f_name, f_spec in DEFAULT_PAIRS:
        if a_name in have and f_name in have:
            alloc.append(a_spec.format(page=page_size or 4096))
            if f_spec not in free:
                free.append(f_spec)
    return alloc, free


def convert(pd_: PerfData, output: str | os.PathLike, alloc: list[str] | None = None,
            free: list[str] | None = None, notice: Callable[[str], None] | None = None,
            kernel: KernelSymbolFile | None = None, window: int = WINDOW,
            formats_dir: Path | None = None) -> Converted:
    """Write the recording for a parsed perf.data, streaming its records a window at a time;
    PerfDataError for files with nothing to import (no file left). Records of a pipe stream's
    header (attrs, features, formats) are taken as they come; a file or stream cut short or
    damaged is imported up to the damage and marked `salvaged`."""
    notices: list[str] = []

    def note(msg: str) -> None:
        notices.append(msg)
        if notice:
            notice(msg)

    if pd_.damage:
        note(f"damaged perf.data: {pd_.damage}; salvaging the whole records before the damage")
    formats = Formats(pd_, formats_dir, note)
    if not pd_.pipe:
        formats.complete()
    if pd_.attrs:  # a bad --alloc/--free fails before any work
        _check_specs(pd_, alloc, free)
    cuts: list[tuple[int, str]] = []
    w = RecordingWriter(output, new_metadata(PRODUCER))
    bw = BackgroundWriter(w)
    records = 0
    try:
        rows = RowBuilder(pd_, bw)
        for win in record_windows(pd_, window, on_cut=lambda at, why: cuts.append((at, why))):
            records += len(win.offs)
            if pd_.pipe:
                absorb(pd_, win)
                if not pd_.attrs:
                    raise PerfDataError(f"{pd_.path}: records before any PERF_RECORD_HEADER_ATTR: "
                                        "not a perf record pipe stream")
                if (win.types == REC_SAMPLE).any():
                    formats.complete()
            rows.guessed = formats.guessed
            rows.add(win)
        for w_ in pd_.warnings:  # what the reader had to leave out of a damaged file
            note(w_)
        salvage = _salvaged(pd_, cuts, records, rows, note)
        if not rows.samples:
            raise PerfDataError(f"{pd_.path}: no tracepoint samples to import "
                                + (f"({salvage['reason']}, after {records} whole records)" if salvage else
                                   "(record tracepoints or uprobes with perf record -e SYS:NAME)"))
        _check_specs(pd_, alloc, free)
        if rows.skipped:
            note(f"skipped {rows.skipped} samples of non-tracepoint events or of events without a format")
        meta = _metadata(pd_, rows.samples, rows.start or 0, rows.stop or 0, alloc, free, note)
        meta["options"]["call_graph"] = rows.call_graph
        if salvage:
            meta["salvaged"] = salvage | {"formats": formats.used()}
        if formats.dir is not None and formats.dir.label not in formats.used():
            note(f"formats: {formats.dir.label} not used: the perf.data has the formats of its events")
        text_pgoff = kernel_map_pgoff(*rows.mmaps())
        ksyms, ks_note, ks_warn = kernel_symbols(pd_, meta["host"].get("kernel_release"), kernel, text_pgoff)
        note(ks_note)
        for msg in ks_warn:
            note(f"warning: {msg}")
        if rows.lost_samples is not None:  # perf's own per-event counts (PERF_FORMAT_LOST, at the end)
            for ev, n in rows.lost_samples.items():
                if ev in meta["counts"]:
                    meta["counts"][ev]["lost"] = n
            meta["lost_split"] = "exact"
        else:
            lost = rows.lost_records()
            if lost:
                for ev, n in lost:  # per LOST record
                    if ev in meta["counts"]:
                        meta["counts"][ev]["lost"] += int(n)
                meta["lost_split"] = "estimated"
                note("lost: the per-event split is estimated (no PERF_RECORD_LOST_SAMPLES in the file: a "
                     "LOST record names whichever event wrote next)")
        meta["notes"] = list(notices)
        rows.finish()
        bw.join()
        if ksyms:
            w.write(ksyms)
        w.metadata = meta
        path = w.close()
    except BaseException:
        try:
            bw.join()
        except BaseException:  # noqa: BLE001,S110 (the first error is the one to report)
            pass
        w.abort()
        raise
    return Converted(output=path, samples=dict(rows.samples), skipped=rows.skipped,
                     stacks=len(rows.stacks), notices=notices, metadata=w.metadata)


class Formats:
    """Tracepoint formats the file lacks (cut, killed, early-cut stream): from --formats DIR, else
    the bundled ones, per tracepoint attr without one; `guessed` feeds the payload check."""

    def __init__(self, pd_: PerfData, formats_dir: Path | None, note: Callable[[str], None]) -> None:
        self.pd_, self.note = pd_, note
        self.dir = fmtsrc.events_dir(formats_dir) if formats_dir is not None else None
        self.guessed: dict[int, fmtsrc.Guess] = {}
        self._asked: set[int] = set()

    def complete(self) -> None:
        names = self.pd_.given_names()
        wanted = [(a.config, names.get(a.index)) for a in self.pd_.attrs
                  if a.type == PERF_TYPE_TRACEPOINT and a.config not in self.pd_.formats
                  and a.config not in self._asked]
        if not wanted:
            return
        self._asked.update(c for c, _ in wanted)
        sources = ([self.dir] if self.dir is not None else []) + [fmtsrc.bundled()]
        self.guessed.update(fmtsrc.fill(self.pd_.formats, wanted, sources, self.note))
        self.pd_.name_attrs()
        tps = [a for a in self.pd_.attrs if a.type == PERF_TYPE_TRACEPOINT]
        if tps and not any(a.name for a in tps):
            raise PerfDataError(
                f"{self.pd_.path}: no tracepoint formats: not in the perf.data, and its tracepoint ids "
                f"({', '.join(str(a.config) for a in tps)}) match none in "
                + " or ".join(s.label for s in sources)
                + "; give --formats DIR, a copy of the target's /sys/kernel/tracing/events")

    def used(self) -> list[str]:
        """Where the formats came from: `file` and the labels of the sources used."""
        out = ["file"] if any(c not in self.guessed for c in self.pd_.formats) else []
        return out + sorted({g.source for g in self.guessed.values()})


def _salvaged(pd_: PerfData, cuts: list[tuple[int, str]], records: int, rows: RowBuilder,
              note: Callable[[str], None]) -> dict[str, Any] | None:
    """What was recovered of a damaged file or cut stream, said in one line; None if whole."""
    if not pd_.damage and not cuts:
        return None
    at, why = cuts[0] if cuts else (-1, "")
    size = pd_.file_size or None
    if at < 0:  # the records run to the end of the data section (or of the file, or the stream)
        at = (None if pd_.stream is not None else
              pd_.data_offset + pd_.data_size if pd_.data_size is not None else size)
    if pd_.pipe:
        reason = f"the pipe stream ends inside {why}" if cuts else "the pipe stream is damaged"
    elif cuts:
        reason = f"{pd_.damage or 'the data section is damaged'}; the records end in {why}"
    else:
        reason = pd_.damage or ""
    samples = sum(rows.samples.values()) + rows.skipped
    span = ""
    if rows.start is not None and rows.stop is not None:
        span = (f", time span {rows.start / 1e9:.6f}-{rows.stop / 1e9:.6f} s "
                f"({(rows.stop - rows.start) / 1e9:.3f} s)")
    where = f" up to byte {at}" + (f" of {size}" if size else "") if at is not None else ""
    then = f" (then {why})" if cuts else ""
    note(f"salvaged: {records} whole records ({samples} samples){where}{then}{span}"
         + ("; perf script reads a cut stream the same way" if pd_.pipe else ""))
    return {"reason": reason, "records": records, "samples": samples, "end_offset": at,
            "file_bytes": size, "start_ns": rows.start, "stop_ns": rows.stop}


def _check_specs(pd_: PerfData, alloc: list[str] | None, free: list[str] | None) -> None:
    """--alloc/--free given to import must parse and name tracepoints the file recorded."""
    if alloc:
        _checked(alloc, "--alloc", _tracepoints(pd_))
    if free:
        _checked(free, "--free", _tracepoints(pd_))


def _metadata(pd_: PerfData, samples: dict[str, int], start: int, stop: int, alloc: list[str] | None,
              free: list[str] | None, note: Callable[[str], None]) -> dict[str, Any]:
    meta = new_metadata(PRODUCER)
    meta["host"] = {"hostname": pd_.string(F_HOSTNAME), "kernel_release": pd_.string(F_OSRELEASE),
                    "machine": pd_.string(F_ARCH), "page_size": pd_.page_size or None,
                    "ncpus": pd_.value(F_NRCPUS),
                    "perf_version": pd_.string(F_VERSION)}
    kbid = pd_.build_ids.get("[kernel.kallsyms]")
    if kbid:
        meta["host"]["kernel_build_id"] = kbid.hex()
    names = sorted(samples)
    fmt_by_name = {f.full_name: f for f in pd_.formats.values()}
    meta["events"] = {n: {"id": fmt_by_name[n].id, "format": fmt_by_name[n].text}
                      for n in names if n in fmt_by_name}
    meta["counts"] = {n: {"samples": samples[n], "lost": 0} for n in names}
    a_def, f_def = default_specs(names, pd_.page_size)
    if not (alloc or free):  # perf-probe allocator uprobes: paired like record --malloc's
        a_def, f_def = _perf_probes(meta, a_def, f_def, note)
    meta["alloc"] = _checked(alloc, "--alloc", _tracepoints(pd_)) if alloc else a_def
    meta["free"] = _checked(free, "--free", _tracepoints(pd_)) if free else f_def
    if not meta["alloc"] or not meta["free"]:
        note("no known allocator events: give --alloc/--free here or to analyze")
    clock = meta["clock"]
    a0 = pd_.attrs[0]
    clock["perf_clock"] = CLOCK_NAMES.get(a0.clockid, f"clockid {a0.clockid}") if a0.use_clockid else "perf"
    clock.update(start_ns=start, stop_ns=stop)
    cd = pd_.value(F_CLOCK_DATA)
    if cd is not None:
        wall, perf_ns = cd
        clock["anchor"] = {"perf_ns": perf_ns, "realtime_ns": wall}
    elif pd_.damage:
        note("clock: no HEADER_CLOCK_DATA (lost with the feature sections); realtime anchor left 0")
    else:
        note("clock: no HEADER_CLOCK_DATA (record with perf record -k monotonic for wall-clock "
             "times); realtime anchor left 0")
    target = record_target(pd_.value(F_CMDLINE))  # per task (-p/-t/CMD) or system-wide
    meta["options"] = {"cpus": None, "pids": target.pids, "tids": target.tids, "mmap_pages": None,
                       "call_graph": False,  # set from the samples seen
                       "kernel_filters": {}, "command": target.command,
                       "perf_cmdline": pd_.value(F_CMDLINE), "source": str(pd_.path)}
    return meta


def _perf_probes(meta: dict[str, Any], a_def: list[str], f_def: list[str],
                 note: Callable[[str], None]) -> tuple[list[str], list[str]]:
    """Allocator probes made by `perf probe` (perfprobe.py): the recording's `probes` and their
    --alloc/--free, replacing the kernel defaults (a note says so); what they lack is noted."""
    probes = perfprobe.recognise({n: e["format"] for n, e in meta["events"].items() if "format" in e})
    if not probes:
        return a_def, f_def
    meta["probes"] = probes
    if a_def or f_def:
        note("kernel allocator events are in the file too: analyze pairs the perf-probe allocator "
             "uprobes; give analyze --alloc/--free for the kernel ones")
    note(f"perf probe: {len(probes)} allocator uprobe events, paired per thread like record --malloc")
    for msg in perfprobe.notes(probes):
        note(msg)
    return perfprobe.event_specs(probes)


def _checked(texts: list[str], option: str, available: list[str]) -> list[str]:
    """Spec lists given to import: they must parse and name events the file recorded."""
    try:
        specs = specmod.expand_wildcards([sp for t in texts for sp in specmod.parse_list(t)], available)
    except specmod.SpecError as exc:
        raise PerfDataError(f"{option}: {exc}") from None
    for sp in specs:
        if sp.full_name not in available:
            raise PerfDataError(f"{option}: {sp.full_name} is not in the perf.data (it has: "
                                f"{', '.join(sorted(set(available))) or 'no tracepoints'})")
    return list(texts)


def import_perf_data(perf_data: str | os.PathLike, output: str | os.PathLike,
                     alloc: list[str] | None = None, free: list[str] | None = None,
                     notice: Callable[[str], None] | None = None,
                     kernel: KernelSymbolFile | None = None, window: int = WINDOW,
                     formats_dir: Path | None = None) -> Converted:
    """Parse `perf_data` (`-`: a pipe stream on stdin) and write the recording `output` (kernel
    symbols from `kernel` if given), reading its records `window` bytes at a time."""
    return convert(open_input(perf_data), output, alloc, free, notice, kernel, window, formats_dir)


def open_input(perf_data: str | os.PathLike) -> PerfData:
    """A perf.data path, a saved pipe stream, or `-`: stdin (a pipe stream; or a regular file
    redirected to it, read by its path)."""
    if str(perf_data) != "-":
        return read_perf_data(perf_data)
    fd = sys.stdin.fileno()
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return read_perf_data(os.readlink(f"/proc/self/fd/{fd}"))
    return read_pipe_stream(sys.stdin.buffer)


def _tracepoints(pd_: PerfData) -> list[str]:
    return [a.name for a in pd_.attrs if a.type == PERF_TYPE_TRACEPOINT and a.name]
