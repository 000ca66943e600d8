"""Benchmark `kmemleak-offline analyze` end to end on realistic synthetic kernel recordings.

    python3 bench/analyze_bench.py --events 100000000            # issue 7's acceptance run
    python3 bench/analyze_bench.py --sizes 10000000,30000000,100000000 --keep DIR [--reuse]
    python3 bench/analyze_bench.py --events 1000000 --naive        # small: with the naive replay

The recording is what a busy 2-CPU box gives `record` (kmalloc/kfree/kmem_cache_alloc/
kmem_cache_free at ~1M events/s, ~1000 kernel stacks of depth 8-24, frees often on the other CPU,
freed pointers handed out again, objects allocated before the recording freed in it, a few LOST
records, comms, a 50k-symbol kallsyms), with a FIXED LIVE SET: about `--live` allocations
(default 1,000,000) are outstanding at any time once the first ~2.5 x live events have ramped it
up, whatever the length, and that many are left leaked at the end. 60% of the events are
short-lived alloc/free pairs (median lifetime 30 us); the rest allocate or free long-lived objects
(a uniformly chosen one). It is generated and written segment by segment (1M events = 1 s, as the
recorder's converter writes its spool segments: ring by ring, each ring in seq order, one row group
each; side-band rows in row groups of their own at the end), so building 100M events takes
bounded memory; the build runs in a child process whose peak memory is printed too.

For each size it prints, each measured `--repeat` times (median, min, max):
- read floor: pyarrow reading the sample columns the analyser needs (time, cpu, ring, seq, pid,
  event, raw, stack_id) from every row group, all cores (see bench/_common.py);
- analyze: `kmemleak-offline analyze FILE` as a child process: wall time, events/s, and the peak
  memory SUMMED over its process tree (polled from /proc every 50 ms) with ru_maxrss for
  reference; the leaks it reports next to the generated answer; analyze / read floor;
- jobs: `analyze --jobs 1` vs `--jobs 2` (skipped, saying so, if the CLI has no --jobs);
- naive (on by default up to 2M events, --naive/--no-naive): a plain dict replay vs the
  analyser's vectorised replay over the same decoded columns (needs the whole stream in memory).
With several --sizes, a summary table shows whether peak memory stays flat as the recording grows.

Targets (issue 7): at 100M events >= 3M events/s and <= 3 GB summed peak; at 10M, analyze
within 3x of the read floor. `--growing` builds the previous model instead (about half the
allocations leak, so the live set grows with the recording; built in memory, < ~20M events).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
for _p in (str(ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _common import (
    GB,
    Series,
    build_in_child,
    cli_accepts,
    fmt_spread,
    gb,
    info_path,
    keep_path,
    leak_totals,
    machine_lines,
    read_floor,
    repeat_runs,
    reusable,
    secs,
    spread,
    total_line,
    verdict,
)
from _common import analyze_command as _analyze_command

from kmemleak_offline.synthetic import (
    PERF_CONTEXT_KERNEL,
    RecordingBuilder,
    RecordingStream,
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

LIVE = 1_000_000  # default outstanding allocations
TRANSIENT = 0.6  # share of events that are short-lived alloc/free pairs
TRANSIENT_MEDIAN_NS = 30_000  # their lifetime: lognormal, median 30 us, sigma 1.5
PREEXISTING = 0.01  # share of long-lived frees freeing objects allocated before the recording
NAIVE_AUTO_MAX = 2_000_000  # the naive comparison holds the whole stream: on by default up to here
GENERATOR = 1  # bump when build_live changes what it writes (invalidates --reuse)


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
    """The previous model (`--growing`), built in memory: about half the allocations leak, so the
    live set grows with the recording. Writes it; returns what was generated."""
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


def build_live(path: Path, n_events: int, live: int = LIVE, seed: int = 1,
               segment_events: int = SEGMENT_NS // STEP_NS, host: dict[str, Any] | None = None,
               symbol_seed: int | None = None) -> dict[str, Any]:
    """Write the fixed-live-set recording segment by segment; returns what was generated.

    Model, per block of M events (a quarter of the live set, at most a segment; event i at
    T0 + i us + jitter): 60% are short-lived pairs (alloc, then free a lognormal lifetime later in
    the same block); the other 40% allocate a free slot
    (while fewer than `live` are outstanding, all of them do; then about half) or free a uniformly
    chosen outstanding one, 1% of those frees being of objects allocated before the recording
    (addresses never allocated in it). A slot is one pointer with a fixed kind (kmalloc size class
    or slab cache), so a freed pointer comes back with the same kind; slots are picked at random
    among the free ones, so pointers are reused after free. Frees run on the allocating CPU's
    sibling 40% of the time.

    `host` adds metadata host keys (hostname, kernel_release); `symbol_seed` draws the kernel
    symbols and call chains from a seed of their own (recordings of one kernel share them), the
    events from `seed`.
    """
    rng = np.random.default_rng(seed)
    live = max(0, int(live))
    s = RecordingStream(path, ALLOC, FREE, start_ns=T0, stop_ns=T0 + n_events * STEP_NS + STEP_NS,
                        host={"ncpus": 2, **(host or {})}, row_group_rows=segment_events)
    sym_rng = rng if symbol_seed is None else np.random.default_rng(symbol_seed)
    addrs, names = kernel_symbols(50_000, seed if symbol_seed is None else symbol_seed)
    s.add_ksyms(addrs, names)
    km_stacks = np.asarray(s.add_stacks(_stacks(sym_rng, addrs, names, 600, ["__kmalloc_noprof", "__kmalloc_cache_noprof"])))
    kc_stacks = np.asarray(s.add_stacks(_stacks(sym_rng, addrs, names, 400, ["kmem_cache_alloc_noprof"])))
    chains = s.stacks
    call_site = np.array([chains[i][2] for i in range(len(chains))], np.uint64)
    cache_names = np.array([c for c, _ in CACHES], dtype="S")
    cache_sizes = np.array([z for _, z in CACHES])

    # decisions are taken per block (a quarter of the live set, at most a segment), so the live
    # set is steered finely whatever the segment size; each block has its own time window
    block = max(1000, min(segment_events, live // 4)) if live else segment_events
    n_slots = live + 2 * block + 1000
    slot_cache = rng.random(n_slots) < 0.4
    slot_class = np.where(slot_cache, rng.integers(0, len(CACHES), n_slots),
                          rng.zipf(1.6, n_slots).clip(1, len(KMALLOC_SIZES)) - 1)
    slot_bytes = np.where(slot_cache, cache_sizes[slot_class.clip(0, len(CACHES) - 1)],
                          KMALLOC_SIZES[slot_class]).astype(np.int64)
    slot_ptr = np.uint64(0xFFFF888100000000) + np.arange(n_slots, dtype=np.uint64) * np.uint64(8192)
    pre_base = np.uint64(0xFFFF88F000000000)  # objects from before the recording: own range
    allocated = np.zeros(n_slots, bool)
    alloc_cpu = np.zeros(n_slots, np.uint32)

    n_procs = 40
    pids = 1000 + 37 * np.arange(n_procs)
    comms = ["sshd", "bash", "systemd-journal", "nginx", "postgres", "kworker/0:1", "python3",
             "containerd", "chronyd", "rsyslogd"]
    events = ["kmem:kmalloc", "kmem:kmem_cache_alloc", "kmem:kfree", "kmem:kmem_cache_free"]
    n_lost = 3
    lost_t = np.sort(rng.integers(T0, T0 + max(1, n_events) * STEP_NS, n_lost)).astype(np.uint64)
    lost_cpu = rng.integers(0, 2, n_lost)
    lost_n = rng.integers(10, 500, n_lost)

    counts = dict.fromkeys(events, 0)
    outstanding = n_pre = g0 = 0
    seg_end = 0
    while g0 < n_events:
        if g0 == seg_end:
            seg_end = min(n_events, g0 + segment_events)
        m = min(block, seg_end - g0)
        n_tr = int(m * TRANSIENT) // 2
        n_long = m - 2 * n_tr
        deficit = live - outstanding
        a = n_long if deficit >= n_long else max(0, (n_long + deficit) // 2)
        f = n_long - a
        f_pre = int(rng.binomial(f, PREEXISTING)) if f else 0
        f_live = min(f - f_pre, outstanding)
        f_pre = f - f_live

        free_slots = np.flatnonzero(~allocated)
        pick = free_slots[rng.choice(len(free_slots), a + n_tr, replace=False)]
        new, tr = pick[:a], pick[a:]
        held = np.flatnonzero(allocated)
        victims = held[rng.choice(len(held), f_live, replace=False)] if f_live else held[:0]
        # rows: long allocs, transient allocs, long frees, frees of older objects, transient frees
        slot = np.concatenate([new, tr, victims, np.full(f_pre, -1), tr])
        is_alloc = np.zeros(m, bool)
        is_alloc[: a + n_tr] = True
        seg_ns = m * STEP_NS
        u_tr = rng.random(n_tr)
        life = rng.lognormal(np.log(TRANSIENT_MEDIAN_NS), 1.5, n_tr) / seg_ns
        u_free = u_tr + life
        late = u_free >= 1.0
        u_free[late] = u_tr[late] + (1.0 - u_tr[late]) * rng.random(int(late.sum()))
        u = np.concatenate([rng.random(a), u_tr, rng.random(f_live + f_pre), u_free])
        rank = np.empty(m, np.int64)
        rank[np.argsort(u, kind="stable")] = np.arange(m)
        t = (np.uint64(T0) + (np.uint64(g0) + rank.astype(np.uint64)) * np.uint64(STEP_NS)
             + rng.integers(0, STEP_NS // 2, m).astype(np.uint64))

        cpu = rng.integers(0, 2, m).astype(np.uint32)
        flip = (rng.random(m) < 0.4).astype(np.uint32)
        i_vic = slice(a + n_tr, a + n_tr + f_live)
        i_trf = slice(m - n_tr, m)
        cpu[i_vic] = alloc_cpu[victims] ^ flip[i_vic]
        cpu[i_trf] = cpu[a: a + n_tr] ^ flip[i_trf]
        alloc_cpu[new] = cpu[:a]

        known = slot >= 0
        ptr = np.empty(m, np.uint64)
        ptr[known] = slot_ptr[slot[known]]
        ptr[~known] = pre_base + (np.uint64(n_pre) + np.arange(f_pre, dtype=np.uint64)) * np.uint64(64)
        n_pre += f_pre
        cache_ev = np.empty(m, bool)
        cache_ev[known] = slot_cache[slot[known]]
        cache_ev[~known] = rng.random(f_pre) < 0.4
        cls = np.empty(m, np.int64)
        cls[known] = slot_class[slot[known]]
        cls[~known] = np.where(cache_ev[~known], rng.integers(0, len(CACHES), f_pre),
                               rng.zipf(1.6, f_pre).clip(1, len(KMALLOC_SIZES)) - 1)
        proc = rng.zipf(1.3, m).clip(1, n_procs) - 1
        pid = pids[proc]
        tid = pid + (rng.random(m) < 0.3) * rng.integers(1, 4, m)

        for event, mask in zip(events, (is_alloc & ~cache_ev, is_alloc & cache_ev,
                                        ~is_alloc & ~cache_ev, ~is_alloc & cache_ev), strict=True):
            idx = np.flatnonzero(mask)
            k = len(idx)
            counts[event] += k
            if not k:
                continue
            fields: dict[str, Any] = {"ptr": ptr[idx]}
            stack_id = None
            if event == "kmem:kmalloc":
                ba = KMALLOC_SIZES[cls[idx]]
                stack_id = km_stacks[rng.zipf(1.2, k).clip(1, len(km_stacks)) - 1]
                fields |= {"bytes_alloc": ba, "bytes_req": ba - rng.integers(0, 1 + ba // 2, k),
                           "gfp_flags": np.where(rng.random(k) < 0.9, GFP_KERNEL, GFP_ATOMIC),
                           "node": -1, "call_site": call_site[stack_id]}
            elif event == "kmem:kmem_cache_alloc":
                size = cache_sizes[cls[idx]]
                stack_id = kc_stacks[rng.zipf(1.2, k).clip(1, len(kc_stacks)) - 1]
                fields |= {"bytes_alloc": size, "bytes_req": size, "gfp_flags": GFP_KERNEL, "node": -1,
                           "accounted": rng.random(k) < 0.2, "call_site": call_site[stack_id],
                           "name": cache_names[cls[idx]]}
            else:
                fields |= {"call_site": addrs[rng.integers(0, len(addrs), k)]}
                if event == "kmem:kmem_cache_free":
                    fields["name"] = cache_names[cls[idx]]
            s.add_samples(event, t[idx], cpu[idx], pid[idx], tid[idx], fields, stack_id=stack_id)
        lo, hi = T0 + g0 * STEP_NS, T0 + (g0 + m) * STEP_NS
        for i in np.flatnonzero((lost_t >= lo) & (lost_t < hi)).tolist():
            s.add_lost(lost_t[i], int(lost_cpu[i]), int(lost_n[i]), event=events[i % len(events)])
        if g0 + m == seg_end:
            s.end_segment()

        allocated[victims] = False
        allocated[new] = True
        outstanding += a - f_live
        g0 += m
        del slot, is_alloc, u, rank, t, cpu, flip, ptr, cache_ev, cls, pid, tid, proc

    tids = (pids[:, None] + np.arange(4)[None, :]).ravel()
    s.add_comm(T0, np.repeat(pids, 4), tids, [comms[(p - 1000) // 37 % len(comms)] for p in np.repeat(pids, 4).tolist()])
    s.add_comm(T0 + n_events * STEP_NS // 2, pids[5], pids[5], "make", exec=True)
    s.close()
    allocs = counts["kmem:kmalloc"] + counts["kmem:kmem_cache_alloc"]
    return {"model": "live", "events": n_events, "counts": counts, "allocs": allocs,
            "frees": n_events - allocs, "frees_of_older_objects": n_pre, "live_target": live,
            "outstanding": int(allocated.sum()), "leaked_bytes": int(slot_bytes[allocated].sum()),
            "stacks": len(chains), "ksyms": len(names), "lost_records": n_lost,
            "segments": s.segments}


def replay_comparison(path: Path, repeat: int = 1) -> dict[str, Any]:
    """Naive dict replay vs the analyser's vectorised replay stage, like for like.

    Both get the same columns: every sample decoded (ptr, bytes_alloc) and put in stream order by
    the analyser's own loader and ordering (`prepare` seconds, timed once, counted in neither
    replay). The naive replay is a plain Python dict, one loop iteration per event (including the
    .tolist() it needs to iterate); the vectorised one is `replay_ordered` with no lost windows, so
    both compute the same thing (the allocations still outstanding at the end), which is checked.
    Each is timed `repeat` times; the best is reported. Uses the analyser's internals (imported
    here, so a change to them only disables this comparison).
    """
    from kmemleak_offline.format import tracefs
    from kmemleak_offline.format.recording import open_recording
    from kmemleak_offline.load import load
    from kmemleak_offline.replay import Lost, order_samples, replay_ordered

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


_ANALYZE_CMD: str | None = None  # --analyze-cmd


def analyze_command() -> list[str]:
    """The analyze CLI: --analyze-cmd, else the installed console script, else this checkout's."""
    return _analyze_command(_ANALYZE_CMD)


# ----------------------------------------------------------------------------- the run


def _params(args: argparse.Namespace, events: int) -> dict[str, Any]:
    if args.growing:
        return {"model": "growing", "events": events, "seed": args.seed}
    return {"model": "live", "events": events, "live": args.live, "seed": args.seed, "generator": GENERATOR}


def _file_name(p: dict[str, Any]) -> str:
    if p["model"] == "growing":
        return f"kernel-growing-{p['events']}ev-s{p['seed']}.parquet"
    return f"kernel-{p['events']}ev-live{p['live']}-s{p['seed']}.parquet"


def _build_only(args: argparse.Namespace) -> int:
    """Child side of a build: write the recording and its info beside it."""
    path = Path(args.build_only)
    params = _params(args, args.events)
    t0 = time.perf_counter()
    if args.growing:
        info = build(path, args.events, args.seed)
        info["model"] = "growing"
    else:
        info = build_live(path, args.events, args.live, args.seed)
    info["seconds"] = time.perf_counter() - t0
    info["params"] = params
    info_path(path).write_text(json.dumps(info, indent=1) + "\n")
    return 0


def _describe_build(info: dict[str, Any]) -> str:
    extra = ""
    if info.get("model") == "live":
        extra = (f", live target {info['live_target']:,}, outstanding at the end {info['outstanding']:,} "
                 f"({info['leaked_bytes'] / 1e6:,.1f} MB), {info['frees_of_older_objects']:,} frees of "
                 f"objects from before the recording, {info['segments']} segments")
    return (f"{info['events']:,} events ({info['allocs']:,} allocs, {info['frees']:,} frees{extra}, "
            f"{info['stacks']} stacks, {info['ksyms']:,} ksyms, {info['lost_records']} lost records)")


def _prepare(args: argparse.Namespace, events: int, folder: Path) -> tuple[Path, dict[str, Any] | None, str]:
    """Build (or reuse) the recording for one size: (path, info, what happened)."""
    params = _params(args, events)
    path = keep_path(args.keep, _file_name(params)) if args.keep else folder / _file_name(params)
    if args.reuse and (info := reusable(path, params)) is not None:
        return path, info, f"reused {path} ({path.stat().st_size / 1e6:,.0f} MB, built in {info['seconds']:.1f} s)"
    for stale in (path, info_path(path)):
        stale.unlink(missing_ok=True)
    extra = ["--events", str(events), "--seed", str(args.seed)]
    extra += ["--growing"] if args.growing else ["--live", str(args.live)]
    run, info = build_in_child(Path(__file__), path, extra)
    if not run.ok or info is None:
        return path, None, f"FAILED (exit {run.returncode}): {run.error_line()}"
    return path, info, (f"in {run.wall:.1f} s, build peak RSS {gb(run.peak_rss)} GB (summed over its "
                        f"process tree) -> {path} ({path.stat().st_size / 1e6:,.0f} MB)")


def _analyze_lines(events: int, info: dict[str, Any] | None, series: Series) -> tuple[list[str], bool]:
    """Figures of the analyze runs, the leak totals it reported, the targets."""
    r = series.runs[-1]
    if not series.ok:
        return [f"analyze: FAILED (exit {r.returncode}): {' '.join(r.cmd[-2:])}: {r.error_line()}"], False
    out = [f"analyze: {series.line(events)}"]
    totals = leak_totals(r.stdout)
    tl = total_line(r.stdout)
    rep = "no leak report parsed" if totals is None else \
        f"{totals[1]:,} objects, {totals[0]:,} bytes in {totals[2]:,} groups"
    gen = ""
    if info and info.get("model") == "live":
        gen = f"; generated: {info['outstanding']:,} objects, {info['leaked_bytes']:,} bytes outstanding at the end"
    out.append(f"         final report: {rep}{' (' + tl + ')' if tl else ''}{gen}")
    if totals and totals[3]:
        out.append(f"         (+ {totals[3]} early reports at LOST records: like perf-prof, the analyser reports "
                   "what is outstanding at a LOST record and forgets it, so the final report holds less)")
    _, med, _ = spread(series.walls())
    rate = events / med
    peak = max(series.peaks())
    out.append(f"         issue 7 targets (for 100M events): >= 3 M events/s: {verdict(rate >= 3e6)} "
               f"({rate / 1e6:.2f}); summed peak RSS <= 3 GB: {verdict(peak <= 3 * GB)} ({gb(peak)} GB)")
    return out, True


def _naive_lines(path: Path, events: int, repeat: int, analyze_wall: float | None) -> tuple[list[str], bool]:
    try:
        cmp = replay_comparison(path, repeat)
    except (ImportError, AttributeError, TypeError) as exc:  # the analyser's internals moved on
        return [f"naive:   skipped: the comparison uses analyser internals that changed ({exc})",
                "speedup: not measured"], True
    naive, vec, prep = cmp["naive"], cmp["vectorised"], cmp["prepare"]
    same = cmp["outstanding_naive"] == cmp["outstanding_vectorised"]
    check = "identical" if same else f"DIFFERENT: {cmp['outstanding_vectorised']:,}"
    out = [(f"naive:   dict replay loop {naive:.2f} s, {events / naive / 1e6:.2f} M events/s "
           f"({cmp['outstanding_naive']:,} outstanding) over decoded, ordered columns "
           f"(prepared in {prep:.1f} s by the analyser's loader, not counted)"),
           (f"speedup: replay stage, same columns: vectorised replay {vec:.2f} s "
           f"({events / vec / 1e6:.1f} M events/s) is {naive / vec:.1f}x the naive loop "
           f"(outstanding {check})")]
    if analyze_wall:
        out.append(f"speedup: end to end: analyze {analyze_wall:.2f} s (read, decode, replay, reports) vs "
                   f"naive pipeline {prep + naive:.2f} s (fast load {prep:.2f} s + dict loop {naive:.2f} s, "
                   f"no reports): {(prep + naive) / analyze_wall:.2f}x")
    return out, same


def _bench_size(args: argparse.Namespace, events: int, folder: Path, jobs_ok: bool) -> dict[str, Any]:
    """Build (or reuse), read floor, analyze, jobs, naive for one size; prints as it goes."""
    row: dict[str, Any] = {"events": events, "ok": True}
    path, info, how = _prepare(args, events, folder)
    print(f"build:   {_describe_build(info) if info else ''}{' ' if info else ''}{how}", flush=True)
    if info is None:
        row["ok"] = False
        return row
    row.update(path=path, info=info, mb=path.stat().st_size / 1e6)

    floors: list[float] = []
    floor_rss: list[float] = []
    good: dict[str, Any] = {}
    for _ in range(args.repeat):
        run, fl = read_floor(path)
        if not run.ok or not fl:
            print(f"read:    FAILED (exit {run.returncode}): {run.error_line()}")
            break
        good = fl
        floors.append(fl["seconds"])
        floor_rss.append(run.peak_rss)
    if floors:
        row["floor"] = spread(floors)[1]
        print(f"read:    floor (pyarrow, {good['rows']:,} rows x 8 sample columns, {good['bytes'] / GB:.2f} GB "
              f"decoded, every row group, all cores): {fmt_spread(floors, secs, ' s')}; "
              f"{events / row['floor'] / 1e6:.2f} M events/s; peak RSS {gb(max(floor_rss))} GB", flush=True)

    cmd = [*analyze_command(), "analyze", str(path)]
    series = repeat_runs(cmd, args.repeat)
    lines, ok = _analyze_lines(events, info, series)
    print("\n".join(lines), flush=True)
    wall = None
    if ok:
        wall = spread(series.walls())[1]
        row.update(wall=wall, rate=events / wall, peak=max(series.peaks()),
                   ru=max(r.ru_maxrss for r in series.runs))
        if "floor" in row:
            ratio = wall / row["floor"]
            row["ratio"] = ratio
            print(f"         analyze / read floor = {ratio:.2f}x (median over median; target at 10M "
                  f"events: <= 3x: {verdict(ratio <= 3)})")
    else:
        row["ok"] = False

    if args.jobs_compare:
        if not jobs_ok:
            print("jobs:    skipped: this analyze CLI has no --jobs option yet")
        else:
            walls = {}
            for j in (1, 2):
                sj = repeat_runs([*cmd, "--jobs", str(j)], args.repeat)
                if not sj.ok:
                    print(f"jobs:    --jobs {j}: FAILED (exit {sj.runs[-1].returncode}): {sj.runs[-1].error_line()}")
                    row["ok"] = False
                    continue
                walls[j] = spread(sj.walls())[1]
                print(f"jobs:    --jobs {j}: {sj.line(events)}", flush=True)
            if len(walls) == 2:
                print(f"jobs:    --jobs 2 is {walls[1] / walls[2]:.2f}x --jobs 1 (median wall times)")

    naive = args.naive if args.naive is not None else events <= NAIVE_AUTO_MAX
    if naive:
        lines, same = _naive_lines(path, events, args.repeat, wall)
        print("\n".join(lines), flush=True)
        row["ok"] &= same
    else:
        print(f"naive:   off ({events:,} events > {NAIVE_AUTO_MAX:,}: it holds the whole stream in memory; "
              "--naive turns it on)")
    return row


def _summary(rows: list[dict[str, Any]]) -> list[str]:
    done = [r for r in rows if "wall" in r]
    if len(done) < 2:
        return []
    out = ["", "summary: peak memory against the recording's length (live set fixed)" if
           all(r["info"].get("model") == "live" for r in done) else "summary:",
           (f"{'events':>13} {'outstanding':>12} {'file MB':>8} {'floor s':>8} {'analyze s':>10} "
           f"{'M ev/s':>7} {'x floor':>8} {'peak RSS GB':>12} {'ru_maxrss GB':>13}")]
    for r in done:
        out.append(f"{r['events']:>13,} {r['info'].get('outstanding', 0):>12,} {r['mb']:>8,.0f} "
                   f"{r.get('floor', float('nan')):>8.2f} {r['wall']:>10.2f} {r['rate'] / 1e6:>7.2f} "
                   f"{r.get('ratio', float('nan')):>8.2f} {gb(r['peak']):>12} {gb(r['ru']):>13}")
    first, last = done[0], done[-1]
    out.append(f"peak RSS grew {last['peak'] / first['peak']:.2f}x while the recording grew "
               f"{last['events'] / first['events']:.1f}x (flat = memory bounded by the live set, not the length)")
    return out


def _sizes(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower().replace("_", "")
        mult = 1
        if part.endswith("m"):
            part, mult = part[:-1], 1_000_000
        elif part.endswith("k"):
            part, mult = part[:-1], 1000
        out.append(int(float(part) * mult))
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError("sizes must be positive event counts")
    return out


def main(argv: list[str] | None = None) -> int:
    global _ANALYZE_CMD
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000, help="events in the recording (default 1M)")
    ap.add_argument("--sizes", type=_sizes, help="several sizes, e.g. 10M,30M,100M: each built and measured, "
                    "then a summary of peak memory per size")
    ap.add_argument("--live", type=int, default=LIVE, help=f"outstanding allocations (default {LIVE:,}; "
                    "reached after ~2.5x that many events)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement (median, min, max shown)")
    ap.add_argument("--keep", type=Path, help="keep the recordings: a DIR (one file per size), or FILE.parquet")
    ap.add_argument("--reuse", action="store_true", help="with --keep: reuse a recording built before with "
                    "the same parameters instead of building it again")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--naive", action=argparse.BooleanOptionalAction, default=None,
                    help=f"the naive dict-replay comparison (default: on up to {NAIVE_AUTO_MAX:,} events)")
    ap.add_argument("--jobs-compare", action=argparse.BooleanOptionalAction, default=True,
                    help="also time analyze --jobs 1 and --jobs 2 (default on; skipped if the CLI lacks --jobs)")
    ap.add_argument("--growing", action="store_true", help="the previous model: about half the allocations "
                    "leak, the live set grows with the recording (built in memory)")
    ap.add_argument("--analyze-cmd", metavar="CMD", help="the analyze CLI to time (shell words, without "
                    "'analyze'), e.g. 'python3 -m kmemleak_offline.cli'; default: the installed kmemleak-offline")
    ap.add_argument("--build-only", metavar="FILE", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.events < 1:
        ap.error("--events must be >= 1")
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    if args.build_only:
        return _build_only(args)
    sizes = args.sizes or [args.events]
    if args.keep is not None and args.keep.suffix == ".parquet" and len(sizes) > 1:
        ap.error("--keep FILE.parquet holds one recording: give a directory with --sizes")
    if args.reuse and args.keep is None:
        ap.error("--reuse needs --keep")
    _ANALYZE_CMD = args.analyze_cmd

    print("\n".join(machine_lines()))
    print(f"analyze: {' '.join(analyze_command())} analyze FILE; --repeat {args.repeat}; "
          f"model: {'growing (about half leak)' if args.growing else f'fixed live set of {args.live:,}'}",
          flush=True)
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="kmemleak-bench-")
    folder = Path(tmp.name) if tmp else args.keep
    jobs_ok = args.jobs_compare and cli_accepts(analyze_command(), "analyze", "--jobs")
    rows = []
    try:
        for i, n in enumerate(sizes):
            if len(sizes) > 1:
                print(f"\n== {n:,} events ==", flush=True)
            rows.append(_bench_size(args, n, folder, jobs_ok))
            if tmp is not None and i + 1 < len(sizes):  # not kept: free the disk before the next size
                for f in folder.iterdir():
                    f.unlink()
        print("\n".join(_summary(rows)))
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
