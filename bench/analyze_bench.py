"""Benchmark `kmemleak-offline analyze` end to end on a realistic synthetic kernel recording.

    python bench/analyze_bench.py --events 10000000 [--keep FILE] [--seed S]

Builds a recording like a busy 2-CPU box would produce (kmalloc/kfree/kmem_cache_alloc/
kmem_cache_free, about half the allocations freed, freed pointers re-allocated later, ~1000
kernel stacks of depth 8-24, frees often on the other CPU, a few lost records, comms, a 50k-symbol
kallsyms; sample rows in the recorder's file layout: per ~1 s segment, CPU ring by CPU ring, each
in seq order), then times `kmemleak-offline analyze FILE` as a child process and reports events/s and
the child's peak RSS. For scale it compares, on the same decoded and ordered columns, a naive
replay (a Python dict, one loop iteration per event) with the analyser's vectorised replay stage,
and the naive pipeline (fast load + dict loop) with `analyze` end to end.

Targets at 10M events: >= 2M events/s end to end, peak RSS < 4 GB, replay >= 10x the naive loop.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kmemleak_offline import tracefs
from kmemleak_offline.load import load
from kmemleak_offline.recording import open_recording
from kmemleak_offline.replay import Lost, order_samples, replay_ordered
from kmemleak_offline.synthetic import (
    PERF_CONTEXT_KERNEL,
    RecordingBuilder,
    kernel_symbols,
)

ALLOC = ["kmem:kmalloc//ptr=ptr/size=bytes_alloc/stack/",
         "kmem:kmem_cache_alloc//ptr=ptr/size=bytes_alloc/stack/"]
FREE = ["kmem:kfree//ptr=ptr/", "kmem:kmem_cache_free//ptr=ptr/"]
T0 = 1_000_000_000_000  # 1000 s of uptime: perf timestamps are CLOCK_MONOTONIC
STEP_NS = 1000  # mean event spacing: 1M events/s
SEGMENT_NS = 1_000_000_000  # the recorder hands its converter one spool segment about every second
KMALLOC_SIZES = np.array([8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192])
CACHES = [(b"dentry", 192), (b"inode_cache", 600), (b"filp", 256), (b"skbuff_head_cache", 232),
          (b"vm_area_struct", 176), (b"anon_vma", 88), (b"buffer_head", 104),
          (b"radix_tree_node", 576), (b"ext4_inode_cache", 1080), (b"task_struct", 9856)]
GFP_KERNEL, GFP_ATOMIC = 0xCC0, 0x820


def _stacks(rng: np.random.Generator, addrs: np.ndarray, names: list[str], n: int,
            leaves: list[str]) -> list[list[int]]:
    """n distinct kernel callchains, leaf first: allocator, callers, syscall or kthread entry."""
    index = {nm: i for i, nm in enumerate(names)}
    sizes = np.diff(np.r_[addrs, addrs[-1] + np.uint64(256)]).astype(np.int64)
    tails = [["do_syscall_64", "entry_SYSCALL_64_after_hwframe"], ["kthread", "ret_from_fork"],
             ["worker_thread", "kthread", "ret_from_fork"]]
    out: list[list[int]] = []
    for k in range(n):
        depth = int(rng.integers(8, 25))
        tail = [index[t] for t in tails[0 if k % 5 else 1 + k % 2]]
        mid = rng.integers(0, len(names), depth - 1 - len(tail)).tolist()
        funcs = np.array([index[leaves[k % len(leaves)]], *mid, *tail])
        off = (rng.random(len(funcs)) * np.maximum(sizes[funcs] - 1, 1)).astype(np.int64) + 1
        out.append([PERF_CONTEXT_KERNEL, *(addrs[funcs].astype(np.int64) + off).astype(np.uint64).tolist()])
    return out


def build(path: Path, n_events: int, seed: int = 1) -> dict[str, Any]:
    """Write the benchmark recording; returns what was generated (counts, stacks, symbols)."""
    rng = np.random.default_rng(seed)
    b = RecordingBuilder()
    addrs, names = kernel_symbols(50_000, seed)
    b.add_ksyms(addrs, names)
    km_stacks = b.add_stacks(_stacks(rng, addrs, names, 600, ["__kmalloc_noprof", "__kmalloc_cache_noprof"]))
    kc_stacks = b.add_stacks(_stacks(rng, addrs, names, 400, ["kmem_cache_alloc_noprof"]))
    chains_by_id = b.stacks
    call_site = np.array([chains_by_id[i][2] for i in range(len(chains_by_id))], np.uint64)

    # Pointer lifetimes: chain k uses one pointer for alloc, free, alloc, free, ... (reuse after
    # free); ~90% of chains end with an unfreed alloc, so about half of all allocations are freed.
    n_chains = max(1, int(n_events / 2.7) + 16)
    m = rng.geometric(1 / 1.8, n_chains)
    ends_freed = rng.random(n_chains) < 0.1
    per_chain = 2 * m - 1 + ends_freed
    total = int(per_chain.sum())
    while total < n_events:  # rare for tiny n: pad with more alloc/free pairs
        per_chain[-1] += 2
        total += 2
    chain = np.repeat(np.arange(n_chains), per_chain)[:n_events]
    first = np.r_[0, np.cumsum(per_chain)[:-1]]
    j = np.arange(n_events) - first[chain]
    is_alloc = j % 2 == 0

    is_cache = rng.random(n_chains) < 0.4
    size_class = np.where(is_cache, rng.integers(0, len(CACHES), n_chains),
                          rng.zipf(1.6, n_chains).clip(1, len(KMALLOC_SIZES)) - 1)
    ptr_chain = np.uint64(0xFFFF888100000000) + np.arange(n_chains, dtype=np.uint64) * np.uint64(8192)

    # Times: each chain lives inside the recording; events are spread at ~1M/s, all distinct.
    dur = float(n_events * STEP_NS)
    start = rng.random(n_chains) * dur * 0.95
    span = (dur - start) * rng.random(n_chains) ** 2
    gaps = rng.exponential(1.0, n_events) + 1e-3
    csum = np.cumsum(gaps)
    cum = csum - (csum[first[chain]] - gaps[first[chain]])
    tot = np.bincount(chain, weights=gaps, minlength=n_chains) + 1.0
    tf = start[chain] + span[chain] * cum / tot[chain]
    order = np.argsort(tf, kind="stable")
    t = np.empty(n_events, np.uint64)
    t[order] = np.uint64(T0) + np.arange(n_events, dtype=np.uint64) * np.uint64(STEP_NS) \
        + rng.integers(0, STEP_NS // 2, n_events).astype(np.uint64)

    cpu = rng.integers(0, 2, n_events).astype(np.uint32)
    prev = np.maximum(np.arange(n_events) - 1, 0)
    flip = (rng.random(n_events) < 0.4).astype(np.uint32)
    cpu = np.where(is_alloc, cpu, cpu[prev] ^ flip)  # frees often land on the other CPU

    n_procs = 40
    pids = 1000 + 37 * np.arange(n_procs)
    proc = rng.zipf(1.3, n_events).clip(1, n_procs) - 1
    pid = pids[proc]
    tid = pid + (rng.random(n_events) < 0.3) * rng.integers(1, 4, n_events)
    comms = ["sshd", "bash", "systemd-journal", "nginx", "postgres", "kworker/0:1", "python3",
             "containerd", "chronyd", "rsyslogd"]

    ptr = ptr_chain[chain]
    cls = size_class[chain]
    cache_ev = is_cache[chain]
    counts = {}
    for event, mask in (("kmem:kmalloc", is_alloc & ~cache_ev), ("kmem:kmem_cache_alloc", is_alloc & cache_ev),
                        ("kmem:kfree", ~is_alloc & ~cache_ev), ("kmem:kmem_cache_free", ~is_alloc & cache_ev)):
        idx = np.flatnonzero(mask)
        k = len(idx)
        counts[event] = k
        if not k:
            continue
        fields: dict[str, Any] = {"ptr": ptr[idx]}
        stack_id = None
        if event == "kmem:kmalloc":
            ba = KMALLOC_SIZES[cls[idx]]
            stack_id = np.asarray(km_stacks)[rng.zipf(1.2, k).clip(1, len(km_stacks)) - 1]
            fields |= {"bytes_alloc": ba, "bytes_req": ba - rng.integers(0, 1 + ba // 2, k),
                       "gfp_flags": np.where(rng.random(k) < 0.9, GFP_KERNEL, GFP_ATOMIC),
                       "node": -1, "call_site": call_site[stack_id]}
        elif event == "kmem:kmem_cache_alloc":
            size = np.array([s for _, s in CACHES])[cls[idx]]
            stack_id = np.asarray(kc_stacks)[rng.zipf(1.2, k).clip(1, len(kc_stacks)) - 1]
            fields |= {"bytes_alloc": size, "bytes_req": size, "gfp_flags": GFP_KERNEL, "node": -1,
                       "accounted": rng.random(k) < 0.2, "call_site": call_site[stack_id],
                       "name": np.array([c for c, _ in CACHES], dtype="S")[cls[idx]]}
        else:
            fields |= {"call_site": addrs[rng.integers(0, len(addrs), k)]}
            if event == "kmem:kmem_cache_free":
                fields["name"] = np.array([c for c, _ in CACHES], dtype="S")[cls[idx]]
        b.add_samples(event, t[idx], cpu[idx], pid[idx], tid[idx], fields, stack_id=stack_id)

    key = np.unique((pid.astype(np.int64) << 32) | tid.astype(np.int64))
    upid, utid = key >> 32, key & 0xFFFFFFFF
    b.add_comm(T0, upid, utid, [comms[(p - 1000) // 37 % len(comms)] for p in upid.tolist()])
    b.add_comm(T0 + n_events * STEP_NS // 2, pids[5], pids[5], "make", exec=True)
    n_lost = 3
    lt = np.sort(rng.integers(T0, T0 + n_events * STEP_NS, n_lost)).astype(np.uint64)
    for i in range(n_lost):
        b.add_lost(lt[i], int(rng.integers(0, 2)), int(rng.integers(10, 500)),
                   event=list(counts)[i % len(counts)])
    # rows laid out like `record` writes them: per ~1 s segment, ring by ring, each in seq order
    b.write(path, ALLOC, FREE, start_ns=T0, stop_ns=T0 + n_events * STEP_NS + STEP_NS,
            host={"ncpus": 2}, segment_ns=SEGMENT_NS)
    return {"events": n_events, "counts": counts, "allocs": int(is_alloc.sum()),
            "frees": int((~is_alloc).sum()), "stacks": len(chains_by_id), "ksyms": len(names),
            "lost_records": n_lost}


def replay_comparison(path: Path, repeat: int = 1) -> dict[str, Any]:
    """Naive dict replay vs the analyser's vectorised replay stage, like for like.

    Both get the same columns: every sample decoded (ptr, bytes_alloc) and put in stream order by
    the analyser's own loader and ordering (`prepare` seconds, timed once, counted in neither
    replay). The naive replay is a plain Python dict, one loop iteration per event (including the
    .tolist() it needs to iterate); the vectorised one is `replay_ordered` with no lost windows, so
    both compute the same thing (the allocations still outstanding at the end), which is checked.
    Each is timed `repeat` times; the best is reported.
    """
    t0 = time.perf_counter()
    rec = open_recording(path)
    sm = load(rec).samples
    order = order_samples(sm.ring, sm.seq, sm.time)
    n = len(sm)
    key = np.zeros(n, np.uint64)
    size = np.zeros(n, np.uint64)
    alloc = np.zeros(n, bool)
    for code, name in enumerate(sm.event_names):
        fmt = tracefs.parse_format(rec.metadata["events"][name]["format"], name.split(":")[0])
        rows = np.flatnonzero(sm.event == code)
        cols = sm.decode(fmt, rows, fields=["ptr", "bytes_alloc"])
        key[rows] = cols["ptr"]
        if "bytes_alloc" in cols:
            size[rows] = cols["bytes_alloc"]
            alloc[rows] = True
    st = order.stream
    t, al, pt, sz = order.time, alloc[st], key[st], size[st]
    prepare = time.perf_counter() - t0
    del key, size, alloc

    naive, vec = float("inf"), float("inf")
    live_n = live_v = -1
    no_loss = Lost(ring=np.zeros(0, np.uint32), count=np.zeros(0, np.uint64),
                   start=np.zeros(0, np.uint64), end=np.zeros(0, np.uint64), time=np.zeros(0, np.uint64))
    for _ in range(max(1, repeat)):
        t1 = time.perf_counter()
        live: dict[int, int] = {}
        for a, p, s in zip(al.tolist(), pt.tolist(), sz.tolist(), strict=True):
            if a:
                live[p] = s
            else:
                live.pop(p, None)
        naive = min(naive, time.perf_counter() - t1)
        live_n = len(live)
        del live
        t2 = time.perf_counter()
        res = replay_ordered(time=t, is_alloc=al, key=pt, lost=no_loss,
                             stop_ns=int(t[-1]) if len(t) else 0)
        vec = min(vec, time.perf_counter() - t2)
        live_v = len(res.reports[-1].leaked)
        del res
    return {"prepare": prepare, "naive": naive, "vectorised": vec, "outstanding_naive": live_n,
            "outstanding_vectorised": live_v}


def analyze_command() -> list[str]:
    """The installed console script, else the CLI module from this checkout."""
    exe = shutil.which("kmemleak-offline")
    if exe:
        return [exe]
    return [sys.executable, "-c", "import sys; from kmemleak_offline.cli import main; sys.exit(main())"]


def run_timed(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run cmd; (result with stderr text, wall seconds, peak RSS in GB of that child alone)."""
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(p.pid, 0)
        secs = time.perf_counter() - t0
        err.seek(0)
        code = os.waitstatus_to_exitcode(status)
        return subprocess.CompletedProcess(cmd, code, None, err.read()), secs, usage.ru_maxrss * 1024 / 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=2, help="time analyze (and each replay) N times, report the best")
    ap.add_argument("--keep", type=Path, help="write the recording here and keep it")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if args.events < 1:
        ap.error("--events must be >= 1")
    tmp = None
    if args.keep is None:
        tmp = tempfile.TemporaryDirectory(prefix="kmemleak-bench-")
    path = args.keep or Path(tmp.name) / "bench.parquet"
    rc = 0
    try:
        t0 = time.perf_counter()
        # build in a child so this process stays small while analyze is timed (the builder holds
        # several GB of arrays, which would compete with the analysed process for memory)
        with concurrent.futures.ProcessPoolExecutor(1) as ex:
            info = ex.submit(build, path, args.events, args.seed).result()
        dt = time.perf_counter() - t0
        print(f"build:   {info['events']:,} events ({info['allocs']:,} allocs, {info['frees']:,} frees, "
              f"{info['stacks']} stacks, {info['ksyms']:,} ksyms, {info['lost_records']} lost records) "
              f"in {dt:.1f} s -> {path} ({path.stat().st_size / 1e6:.0f} MB)")

        cmd = [*analyze_command(), "analyze", str(path)]
        wall, rss_gb = float("inf"), 0.0
        for _ in range(args.repeat):  # best of N: the first run also pays for a cold page cache
            proc, secs, rss = run_timed(cmd)
            wall = min(wall, secs)
            rss_gb = max(rss_gb, rss)
            if proc.returncode != 0:
                break
        analyze_rate = None
        if proc.returncode != 0:
            err = proc.stderr.strip().splitlines()
            print(f"analyze: FAILED (exit {proc.returncode}): {' '.join(cmd[-2:])}: "
                  f"{err[-1] if err else 'no message'}")
            rc = 1
        else:
            analyze_rate = args.events / wall
            ok = analyze_rate >= 2e6 and rss_gb < 4
            print(f"analyze: {wall:.2f} s end to end, {analyze_rate / 1e6:.2f} M events/s, "
                  f"peak RSS {rss_gb:.2f} GB  (target >= 2 M events/s and < 4 GB: "
                  f"{'met' if ok else 'NOT met'})")

        cmp = replay_comparison(path, args.repeat)
        naive, vec, prep = cmp["naive"], cmp["vectorised"], cmp["prepare"]
        same = cmp["outstanding_naive"] == cmp["outstanding_vectorised"]
        check = "identical" if same else f"DIFFERENT: {cmp['outstanding_vectorised']:,}"
        print(f"naive:   dict replay loop {naive:.2f} s, {args.events / naive / 1e6:.2f} M events/s "
              f"({cmp['outstanding_naive']:,} outstanding) over decoded, ordered columns "
              f"(prepared in {prep:.1f} s by the analyser's loader, not counted)")
        print(f"speedup: replay stage, same columns: vectorised replay {vec:.2f} s "
              f"({args.events / vec / 1e6:.1f} M events/s) is {naive / vec:.1f}x the naive loop "
              f"(outstanding {check})")
        if not same:
            rc = 1
        if analyze_rate:
            print(f"speedup: end to end: analyze {wall:.2f} s (read, decode, replay, reports) vs naive "
                  f"pipeline {prep + naive:.2f} s (fast load {prep:.2f} s + dict loop {naive:.2f} s, "
                  f"no reports): {(prep + naive) / wall:.2f}x")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return rc


if __name__ == "__main__":
    sys.exit(main())
