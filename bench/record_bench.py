"""Recorder cost on the target: `kmemleak-offline record` against `perf record`, same load.

    python3 bench/record_bench.py [--seconds 5] [--pages 128] [--procs 2] [--repeat 3]   (root)

Per repeat, ours then perf record, one after the other, each on the same kernel load
(bench/sockload.c: PROCS processes doing socket()+close(); kmem:kmalloc + kmem:kfree, kernel call
chains, -m PAGES, system-wide):

- the recorder starts; once it is ready (ours: its "recording" line, whose delay is the start-up
  time; perf: 2 s) and 1 s more, the load runs for SECONDS;
- CPU during the load: on-CPU time (schedstat, ns) of the recorder's whole process tree between
  the load's start and end, divided by the events recorded in that window (sample times, both on
  CLOCK_MONOTONIC: perf record -k mono);
- to exit: the recorder is stopped (SIGINT) and its total CPU (wait4: itself and the children it
  reaped) divided by all its events. Ours runs twice: as by default (its converter process
  converts after the stop; -v says what the conversion alone cost), and with --defer-convert,
  whose chunks `kmemleak-offline convert` then converts in a fresh process;
- losses: ours from the kernel's PERF_FORMAT_LOST counts, perf's from its LOST records (perf.data
  imported with `kmemleak-offline import`, which also gives its sample times);
- conversion: CPU and wall us/event of `convert`, in a fresh process;
- start-up: from exec to the "recording" line (events enabled), no load running, STARTUPS runs.

Prints the machine, and per figure the median with min and max over the repeats.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from _common import fmt_spread, machine_lines, process_tree

from kmemleak_offline.format.recording import open_recording

CLI = [sys.executable, "-m", "kmemleak_offline.cli"]
EVENTS = ["--alloc", "kmem:kmalloc", "--free", "kmem:kfree", "-g"]


def tree_cpu_ns(pid: int, children: bool = True) -> int:
    """On-CPU ns of a process tree (every thread of pid and its descendants alive now)."""
    total = 0
    for p in process_tree(pid) if children else [pid]:
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


def wait_cpu(pid: int) -> tuple[float, float]:
    """(exit wall s, CPU s of the process and its reaped children) of a child."""
    _, _, ru = os.wait4(pid, 0)
    return time.monotonic(), ru.ru_utime + ru.ru_stime


def window_events(path: Path, t0: int, t1: int) -> tuple[int, int]:
    """(samples with t0 <= time < t1, all samples) of a recording."""
    t = open_recording(path).table(["sample"], ["time"]).column("time").to_numpy()
    return int(((t >= t0) & (t < t1)).sum()), len(t)


def run_load(load: Path, procs: int, secs: float) -> tuple[int, int]:
    t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    subprocess.run([str(load), str(procs), str(secs)], check=True)
    return t0, time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def measure(name: str, cmd: list[str], ready: str | None, load: Path, args, tmp: Path) -> dict:
    """One recorder on one load: start, settle, load (CPU measured), stop (CPU to exit)."""
    start = time.monotonic()
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    out: dict = {}
    if ready is not None:
        line = p.stderr.readline()
        if ready not in line:
            raise SystemExit(f"{name}: {line.strip()} {p.stderr.read()}")
        out["startup"] = time.monotonic() - start
        out["startup_cpu"] = tree_cpu_ns(p.pid, children=False) / 1e9  # the recorder, not its helper
        time.sleep(1.0)
    else:
        time.sleep(3.0)
    c0 = tree_cpu_ns(p.pid)
    t0, t1 = run_load(load, args.procs, args.seconds)
    c1 = tree_cpu_ns(p.pid)
    stop = time.monotonic()
    p.send_signal(signal.SIGINT)
    end, total_cpu = wait_cpu(p.pid)
    err = p.stderr.read()
    p.stderr.close()
    if p.returncode not in (0, None) and p.returncode != -signal.SIGINT:
        raise SystemExit(f"{name} failed: {err}")
    out.update(load_cpu=(c1 - c0) / 1e9, window=(t0, t1), total_cpu=total_cpu, exit_wall=end - stop,
               err=err)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--pages", type=int, default=128)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--startups", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("record_bench: run as root", file=sys.stderr)
        return 2
    for line in machine_lines():
        print(line)
    res: dict[str, list[float]] = {}

    def add(key: str, v: float) -> None:
        res.setdefault(key, []).append(v)

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        load = tmp / "sockload"
        subprocess.run(["gcc", "-O2", "-o", str(load), str(HERE / "sockload.c")], check=True)
        for i in range(args.repeat):
            # ours, the default: chunks while recording, converted by the recorder after the stop
            out = tmp / f"default{i}.parquet"
            d = measure("ours", CLI + ["record", *EVENTS, "-m", str(args.pages), "-v", "-o", str(out)],
                        "recording", load, args, tmp)
            m = re.search(r"converted (\d+) events .* in ([0-9.]+) s, ([0-9.]+) CPU s", d["err"])
            if not m:
                raise SystemExit(f"record -v said: {d['err']}")
            n_in = int(m.group(1))
            add("default exit us/ev", 1e6 * d["total_cpu"] / max(1, n_in))
            add("default exit wall s", d["exit_wall"])
            add("in-recorder conv cpu us/ev", 1e6 * float(m.group(3)) / max(1, n_in))
            add("in-recorder conv wall s", float(m.group(2)))
            add("converted B/ev", out.stat().st_size / max(1, n_in))
            add("startup s", d["startup"])
            add("startup cpu s", d["startup_cpu"])
            win, total = window_events(out, *d["window"])  # the load: as with --defer-convert
            add("ours load us/ev", 1e6 * d["load_cpu"] / max(1, win))
            add("ours load CPU s", d["load_cpu"])
            add("ours events", total)
            add("ours lost", sum(c.get("lost", 0) for c in open_recording(out).metadata["counts"].values()))
            out.unlink()
            # ours, --defer-convert: chunks only; converted afterwards by `convert`
            raw = tmp / f"ours{i}.parquet"
            o = measure("ours", CLI + ["record", *EVENTS, "-m", str(args.pages), "--defer-convert",
                                       "-o", str(raw)], "recording", load, args, tmp)
            raw_size = raw.stat().st_size
            conv = subprocess.run(CLI + ["convert", str(raw)], cwd=ROOT, capture_output=True,
                                  text=True, check=True)
            m = re.search(r"converted (\d+) events .* in ([0-9.]+) s \(([0-9.]+) CPU s", conv.stderr)
            if not m:
                raise SystemExit(f"convert said: {conv.stderr}")
            n_conv, conv_wall, conv_cpu = int(m.group(1)), float(m.group(2)), float(m.group(3))
            meta = open_recording(raw).metadata
            lost = sum(c.get("lost", 0) for c in meta["counts"].values())
            win, total = window_events(raw, *o["window"])
            add("ours load us/ev", 1e6 * o["load_cpu"] / max(1, win))
            add("ours load CPU s", o["load_cpu"])
            add("ours events", total)
            add("ours lost", lost)
            add("ours exit us/ev", 1e6 * o["total_cpu"] / max(1, total))
            add("ours exit wall s", o["exit_wall"])
            add("conv cpu us/ev", 1e6 * conv_cpu / max(1, n_conv))
            add("conv wall us/ev", 1e6 * conv_wall / max(1, n_conv))
            add("startup s", o["startup"])
            add("startup cpu s", o["startup_cpu"])
            add("raw B/ev", raw_size / max(1, total))
            raw.unlink()
            # perf record, same events and ring size, kernel call chains, CLOCK_MONOTONIC times
            pdata = tmp / f"perf{i}.data"
            p = measure("perf", ["perf", "record", "-q", "-a", "-k", "mono", "-e", "kmem:kmalloc",
                                 "-e", "kmem:kfree", "-g", "--kernel-callchains", "-m", str(args.pages),
                                 "-o", str(pdata)], None, load, args, tmp)
            imported = tmp / f"perf{i}.parquet"
            subprocess.run(CLI + ["import", str(pdata), "-o", str(imported)], cwd=ROOT,
                           capture_output=True, check=True)
            meta = open_recording(imported).metadata
            win, total = window_events(imported, *p["window"])
            add("perf load us/ev", 1e6 * p["load_cpu"] / max(1, win))
            add("perf load CPU s", p["load_cpu"])
            add("perf events", total)
            add("perf lost", sum(c.get("lost", 0) for c in meta["counts"].values()))
            add("perf exit us/ev", 1e6 * p["total_cpu"] / max(1, total))
            add("perf exit wall s", p["exit_wall"])
            add("ratio load", (res["ours load us/ev"][-1] + res["ours load us/ev"][-2]) / 2
                / res["perf load us/ev"][-1])
            pdata.unlink()
            imported.unlink()
            print(f"run {i + 1}/{args.repeat}: ours {res['ours load us/ev'][-1]:.3f} us/event during "
                  f"the load, perf {res['perf load us/ev'][-1]:.3f} "
                  f"({res['ratio load'][-1]:.2f}x); lost {res['ours lost'][-1]} vs "
                  f"{res['perf lost'][-1]}", flush=True)
        for _ in range(args.startups):
            o = tmp / "s.parquet"
            t = time.monotonic()
            p = subprocess.Popen(CLI + ["record", *EVENTS, "--duration", "0.2s", "--defer-convert",
                                        "-o", str(o)], cwd=ROOT, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
            line = p.stderr.readline()
            if "recording" in line:
                add("startup s", time.monotonic() - t)
                add("startup cpu s", tree_cpu_ns(p.pid, children=False) / 1e9)
            p.communicate()
            for f in tmp.glob("s.parquet*"):
                f.unlink()

    def row(label: str, key: str, fmt=lambda x: f"{x:.3f}", unit: str = "") -> None:
        print(f"  {label:<44} {fmt_spread(res[key], fmt, unit)}")

    print(f"\nkmem:kmalloc + kmem:kfree, kernel call chains, -m {args.pages}, system-wide; load: "
          f"{args.procs} x socket()+close() for {args.seconds:g} s; {args.repeat} runs (median, min, max;"
          " ours: 2 runs per repeat, default and --defer-convert)")
    print("kmemleak-offline record:")
    row("CPU per event during the load", "ours load us/ev", unit=" us")
    row("CPU during the load", "ours load CPU s", unit=" s")
    row("CPU per event to exit (default: converting)", "default exit us/ev", unit=" us")
    row("wall from the stop to exit (default)", "default exit wall s", unit=" s")
    row("CPU per event to exit (--defer-convert)", "ours exit us/ev", unit=" us")
    row("wall from the stop to exit (--defer-convert)", "ours exit wall s", unit=" s")
    row("events", "ours events", lambda x: f"{x:,.0f}")
    row("lost", "ours lost", lambda x: f"{x:,.0f}")
    print("perf record:")
    row("CPU per event during the load", "perf load us/ev", unit=" us")
    row("CPU during the load", "perf load CPU s", unit=" s")
    row("CPU per event to exit", "perf exit us/ev", unit=" us")
    row("events", "perf events", lambda x: f"{x:,.0f}")
    row("lost", "perf lost", lambda x: f"{x:,.0f}")
    print("ours / perf, CPU per event during the load (ours: the mean of its 2 runs of a repeat):")
    row("ratio", "ratio load", lambda x: f"{x:.2f}", "x")
    print("conversion:")
    row("in the recorder after the stop, CPU per event", "in-recorder conv cpu us/ev", unit=" us")
    row("in the recorder after the stop, wall", "in-recorder conv wall s", unit=" s")
    row("`kmemleak-offline convert` (fresh process), CPU/ev", "conv cpu us/ev", unit=" us")
    row("`kmemleak-offline convert` (fresh process), wall/ev", "conv wall us/ev", unit=" us")
    row("file size per event, raw (--defer-convert)", "raw B/ev", lambda x: f"{x:.1f}", " B")
    row("file size per event, converted (default)", "converted B/ev", lambda x: f"{x:.1f}", " B")
    print("start-up, exec to the 'recording' line (events enabled):")
    row(f"wall, {len(res['startup s'])} runs", "startup s", unit=" s")
    row("CPU of the recorder process until then", "startup cpu s", unit=" s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
