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
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kmemleak_offline import __version__

from ..format import spec as specmod
from ..format.kernfile import KernelSymbolFile, kernel_map_pgoff
from ..format.kernfile import check as check_kernel_file
from ..format.recording import RecordingWriter, new_metadata
from ..format.symrows import ksym_rows
from .cmdline import record_target
from .reader import (
    F_ARCH,
    F_CLOCK_DATA,
    F_CMDLINE,
    F_HOSTNAME,
    F_NRCPUS,
    F_OSRELEASE,
    F_VERSION,
    PERF_TYPE_TRACEPOINT,
    REC_COMM,
    REC_EXIT,
    REC_FORK,
    REC_LOST,
    REC_LOST_SAMPLES,
    REC_MMAP,
    REC_MMAP2,
    REC_SAMPLE,
    S_CALLCHAIN,
    PerfData,
    PerfDataError,
    large_binary,
    ragged,
    read_at,
    read_perf_data,
    record_boundaries,
    sample_columns,
    side_columns,
)
from .reader import _which_attr as which_attr

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


def _stacks(pd_: PerfData, cols: dict[str, Any]) -> tuple[pa.Array, dict[str, Any] | None]:
    """Deduplicate call chains (dictionary-encode their bytes) -> (stack_id per sample, stack rows)."""
    n = len(cols["rec"])
    if "cc_nr" not in cols:
        return pa.nulls(n, pa.uint32()), None
    has = cols["cc_nr"] > 0
    flat, offs = ragged(pd_.buf, np.where(has, cols["cc_start"], 0), cols["cc_nr"] * 8)
    enc = pc.dictionary_encode(large_binary(flat, offs))
    ids = enc.indices.to_numpy(zero_copy_only=False).astype(np.uint32)
    dic = enc.dictionary
    d_off = np.frombuffer(dic.buffers()[1], np.int64, count=len(dic) + 1 + dic.offset)[dic.offset:]
    d_data = np.frombuffer(dic.buffers()[2], np.uint8) if dic.buffers()[2] is not None else np.zeros(0, np.uint8)
    words = np.frombuffer(d_data[d_off[0]:d_off[-1]].tobytes(), "<u8").astype(np.uint64)
    chains = pa.ListArray.from_arrays(pa.array(((d_off - d_off[0]) // 8).astype(np.int32)), pa.array(words))
    used = np.unique(ids[has])
    stack_rows = {"kind": ["stack"] * len(used), "stack_id": pa.array(used, pa.uint32()),
                  "callchain": chains.take(pa.array(used.astype(np.int64)))}
    return pa.array(ids, pa.uint32(), mask=~has), stack_rows


def _seq(cpu: np.ndarray) -> np.ndarray:
    """Rank of each record within its cpu (file order = ring order per cpu)."""
    order = np.argsort(cpu, kind="stable")
    sc = cpu[order]
    first = np.r_[0, np.flatnonzero(sc[1:] != sc[:-1]) + 1]
    rank = np.arange(len(sc)) - np.repeat(first, np.diff(np.r_[first, len(sc)]))
    out = np.empty(len(cpu), np.uint64)
    out[order] = rank
    return out


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
            kernel: KernelSymbolFile | None = None) -> Converted:
    """Write the recording for a parsed perf.data; PerfDataError for files with nothing to import."""
    notices: list[str] = []

    def note(msg: str) -> None:
        notices.append(msg)
        if notice:
            notice(msg)

    for w in pd_.warnings:  # what the reader had to leave out of a damaged file
        note(w)
    offs, types, misc = record_boundaries(pd_)
    ends = offs + read_at(pd_.buf, offs + 6, "<u2").astype(np.int64)
    s_sel = np.flatnonzero(types == REC_SAMPLE)
    cols, _, skipped = sample_columns(pd_, offs[s_sel], ends[s_sel])
    if not cols or not len(cols["rec"]):
        raise PerfDataError(f"{pd_.path}: no tracepoint samples to import "
                            "(record tracepoints or uprobes with perf record -e SYS:NAME)")
    if skipped:
        note(f"skipped {skipped} samples of non-tracepoint events (no raw payload)")
    side = side_columns(pd_, offs, ends, types, misc)

    # seq: file order within each cpu, over samples and side-band records together
    rec_all = [s_sel[cols["rec"]]] + [c["rec"] for c in side.values()]
    cpu_all = [cols.get("cpu", np.full(len(cols["rec"]), -1))] + [
        c["cpu"] if c["cpu"] is not None else np.full(len(c["rec"]), -1) for c in side.values()]
    rec_cat = np.concatenate(rec_all)
    cpu_cat = np.concatenate(cpu_all).astype(np.int64)
    order = np.argsort(rec_cat, kind="stable")
    seq_sorted = _seq(cpu_cat[order])
    seq = np.empty(len(rec_cat), np.uint64)
    seq[order] = seq_sorted
    seqs = np.split(seq, np.cumsum([len(r) for r in rec_all])[:-1])

    times = cols["time"].astype(np.uint64)
    start, stop = int(times.min()), int(times.max())
    for c in side.values():  # side-band before the first sample (an exec's COMM) moves the start
        if c["time"] is not None and (c["time"] > 0).any():
            start = min(start, int(c["time"][c["time"] > 0].min()))
    stack_id, stack_rows = _stacks(pd_, cols)
    raw_flat, raw_offs = ragged(pd_.buf, cols["raw_start"], cols["raw_len"])
    cpu = cols.get("cpu")
    events = cols["event"]
    meta = _metadata(pd_, events, start, stop, alloc, free, note)

    w = RecordingWriter(output, meta)
    w.write({"kind": pa.array(["sample"] * len(times)), "time": pa.array(times, pa.uint64()),
             "cpu": None if cpu is None else pa.array(cpu, pa.uint32(), mask=cpu < 0),
             "seq": pa.array(seqs[0], pa.uint64()),
             "pid": pa.array(cols.get("pid", np.zeros(len(times))), pa.int32()),
             "tid": pa.array(cols.get("tid", np.zeros(len(times))), pa.int32()),
             "event": pa.array(events, pa.string()), "raw": large_binary(raw_flat, raw_offs).cast(pa.binary()),
             "stack_id": stack_id})
    if stack_rows:
        w.write(stack_rows)
    kinds = {REC_COMM: "comm", REC_MMAP: "mmap", REC_MMAP2: "mmap", REC_FORK: "fork",
             REC_EXIT: "exit", REC_LOST: "lost"}
    for (typ, c), sq in zip(side.items(), seqs[1:], strict=True):
        n = len(c["rec"])
        t = c["time"] if c["time"] is not None else np.zeros(n, np.int64)
        t = np.where(t <= 0, start, t).astype(np.uint64)  # perf's synthesized initial state
        row = {k: v for k, v in c.items() if k not in ("rec", "time", "cpu")}
        row |= {"kind": [kinds[typ]] * n, "time": pa.array(t, pa.uint64()), "seq": pa.array(sq, pa.uint64())}
        if typ == REC_LOST and c["cpu"] is not None:
            row["cpu"] = pa.array(c["cpu"], pa.uint32(), mask=c["cpu"] < 0)
        w.write(row)
    maps = [c for t, c in side.items() if t in (REC_MMAP, REC_MMAP2)]
    text_pgoff = next((p for p in (kernel_map_pgoff(c["filename"].to_pylist(), c["pgoff"].tolist())
                                   for c in maps) if p is not None), None)
    ksyms, ks_note, ks_warn = kernel_symbols(pd_, meta["host"].get("kernel_release"), kernel, text_pgoff)
    note(ks_note)
    for msg in ks_warn:
        note(f"warning: {msg}")
    exact = _lost_samples(pd_, offs, ends, types)
    if exact is not None:  # perf's own per-event counts (PERF_FORMAT_LOST, at the end)
        for ev, n in exact.items():
            if ev in w.metadata["counts"]:
                w.metadata["counts"][ev]["lost"] = n
        w.metadata["lost_split"] = "exact"
    elif REC_LOST in side:
        lc = side[REC_LOST]
        for ev, n in zip(lc["event"], lc["lost"].tolist(), strict=True):  # per LOST record
            if ev in w.metadata["counts"]:
                w.metadata["counts"][ev]["lost"] += int(n)
        w.metadata["lost_split"] = "estimated"
        note("lost: the per-event split is estimated (no PERF_RECORD_LOST_SAMPLES in the file: a "
             "LOST record names whichever event wrote next)")
    w.metadata["notes"] = list(notices)
    if ksyms:
        w.write(ksyms)
    path = w.close()
    counts = {str(k): v["samples"] for k, v in meta["counts"].items()}
    return Converted(output=path, samples=counts, skipped=skipped,
                     stacks=0 if not stack_rows else len(stack_rows["kind"]), notices=notices,
                     metadata=w.metadata)


def _lost_samples(pd_: PerfData, offs: np.ndarray, ends: np.ndarray,
                  types: np.ndarray) -> dict[str, int] | None:
    """Events lost per event from PERF_RECORD_LOST_SAMPLES (u64 lost, then the sample_id trailer
    naming the event), as `perf report --stats` sums them; None when the file has none."""
    sel = np.flatnonzero(types == REC_LOST_SAMPLES)
    if not len(sel):
        return None
    aidx = which_attr(pd_, offs[sel], ends[sel], sample=False)
    lost = read_at(pd_.buf, offs[sel] + 8, "<u8")
    out: dict[str, int] = {}
    for a in pd_.attrs:
        if a.name:
            out[a.name] = int(lost[aidx == a.index].sum())
    return out


def _metadata(pd_: PerfData, events: np.ndarray, start: int, stop: int, alloc: list[str] | None,
              free: list[str] | None, note: Callable[[str], None]) -> dict[str, Any]:
    meta = new_metadata(PRODUCER)
    meta["host"] = {"hostname": pd_.string(F_HOSTNAME), "kernel_release": pd_.string(F_OSRELEASE),
                    "machine": pd_.string(F_ARCH), "page_size": pd_.page_size or None,
                    "ncpus": pd_.value(F_NRCPUS),
                    "perf_version": pd_.string(F_VERSION)}
    kbid = pd_.build_ids.get("[kernel.kallsyms]")
    if kbid:
        meta["host"]["kernel_build_id"] = kbid.hex()
    names, counts = np.unique(events.astype(str), return_counts=True)
    by_name = {a.name: a for a in pd_.attrs if a.name}
    fmt_by_name = {f.full_name: f for f in pd_.formats.values()}
    meta["events"] = {n: {"id": fmt_by_name[n].id, "format": fmt_by_name[n].text}
                      for n in names if n in fmt_by_name}
    meta["counts"] = {str(n): {"samples": int(c), "lost": 0} for n, c in zip(names, counts, strict=True)}
    a_def, f_def = default_specs(names.tolist(), pd_.page_size)
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
    else:
        note("clock: no HEADER_CLOCK_DATA (record with perf record -k monotonic for wall-clock "
             "times); realtime anchor left 0")
    target = record_target(pd_.value(F_CMDLINE))  # per task (-p/-t/CMD) or system-wide
    meta["options"] = {"cpus": None, "pids": target.pids, "tids": target.tids, "mmap_pages": None,
                       "call_graph": any(a.sample_type & S_CALLCHAIN for a in pd_.attrs if a.name in by_name),
                       "kernel_filters": {}, "command": target.command,
                       "perf_cmdline": pd_.value(F_CMDLINE), "source": str(pd_.path)}
    return meta


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
                     kernel: KernelSymbolFile | None = None) -> Converted:
    """Parse `perf_data` and write the recording `output` (kernel symbols from `kernel` if given)."""
    return convert(read_perf_data(perf_data), output, alloc, free, notice, kernel)


def _tracepoints(pd_: PerfData) -> list[str]:
    return [a.name for a in pd_.attrs if a.type == PERF_TYPE_TRACEPOINT and a.name]
