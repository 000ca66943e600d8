"""What the HTML report costs to make and to open: `analyze FILE --format html` (wall time, peak
memory of its process tree), the page's size (and what it is made of), and the time headless
Chromium takes to render it, from navigation to bokeh's document being idle (all plots drawn),
over several fresh page loads. Issue 10's targets: for the 100M-event bench recording the page is
<= 5 MB and renders in < 3 s.

    python3 bench/analyze_bench.py --sizes 100000000 --keep /tmp/kmlo-dev/keep --reuse --repeat 1
    python3 bench/html_bench.py /tmp/kmlo-dev/keep/kernel-100000000ev-live1000000-s1.parquet
    python3 bench/html_bench.py --html report.html        # only render an existing page
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(Path(__file__).resolve().parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _common import analyze_command, fmt_spread, gb, machine_lines, run_measured

from tests.browser import Browser

MAX_BYTES = 5_000_000
MAX_RENDER_S = 3.0
READY = "window.Bokeh && Bokeh.documents.length > 0 && Bokeh.documents[0].is_idle"


def composition(html: str) -> list[tuple[str, int]]:
    """Bytes of the page by part: bokeh's inlined JavaScript, the plots' data, the tables."""
    scripts = re.findall(r"<script[^>]*>(.*?)</script>", html, re.DOTALL)
    lib = sum(len(s) for s in scripts if s.lstrip().startswith("/* BEGIN bokeh"))
    data = sum(len(s) for s in scripts) - lib
    tables = sum(len(m) for m in re.findall(r"<table.*?</table>", html, re.DOTALL))
    return [("bokeh JavaScript", lib), ("plot data", data), ("tables", tables),
            ("rest", len(html) - lib - data - tables)]


def render_times(path: Path, repeat: int) -> tuple[list[float], list[float], list[str]]:
    """(seconds to the load event, seconds to bokeh idle, errors) over `repeat` fresh loads."""
    loads, idles, errors = [], [], []
    with Browser(width=1400, height=1000, timeout=120) as b:
        for _ in range(repeat):
            load = b.open(path)
            idle = load + b.wait_for(READY, timeout=120, poll=0.01)
            loads.append(load)
            idles.append(idle)
            b.drain(0.2)
            errors += b.log.errors() + [f"request: {u}" for u in b.log.remote_requests()]
    return loads, idles, errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recording", type=Path, nargs="?", help="a recording (bench/analyze_bench.py "
                    "--keep makes them)")
    ap.add_argument("--html", type=Path, help="render this page instead of making one")
    ap.add_argument("--keep-html", type=Path, help="write the page here (default: a temporary file)")
    ap.add_argument("--repeat", type=int, default=5, help="page loads in Chromium")
    ap.add_argument("--analyze-cmd", help="the analyze CLI (shell words, without 'analyze')")
    args = ap.parse_args()
    if (args.recording is None) == (args.html is None):
        ap.error("give a RECORDING or --html PAGE")
    for line in machine_lines():
        print(line)
    tmp = None
    page = args.html
    if page is None:
        if args.keep_html:
            page = args.keep_html
        else:
            tmp = tempfile.TemporaryDirectory(prefix="kmlo-html-bench-")
            page = Path(tmp.name) / "report.html"
        cmd = [*analyze_command(args.analyze_cmd), "analyze", str(args.recording), "--format",
               "html", "-o", str(page)]
        run = run_measured(cmd, keep_stdout=False)
        if not run.ok:
            print(f"analyze failed: {run.error_line()}")
            return 1
        print(f"recording: {args.recording} ({args.recording.stat().st_size / 1e6:,.0f} MB)")
        print(f"analyze --format html: {run.wall:.1f} s, peak {gb(run.peak_rss)} GB summed Rss "
              f"({gb(run.peak_pss)} GB Pss)")
    try:
        html = page.read_text()
        size = len(html.encode())
        print(f"page: {page} {size / 1e6:.2f} MB -> target <= {MAX_BYTES / 1e6:.0f} MB: "
              f"{'met' if size <= MAX_BYTES else 'NOT met'}")
        print("  " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in composition(html)))
        loads, idles, errors = render_times(page, max(1, args.repeat))
        print(f"Chromium (headless, network off), navigation to load event: "
              f"{fmt_spread(loads, lambda x: f'{x:.2f}', ' s')}")
        med = sorted(idles)[len(idles) // 2]
        print(f"Chromium, navigation to all plots drawn (bokeh idle): "
              f"{fmt_spread(idles, lambda x: f'{x:.2f}', ' s')} -> target < {MAX_RENDER_S:.0f} s: "
              f"{'met' if med < MAX_RENDER_S else 'NOT met'}")
        if errors:
            print("console errors or requests:\n  " + "\n  ".join(errors))
            return 1
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
