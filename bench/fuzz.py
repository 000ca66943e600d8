#!/usr/bin/env python3
"""Fuzz the CLI at length: damaged recordings, parts folders and JSON reports, foreign values,
random specs, expressions and options (tests/fuzzcases.py), and print the outcome counts by
signature.

    python3 bench/fuzz.py --runs 10000            # all families, round robin
    python3 bench/fuzz.py --runs 500 --family bytes --seed 7
    python3 bench/fuzz.py --case 1234 --seed 1    # replay one case: argv, outcome, output

Cases run in worker processes (one per core by default), each in-process through the CLI; the
worker's alarm gives each case `--timeout` seconds and counts it as a hang past that; a case stuck
in native code is ended by the parent (the worker is killed and replaced). Case i of seed s is built from `random.Random(f"{s}:{i}")` with family
FAMILIES[i % len(FAMILIES)], so any case can be replayed. Exit status 1 when any case failed
(internal error, traceback, exit status other than 0/2, hang, or a damaged input that changed the
output silently).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
MARK = "@@fuzz "
RECYCLE = 300  # cases per worker before it is replaced (memory of long runs)


def family_of(i: int, families: list[str]) -> str:
    return families[i % len(families)]


def worker(base_dir: Path, seed: str, families: list[str], timeout_s: float) -> None:
    """Read case numbers on stdin, answer one MARK line of JSON per case on stdout."""
    import random

    from tests.fuzzcases import fresh_dir, is_failure, make_bases, run_case

    os.environ.setdefault("KMEMLEAK_OFFLINE_NO_PROGRESS", "1")
    bases = make_bases(base_dir / f"bases-{os.getpid()}")
    work = base_dir / f"work-{os.getpid()}"
    out = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout.write(MARK + json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        i = int(line)
        fam = family_of(i, families)
        try:
            case, res, outcome = run_case(bases, fam, random.Random(f"{seed}:{i}"), fresh_dir(work),
                                          timeout_s)
            rec = {"i": i, "family": fam, "outcome": outcome, "what": case.what,
                   "code": res.code, "seconds": round(res.seconds, 3)}
            if is_failure(outcome):
                rec["argv"] = case.argv
                rec["err"] = res.err[-2000:]
        except Exception as exc:  # noqa: BLE001 - a case that could not even be built
            rec = {"i": i, "family": fam, "outcome": f"harness-error: {type(exc).__name__}: {exc}"[:200],
                   "what": "", "code": -1, "seconds": 0}
        out.write(MARK + json.dumps(rec) + "\n")


class Worker:
    def __init__(self, base_dir: Path, seed: str, families: list[str], timeout_s: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", "--dir", str(base_dir), "--seed", seed,
             "--family", ",".join(families), "--timeout", str(timeout_s)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            cwd=ROOT, start_new_session=True)
        self.done = 0
        self.case: int | None = None
        self.started = 0.0
        self._buf = ""
        self.ready = False

    def give(self, i: int) -> None:
        self.case, self.started = i, time.monotonic()
        self.proc.stdin.write(f"{i}\n")
        self.proc.stdin.flush()

    def lines(self) -> list[dict]:
        chunk = os.read(self.proc.stdout.fileno(), 65536).decode(errors="replace")
        if not chunk:
            raise EOFError
        self._buf += chunk
        *full, self._buf = self._buf.split("\n")
        return [json.loads(ln[len(MARK):]) for ln in full if ln.startswith(MARK)]

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def run(args: argparse.Namespace) -> int:
    from _common import machine_lines

    families = args.family.split(",")
    print("\n".join(machine_lines()))
    print(f"fuzz: {args.runs} cases, families {','.join(families)}, seed {args.seed}, "
          f"{args.jobs} workers, {args.timeout:g} s per case")
    counts: Counter[tuple[str, str]] = Counter()
    failures: list[dict] = []
    seconds: list[float] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kmlo-fuzz-") as tmp:
        base_dir = Path(tmp)
        todo = list(range(args.start, args.start + args.runs))[::-1]
        pool = [Worker(base_dir, args.seed, families, args.timeout) for _ in range(args.jobs)]
        finished = 0
        last_print = time.monotonic()
        while finished < args.runs:
            by_fd = {w.proc.stdout.fileno(): w for w in pool}
            ready, _, _ = select.select(list(by_fd), [], [], 0.5)
            for fd in ready:
                w = by_fd[fd]
                try:
                    recs = w.lines()
                except EOFError:  # the worker died mid-case: that case is a crash
                    if w.case is not None:
                        rec = {"i": w.case, "family": family_of(w.case, families),
                               "outcome": "crash: worker died", "what": "", "seconds": 0}
                        counts[(rec["family"], rec["outcome"])] += 1
                        failures.append(rec)
                        finished += 1
                    w.kill()
                    pool[pool.index(w)] = Worker(base_dir, args.seed, families, args.timeout)
                    continue
                for rec in recs:
                    if rec.get("ready"):
                        w.ready = True
                    else:
                        w.case = None
                        w.done += 1
                        finished += 1
                        counts[(rec["family"], rec["outcome"])] += 1
                        seconds.append(rec["seconds"])
                        if rec["outcome"].startswith(("silent-change", "internal-error", "traceback",
                                                      "hang", "exit-", "harness-error")):
                            failures.append(rec)
            now = time.monotonic()
            for k, w in enumerate(pool):
                # the worker's own alarm ends a case stuck in Python; a stuck native call is ended here
                if w.case is not None and now - w.started > 1.5 * args.timeout + 5:
                    rec = {"i": w.case, "family": family_of(w.case, families), "outcome": "hang",
                           "what": f"> {args.timeout:g} s", "seconds": args.timeout}
                    counts[(rec["family"], "hang")] += 1
                    failures.append(rec)
                    finished += 1
                    w.kill()
                    pool[k] = w = Worker(base_dir, args.seed, families, args.timeout)
                if w.ready and w.case is None:
                    if w.done >= RECYCLE:
                        w.kill()
                        pool[k] = Worker(base_dir, args.seed, families, args.timeout)
                    elif todo:
                        w.give(todo.pop())
            if now - last_print > 30:
                last_print = now
                print(f"  {finished}/{args.runs} cases, {now - t0:.0f} s", flush=True)
        for w in pool:
            w.kill()
    elapsed = time.monotonic() - t0
    print(f"\n{args.runs} cases in {elapsed:.0f} s ({args.runs / elapsed:.1f} cases/s); "
          f"case time median {sorted(seconds)[len(seconds) // 2] if seconds else 0:.3f} s, "
          f"max {max(seconds, default=0):.2f} s")
    print("\noutcomes by family:")
    for fam in families:
        row = {o: c for (f, o), c in counts.items() if f == fam}
        print(f"  {fam:<8} " + ", ".join(f"{o} {c}" for o, c in sorted(row.items(), key=lambda x: -x[1])))
    total = Counter()
    for (_, o), c in counts.items():
        total[o.split(":")[0]] += c
    print("\ntotals: " + ", ".join(f"{o} {c}" for o, c in total.most_common()))
    bad = sorted(failures, key=lambda r: r["i"])
    if args.log:
        with open(args.log, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in bad)
    if bad:
        print(f"\n{len(bad)} failing cases (replay: bench/fuzz.py --case I --seed {args.seed}):")
        for r in bad[:60]:
            print(f"  case {r['i']} [{r['family']}] {r['outcome']} -- {r.get('what', '')}")
    return 1 if bad else 0


def replay(args: argparse.Namespace) -> int:
    import random

    from tests.fuzzcases import fresh_dir, make_bases, run_case

    families = args.family.split(",")
    fam = family_of(args.case, families)
    with tempfile.TemporaryDirectory(prefix="kmlo-fuzz-") as tmp:
        bases = make_bases(Path(tmp) / "bases")
        case, res, outcome = run_case(bases, fam, random.Random(f"{args.seed}:{args.case}"),
                                      fresh_dir(Path(tmp) / "work"), args.timeout)
        argv = [a if len(a) < 300 else a[:300] + f"...({len(a)} chars)" for a in map(str, case.argv)]
        print(f"case {args.case} [{fam}] {case.what}\nargv: {argv}\noutcome: {outcome}, "
              f"exit {res.code}, {res.seconds:.2f} s\n--- stderr\n{res.err}--- stdout (first 2000)\n"
              f"{res.out[:2000]}")
    return 0


def main() -> int:
    from tests.fuzzcases import FAMILIES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--seed", default="1")
    ap.add_argument("--start", type=int, default=0, help="first case number")
    ap.add_argument("--family", default=",".join(FAMILIES), help="comma-separated families")
    ap.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per case before it is a hang")
    ap.add_argument("--case", type=int, help="replay this case number and show its output")
    ap.add_argument("--log", help="write every failing case (JSON lines) here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(Path(args.dir), args.seed, args.family.split(","), args.timeout)
        return 0
    if args.case is not None:
        return replay(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
