"""Synthetic recordings (docs/format.md, v1) for tests, benchmarks and the bundled sample.

Builds what the recorder would write - raw tracepoint payloads laid out at the kernel's field
offsets, stack rows, side-band rows, a kallsyms snapshot - from numpy columns, so a 10M-event
recording takes seconds, not minutes. The analyser never imports this module; it exists so that
tests and benches exercise the real file format instead of a shortcut around it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from kmemleak_offline import __version__

from .format import tracefs
from .format.recording import RecordingWriter, const_column, new_metadata, write_recording

PERF_CONTEXT_KERNEL = 0xFFFFFFFFFFFFFF80
PERF_CONTEXT_USER = 0xFFFFFFFFFFFFFE00
KERNEL_TEXT_START = 0xFFFFFFFF81000000
PRODUCER = f"kmemleak-offline {__version__} synthetic"
DEFAULT_REALTIME_NS = 1_735_689_600_000_000_000  # 2025-01-01T00:00:00Z: deterministic wall clock
_CHUNK = 1 << 20  # rows per encoded chunk: bounds the temporary byte matrices

Strings = bytes | str | Sequence[bytes] | np.ndarray


# ----------------------------------------------------------------------------- formats


def formats_dir() -> Path:
    """Bundled real tracefs formats: package data first (works installed), else the test data."""
    pkg = Path(__file__).parent / "data" / "formats"
    if pkg.is_dir():
        return pkg
    return Path(__file__).parents[1] / "tests" / "data" / "formats"


def bundled_formats() -> dict[str, str]:
    """{"sys:name": format text} of the bundled format files (`<sys>_<name>.format`)."""
    out: dict[str, str] = {}
    for p in sorted(formats_dir().glob("*.format")):
        text = p.read_text()
        name = tracefs.parse_format(text).name
        stem = p.stem
        system = stem[: -len(name) - 1] if stem.endswith("_" + name) else stem.split("_", 1)[0]
        out[f"{system}:{name}"] = text
    return out


# ----------------------------------------------------------------------------- payloads


def _column(v: Any, n: int, what: str) -> np.ndarray:
    """A length-n column from an array or a scalar (broadcast, not copied)."""
    a = np.asarray(v)
    if a.ndim == 0:
        return np.broadcast_to(a, (n,))
    if len(a) != n:
        raise ValueError(f"{what}: {len(a)} values for {n} rows")
    return a


def _int_bytes(a: np.ndarray, esize: int) -> np.ndarray:
    """Little-endian two's-complement bytes of an integer array: shape + (esize,) uint8."""
    if a.dtype.kind not in "iub":
        raise ValueError(f"integer values expected, got dtype {a.dtype}")
    u = np.ascontiguousarray(a.astype("<u8"))
    return u.view(np.uint8).reshape(a.shape + (8,))[..., :esize]


def _string_matrix(v: Strings, n: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(n, w) uint8 bytes (zero padded) and (n,) string lengths; trailing NULs do not count."""
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        b = np.frombuffer(v, dtype=np.uint8)
        return np.broadcast_to(b, (n, len(b))), np.full(n, len(v.rstrip(b"\0")), np.int64)
    a = np.asarray(v)
    if a.dtype.kind == "U":
        a = np.char.encode(a, "utf-8")
    if a.dtype.kind != "S":
        a = np.array([bytes(x) for x in a], dtype="S")  # list of bytes-likes of mixed types
    if a.ndim != 1 or len(a) != n:
        raise ValueError(f"{what}: {a.shape} strings for {n} rows")
    w = a.dtype.itemsize
    mat = np.ascontiguousarray(a).view(np.uint8).reshape(n, w)
    nz = mat != 0
    lens = np.where(nz.any(axis=1), w - np.argmax(nz[:, ::-1], axis=1), 0).astype(np.int64)
    width = int(lens.max()) if n else 0
    return mat[:, :width], lens


def encode_payloads(fmt: tracefs.EventFormat, n: int, values: Mapping[str, Any],
                    strings: Mapping[str, Strings] | None = None) -> pa.BinaryArray:
    """Raw PERF_SAMPLE_RAW payloads for n events, as the kernel lays them out.

    Integers go at the format's offsets (little-endian, wrapped to the field width; a 2-D value
    fills an integer array field), `common_type` defaults to fmt.id, unset fields are zero. Char
    arrays take a string truncated to the field; `__data_loc` strings (with their NUL, as
    `__assign_str` stores them) are appended after the fixed part, in field order. Each payload is
    padded so that 4 + len is a multiple of 8, like the perf ring buffer.
    """
    fields = fmt.field_map()
    ints: dict[str, Any] = {}
    strs: dict[str, Strings] = dict(strings or {})
    for name, v in values.items():
        fld = fields.get(name)
        if fld is None:
            raise ValueError(f"{fmt.full_name}: no field {name!r} (fields: {', '.join(fields)})")
        (strs if fld.is_string else ints)[name] = v
    for name in strs:
        if name not in fields or not fields[name].is_string:
            raise ValueError(f"{fmt.full_name}: {name!r} is not a string field")
    if "common_type" in fields:
        ints.setdefault("common_type", fmt.id)

    fixed = max((f.offset + f.size for f in fmt.fields), default=0)
    dyn = [(f, *_string_matrix(strs.get(f.name, b""), n, f.name)) for f in fmt.fields if f.data_loc]
    raw_len = np.full(n, fixed, np.int64)
    for _, _, lens in dyn:
        raw_len += lens + 1
    plen = (raw_len + 4 + 7) // 8 * 8 - 4
    extra = max((m.shape[1] for _, m, _ in dyn), default=0)
    width = int(plen.max()) if n else 0
    mat = np.zeros((n, width + extra), np.uint8)

    for name, v in ints.items():
        fld = fields[name]
        a = np.asarray(v)
        if fld.array_len and a.ndim == 2:
            b = _int_bytes(_column(a, n, name), fld.elem_size).reshape(n, -1)[:, : fld.size]
        else:
            b = _int_bytes(_column(a, n, name), min(fld.size, 8))
        mat[:, fld.offset: fld.offset + b.shape[1]] = b
    for name, v in strs.items():
        fld = fields[name]
        if fld.data_loc:
            continue
        smat, _ = _string_matrix(v, n, name)
        w = min(smat.shape[1], fld.size)
        mat[:, fld.offset: fld.offset + w] = smat[:, :w]

    pos = np.full(n, fixed, np.int64)
    for fld, smat, lens in dyn:
        loc = (pos | ((lens + 1) << 16)).astype(np.uint32)
        mat[:, fld.offset: fld.offset + 4] = _int_bytes(loc, 4)
        w = smat.shape[1]
        if w:
            if (pos == pos[0]).all():
                mat[:, pos[0]: pos[0] + w] = smat
            else:
                mat[np.arange(n)[:, None], pos[:, None] + np.arange(w)[None, :]] = smat
        pos += lens + 1

    if n and (plen == plen[0]).all():
        data = np.ascontiguousarray(mat[:, : plen[0]]).ravel()
    else:
        data = mat[np.arange(mat.shape[1])[None, :] < plen[:, None]]
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(plen, out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError(f"{n} payloads exceed 2 GiB; encode them in smaller batches")
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets.astype(np.int32)),
                                                  pa.py_buffer(data)])


# ----------------------------------------------------------------------------- symbols

_KNOWN_FUNCS = (
    "__kmalloc_noprof", "__kmalloc_cache_noprof", "kmem_cache_alloc_noprof", "kfree",
    "kmem_cache_free", "kvmalloc_node_noprof", "__alloc_skb", "kmalloc_reserve", "do_syscall_64",
    "entry_SYSCALL_64_after_hwframe", "__x64_sys_socket", "__sys_socket", "__sock_create",
    "inet_create", "udp_init_sock", "alloc_pipe_info", "create_pipe_files", "do_pipe2",
    "load_elf_binary", "bprm_execve", "seq_open", "single_open", "vfs_read", "ksys_read",
    "tcp_sendmsg_locked", "sock_alloc_inode", "alloc_inode", "new_inode", "d_alloc",
    "__d_alloc", "getname_flags", "do_sys_openat2", "path_openat", "alloc_empty_file",
    "security_file_alloc", "kthread", "ret_from_fork", "worker_thread", "process_one_work",
)
_PREFIXES = ("tcp", "udp", "inet", "ext4", "xfs", "mm", "sched", "vfs", "sock", "skb", "netif",
             "blk", "bio", "pci", "usb", "drm", "kvm", "irq", "rcu", "page", "slab", "filemap",
             "shmem", "cgroup", "bpf", "perf", "trace", "security", "audit", "crypto", "dev",
             "ipv6", "nf", "netlink", "pipe", "proc", "kernfs", "futex", "hrtimer", "__do")
_VERBS = ("alloc", "free", "init", "get", "put", "lookup", "insert", "remove", "update", "send",
          "recv", "open", "release", "read", "write", "flush", "queue", "wake", "map", "unmap",
          "create", "destroy", "attach", "detach", "commit", "poll", "parse", "copy", "find",
          "handle", "submit", "complete", "setup", "reset", "start", "stop", "enable", "disable",
          "set", "clear")
_NOUNS = ("sock", "skb", "inode", "dentry", "page", "folio", "buffer", "request", "entry", "node",
          "table", "list", "queue", "work", "timer", "cache", "chunk", "ctx", "state", "event",
          "map", "range", "extent", "block", "frame", "slot", "desc", "ring", "hdr", "msg",
          "cred", "task", "file", "vma", "mapping", "region", "object", "record", "item", "info")


def kernel_symbols(n_funcs: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """A plausible kallsyms: n_funcs unique names at ascending 16-aligned addresses from _text.

    Function sizes are 16..2048 bytes; the real names of common allocator and syscall paths
    (`__kmalloc_noprof`, `do_syscall_64`...) are among them so stacks read like real ones.
    """
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 129, n_funcs, dtype=np.uint64) * np.uint64(16)
    addrs = np.zeros(n_funcs, np.uint64)
    if n_funcs:
        addrs[1:] = np.cumsum(sizes[:-1])
    addrs += np.uint64(KERNEL_TEXT_START)
    combos = len(_PREFIXES) * len(_VERBS) * len(_NOUNS)
    picks = rng.choice(combos, size=min(n_funcs, combos), replace=False)
    nv, nn = len(_VERBS), len(_NOUNS)
    names = [f"{_PREFIXES[p // (nv * nn)]}_{_VERBS[p // nn % nv]}_{_NOUNS[p % nn]}" for p in picks]
    names += [f"{names[i % combos]}.constprop.{i // combos}" for i in range(combos, n_funcs)]
    known = [k for k in _KNOWN_FUNCS if k not in set(names)][:n_funcs]
    for k, i in zip(known, rng.choice(n_funcs, size=len(known), replace=False), strict=True):
        names[i] = k
    return addrs, names


# ----------------------------------------------------------------------------- builder


def _opt_u32(v: Any, n: int, what: str) -> pa.Array:
    """uint32 column where negative values (or None) mean null."""
    if v is None:
        return pa.nulls(n, pa.uint32())
    a = _column(v, n, what).astype(np.int64)
    return pa.array(a.astype(np.uint32), mask=a < 0)


class RecordingBuilder:
    """Accumulates rows of every kind as columns, then writes one valid recording.

    Defaults mirror what the recorder produces: formats of this kernel, seq numbered per ring in
    time order, metadata with counts per event, start/stop from the rows.
    """

    def __init__(self, formats: Mapping[str, str] | None = None) -> None:
        self.format_texts: dict[str, str] = dict(formats) if formats is not None else bundled_formats()
        self.formats: dict[str, tracefs.EventFormat] = {
            k: tracefs.parse_format(t, k.split(":", 1)[0]) for k, t in self.format_texts.items()}
        self._samples: list[dict[str, Any]] = []
        self._lost: list[dict[str, Any]] = []
        self._side: list[dict[str, Any]] = []  # comm/mmap/fork/exit/ksym/usym rows, ready columns
        self._stacks: dict[tuple[int, ...], int] = {}

    # -- samples and stacks

    def add_samples(self, event: str, time: Any, cpu: Any, pid: Any, tid: Any,
                    fields: Mapping[str, Any], stack_id: Any = None, seq: Any = None,
                    ring: Any = None) -> None:
        """Add samples of one event; columns are arrays or scalars (broadcast).

        `fields` maps field names to integer columns or, for string fields, bytes / a list of
        bytes / a numpy `S` array. `common_pid` defaults to tid (the kernel writes current->pid).
        stack_id < 0 or None means "no callchain"; seq None means "number it at write time".
        """
        fmt = self.formats.get(event)
        if fmt is None:
            raise ValueError(f"unknown event {event!r} (known: {', '.join(self.formats)})")
        n = max((len(np.atleast_1d(np.asarray(x))) for x in (time, cpu, pid, tid) if x is not None),
                default=1)
        for v in fields.values():
            if not isinstance(v, (bytes, str)) and np.ndim(v) >= 1:
                n = max(n, len(v))
        fields = dict(fields)
        if fmt.has_field("common_pid"):
            fields.setdefault("common_pid", tid)
        for lo in range(0, n, _CHUNK):
            hi = min(n, lo + _CHUNK)

            def part(v: Any, what: str, lo: int = lo, hi: int = hi) -> Any:
                if v is None or isinstance(v, (bytes, str)) or np.ndim(v) == 0:
                    return v
                if len(v) != n:
                    raise ValueError(f"{event} {what}: {len(v)} values for {n} rows")
                return v[lo:hi]

            m = hi - lo
            self._samples.append({
                "event": event,
                "time": _column(part(time, "time"), m, "time").astype(np.uint64),
                "cpu": _column(part(cpu, "cpu"), m, "cpu").astype(np.uint32),
                "ring": None if ring is None else _column(part(ring, "ring"), m, "ring").astype(np.uint32),
                "seq": None if seq is None else _column(part(seq, "seq"), m, "seq").astype(np.uint64),
                "pid": _column(part(pid, "pid"), m, "pid").astype(np.int32),
                "tid": _column(part(tid, "tid"), m, "tid").astype(np.int32),
                "stack_id": _opt_u32(part(stack_id, "stack_id"), m, "stack_id"),
                "raw": encode_payloads(fmt, m, {k: part(v, k) for k, v in fields.items()}),
            })

    def add_stacks(self, chains: Sequence[Sequence[int]]) -> list[int]:
        """Register callchains (leaf first, with PERF_CONTEXT_* markers); identical ones share an id."""
        ids = []
        for c in chains:
            key = tuple(int(x) & 0xFFFFFFFFFFFFFFFF for x in c)
            ids.append(self._stacks.setdefault(key, len(self._stacks)))
        return ids

    @property
    def stacks(self) -> dict[int, tuple[int, ...]]:
        """Registered callchains by id."""
        return {sid: chain for chain, sid in self._stacks.items()}

    # -- side band

    def add_lost(self, time: Any, cpu: Any, lost: Any, seq: Any = None, event: str | None = None,
                 ring: Any = None) -> None:
        """PERF_RECORD_LOST rows of a ring (cpu, or ring in per-task mode)."""
        n = max(np.size(time), np.size(cpu), np.size(lost))
        self._lost.append({
            "event": event, "time": _column(time, n, "time").astype(np.uint64),
            "cpu": _column(cpu, n, "cpu").astype(np.uint32),
            "ring": None if ring is None else _column(ring, n, "ring").astype(np.uint32),
            "seq": None if seq is None else _column(seq, n, "seq").astype(np.uint64),
            "lost": _column(lost, n, "lost").astype(np.uint64)})

    def _add_side(self, kind: str, n: int, cols: dict[str, Any]) -> None:
        cols = {k: v for k, v in cols.items() if v is not None}
        cols["kind"] = const_column(kind, n)
        self._side.append(cols)

    @staticmethod
    def _n(*cols: Any) -> int:
        return max((len(c) for c in cols if c is not None and not isinstance(c, (str, bytes))
                    and np.ndim(c) >= 1), default=1)

    @staticmethod
    def _strs(v: Any, n: int) -> list:
        return [v] * n if v is None or isinstance(v, (str, bytes)) else list(v)

    def add_comm(self, time: Any, pid: Any, tid: Any, comm: str | Sequence[str],
                 exec: Any = False) -> None:
        """PERF_RECORD_COMM rows (initial comms: use the recording's start time)."""
        n = self._n(time, pid, tid, comm, exec)
        self._add_side("comm", n, {
            "time": _column(time, n, "time").astype(np.uint64),
            "pid": _column(pid, n, "pid").astype(np.int32), "tid": _column(tid, n, "tid").astype(np.int32),
            "comm": self._strs(comm, n), "exec": _column(exec, n, "exec").astype(bool)})

    def add_mmap(self, time: Any, pid: Any, tid: Any, addr: Any, len: Any, pgoff: Any,
                 filename: str | Sequence[str], build_id: bytes | Sequence[bytes] | None = None) -> None:
        """PERF_RECORD_MMAP2 rows."""
        n = self._n(time, pid, tid, addr, len, pgoff, filename)
        self._add_side("mmap", n, {
            "time": _column(time, n, "time").astype(np.uint64),
            "pid": _column(pid, n, "pid").astype(np.int32), "tid": _column(tid, n, "tid").astype(np.int32),
            "addr": _column(addr, n, "addr").astype(np.uint64),
            "len": _column(len, n, "len").astype(np.uint64),
            "pgoff": _column(pgoff, n, "pgoff").astype(np.uint64),
            "filename": self._strs(filename, n), "build_id": self._strs(build_id, n)})

    def _add_task(self, kind: str, time: Any, pid: Any, tid: Any, ppid: Any, ptid: Any) -> None:
        n = self._n(time, pid, tid, ppid, ptid)
        self._add_side(kind, n, {
            "time": _column(time, n, "time").astype(np.uint64),
            "pid": _column(pid, n, "pid").astype(np.int32), "tid": _column(tid, n, "tid").astype(np.int32),
            "ppid": _column(ppid, n, "ppid").astype(np.int32),
            "ptid": _column(ptid, n, "ptid").astype(np.int32)})

    def add_fork(self, time: Any, pid: Any, tid: Any, ppid: Any, ptid: Any) -> None:
        """PERF_RECORD_FORK rows."""
        self._add_task("fork", time, pid, tid, ppid, ptid)

    def add_exit(self, time: Any, pid: Any, tid: Any, ppid: Any, ptid: Any) -> None:
        """PERF_RECORD_EXIT rows."""
        self._add_task("exit", time, pid, tid, ppid, ptid)

    def add_ksyms(self, addrs: Any, names: Sequence[str], modules: Sequence[str | None] | None = None) -> None:
        """The kallsyms snapshot (module None = vmlinux)."""
        n = len(names)
        self._add_side("ksym", n, {"addr": _column(addrs, n, "addr").astype(np.uint64),
                                   "name": list(names), "module": self._strs(modules, n)})

    def add_usyms(self, addrs: Any, sizes: Any, names: Sequence[str], filename: str | Sequence[str],
                  build_id: bytes | Sequence[bytes] | None = None) -> None:
        """Symbol table rows of a user-space ELF file."""
        n = len(names)
        self._add_side("usym", n, {"addr": _column(addrs, n, "addr").astype(np.uint64),
                                   "len": _column(sizes, n, "len").astype(np.uint64),
                                   "name": list(names), "filename": self._strs(filename, n),
                                   "build_id": self._strs(build_id, n)})

    # -- output

    def _number_seq(self) -> None:
        """Default seq: per ring (ring, else cpu), in (time, insertion) order, samples and lost together."""
        rows = self._samples + self._lost
        todo = [r for r in rows if r["seq"] is None]
        if not todo:
            return
        time = np.concatenate([r["time"] for r in todo])
        key = np.concatenate([r["cpu"].astype(np.int64) if r["ring"] is None
                              else r["ring"].astype(np.int64) + (1 << 32) for r in todo])
        order = np.lexsort((np.arange(len(time)), time, key))
        ks = key[order]
        first = np.r_[True, ks[1:] != ks[:-1]]
        start_idx = np.maximum.accumulate(np.where(first, np.arange(len(ks)), 0))
        seq = np.empty(len(time), np.uint64)
        seq[order] = (np.arange(len(ks)) - start_idx).astype(np.uint64)
        pos = 0
        for r in todo:
            r["seq"] = seq[pos: pos + len(r["time"])]
            pos += len(r["time"])

    def _sample_tables(self, segment_ns: int | None) -> list[dict[str, Any]]:
        """Sample rows in insertion order, or (segment_ns) in the recorder's layout: per segment of
        segment_ns of sample time, ring after ring (ascending), each ring's rows in seq order -
        what `record` writes (its converter splits each ~1 s spool segment ring by ring)."""
        if segment_ns is None or not self._samples:
            return [{"kind": const_column("sample", len(r["time"])),
                     "event": const_column(r["event"], len(r["time"])),
                     "time": r["time"], "cpu": r["cpu"], "ring": r["ring"], "seq": r["seq"],
                     "pid": r["pid"], "tid": r["tid"], "stack_id": r["stack_id"], "raw": r["raw"]}
                    for r in self._samples]
        rs = self._samples
        names = list(dict.fromkeys(r["event"] for r in rs))
        cat = {c: np.concatenate([r[c] for r in rs]) for c in ("time", "cpu", "seq", "pid", "tid")}
        ring = None
        if any(r["ring"] is not None for r in rs):
            ring = np.concatenate([np.full(len(r["time"]), -1, np.int64) if r["ring"] is None
                                   else r["ring"].astype(np.int64) for r in rs])
        event = np.concatenate([np.full(len(r["time"]), names.index(r["event"]), np.int32) for r in rs])
        ring_key = cat["cpu"].astype(np.int64) if ring is None else np.where(ring < 0, cat["cpu"], ring)
        t = cat["time"]
        segment = (t - t.min()) // np.uint64(segment_ns)
        order = np.lexsort((cat["seq"], ring_key, segment))
        stack_id = pa.concat_arrays([r["stack_id"] for r in rs])
        raw = pa.concat_arrays([r["raw"] for r in rs])
        out = []
        for lo in range(0, len(order), _CHUNK):
            o = order[lo: lo + _CHUNK]
            m = len(o)
            po = pa.array(o)
            out.append({"kind": const_column("sample", m),
                        "event": pa.DictionaryArray.from_arrays(pa.array(event[o]), pa.array(names)),
                        **{c: v[o] for c, v in cat.items()},
                        "ring": None if ring is None else pa.array(ring[o].astype(np.uint32), mask=ring[o] < 0),
                        "stack_id": stack_id.take(po), "raw": raw.take(po)})
        return out

    def _tables(self, segment_ns: int | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self._sample_tables(segment_ns)
        for r in self._lost:
            n = len(r["time"])
            out.append({"kind": const_column("lost", n), "event": const_column(r["event"], n),
                        "time": r["time"], "cpu": r["cpu"], "ring": r["ring"], "seq": r["seq"],
                        "lost": r["lost"]})
        if self._stacks:
            chains = list(self._stacks)
            lens = np.array([len(c) for c in chains], np.int64)
            offsets = np.r_[0, np.cumsum(lens)].astype(np.int32)
            words = np.array([w for c in chains for w in c], np.uint64)
            out.append({"kind": const_column("stack", len(chains)),
                        "stack_id": np.array(list(self._stacks.values()), np.uint32),
                        "callchain": pa.ListArray.from_arrays(pa.array(offsets), pa.array(words))})
        out.extend(self._side)
        return out

    def write(self, path: str | os.PathLike, alloc: list[str], free: list[str],
              start_ns: int | None = None, stop_ns: int | None = None,
              anchor: Mapping[str, int] | None = None, options: Mapping[str, Any] | None = None,
              host: Mapping[str, Any] | None = None,
              counts: Mapping[str, Mapping[str, int]] | None = None,
              segment_ns: int | None = None) -> Path:
        """Write the recording; metadata is derived from the rows unless given.

        Sample rows go out in insertion order, or with `segment_ns` in the recorder's layout
        (per segment of that much sample time, ring by ring, each ring in seq order)."""
        self._number_seq()
        times = [r["time"] for r in self._samples + self._lost]
        times += [np.asarray(s["time"]) for s in self._side if "time" in s]
        nonempty = [t for t in times if len(t)]
        lo = int(min(t.min() for t in nonempty)) if nonempty else 0
        hi = int(max(t.max() for t in nonempty)) if nonempty else 0
        used = list(dict.fromkeys([r["event"] for r in self._samples]
                                  + [r["event"] for r in self._lost if r["event"]]))
        ncpus = max((int(r["cpu"].max()) + 1 for r in self._samples + self._lost if len(r["cpu"])),
                    default=1)
        if counts is None:
            counts = {e: {"samples": sum(len(r["time"]) for r in self._samples if r["event"] == e),
                          "lost": int(sum(int(r["lost"].sum()) for r in self._lost if r["event"] == e))}
                      for e in used}
        meta = self._metadata(alloc, free, used, ncpus, lo if start_ns is None else int(start_ns),
                              hi if stop_ns is None else int(stop_ns), anchor, options, host, counts)
        return write_recording(path, meta, self._tables(segment_ns))

    def _metadata(self, alloc: list[str], free: list[str], used: list[str], ncpus: int, start: int,
                  stop: int, anchor: Mapping[str, int] | None, options: Mapping[str, Any] | None,
                  host: Mapping[str, Any] | None, counts: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
        """The recording metadata, as `record` writes it, for these events and counts."""
        meta = new_metadata(PRODUCER)
        meta["host"] = {"hostname": "synthetic", "kernel_release": "6.18.0-synthetic",
                        "machine": "x86_64", "page_size": 4096, "ncpus": ncpus, **(host or {})}
        meta["clock"] = {"perf_clock": "monotonic", "start_ns": start, "stop_ns": stop,
                         "anchor": dict(anchor) if anchor is not None else
                         {"perf_ns": start, "realtime_ns": DEFAULT_REALTIME_NS}}
        meta["events"] = {e: {"id": self.formats[e].id, "format": self.format_texts[e]} for e in used}
        meta["alloc"] = list(alloc)
        meta["free"] = list(free)
        meta["options"] = {"cpus": None, "pids": None, "tids": None, "mmap_pages": 128,
                           "call_graph": bool(self._stacks), "kernel_filters": {}, "command": None,
                           **(options or {})}
        meta["counts"] = {k: dict(v) for k, v in counts.items()}
        return meta


class RecordingStream(RecordingBuilder):
    """A RecordingBuilder that writes sample rows segment by segment, for recordings too large to
    hold in memory (benchmarks): memory is bounded by one segment plus the side band.

    Add one segment's samples (and LOST records) with `add_samples`/`add_lost`, then call
    `end_segment()`: its sample rows go out like `record` writes a ~1 s spool segment - ring by
    ring (ascending), each ring in seq order - and seq numbers left unset continue per ring from
    the previous segment, in (time, insertion) order with that segment's LOST records. Side-band
    rows (stacks, LOST, comm, mmap, ksym, usym...) are kept and written at `close()` in row groups
    of their own after the samples, with the metadata `RecordingBuilder.write` would derive
    (counts, start/stop, ncpus), plus any extra top-level `metadata` keys (e.g. `probes`).
    """

    def __init__(self, path: str | os.PathLike, alloc: list[str], free: list[str],
                 formats: Mapping[str, str] | None = None, *, start_ns: int | None = None,
                 stop_ns: int | None = None, anchor: Mapping[str, int] | None = None,
                 options: Mapping[str, Any] | None = None, host: Mapping[str, Any] | None = None,
                 metadata: Mapping[str, Any] | None = None, row_group_rows: int = 1 << 20) -> None:
        super().__init__(formats)
        self.path = Path(path)
        self._write_args = {"alloc": list(alloc), "free": list(free), "start_ns": start_ns,
                            "stop_ns": stop_ns, "anchor": anchor, "options": options, "host": host}
        self._extra = dict(metadata or {})
        self._writer = RecordingWriter(self.path, new_metadata(PRODUCER), row_group_rows=row_group_rows)
        self._next_seq: dict[int, int] = {}  # ring key (cpu, or ring + 2**32) -> next seq
        self._lost_numbered = 0  # self._lost[:n] belong to segments already written
        self._sample_counts: dict[str, int] = {}  # insertion order = first appearance
        self._lo: int | None = None
        self._hi: int | None = None
        self._ncpus = 0
        self.segments = 0
        self.samples_written = 0

    @staticmethod
    def _ring_key(r: dict[str, Any]) -> np.ndarray:
        cpu = r["cpu"].astype(np.int64)
        return cpu if r["ring"] is None else r["ring"].astype(np.int64) + (1 << 32)

    def _continue_seq(self, rows: list[dict[str, Any]], unset: list[bool]) -> None:
        """Seq numbers of this segment's rows continue each ring's numbering."""
        for r, was_unset in zip(rows, unset, strict=True):
            if not len(r["time"]):
                continue
            key = self._ring_key(r)
            uk, inv = np.unique(key, return_inverse=True)
            if was_unset:
                base = np.array([self._next_seq.get(int(k), 0) for k in uk], np.uint64)
                r["seq"] = r["seq"] + base[inv]
        for r in rows:  # the next segment starts after the highest seq of each ring
            if not len(r["time"]):
                continue
            key = self._ring_key(r)
            for k in np.unique(key).tolist():
                top = int(r["seq"][key == k].max()) + 1
                self._next_seq[k] = max(self._next_seq.get(k, 0), top)

    def end_segment(self) -> int:
        """Write the samples added since the last call as one segment; returns their number."""
        rows = self._samples + self._lost[self._lost_numbered:]
        unset = [r["seq"] is None for r in rows]
        self._number_seq()  # from 0 per ring, for rows without seq (earlier segments have theirs)
        self._continue_seq(rows, unset)
        self._lost_numbered = len(self._lost)
        n = sum(len(r["time"]) for r in self._samples)
        if n:
            for r in self._samples:
                if len(r["time"]):
                    self._sample_counts[r["event"]] = self._sample_counts.get(r["event"], 0) + len(r["time"])
                    lo, hi = int(r["time"].min()), int(r["time"].max())
                    self._lo = lo if self._lo is None else min(self._lo, lo)
                    self._hi = hi if self._hi is None else max(self._hi, hi)
                    self._ncpus = max(self._ncpus, int(r["cpu"].max()) + 1)
            # one segment: every row in segment 0, so the order is ring, then seq
            for t in self._sample_tables(segment_ns=int(np.iinfo(np.uint64).max)):
                self._writer.write(t)
            self.segments += 1
            self.samples_written += n
        self._samples = []
        return n

    def close(self) -> Path:
        """Write what is pending, the side band and the metadata; returns the file."""
        self.end_segment()
        a = self._write_args
        times = [(self._lo, self._hi)] if self._lo is not None else []
        for r in self._lost:
            if len(r["time"]):
                times.append((int(r["time"].min()), int(r["time"].max())))
        for side in self._side:
            if "time" in side and len(side["time"]):
                t = np.asarray(side["time"])
                times.append((int(t.min()), int(t.max())))
        lo = min((x for x, _ in times), default=0)
        hi = max((y for _, y in times), default=0)
        used = list(dict.fromkeys(list(self._sample_counts) + [r["event"] for r in self._lost if r["event"]]))
        ncpus = max([self._ncpus] + [int(r["cpu"].max()) + 1 for r in self._lost if len(r["cpu"])]) or 1
        counts = {e: {"samples": self._sample_counts.get(e, 0),
                      "lost": int(sum(int(r["lost"].sum()) for r in self._lost if r["event"] == e))}
                  for e in used}
        meta = self._metadata(a["alloc"], a["free"], used, ncpus,
                              lo if a["start_ns"] is None else int(a["start_ns"]),
                              hi if a["stop_ns"] is None else int(a["stop_ns"]),
                              a["anchor"], a["options"], a["host"], counts)
        meta.update(self._extra)
        self._writer.metadata = meta
        for t in self._tables():  # no samples left: lost, stacks, then the other side-band rows
            self._writer.write(t)
        return self._writer.close()
