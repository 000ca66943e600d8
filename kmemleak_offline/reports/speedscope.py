"""`--format speedscope`: the leaks in speedscope's file format (speedscope.app, `speedscope FILE`).

Sampled profiles, unit `bytes`, each sample a call chain (root first, as the format wants) weighted
by the bytes it leaked. Profile 0 holds every process's leaks (it opens first); then one profile
per process (pid), heaviest first, named after its comm. Frames are shared, one per (function,
binary): `name` the symbol ("Unknown" when it did not resolve, as in folded stacks), `file` the
binary (`[kernel.kallsyms]` for the kernel). Event-list recordings (no sizes) weigh each sample by
its objects, unit `none`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, TextIO

from .. import __version__
from ..analysis import LEAKED_BYTES, Analysis
from ..symbols.callchain import StackResolver
from .profile_samples import NO_CHAIN, ProfileSample, profile_samples

SCHEMA = "https://www.speedscope.app/file-format-schema.json"


class _Frames:
    def __init__(self) -> None:
        self.index: dict[tuple[str, str | None], int] = {}
        self.frames: list[dict[str, str]] = []

    def get(self, name: str, file: str | None) -> int:
        i = self.index.get((name, file))
        if i is None:
            i = self.index[(name, file)] = len(self.frames)
            self.frames.append({"name": name, "file": file} if file else {"name": name})
        return i

    def stack(self, ps: ProfileSample) -> tuple[int, ...]:
        if not ps.frames:
            return (self.get(NO_CHAIN, None),)
        return tuple(self.get(f.symbol or "Unknown", f.dso) for f in reversed(ps.frames))


def _profile(name: str, unit: str, weighted: dict[tuple[int, ...], int],
             frames: list[dict[str, str]]) -> dict[str, Any]:
    """One sampled profile; stacks sorted by their frame names so that speedscope's time-order
    view puts shared prefixes side by side (a leak profile has no time order of its own)."""
    order = sorted(weighted, key=lambda st: [frames[i]["name"] for i in st])
    total = sum(weighted.values())
    return {"type": "sampled", "name": name, "unit": unit, "startValue": 0, "endValue": total,
            "samples": [list(st) for st in order], "weights": [weighted[st] for st in order]}


def build(a: Analysis, stacks: StackResolver, recording: str) -> dict[str, Any]:
    sizes = a.mode == LEAKED_BYTES
    unit = "bytes" if sizes else "none"
    fr = _Frames()
    everything: dict[tuple[int, ...], int] = defaultdict(int)
    per_pid: dict[int, dict[tuple[int, ...], int]] = defaultdict(lambda: defaultdict(int))
    comm_weight: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for ps in profile_samples(a, stacks):
        st = fr.stack(ps)
        w = ps.bytes if sizes else ps.objects
        everything[st] += w
        per_pid[ps.pid][st] += w
        comm_weight[ps.pid][ps.comm] += w
    host = a.recording.meta.host.hostname
    profiles = [_profile(f"all processes ({host})", unit, everything, fr.frames)]
    for pid in sorted(per_pid, key=lambda p: (-sum(per_pid[p].values()), p)):
        cw = comm_weight[pid]
        comms = sorted(cw, key=lambda c: (-cw[c], c))
        profiles.append(_profile(f"{', '.join(comms)} (pid {pid})", unit, per_pid[pid], fr.frames))
    return {"$schema": SCHEMA, "name": f"kmemleak-offline: {recording} ({a.mode})",
            "exporter": f"kmemleak-offline@{__version__}", "activeProfileIndex": 0,
            "shared": {"frames": fr.frames}, "profiles": profiles}


def render(a: Analysis, stacks: StackResolver, out: TextIO, opts) -> None:
    """The reporter entry point (reports.FORMATS): compact JSON, one line."""
    json.dump(build(a, stacks, opts.recording), out, separators=(",", ":"))
    out.write("\n")
