#!/usr/bin/env python3
"""Kill `record` at random moments and check what it leaves (root; issue 13's soak).

    sudo python3 bench/soak.py --kills 30            # kernel and --malloc, SIGKILL and SIGINT
    sudo python3 bench/soak.py --kills 10 --mode malloc --signal KILL --seed 3

Each run records a workload (`sh` exec'ing /bin/true every 10 ms for ~10 s, traced with
`-- CMD`: kmalloc/kfree with -g, or `--malloc -g`) and sends the signal at a moment drawn
uniformly from 0..--window seconds after the recorder started (start-up takes about a second, so
some kills land before the events are enabled). Then, per run:

- outcome: `analysable` (OUT or OUT.parts opens; `info` and `analyze` exit 0), `none` (no output:
  the kill came before the recording existed; for SIGINT the recorder must have said so), or a
  failure (`unreadable`, `no stop reason`, `SIGINT ignored`: the recording went on more than
  0.5 s past the signal, by its own clock);
- the stop reason in the metadata (always set when there is an output);
- uprobes of the killed recorder left in tracefs (must be 0), and how long they outlived it;
- stray processes (the recorder's converter or guard still running 60 s after the kill) and
  leftovers (open parts, spool segments of older recorders, temporary files) once they are done.

Prints the machine, one line per run and a summary; exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
CLI = [sys.executable, "-m", "kmemleak_offline"]
WORKLOAD = ["sh", "-c", "i=0; while [ $i -lt 800 ]; do /bin/true; sleep 0.01; i=$((i+1)); done"]
TRACEFS = "/sys/kernel/tracing"


def probes_of(pid: int) -> list[str]:
    try:
        lines = Path(TRACEFS, "uprobe_events").read_text().splitlines()
    except OSError:
        return []
    return [ln for ln in lines if f"kmlo_{pid}/" in ln]


def procs_with(needle: str) -> list[int]:
    """Processes whose command line contains `needle` (the run's unique output path)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmd and "soak.py" not in cmd:
            out.append(int(d.name))
    return out


def cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          check=False)


def one_run(i: int, mode: str, sig: signal.Signals, delay: float, work: Path) -> dict:
    out = work / f"run{i}.parquet"
    events = ["--malloc"] if mode == "malloc" else ["--alloc", "kmem:kmalloc", "--free", "kmem:kfree"]
    t0 = time.monotonic()
    rec = subprocess.Popen(CLI + ["record", *events, "-g", "-o", str(out), "--", *WORKLOAD],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(max(0.0, delay - (time.monotonic() - t0)))
    had_probes = bool(probes_of(rec.pid))
    rec.send_signal(sig)
    killed_at = time.monotonic()
    killed_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # the recording's clock
    probes_gone_ms = None  # measured before waiting: the converter keeps stderr open while it saves
    end = time.monotonic() + 10
    while mode == "malloc" and time.monotonic() < end:
        if not probes_of(rec.pid):
            probes_gone_ms = (time.monotonic() - killed_at) * 1000 if had_probes else None
            break
        time.sleep(0.002)
    try:
        _, err = rec.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        rec.kill()
        _, err = rec.communicate()
    end = time.monotonic() + 60  # the converter saves the spool, the guard removes probes
    while procs_with(str(out)) and time.monotonic() < end:
        time.sleep(0.05)
    strays = procs_with(str(out))
    for pid in strays:  # do not let one run's strays disturb the next
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    left_probes = probes_of(rec.pid)
    r = {"run": i, "mode": mode, "signal": sig.name, "delay_s": round(delay, 2),
         "exit": rec.returncode, "strays": len(strays), "probes_left": len(left_probes),
         "probes_gone_ms": None if probes_gone_ms is None else round(probes_gone_ms),
         "stderr": err.strip().splitlines()[-1][:160] if err.strip() else ""}
    parts = Path(str(out) + ".parts")
    leftovers = [p.name for p in (list(parts.glob("spool-*.bin")) + list(parts.glob("*.tmp"))
                                  + list(parts.glob(".ring-*.idx"))
                                  + list(work.glob(f"run{i}.parquet.tmp")))] if parts.exists() else \
        [p.name for p in work.glob(f"run{i}.parquet.tmp")]
    r["leftovers"] = leftovers
    if not out.exists() and not parts.exists():
        r["outcome"] = "none"  # killed before the recording existed
        r["stopped"] = None
        # SIGINT: said in one line, unless it came while the interpreter itself was starting
        # (default disposition: the process dies of the signal, exit -2, like SIGKILL)
        if rec.returncode == 130 and "interrupted before recording started" not in err:
            r["outcome"] = "none, not said"
        return r
    from kmemleak_offline.format.recording import RecordingError, open_recording

    try:
        rc = open_recording(out)
        r["stopped"] = rc.metadata.get("stopped")
        r["partial"] = rc.partial
        r["samples"] = sum(int(c.get("samples") or 0) for c in rc.metadata.get("counts", {}).values())
    except RecordingError as exc:
        r["outcome"], r["stopped"] = f"unreadable: {exc}"[:120], None
        return r
    info, an = cli(["info", str(out)]), cli(["analyze", str(out), "--format", "json"])
    if info.returncode or an.returncode:
        r["outcome"] = f"not analysable (info {info.returncode}, analyze {an.returncode}: " \
                       f"{(info.stderr or an.stderr).strip()[:100]})"
    elif not r["stopped"]:
        r["outcome"] = "no stop reason"
    elif (sig == signal.SIGINT and r["stopped"] != "SIGINT"
          and int(rc.metadata["clock"]["stop_ns"]) > killed_ns + 500_000_000):
        r["outcome"] = "SIGINT ignored"  # it recorded on, long after the signal
    else:
        r["outcome"] = "analysable"
    return r


def failed(r: dict) -> bool:
    return (r["outcome"] not in ("analysable", "none") or r["probes_left"] or r["strays"]
            or r["leftovers"])


def main() -> int:
    from _common import machine_lines

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=30)
    ap.add_argument("--mode", choices=["both", "kernel", "malloc"], default="both")
    ap.add_argument("--signal", choices=["both", "KILL", "INT"], default="both")
    ap.add_argument("--window", type=float, default=5.0, help="kill within this many seconds of start")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write every run's record here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("soak.py: record needs root", file=sys.stderr)
        return 2
    if not os.path.exists(f"{TRACEFS}/uprobe_events"):
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], check=False)
    rng = random.Random(args.seed)
    modes = ["kernel", "malloc"] if args.mode == "both" else [args.mode]
    sigs = [signal.SIGKILL, signal.SIGINT] if args.signal == "both" else \
        [signal.SIGKILL if args.signal == "KILL" else signal.SIGINT]
    print("\n".join(machine_lines()))
    print(f"soak: {args.kills} kills, modes {','.join(modes)}, signals "
          f"{','.join(s.name for s in sigs)}, moments uniform in 0..{args.window:g} s, seed {args.seed}")
    runs = []
    with tempfile.TemporaryDirectory(prefix="kmlo-soak-") as tmp:
        for i in range(args.kills):
            mode = modes[i % len(modes)]
            sig = sigs[(i // len(modes)) % len(sigs)]
            r = one_run(i, mode, sig, rng.uniform(0, args.window), Path(tmp))
            runs.append(r)
            gone = "" if r["probes_gone_ms"] is None else f" (gone {r['probes_gone_ms']} ms after)"
            print(f"  {i:3d} {mode:6} {sig.name:7} at {r['delay_s']:4.2f} s: {r['outcome']:<10} "
                  f"stopped={r['stopped']!s:<45} exit {r['exit']:>4}  probes left {r['probes_left']}"
                  f"{gone}  strays {r['strays']}  leftovers {r['leftovers'] or 0}", flush=True)
            for p in Path(tmp).glob(f"run{i}.parquet*"):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    print("\nsummary:")
    by = Counter((r["mode"], r["signal"], r["outcome"]) for r in runs)
    for (mode, sig, outcome), n in sorted(by.items()):
        print(f"  {mode:6} {sig:7} {outcome:<12} {n}")
    reasons = Counter(str(r["stopped"]) for r in runs)
    print("  stop reasons: " + ", ".join(f"{k} {v}" for k, v in reasons.most_common()))
    gone = sorted(r["probes_gone_ms"] for r in runs if r["mode"] == "malloc" and r["probes_gone_ms"] is not None)
    if gone:
        print(f"  --malloc uprobes gone after the signal: median {gone[len(gone) // 2]} ms, max {gone[-1]} ms "
              f"({len(gone)} runs)")
    bad = [r for r in runs if failed(r)]
    print(f"  analysable {sum(r['outcome'] == 'analysable' for r in runs)}, no output {sum(r['outcome'] == 'none' for r in runs)}"
          f" (killed before the recording existed), uprobes left {sum(r['probes_left'] for r in runs)}, "
          f"strays {sum(r['strays'] for r in runs)}, leftovers {sum(bool(r['leftovers']) for r in runs)}, "
          f"failed runs {len(bad)}")
    if args.json:
        Path(args.json).write_text("\n".join(json.dumps(r) for r in runs) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
