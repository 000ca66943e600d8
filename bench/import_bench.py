"""`import` against `perf script` on the same big perf.data, with the machine and the spread.

    python3 bench/import_bench.py [--seconds-workload N] [--repeat K] [--keep DIR | --reuse FILE]   (root)

Records `perf record -e kmem:kmalloc -e kmem:kfree -a -g -m 16M` over `perf bench sched messaging`
(about 1M samples, 270 MB on 2 vCPUs), then times `perf script > /dev/null` and
`kmemleak-offline import` on that file K times each: wall (min / median / max) and peak RSS
summed over each process tree. Targets (issue 9 item 8): import >= 5x faster than perf script on
>= 1M samples, peak RSS <= 500 MB.
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

from _common import fmt_spread, gb, machine_lines, repeat_runs, secs, spread, verdict

RSS_TARGET = 500e6
SPEEDUP_TARGET = 5.0
MIN_SAMPLES = 1_000_000


def record(path: Path, loops: int) -> None:
    cmd = ["perf", "record", "-q", "-m", "16M", "-e", "kmem:kmalloc", "-e", "kmem:kfree", "-a", "-g",
           "-o", str(path), "--", "perf", "bench", "sched", "messaging", "-g", "2", "-l", str(loops)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def samples(path: Path) -> int:
    out = subprocess.run(["perf", "report", "-i", str(path), "--stats"], capture_output=True, text=True,
                         check=True).stdout
    m = re.search(r"SAMPLE events:\s+(\d+)", out)
    return int(m.group(1)) if m else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loops", type=int, default=1500, help="perf bench sched messaging -l (workload size)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="keep the perf.data in this folder")
    ap.add_argument("--reuse", type=Path, help="time this perf.data instead of recording one")
    args = ap.parse_args()
    for line in machine_lines():
        print(line)
    tmp = Path(tempfile.mkdtemp(prefix="import-bench-"))
    try:
        if args.reuse:
            data = args.reuse
        else:
            folder = args.keep or tmp
            folder.mkdir(parents=True, exist_ok=True)
            data = folder / "import-bench.data"
            record(data, args.loops)
        n = samples(data)
        print(f"perf.data: {data} ({data.stat().st_size / 1e6:.0f} MB, {n:,} samples)")
        script = repeat_runs(["sh", "-c", f'exec perf script -i "{data}" > /dev/null'], args.repeat,
                             keep_stdout=False)
        imp = repeat_runs([sys.executable, "-m", "kmemleak_offline.cli", "import", str(data), "-o",
                           str(tmp / "out.parquet")], args.repeat, keep_stdout=False)
        for name, s in (("perf script > /dev/null", script), ("kmemleak-offline import", imp)):
            if not s.ok:
                print(f"{name}: FAILED: {s.runs[-1].error_line()}")
                return 1
            print(f"{name:26} {s.line(n, 'samples')}")
        ratio = spread(script.walls())[1] / spread(imp.walls())[1]
        peak = max(imp.peaks())
        print(f"\nspeed-up (median perf script / median import): {ratio:.1f}x "
              f"(import wall {fmt_spread(imp.walls(), secs, ' s')})")
        print(f"target >= {SPEEDUP_TARGET:.0f}x on >= {MIN_SAMPLES:,} samples: "
              f"{verdict(ratio >= SPEEDUP_TARGET and n >= MIN_SAMPLES)}")
        print(f"target peak RSS <= {RSS_TARGET / 1e6:.0f} MB (max {gb(peak)} GB): {verdict(peak <= RSS_TARGET)}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
