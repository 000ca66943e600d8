"""What the profile exports cost next to the text report, on analyze_bench's recordings.

    python3 bench/export_bench.py --events 10000000 --live 1000000 --repeat 3 [--keep DIR --reuse]

Builds (or reuses, with --keep/--reuse) analyze_bench.py's fixed-live-set kernel recording: about
`--live` allocations leaked at the end over ~1000 call chains and a handful of processes. Then runs
`kmemleak-offline analyze FILE --format F -o OUT` for F in text, json, folded, pprof and speedscope,
`--repeat` times each (median, min, max wall; peak RSS summed over the process tree), and prints
each output's size. When `go` is on PATH, also times `go tool pprof -top` reading the pprof file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
for _p in (str(ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _common import (
    build_in_child,
    fmt_spread,
    gb,
    keep_path,
    machine_lines,
    repeat_runs,
    reusable,
    secs,
)

FORMATS = ("text", "json", "folded", "pprof", "speedscope")
SUFFIX = {"text": "txt", "json": "json", "folded": "folded", "pprof": "pb.gz",
          "speedscope": "speedscope.json"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--live", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="keep the recording in this folder")
    ap.add_argument("--reuse", action="store_true", help="reuse a kept recording built the same way")
    args = ap.parse_args(argv)
    print("\n".join(machine_lines()))
    cli = [sys.executable, "-m", "kmemleak_offline.cli"]  # this checkout's (run from ROOT)
    print(f"analyze: {' '.join(cli)} analyze FILE --format F -o OUT (in {ROOT}); "
          f"--repeat {args.repeat}; {args.events:,} events, live set {args.live:,}")
    tmp = tempfile.TemporaryDirectory(prefix="kmemleak-export-bench-")
    folder = args.keep or Path(tmp.name)
    import analyze_bench

    params = {"model": "live", "events": args.events, "live": args.live, "seed": args.seed,
              "generator": analyze_bench.GENERATOR}
    path = keep_path(folder, analyze_bench._file_name(params))
    if not (args.reuse and reusable(path, params)):
        t0 = time.perf_counter()
        run, _ = build_in_child(BENCH / "analyze_bench.py", path,
                                ["--events", str(args.events), "--live", str(args.live),
                                 "--seed", str(args.seed)])
        if not run.ok:
            print(f"build failed: {run.error_line()}")
            return 1
        print(f"built {path} in {time.perf_counter() - t0:.1f} s")
    print(f"recording: {path} ({path.stat().st_size / 2**20:.0f} MiB)")
    out_dir = Path(tmp.name)
    for fmt in FORMATS:
        out = out_dir / f"leaks.{SUFFIX[fmt]}"
        series = repeat_runs([*cli, "analyze", str(path), "--format", fmt, "-o",
                              str(out)], args.repeat)
        if not series.ok:
            print(f"{fmt:>10}: FAILED {series.runs[-1].error_line()}")
            return 1
        print(f"{fmt:>10}: wall {fmt_spread(series.walls(), secs, ' s')}; peak RSS summed "
              f"{fmt_spread(series.peaks(), gb, ' GB')}; output {out.stat().st_size / 2**20:.2f} MiB")
    go = shutil.which("go")
    if go:
        env = {**os.environ, "HOME": str(out_dir)}
        walls = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            subprocess.run([go, "tool", "pprof", "-top", str(out_dir / "leaks.pb.gz")], check=True,
                           capture_output=True, env=env)
            walls.append(time.perf_counter() - t0)
        print(f"go tool pprof -top: wall {fmt_spread(walls, secs, ' s')}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
