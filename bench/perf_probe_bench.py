"""`import` and `analyze` of a `perf probe` libc capture, with the machine and the spread of runs.

    python3 bench/perf_probe_bench.py [--iterations N] [--repeat K]      (root)

Adds malloc (size, $retval) and free (ptr) probes on libc in a group of its own (removed in a
`finally`), records a `malloc(64); free()` loop (tests/c/mallocloop.c, N iterations: 3N samples)
with `perf record -g`, then times `import` and `analyze` (no --alloc/--free) K times each, with
the peak memory of each, and `perf script > /dev/null` on the same file for scale. Prints
min / median / max.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from _common import fmt_spread, gb, machine_lines, run_measured, secs

from recorder.probes import mapped_libc

PROBES = ["malloc size=%di", "malloc%return $retval", "free ptr=%di"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for line in machine_lines():
        print(line)
    group = f"kmlob_{os.getpid()}"
    cli = [sys.executable, "-m", "kmemleak_offline.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        prog, data, rec = Path(tmp) / "mallocloop", Path(tmp) / "perf.data", Path(tmp) / "r.parquet"
        subprocess.run(["gcc", "-O2", "-fno-omit-frame-pointer", "-o", str(prog),
                        str(ROOT / "tests/c/mallocloop.c")], check=True)
        add = [a for s in PROBES for a in ("-a", f"{group}:{s.split('%')[0].split()[0]}={s}")]
        try:
            subprocess.run(["perf", "probe", "-q", "-f", "-x", mapped_libc(), *add], check=True)
            subprocess.run(["perf", "record", "-q", "-e", f"{group}:*", "-g", "-o", str(data), "--",
                            str(prog), str(args.iterations)], check=True, stdout=subprocess.DEVNULL)
        finally:
            subprocess.run(["perf", "probe", "-q", "-d", f"{group}:*"], check=False)
        print(f"perf.data: {data.stat().st_size / 1e6:.1f} MB, {3 * args.iterations} probe samples "
              f"({args.iterations} malloc entry+return, {args.iterations} free)")
        runs: dict[str, list] = {"perf script > /dev/null": [], "import": [], "analyze": []}
        for _ in range(args.repeat):
            runs["perf script > /dev/null"].append(
                run_measured(["perf", "script", "-i", str(data)], keep_stdout=False))
            runs["import"].append(run_measured([*cli, "import", str(data), "-o", str(rec)], keep_stdout=False))
            r = run_measured([*cli, "analyze", str(rec), "--format", "json"])
            runs["analyze"].append(r)
        for what, rs in runs.items():
            bad = [r for r in rs if r.returncode != 0]
            if bad:
                raise SystemExit(f"{what} failed: {bad[0].error_line()}")
            print(f"{what:26s} time {fmt_spread([r.wall for r in rs], secs)}   "
                  f"peak RSS {fmt_spread([r.peak_rss for r in rs], gb)}")
        doc = json.loads(runs["analyze"][-1].stdout)
        final = doc["reports"][-1]["groups"]
        st = doc.get("stats", {})
        print(f"analyze: {st.get('total_alloc', '?')} allocations, {st.get('lost_events', '?')} events "
              f"lost by perf, leaked {sum(g['bytes'] for g in final)} bytes in "
              f"{sum(g['objects'] for g in final)} objects (the loop frees every block; stdio's "
              "buffer stays)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
