"""The call chains and processes of an analysis, as the HTML report lists them.

A chain that leaked in several reports (early reports after lost events, then the final one) is
one row with its bytes and objects summed. Rows are recorded call chains (stack ids), as the text
report's groups are; `diff` and `fleet` further merge stack ids whose frames symbolise alike. Its headline is the first frame
that is not the allocator itself (kmalloc, kmem_cache_alloc, malloc, operator new...): the
function a reader recognises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..analysis import LEAKED_BYTES, Analysis, Group, sort_groups
from ..symbols.callchain import Frame, StackResolver
from ..trend import Trend

ALLOCATOR = re.compile(  # kernel allocators with any suffix (_noprof, _node, _track_caller...)
    r"^_*(?:kmalloc|kmem_cache_alloc|kmem_cache_zalloc|kzalloc|kcalloc|krealloc|kvmalloc|kvzalloc|"
    r"kvrealloc|kmemdup|kstrdup|kstrndup|slab_alloc|slab_post_alloc|alloc_slab|allocate_slab|"
    r"new_slab|alloc_pages|folio_alloc|sk_prot_alloc_hook)\w*(?:\.\w+)*$"
    # user-space allocators, exactly (glibc's internal aliases included)
    r"|^(?:__GI_)?_*(?:libc_)?(?:malloc|calloc|realloc|reallocarray|free|posix_memalign|"
    r"aligned_alloc|memalign|valloc|pvalloc|strdup|strndup|_int_malloc|tcache_\w+|"
    r"_Znwm|_Znam|_ZnwmRKSt9nothrow_t|_ZnamRKSt9nothrow_t|operator new(?:\[\])?(?:\(.*\))?)$")


@dataclass
class Chain:
    group: Group  # bytes/objects summed over the reports it leaked in
    time_ns: int  # of the last report it leaked in (its frames are named as of then)
    frames: list[Frame]

    @property
    def trend(self) -> Trend | None:
        return self.group.trend

    @property
    def cls(self) -> str:
        return self.group.trend.cls if self.group.trend is not None else "none"

    @property
    def lines(self) -> list[str]:
        return [f.line().strip() for f in self.frames]

    @property
    def headline(self) -> str:
        return headline(self.frames)


def frame_name(f: Frame) -> str:
    if f.symbol:
        return f.symbol
    return f"[{f.dso.rsplit('/', 1)[-1]}]" if f.dso else "Unknown"


def headline(frames: list[Frame]) -> str:
    """The first frame that is not the allocator (the leaf when all are)."""
    return pick_headline([frame_name(f) for f in frames])


def pick_headline(names: list[str]) -> str:
    """Of frame names leaf first: the first named one that is not the allocator."""
    if not names:
        return "(no call chain recorded)"
    for n in names:
        if n != "Unknown" and not n.startswith("[") and not ALLOCATOR.match(n):
            return n
    return names[0]


def chains(a: Analysis, stacks: StackResolver, sort: str = "bytes") -> list[Chain]:
    """Every leaked chain, merged over the reports, in `sort` order (analysis.SORTS)."""
    merged: dict[int, Group] = {}
    when: dict[int, int] = {}
    for r in a.reports:
        for g in r.groups if a.mode == LEAKED_BYTES else _event_groups(r):
            m = merged.get(g.stack_id)
            if m is None:
                merged[g.stack_id] = Group(g.stack_id, g.bytes, g.objects, g.pid, list(g.comms),
                                           g.user_pid, g.trend)
            else:
                m.bytes += g.bytes
                m.objects += g.objects
                m.pid, m.user_pid = g.pid, g.user_pid
            when[g.stack_id] = r.time_ns
    out = []
    for g in sort_groups(list(merged.values()), a.stacks, sort):
        t = when[g.stack_id]
        frames = stacks.frames(g.stack_id, g.user_pid, t) if g.stack_id >= 0 else []
        out.append(Chain(g, t, frames))
    return out


def _event_groups(r) -> list[Group]:
    """Event-list mode (no sizes): one group per stack id of the leaked entries, objects only."""
    ents = r.entries[r.entries["selected"]]
    if not len(ents):
        return []
    sid = ents["stack_id"].to_numpy().astype(np.int64)
    pid = ents["pid"].to_numpy()
    df = pd.DataFrame({"sid": sid, "pid": pid})
    agg = df.groupby("sid", sort=False).agg(n=("pid", "size"), pid=("pid", "last"))
    return [Group(int(s), 0, int(n), 0, [], int(p)) for s, n, p in
            zip(agg.index, agg["n"], agg["pid"], strict=True)]


@dataclass
class Process:
    pid: int
    comm: str
    bytes: int
    objects: int
    chains: int


def processes(a: Analysis) -> list[Process]:
    """Leaked bytes and objects per process (the one that allocated), over every report, most
    bytes first (objects when sizes are unknown)."""
    pos, times = [], []
    for r in a.reports:
        p = r.positions[r.selected]
        pos.append(p)
        times.append(np.full(len(p), r.time_ns, np.int64))
    if not pos or not sum(len(p) for p in pos):
        return []
    p = np.concatenate(pos)
    st = a.stream
    df = pd.DataFrame({"pid": st.column("pid", p).astype(np.int64),
                       "size": (st.column("size", p).astype(np.int64) if a.mode == LEAKED_BYTES
                                else np.zeros(len(p), np.int64)),
                       "sid": st.column("stack_id", p).astype(np.int64),
                       "t": np.concatenate(times)})
    agg = df.groupby("pid", sort=False).agg(bytes=("size", "sum"), objects=("size", "size"),
                                            chains=("sid", "nunique"), t=("t", "max"))
    agg = agg.sort_values(["bytes", "objects"], ascending=False, kind="stable")
    pids = agg.index.to_numpy(np.int64)
    comms = a.comms.comm(pids, agg["t"].to_numpy(np.int64)) if len(pids) else []
    return [Process(int(pid), str(c), int(b), int(o), int(n)) for pid, c, b, o, n in
            zip(pids, comms, agg["bytes"], agg["objects"], agg["chains"], strict=True)]
