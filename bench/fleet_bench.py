"""`fleet` over many hosts' recordings: local worker processes against a Dask cluster.

Builds N recordings of ~E events each (bench/analyze_bench.py's fixed-live-set model, one seed
per host, hosts alternating between two kernel releases that share their kernel symbols and call
chains), then times `fleet DIR -j J` and `fleet DIR --scheduler ...` on a local Dask cluster of W
single-threaded workers (real `dask scheduler` / `dask worker` processes, tests/dask_cluster.py),
runs interleaved. Peak memory is summed over whole process trees, polled every 50 ms
(bench/_common.py): for local runs the command and its workers; for Dask runs the command, the
scheduler and the workers (their resident memory before the run included: they are long-lived).
Prints the machine, every run (with the load average before it), and the spread. The cluster's
processes run in this command's session (tests/dask_cluster.py says why: autogroup scheduling).

    python3 bench/fleet_bench.py --dir /tmp/kmlo-fleet --recordings 50 --events 1000000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from _common import (
    TreeMemoryPoller,
    fmt_spread,
    gb,
    machine_lines,
    process_tree,
    rss_pss_bytes,
    run_measured,
    secs,
)

KERNELS = ["6.18.44", "6.12.9"]


def params(args: argparse.Namespace) -> dict[str, Any]:
    return {"events": args.events, "live": args.live, "generator": 1}


def build(folder: Path, n: int, events: int, live: int) -> None:
    """host-NN.parquet for NN < n, each reused when built with the same parameters."""
    from analyze_bench import build_live

    folder.mkdir(parents=True, exist_ok=True)
    want = {"events": events, "live": live, "generator": 1}
    for i in range(n):
        path = folder / f"host-{i:02d}.parquet"
        side = path.with_name(path.name + ".json")
        if path.is_file() and side.is_file() and json.loads(side.read_text()).get("params") == want:
            continue
        info = build_live(path, events, live=live, seed=100 + i, symbol_seed=1,
                          host={"hostname": f"host-{i:02d}", "kernel_release": KERNELS[i % 2]})
        side.write_text(json.dumps({"params": want, "info": info}))
        print(f"built {path} ({info['events']:,} events, {info['outstanding']:,} outstanding)",
              flush=True)


class TreesPoller(TreeMemoryPoller):
    """TreeMemoryPoller over several roots (a command and a cluster's processes), summed."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(pids[0])
        self.roots = pids

    def poll_once(self) -> None:
        rss = pss = alive = 0
        for root in self.roots:
            for p in process_tree(root):
                r, s = rss_pss_bytes(p)
                alive += bool(r)
                rss += r
                pss += s
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)
        self.max_procs = max(self.max_procs, alive)
        self.polls += 1


def cluster_rss(pids: list[int]) -> int:
    return sum(rss_pss_bytes(p)[0] for root in pids for p in process_tree(root))


def fleet_cmd(folder: Path, out: Path, summaries: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "kmemleak_offline", "fleet", str(folder), "--format", "json",
            "-o", str(out), "--summaries", str(summaries), *extra]


def per_recording_seconds(summaries: Path) -> tuple[list[float], int]:
    import duckdb

    rows = duckdb.sql(f"SELECT seconds, worker FROM '{summaries}/recordings.parquet' "
                      "WHERE error IS NULL").fetchall()
    return [r[0] for r in rows], len({r[1] for r in rows})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/kmlo-fleet"), help="recordings go here")
    ap.add_argument("--recordings", type=int, default=50)
    ap.add_argument("--events", type=int, default=1_000_000, help="per recording")
    ap.add_argument("--live", type=int, default=200_000, help="outstanding allocations per recording")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2, help="local worker processes")
    ap.add_argument("--workers", type=int, default=2, help="Dask workers (one thread each)")
    ap.add_argument("--no-dask", action="store_true")
    ap.add_argument("--build-only", action="store_true")
    args = ap.parse_args()
    for line in machine_lines():
        print(line)
    folder = args.dir / f"{args.recordings}x{args.events}"
    build(folder, args.recordings, args.events, args.live)
    for stale in sorted(folder.glob("host-*.parquet"))[args.recordings:]:
        print(f"note: {stale} is not part of this run (move it away)")
        return 2
    if args.build_only:
        return 0
    total = args.recordings * args.events
    size = sum(p.stat().st_size for p in folder.glob("host-*.parquet"))
    print(f"recordings: {args.recordings} x {args.events:,} events ({total:,} in all, "
          f"{size / 1e9:.2f} GB of Parquet) in {folder}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    results: dict[str, list[dict[str, Any]]] = {"local": [], "dask": []}
    outputs: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="kmlo-fleet-bench-") as tmp:
        cluster_cm = None
        cluster = None
        if not args.no_dask:
            from tests.dask_cluster import local_cluster

            cluster_cm = local_cluster(workers=args.workers, nthreads=1)
            cluster = cluster_cm.__enter__()
        try:
            for k in range(max(1, args.repeat)):
                kinds = ["local"] + ([] if cluster is None else ["dask"])
                for kind in kinds:  # interleaved: both see the same machine load
                    out, summ = Path(tmp) / f"{kind}-{k}.json", Path(tmp) / f"{kind}-{k}"
                    extra = (["-j", str(args.jobs)] if kind == "local"
                             else ["--scheduler", cluster.address])
                    cmd = fleet_cmd(folder, out, summ, *extra)
                    load = os.getloadavg()[0]
                    if kind == "dask":
                        pids = [p.pid for p in cluster.procs]
                        idle = cluster_rss(pids)
                        with TreesPoller(pids) as poller:
                            run = run_measured(cmd, env=env, keep_stdout=False)
                        box = {"cluster_peak_rss": poller.peak_rss,
                               "cluster_peak_pss": poller.peak_pss, "cluster_idle_rss": idle}
                    else:
                        run, box = run_measured(cmd, env=env, keep_stdout=False), {}
                    if not run.ok:
                        print(f"{kind} run {k}: failed: {run.error_line()}")
                        if cluster is not None:
                            print(cluster.logs())
                        return 1
                    secs_each, workers = per_recording_seconds(summ)
                    row = {"wall": run.wall, "peak_rss": run.peak_rss, "peak_pss": run.peak_pss,
                           "ru_maxrss": run.ru_maxrss, "procs": run.max_procs,
                           "per_recording": secs_each, "workers": workers, **box}
                    if kind == "dask":  # the whole: client tree plus cluster trees, polled apart
                        row["total_peak_rss"] = run.peak_rss + box["cluster_peak_rss"]
                        row["total_peak_pss"] = run.peak_pss + box["cluster_peak_pss"]
                    else:
                        row["total_peak_rss"], row["total_peak_pss"] = run.peak_rss, run.peak_pss
                    results[kind].append(row)
                    doc = json.loads(out.read_text())
                    outputs.setdefault(kind, json.dumps(doc, sort_keys=True))
                    print(f"{kind:>5} run {k + 1}: wall {run.wall:.2f} s, peak RSS (all processes) "
                          f"{gb(row['total_peak_rss'])} GB, PSS {gb(row['total_peak_pss'])} GB"
                          + (f" (cluster idle before: {gb(box['cluster_idle_rss'])} GB)"
                             if kind == "dask" else "")
                          + f"; {len(doc['sites'])} sites, {len(doc['recordings'])} recordings, "
                          f"{workers} worker processes; load average before {load:.2f}", flush=True)
        finally:
            if cluster_cm is not None:
                cluster_cm.__exit__(None, None, None)
    print()
    for kind, rows in results.items():
        if not rows:
            continue
        walls = [r["wall"] for r in rows]
        what = (f"local, -j {args.jobs}" if kind == "local"
                else f"Dask, {args.workers} workers x 1 thread")
        per = [x for r in rows for x in r["per_recording"]]
        print(f"{what}: wall {fmt_spread(walls, secs, ' s')}; "
              f"{fmt_spread([total / w / 1e6 for w in walls], lambda x: f'{x:.2f}', ' M events/s')}; "
              f"peak RSS summed over every process {fmt_spread([r['total_peak_rss'] for r in rows], gb, ' GB')}; "
              f"PSS {fmt_spread([r['total_peak_pss'] for r in rows], gb, ' GB')}; "
              f"per recording (in its worker) {fmt_spread(per, secs, ' s')}")
    if len(outputs) == 2:
        print(f"same answer local and on Dask: {'yes' if outputs['local'] == outputs['dask'] else 'NO'}")
    print("note: the machine is shared with other work; see the load average above")
    return 0


if __name__ == "__main__":
    sys.exit(main())
