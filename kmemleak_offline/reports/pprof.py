"""`--format pprof`: the leaks as a gzipped profile.proto (go tool pprof, Grafana Pyroscope,
speedscope).

Sample types `objects`/`count` and `space`/`bytes` (space is the default), one sample per
(call chain, process, comm) with labels comm, pid and host, all three strings (a pid is a name,
not a quantity: `-tagfocus pid=1234` works, and Pyroscope turns string labels into series). Frames are already named here, so
every mapping says has_functions and pprof does not try to symbolise again: a resolved frame is a
location with one line naming its function, an unresolved one an address-only location (pprof
shows the address). Locations are keyed by (address, symbol, dso): the same user address in two
processes may be two functions. One mapping per binary (`[kernel.kallsyms]` for the kernel),
spanning the addresses seen in it. Event-list recordings (no sizes) have the objects type only.
"""

from __future__ import annotations

import gzip
import re
from typing import BinaryIO

from .. import __version__
from ..analysis import LEAKED_BYTES, Analysis
from ..symbols.callchain import Frame, StackResolver
from .profile_proto import Profile
from .profile_samples import NO_CHAIN, profile_samples

NO_CHAIN_FRAME = Frame(0, NO_CHAIN, 0, None, "none")  # allocations recorded without a call chain

_SHARED_LIB = re.compile(r"\.so(\.[0-9.]+)?$|/ld-linux")
BINARY = True  # reports.open_output: written to a file (or a pipe), never to a terminal


class _Builder:
    """Interns strings, functions, mappings and locations into one Profile message."""

    def __init__(self) -> None:
        self.p = Profile()
        self.strings: dict[str, int] = {}
        self.functions: dict[str, int] = {}
        self.mappings: dict[str, int] = {}  # dso -> mapping id
        self.spans: dict[str, list[int]] = {}  # dso -> [lowest, highest] address
        self.locations: dict[tuple[int, str | None, str | None], int] = {}
        self.s("")  # string_table[0] is always ""

    def s(self, text: str) -> int:
        i = self.strings.get(text)
        if i is None:
            i = self.strings[text] = len(self.strings)
            self.p.string_table.append(text)
        return i

    def function(self, name: str) -> int:
        i = self.functions.get(name)
        if i is None:
            i = self.functions[name] = len(self.functions) + 1
            self.p.function.add(id=i, name=self.s(name), system_name=self.s(name))
        return i

    def mapping(self, dso: str, addr: int) -> int:
        i = self.mappings.get(dso)
        if i is None:
            i = self.mappings[dso] = len(self.mappings) + 1
            self.spans[dso] = [addr, addr]
        span = self.spans[dso]
        span[0], span[1] = min(span[0], addr), max(span[1], addr)
        return i

    def location(self, f: Frame) -> int:
        key = (f.addr, f.symbol, f.dso)
        i = self.locations.get(key)
        if i is None:
            i = self.locations[key] = len(self.locations) + 1
            loc = self.p.location.add(id=i, address=f.addr,
                                      mapping_id=self.mapping(f.dso, f.addr) if f.dso else 0)
            if f.symbol is not None:
                loc.line.add(function_id=self.function(f.symbol))
        return i

    def finish_mappings(self) -> None:
        """Mappings in pprof's order: the first is taken for the main binary (`File:`), so the
        program comes first, then shared libraries, then `[kernel.kallsyms]` and the like; each
        group in order of first use (samples come heaviest first)."""
        def rank(dso: str) -> int:
            return 2 if dso.startswith("[") else 1 if _SHARED_LIB.search(dso) else 0

        for dso, i in sorted(self.mappings.items(), key=lambda kv: (rank(kv[0]), kv[1])):
            lo, hi = self.spans[dso]
            self.p.mapping.add(id=i, memory_start=lo, memory_limit=min(hi + 1, (1 << 64) - 1), filename=self.s(dso),
                               has_functions=True)


def _names(names: list[str], most: int = 4) -> str:
    return " ".join(names[:most]) + (f" (and {len(names) - most} more)" if len(names) > most else "")


def build(a: Analysis, stacks: StackResolver, recording: str) -> Profile:
    """The Profile message of one analysis."""
    b = _Builder()
    p = b.p
    sizes = a.mode == LEAKED_BYTES
    if sizes:
        # default_sample_type is a string index ("space"); speedscope's importer reads it as an
        # index into sample_type instead. "space" is string 1 and sample type 1: both agree.
        p.default_sample_type = b.s("space")
    p.sample_type.add(type=b.s("objects"), unit=b.s("count"))
    if sizes:
        p.sample_type.add(type=b.s("space"), unit=b.s("bytes"))
    p.period_type.type, p.period_type.unit = b.s("objects"), b.s("count")
    p.period = 1  # every allocation was recorded: none stands for others
    meta = a.recording.meta
    host = meta.host.hostname
    clock = meta.clock
    if clock.anchor_realtime_ns and clock.start_ns:
        p.time_nanos = clock.anchor_realtime_ns + clock.start_ns - clock.anchor_perf_ns
    if clock.stop_ns > clock.start_ns:
        p.duration_nanos = clock.stop_ns - clock.start_ns
    for c in (f"kmemleak-offline {__version__} analyze {recording}",
              f"host {host}, kernel {meta.host.kernel_release} {meta.host.machine}",
              f"alloc {_names([r.spec.full_name for r in a.roles if r.is_alloc])}",
              f"mode {a.mode}: leaked memory still allocated at the end of each report"):
        p.comment.append(b.s(c))
    k_comm, k_pid, k_host = b.s("comm"), b.s("pid"), b.s("host")
    v_host = b.s(host)
    for ps in profile_samples(a, stacks):
        s = p.sample.add()
        s.location_id.extend([b.location(f) for f in ps.frames] if ps.frames else [b.location(NO_CHAIN_FRAME)])
        s.value.extend([ps.objects, ps.bytes] if sizes else [ps.objects])
        s.label.add(key=k_comm, str=b.s(ps.comm))
        s.label.add(key=k_pid, str=b.s(str(ps.pid)))
        s.label.add(key=k_host, str=v_host)
    b.finish_mappings()
    return p


def render(a: Analysis, stacks: StackResolver, out: BinaryIO, opts) -> None:
    """The reporter entry point (reports.FORMATS): gzip of the serialised Profile (mtime 0, so
    the same analysis gives the same bytes)."""
    out.write(gzip.compress(build(a, stacks, opts.recording).SerializeToString(), mtime=0))
