"""A literal, per-event transcription of perf-prof's kmemleak replay (docs/behaviour.md), for tests only.

Deliberately naive: a dict for the tree, a list for the lost queue, one Python step per event,
so it can serve as an independent oracle for the vectorised replay.
"""

from __future__ import annotations

from dataclasses import dataclass

INF = 0xFFFFFFFFFFFFFFFF


@dataclass
class Sample:
    time: int
    ring: int
    seq: int
    is_alloc: bool
    key: int
    ident: int  # caller's id for the sample


@dataclass
class LostRec:
    ring: int
    seq: int
    count: int


def reference_replay(samples: list[Sample], losts: list[LostRec], start_ns: int, stop_ns: int,
                     than_ns: int = 0):
    """Returns (reports, total_alloc, total_free); each report = (reason, ref_time,
    [idents in (time, key) order], [selected flags], total_alloc, total_free)."""
    # 1. clamp per ring (in seq order)
    by_ring: dict[int, list] = {}
    for s in samples:
        by_ring.setdefault(s.ring, []).append(("s", s.seq, s))
    for lo in losts:
        by_ring.setdefault(lo.ring, []).append(("l", lo.seq, lo))
    clamped: dict[int, int] = {}
    windows = []
    for recs in by_ring.values():
        recs.sort(key=lambda r: r[1])
        prev = None
        for typ, _, r in recs:
            if typ == "s":
                t = r.time if prev is None else max(prev, r.time)
                clamped[id(r)] = t
                prev = t
        last_t = None
        pending = []
        for typ, _, r in recs:
            if typ == "s":
                t = clamped[id(r)]
                for lo in pending:
                    windows.append([lo[0], t, lo[1]])
                pending = []
                last_t = t
            else:
                pending.append((start_ns if last_t is None else last_t, r.count))
        for lo in pending:
            windows.append([lo[0], INF, lo[1]])
    windows.sort(key=lambda w: w[0])  # stable
    queue = [{"start": w[0], "end": w[1], "count": w[2], "reclaimed": False} for w in windows]

    stream = sorted(samples, key=lambda s: (clamped[id(s)], s.ring, s.seq))
    tree: dict[int, tuple[int, Sample]] = {}
    total_alloc = total_free = 0
    reports = []

    def report(reason, ref):
        entries = sorted(tree.values(), key=lambda e: (e[0], e[1].key))
        sel = []
        for t, _ in entries:
            sel.append(((ref - t) & INF) > than_ns if than_ns else True)
        reports.append((reason, ref, [e[1].ident for e in entries], sel, total_alloc, total_free))
        tree.clear()

    for s in stream:
        t = clamped[id(s)]
        drop = False
        while queue:
            node = queue[0]
            if t <= node["start"]:
                break
            if not node["reclaimed"]:
                node["reclaimed"] = True
                if tree:
                    report("lost", t)
            if t < node["end"]:
                drop = True
                break
            queue.pop(0)
            # continue with the next node
        if drop:
            continue
        if s.is_alloc:
            tree[s.key] = (t, s)
            total_alloc += 1
        else:
            tree.pop(s.key, None)
            total_free += 1
    report("final", stop_ns)
    return reports, total_alloc, total_free
