"""What growth trends cost: `analyze FILE` against `analyze FILE --trend` (and `--format json`,
which always carries trends) on one kernel recording, runs interleaved so both see the same
machine load. Prints the machine, each command's wall time and peak memory with their spread,
and the median ratio against issue 10's target (trends <= 10% over plain analyze).

    python3 bench/analyze_bench.py --sizes 10000000 --keep /tmp/kmlo-dev/keep --reuse --repeat 1
    python3 bench/trend_bench.py /tmp/kmlo-dev/keep/kernel-10000000ev-live1000000-s1.parquet
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Series, analyze_command, fmt_spread, machine_lines, run_measured

from kmemleak_offline.format.recording import open_recording


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recording", type=Path, help="a recording (bench/analyze_bench.py --keep makes them)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--analyze-cmd", help="the analyze CLI (shell words, without 'analyze')")
    args = ap.parse_args()
    for line in machine_lines():
        print(line)
    path = args.recording
    events = sum(c.samples for c in open_recording(path).meta.counts.values())
    cli = analyze_command(args.analyze_cmd)
    cmds = {"plain": [*cli, "analyze", str(path)],
            "--trend": [*cli, "analyze", str(path), "--trend"],
            "--format json": [*cli, "analyze", str(path), "--format", "json"]}
    series = {k: Series() for k in cmds}
    for _ in range(max(1, args.repeat)):
        for k, cmd in cmds.items():  # interleaved: the same load for each
            r = run_measured(cmd, keep_stdout=False)
            if not r.ok:
                print(f"{k}: failed: {r.error_line()}")
                return 1
            series[k].runs.append(r)
    print(f"recording: {path} ({events:,} events)")
    for k, s in series.items():
        print(f"{k:>14}: {s.line(events)}")
    base = series["plain"].walls()
    for k in ("--trend", "--format json"):
        ratios = [t / b for t, b in zip(series[k].walls(), base, strict=True)]
        med = statistics.median(ratios)
        print(f"{k:>14} / plain: {fmt_spread(ratios, lambda x: f'{x:.3f}')}"
              + (f" -> target <= 1.10: {'met' if med <= 1.10 else 'NOT met'}" if k == "--trend" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
