"""Per-call cost of `record --malloc` probes against `perf record` on the same probes, with the
machine and the spread of several runs.

    python3 bench/malloc_overhead.py [--iterations N] [--repeat K]      (root; perf for the peer)

A `malloc(64); free()` loop (tests/c/mallocloop.c) is timed untraced, then under
`record --malloc` without and with call chains (-g), then under `perf record` of the very uprobes
`record --malloc` creates (same libc offsets and fetchargs, made here in a group of this process)
without and with -g (perf's -g takes chains on every probe, ours on the return probes only).
Each iteration is 2 traced calls (malloc: entry + return probe, free: entry probe), so "added per
call" is (traced - untraced) / 2. The per-hit cost is the kernel's uprobe (a trap per probe hit);
what a recorder adds is waking up to copy the ring, so ours and perf's should match.
Every configuration runs K times; min / median / max are printed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from _common import fmt_spread, machine_lines, spread

from kmemleak_offline.format.recording import open_recording
from recorder.probes import UprobeSet, allocator_probes, mapped_libc

PER_ITER = re.compile(r"([0-9.]+) ns/iter")


def per_iter(out: str) -> float:
    m = PER_ITER.search(out)
    if not m:
        raise SystemExit(f"no 'ns/iter' figure in: {out!r}")
    return float(m.group(1))


def perf_counts(data: Path) -> tuple[int, int]:
    """(samples, lost events) of a perf.data, from `perf report --stats`."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--stats"], capture_output=True,
                         text=True, check=False).stdout
    n = re.search(r"SAMPLE events:\s*(\d+)", out)
    lost = re.search(r"LOST_SAMPLES events:\s*(\d+)|LOST events:\s*(\d+)", out)
    return int(n.group(1)) if n else 0, int(next(g for g in lost.groups() if g)) if lost else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for line in machine_lines():
        print(line)
    n = args.iterations
    with tempfile.TemporaryDirectory() as tmp:
        prog = Path(tmp) / "mallocloop"
        subprocess.run(["gcc", "-O2", "-o", str(prog), str(ROOT / "tests/c/mallocloop.c")], check=True)
        cli = [sys.executable, "-m", "kmemleak_offline.cli", "record", "--malloc"]
        peer = shutil.which("perf") is not None
        names = ["untraced", "record --malloc", "record --malloc -g"]
        names += ["perf record (same probes)", "perf record -g (same probes)"] if peer else []
        runs: dict[str, list[float]] = {k: [] for k in names}
        samples: dict[str, list[tuple[int, int]]] = {k: [] for k in runs}
        probes = UprobeSet()
        try:
            if peer:  # the probes record --malloc would make, in a group of this process
                probes.create(allocator_probes(mapped_libc("self"), ""))
                events = [x for c in probes.created for x in ("-e", c.probe.event)]
            for _ in range(args.repeat):
                runs["untraced"].append(per_iter(subprocess.run([str(prog), str(n)], capture_output=True,
                                                                text=True, check=True).stdout))
                for what, extra in (("record --malloc", []), ("record --malloc -g", ["-g"])):
                    out = Path(tmp) / "r.parquet"
                    res = subprocess.run([*cli, *extra, "-o", str(out), "--", str(prog), str(n)],
                                         capture_output=True, text=True, cwd=ROOT, check=True)
                    runs[what].append(per_iter(res.stdout))
                    c = open_recording(out).metadata["counts"].values()
                    samples[what].append((sum(v["samples"] for v in c), sum(v["lost"] for v in c)))
                    out.unlink()
                if not peer:
                    continue
                for what, extra in (("perf record (same probes)", []), ("perf record -g (same probes)", ["-g"])):
                    data = Path(tmp) / "perf.data"
                    res = subprocess.run(["perf", "record", "-q", *extra, *events, "-o", str(data), "--",
                                          str(prog), str(n)], capture_output=True, text=True, check=True)
                    runs[what].append(per_iter(res.stdout))
                    samples[what].append(perf_counts(data))
                    data.unlink()
        finally:
            probes.remove()
    base = spread(runs["untraced"])[1]
    print(f"\nmalloc(64)+free loop, {n:,} iterations, {args.repeat} runs each (min / median / max):")
    for what, vals in runs.items():
        line = f"  {what:29} {fmt_spread(vals, lambda x: f'{x:,.1f}', ' ns per malloc+free')}"
        if what != "untraced":
            added = [(v - base) / 2 for v in vals]
            line += f"  -> added per call {fmt_spread(added, lambda x: f'{x:,.0f}', ' ns')}"
            got = samples[what]
            line += (f"; samples {min(s for s, _ in got):,}-{max(s for s, _ in got):,} "
                     f"(3 x {n:,} = {3 * n:,} expected), lost {max(lo for _, lo in got):,} at most")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
