"""Icicle (top-down flame graph) layout of weighted call chains: one rectangle per frame of the
merged tree, root on top, each child under its parent, wider for more bytes.

Frames are merged by name from the root down, as flamegraph.pl merges folded stacks; siblings
are laid out heaviest first. Frames narrower than `min_frac` of the whole (under a pixel until
zoomed far in) are left out, and at most `max_nodes` are kept (the widest): the file stays
small whatever the recording.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

ROOT = "all"


@dataclass
class _Node:
    name: str
    dso: str
    weight: float = 0.0
    grow: float = 0.0  # of it, from growing chains
    children: dict[str, _Node] = field(default_factory=dict)


@dataclass
class Icicle:
    name: list[str]
    dso: list[str]
    x0: np.ndarray
    x1: np.ndarray
    depth: np.ndarray
    weight: np.ndarray
    grow: np.ndarray
    parent: np.ndarray  # index of the parent node (-1 for the root)
    total: float
    dropped: int  # frames left out (too narrow)

    @property
    def max_depth(self) -> int:
        return int(self.depth.max()) if len(self.depth) else 0

    def colors(self) -> list[str]:
        """Sand for bytes of bounded chains, red as the share from growing chains rises; a
        slight shade per name so neighbours stand apart."""
        sand = np.array([[236, 200, 130], [228, 188, 116], [242, 210, 146], [232, 196, 124]],
                        np.float64)
        red = np.array([214, 39, 40], np.float64)
        share = np.where(self.weight > 0, self.grow / np.where(self.weight > 0, self.weight, 1), 0)
        out = []
        for nm, s in zip(self.name, share.tolist(), strict=True):
            base = sand[zlib.crc32(nm.encode()) & 3]
            r, g, b = (base + (red - base) * s).round().astype(int).tolist()
            out.append(f"#{r:02x}{g:02x}{b:02x}")
        return out


def layout(paths: Iterable[tuple[list[tuple[str, str]], float, bool]], *,
           min_frac: float = 1e-4, max_nodes: int = 4000) -> Icicle:
    """`paths`: ([(frame name, dso), ...] root first, weight, from a growing chain)."""
    root = _Node(ROOT, "")
    for frames, w, growing in paths:
        if w <= 0:
            continue
        node = root
        node.weight += w
        node.grow += w if growing else 0
        for name, dso in frames:
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = _Node(name, dso)
            child.weight += w
            child.grow += w if growing else 0
            node = child
    total = root.weight
    # the widest max_nodes frames, and none below min_frac (a child is never wider than its parent)
    weights = []
    todo = [root]
    while todo:
        n = todo.pop()
        weights.append(n.weight)
        todo.extend(n.children.values())
    cut = min_frac * total
    if len(weights) > max_nodes:
        cut = max(cut, float(np.partition(np.asarray(weights), -max_nodes)[-max_nodes]))
    names, dsos, x0, depth, wts, grow, parent = [], [], [], [], [], [], []
    dropped = 0
    stack = [(root, 0.0, 0, -1)]
    while stack:
        n, x, d, par = stack.pop()
        me = len(names)
        names.append(n.name)
        dsos.append(n.dso)
        x0.append(x)
        depth.append(d)
        wts.append(n.weight)
        grow.append(n.grow)
        parent.append(par)
        kids = sorted(n.children.values(), key=lambda c: (-c.weight, c.name))
        at = x
        todo_kids = []
        for c in kids:
            if c.weight >= cut and c.weight > 0 and len(names) + len(stack) + len(todo_kids) < max_nodes:
                todo_kids.append((c, at, d + 1, me))
            else:
                dropped += 1
            at += c.weight
        stack.extend(reversed(todo_kids))  # heaviest first out
    w = np.asarray(wts, np.float64)
    x0a = np.asarray(x0, np.float64)
    return Icicle(names, dsos, x0a, x0a + w, np.asarray(depth, np.int32), w,
                  np.asarray(grow, np.float64), np.asarray(parent, np.int64), total, dropped)
