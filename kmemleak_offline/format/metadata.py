"""A recording's metadata, parsed and checked once when it is opened.

The JSON object under the Parquet key `kmemleak_offline` (docs/format.md) comes from another
machine, maybe another version, maybe a damaged file: every value the analysis reads is checked
here for type and range (finite, within what the kernel can produce), so a bad value is one line
naming its key, never an internal error later. Readers ignore keys they do not know.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

U64 = (1 << 64) - 1


class MetadataError(ValueError):
    """A metadata value of the wrong type or range; the message names the key."""


def _int(v: Any, key: str, lo: int = 0, hi: int = U64, default: int | None = None) -> int:
    if v is None and default is not None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and math.isfinite(v) and v == int(v):
            v = int(v)
        else:
            raise MetadataError(f"{key} is {_show(v)}, not an integer")
    if not lo <= v <= hi:
        raise MetadataError(f"{key} is {v}, outside {lo}..{hi}")
    return v


def _str(v: Any, key: str, default: str | None = "") -> str:
    if v is None and default is not None:
        return default
    if not isinstance(v, str):
        raise MetadataError(f"{key} is {_show(v)}, not a string")
    return v


def _obj(v: Any, key: str) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise MetadataError(f"{key} is {_show(v)}, not an object")
    return v


def _strs(v: Any, key: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise MetadataError(f"{key} is {_show(v)}, not a list of strings")
    return tuple(v)


def _ints(v: Any, key: str) -> tuple[int, ...] | None:
    if v is None:
        return None
    if not isinstance(v, list):
        raise MetadataError(f"{key} is {_show(v)}, not a list of integers")
    return tuple(_int(x, f"{key}[]", -(1 << 31), (1 << 31) - 1) for x in v)


def _bool(v: Any, key: str, default: bool = False) -> bool:
    if v is None:
        return default
    if not isinstance(v, bool):
        raise MetadataError(f"{key} is {_show(v)}, not true or false")
    return v


def _list(v: Any, key: str) -> list:
    if v is None:
        return []
    if not isinstance(v, list):
        raise MetadataError(f"{key} is {_show(v)}, not a list")
    return v


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class Probe:
    """One uprobe of a `record --malloc` recording (docs/format.md, `probes`)."""

    event: str
    func: str
    kind: str  # "entry" | "return"
    definition: str


def _probe(v: Any, key: str) -> Probe:
    v = _obj(v, key)
    for k in ("group", "name", "symbol", "path"):
        _str(v.get(k), f"{key}.{k}")
    _int(v.get("offset"), f"{key}.offset", default=0)
    _strs(v.get("fetchargs"), f"{key}.fetchargs")
    _strs(v.get("aliases"), f"{key}.aliases")
    return Probe(event=_str(v.get("event"), f"{key}.event"), func=_str(v.get("func"), f"{key}.func"),
                 kind=_str(v.get("kind"), f"{key}.kind"),
                 definition=_str(v.get("definition"), f"{key}.definition"))


@dataclass(frozen=True)
class Host:
    hostname: str
    kernel_release: str
    machine: str
    page_size: int
    ncpus: int


@dataclass(frozen=True)
class Clock:
    perf_clock: str
    start_ns: int  # 0: unknown
    stop_ns: int
    anchor_perf_ns: int  # a perf timestamp and the CLOCK_REALTIME it was taken at
    anchor_realtime_ns: int


@dataclass(frozen=True)
class EventMeta:
    id: int
    format: str  # the tracefs format text


@dataclass(frozen=True)
class Counts:
    samples: int
    lost: int
    kernel_count: int | None = None  # record: the event's counter (hits that passed the filter)
    unread_counters: int = 0  # record: counters that could not be read (kernel_count is low)


@dataclass(frozen=True)
class Options:
    cpus: tuple[int, ...] | None
    pids: tuple[int, ...] | None
    tids: tuple[int, ...] | None
    command: tuple[str, ...] | None
    call_graph: bool
    kernel_filters: dict[str, str]

    @property
    def per_task(self) -> bool:
        """Recorded per process/thread (-p, -t, -- CMD) rather than per CPU."""
        return bool(self.pids or self.tids or self.command)


@dataclass(frozen=True)
class Metadata:
    format_version: int
    producer: str
    host: Host
    clock: Clock
    events: dict[str, EventMeta]
    alloc: tuple[str, ...]
    free: tuple[str, ...]
    options: Options
    counts: dict[str, Counts]
    stopped: str | None
    raw: dict[str, Any] = field(repr=False)  # the JSON object, for keys this version ignores
    probes: tuple[Probe, ...] = ()
    lost_split: str | None = None

    @property
    def lost_counted(self) -> int:
        """Events the kernel counted as lost (PERF_FORMAT_LOST), all events."""
        return sum(c.lost for c in self.counts.values())

    @classmethod
    def parse(cls, raw: Any) -> Metadata:
        """Check and type every value the analysis reads; MetadataError names the first bad one."""
        if not isinstance(raw, dict):
            raise MetadataError(f"is {_show(raw)}, not a JSON object")
        version = _int(raw.get("format_version"), "format_version", 0, 1 << 31)
        h = _obj(raw.get("host"), "host")
        host = Host(hostname=_str(h.get("hostname"), "host.hostname"),
                    kernel_release=_str(h.get("kernel_release"), "host.kernel_release"),
                    machine=_str(h.get("machine"), "host.machine"),
                    page_size=_int(h.get("page_size"), "host.page_size", 0, 1 << 40, 0),
                    ncpus=_int(h.get("ncpus"), "host.ncpus", 0, 1 << 20, 0))
        c = _obj(raw.get("clock"), "clock")
        a = _obj(c.get("anchor"), "clock.anchor")
        clock = Clock(perf_clock=_str(c.get("perf_clock"), "clock.perf_clock", "monotonic"),
                      start_ns=_int(c.get("start_ns"), "clock.start_ns", default=0),
                      stop_ns=_int(c.get("stop_ns"), "clock.stop_ns", default=0),
                      anchor_perf_ns=_int(a.get("perf_ns"), "clock.anchor.perf_ns", default=0),
                      anchor_realtime_ns=_int(a.get("realtime_ns"), "clock.anchor.realtime_ns",
                                              -(1 << 63), (1 << 63) - 1, 0))
        bid = h.get("kernel_build_id")
        if bid is not None and not (isinstance(bid, str) and len(bid) <= 128
                                    and all(ch in "0123456789abcdefABCDEF" for ch in bid)):
            raise MetadataError(f"host.kernel_build_id is {_show(bid)}, not a hex string")
        _str(h.get("perf_version"), "host.perf_version")
        events = {}
        for name, ev in _obj(raw.get("events"), "events").items():
            if not isinstance(ev, dict):  # null too: readers look its keys up
                raise MetadataError(f"events.{name} is {_show(ev)}, not an object")
            fmt = ev.get("format", "")
            if not isinstance(fmt, str):
                raise MetadataError(f"events.{name}.format is {_show(fmt)}, not a string")
            events[name] = EventMeta(id=_int(ev.get("id"), f"events.{name}.id", default=0),
                                     format=fmt)
        o = _obj(raw.get("options"), "options")
        kf = _obj(o.get("kernel_filters"), "options.kernel_filters")
        for k, v in _obj(o.get("userspace_filters"), "options.userspace_filters").items():
            _str(v, f"options.userspace_filters.{k}")
        _int(o.get("mmap_pages"), "options.mmap_pages", 0, 1 << 40, 0)
        mal = _obj(o.get("malloc"), "options.malloc")
        if mal.get("lib") is not None:
            _str(mal.get("lib"), "options.malloc.lib")
        _str(mal.get("prefix"), "options.malloc.prefix")
        command = o.get("command")
        options = Options(cpus=_ints(o.get("cpus"), "options.cpus"),
                          pids=_ints(o.get("pids"), "options.pids"),
                          tids=_ints(o.get("tids"), "options.tids"),
                          command=_strs(command, "options.command") if command is not None else None,
                          call_graph=_bool(o.get("call_graph"), "options.call_graph"),
                          kernel_filters={k: _str(v, f"options.kernel_filters.{k}")
                                          for k, v in kf.items()})
        counts = {}
        for name, cnt in _obj(raw.get("counts"), "counts").items():
            cnt = _obj(cnt, f"counts.{name}")
            kc = cnt.get("kernel_count")
            counts[name] = Counts(
                samples=_int(cnt.get("samples"), f"counts.{name}.samples", default=0),
                lost=_int(cnt.get("lost"), f"counts.{name}.lost", default=0),
                kernel_count=_int(kc, f"counts.{name}.kernel_count") if kc is not None else None,
                unread_counters=_int(cnt.get("unread_counters"), f"counts.{name}.unread_counters",
                                     0, 1 << 31, 0))
        probes = tuple(_probe(p, f"probes[{i}]") for i, p in enumerate(_list(raw.get("probes"), "probes")))
        for i, r in enumerate(_list(raw.get("lost_by_ring"), "lost_by_ring")):
            r = _obj(r, f"lost_by_ring[{i}]")
            for k in ("ring", "cpu", "lost_records", "lost"):
                _int(r.get(k), f"lost_by_ring[{i}].{k}", default=0)
        _strs(raw.get("notes"), "notes")
        stopped = raw.get("stopped")
        lost_split = raw.get("lost_split")
        return cls(format_version=version, producer=_str(raw.get("producer"), "producer", "unknown"),
                   host=host, clock=clock, events=events, alloc=_strs(raw.get("alloc"), "alloc"),
                   free=_strs(raw.get("free"), "free"), options=options, counts=counts,
                   stopped=_str(stopped, "stopped") if stopped is not None else None, raw=raw,
                   probes=probes,
                   lost_split=_str(lost_split, "lost_split") if lost_split is not None else None)
