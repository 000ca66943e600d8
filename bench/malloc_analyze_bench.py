"""Benchmark `kmemleak-offline analyze` on a synthetic `record --malloc -g -p PID` recording.

    python3 bench/malloc_analyze_bench.py [--samples 3000000] [--live 100000] [--repeat 3] [--keep DIR]

The recording is what `record --malloc -g -p 4242` writes for a 4-thread program on 2 CPUs: uprobe
entry and return samples of glibc's malloc, calloc and realloc and entry samples of free (the
recorder's probe definitions, metadata and event specs: recorder/probes.py; the tracefs format
texts the kernel gives those probes), per-CPU rings, user call chains on the return samples, the
program's and libc's mappings (mmap rows) and embedded symbol tables (usym rows), comms. About
`--live` blocks are outstanding at any time once ramped up; half the calls are short-lived
malloc/calloc + free pairs (sometimes freed by another thread), 10% are reallocs (30% of them
realloc(NULL, n), whose internal malloc call hits the malloc probes too, nested; the rest grow in
place or move), the others allocate or free long-lived blocks; 1% of those frees are of blocks
allocated before the recording started, and one malloc in 10,000 fails (returns NULL).
Everything is generated and written segment by segment (bench/analyze_bench.py's way).

It times `kmemleak-offline analyze FILE` as a child process `--repeat` times (median, min, max)
with the peak memory summed over its process tree (bench/_common.py), prints uprobe samples/s,
the read floor, and checks that the final report's leaked bytes and objects equal what the
generator left outstanding. Targets (issue 7): >= 1.5M uprobe samples/s, <= 1 GB.
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
    build_in_child,
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

from kmemleak_offline.synthetic import PERF_CONTEXT_USER, RecordingStream
from recorder.probes import ALLOCATORS, DEFAULT_LIBC, ProbeDef, malloc_event_specs, probe_metadata

PID = 4242
RECORDER_PID = 4200
GROUP = f"kmlo_{RECORDER_PID}"
FUNCS = ("malloc", "calloc", "realloc", "free")
LIBC_OFFSETS = {"malloc": 0x98930, "calloc": 0x996E0, "realloc": 0x99130, "free": 0x98EF9}
THREADS = 4
THREAD_WEIGHTS = np.array([0.4, 0.3, 0.2, 0.1])
APP = "/opt/kmlo-bench/bin/app"
APP_BUILD_ID = bytes.fromhex("5b1e7c0ffee0ddba11ab1e5eed5ca1ab1e000001")
LIBC_BUILD_ID = bytes.fromhex("93ac61ec5a8eb1396f9fbd350e3169a558528a40")
APP_BASE = 0x5555_5555_4000  # where the program is mapped (its vaddr 0 there)
LIBC_BASE = 0x7FFF_F7D8_0000
LIBC_TEXT = (0x26000, 0x155000)  # file offset = vaddr, length of libc's text segment
HEAP = 0x5555_5600_0000
T0 = 2_000_000_000_000
STEP_NS = 2000  # one allocator call every 2 us (all threads): ~0.9M uprobe samples/s
SEGMENT_NS = 1_000_000_000
LIVE = 100_000
PAIRS = 0.25  # share of calls that are (alloc, free) pairs: 2 calls each, so half the calls
REALLOCS = 0.10
REALLOC_NULL, REALLOC_MOVE = 0.3, 0.35  # of reallocs; the rest grow in place
PREEXISTING = 0.01  # of long-lived frees
MALLOC_FAILS = 1e-4
GENERATOR = 1


# ----------------------------------------------------------------------------- probes and formats

_TYPES = {"u64": ("u64", 8, 0, "%Lu"), "x64": ("u64", 8, 0, "0x%Lx"), "s32": ("s32", 4, 1, "%d"),
          "u32": ("u32", 4, 0, "%u"), "x32": ("u32", 4, 0, "0x%x")}
_COMMON = ("\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n"
           "\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n"
           "\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n"
           "\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n")


def uprobe_format(d: ProbeDef, event_id: int) -> str:
    """The tracefs `format` text the kernel gives a uprobe (entry) or uretprobe (return) event
    with these fetchargs: __probe_ip (entry) or __probe_func, __probe_ret_ip (return), then the
    arguments packed at their sizes."""
    if d.kind == "return":
        fields = [("unsigned long", "__probe_func", 8, 0), ("unsigned long", "__probe_ret_ip", 8, 0)]
        head, refs = "(%lx <- %lx)", ["REC->__probe_func", "REC->__probe_ret_ip"]
    else:
        fields = [("unsigned long", "__probe_ip", 8, 0)]
        head, refs = "(%lx)", ["REC->__probe_ip"]
    shows = []
    for arg in d.fetchargs:
        name, spec = arg.split("=", 1)
        ctype, size, signed, show = _TYPES[spec.rsplit(":", 1)[1]]
        fields.append((ctype, name, size, signed))
        shows.append(f"{name}={show}")
        refs.append(f"REC->{name}")
    lines, off = [], 8
    for ctype, name, size, signed in fields:
        lines.append(f"\tfield:{ctype} {name};\toffset:{off};\tsize:{size};\tsigned:{signed};\n")
        off += size
    fmt = " ".join([head, *shows])
    return (f"name: {d.name}\nID: {event_id}\nformat:\n{_COMMON}{''.join(lines)}\n"
            f'print fmt: "{fmt}", {", ".join(refs)}\n')


def probe_defs() -> list[ProbeDef]:
    """What `record --malloc` creates for a libc defining malloc, calloc, realloc and free."""
    defs = []
    for func in FUNCS:
        entry, ret = ALLOCATORS[func]
        off = LIBC_OFFSETS[func]
        defs.append(ProbeDef(GROUP, func, "entry", func, func, DEFAULT_LIBC, off, tuple(entry)))
        if ret is not None:
            defs.append(ProbeDef(GROUP, f"{func}_ret", "return", func, func, DEFAULT_LIBC, off, tuple(ret)))
    return defs


# ----------------------------------------------------------------------------- user space

_VERBS = ("parse", "load", "build", "read", "write", "encode", "decode", "insert", "copy", "make",
          "append", "grow", "split", "render", "handle", "open", "init", "clone", "resolve", "format")
_NOUNS = ("buffer", "node", "list", "table", "string", "record", "request", "entry", "config",
          "token", "frame", "message", "cache", "tree", "block", "header", "field", "value", "path", "event")


def app_symbols(rng: np.random.Generator, n: int = 300) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(vaddr, size, name) of the program's functions, `main` last, in a text segment at 0x1000."""
    combos = [f"{v}_{w}" for v in _VERBS for w in _NOUNS]
    names = [combos[i] for i in rng.choice(len(combos), n - 1, replace=False)] + ["main"]
    sizes = rng.integers(4, 64, n) * 16
    vaddr = 0x1100 + np.r_[0, np.cumsum(sizes[:-1])]
    return vaddr.astype(np.uint64), sizes.astype(np.uint64), names


def user_stacks(rng: np.random.Generator, vaddr: np.ndarray, sizes: np.ndarray, n: int) -> list[list[int]]:
    """n user call chains as a uretprobe sees them: the caller's return address first, then its
    callers, main, __libc_start_call_main."""
    libc_start = LIBC_BASE + 0x271D0 + 0x7A
    out = []
    for _ in range(n):
        depth = int(rng.integers(2, 9))
        funcs = rng.choice(len(vaddr) - 1, depth, replace=False).tolist() + [len(vaddr) - 1]
        frames = [APP_BASE + int(vaddr[f]) + int(rng.integers(5, max(6, int(sizes[f]) - 1))) for f in funcs]
        out.append([PERF_CONTEXT_USER, *frames, libc_start])
    return out


# ----------------------------------------------------------------------------- the recording


def build(path: Path, n_samples: int, live: int = LIVE, seed: int = 1) -> dict[str, Any]:
    """Write the recording (about n_samples uprobe samples); returns the counts and the answer."""
    rng = np.random.default_rng(seed)
    defs = probe_defs()
    alloc_specs, free_specs = malloc_event_specs(defs, stacks=True)
    formats = {d.event: uprobe_format(d, 2326 + i) for i, d in enumerate(defs)}
    ev = {(d.func, d.kind): d.event for d in defs}
    # samples per call, about: a pair is 3 samples in 2 calls, a realloc 2 (4 if nested), a long-lived
    # call 2 (alloc) or 1 (free), half each once ramped up
    per_call = 2 * PAIRS * 1.5 + REALLOCS * (2 + 2 * REALLOC_NULL) + (1 - 2 * PAIRS - REALLOCS) * 1.5
    n_calls = max(10, int(n_samples / per_call))
    duration = n_calls * STEP_NS
    s = RecordingStream(path, alloc_specs, free_specs, formats, start_ns=T0, stop_ns=T0 + duration + STEP_NS,
                        host={"ncpus": 2},
                        options={"pids": [PID], "call_graph": True, "userspace_filters": {},
                                 "malloc": {"lib": DEFAULT_LIBC, "prefix": ""}},
                        metadata={"probes": probe_metadata(defs)}, row_group_rows=1 << 20)

    vaddr, fsizes, fnames = app_symbols(rng)
    stacks = np.asarray(s.add_stacks(user_stacks(rng, vaddr, fsizes, 300)))
    chains = s.stacks
    ret_ip = np.array([chains[i][1] for i in range(len(chains))], np.uint64)  # by stack id: first frame
    text_len = int(vaddr[-1] + fsizes[-1]) - 0x1000
    tids = PID + np.arange(THREADS)
    s.add_comm(T0, PID, tids, ["app"] + [f"app-worker-{i}" for i in range(1, THREADS)])
    s.add_mmap(T0, PID, PID, [APP_BASE + 0x1000, LIBC_BASE + LIBC_TEXT[0]], [(text_len + 4095) // 4096 * 4096,
               LIBC_TEXT[1]], [0x1000, LIBC_TEXT[0]], [APP, DEFAULT_LIBC], [APP_BUILD_ID, LIBC_BUILD_ID])
    s.add_usyms(np.r_[vaddr, 0, 0x1000], np.r_[fsizes, 0x1000, text_len],
                [*fnames, "[PT_LOAD offset=0x0]", "[PT_LOAD offset=0x1000]"], APP, APP_BUILD_ID)
    lib_names = ["__libc_start_call_main", *FUNCS]
    lib_addr = [0x271D0, *(LIBC_OFFSETS[f] - (9 if f == "free" else 0) for f in FUNCS)]
    s.add_usyms(np.r_[lib_addr, LIBC_TEXT[0]], [0xB0, 0x300, 0x200, 0x600, 0x140, LIBC_TEXT[1]],
                [*lib_names, f"[PT_LOAD offset={LIBC_TEXT[0]:#x}]"], DEFAULT_LIBC, LIBC_BUILD_ID)
    probe_ip = {f: np.uint64(LIBC_BASE + LIBC_OFFSETS[f]) for f in FUNCS}
    func_addr = {f: np.uint64(LIBC_BASE + LIBC_OFFSETS[f]) for f in ("malloc", "calloc", "realloc")}

    block = max(1000, min(SEGMENT_NS // STEP_NS, live // 4)) if live else SEGMENT_NS // STEP_NS
    n_slots = live + 3 * block + 1000
    allocated = np.zeros(n_slots, bool)
    size_of = np.zeros(n_slots, np.int64)
    slot_ptr = np.uint64(HEAP) + np.arange(n_slots, dtype=np.uint64) * np.uint64(256)
    older = np.uint64(0x5555_5500_0000)  # blocks from before the recording
    home_cpu = np.arange(THREADS) % 2
    tally = {"calls": 0, "failed_mallocs": 0, "frees_of_older_blocks": 0, "nested_mallocs": 0,
             "cross_thread_frees": 0}
    counts: dict[str, int] = {}

    def add(blk: dict[str, np.ndarray], func: str, kind_: str, rows: np.ndarray, dt: Any,
            fields: dict[str, Any], with_stack: bool = False) -> None:
        """Samples of one probe for some calls of the block (rows), dt after each call's start."""
        if len(rows):
            name = ev[(func, kind_)]
            counts[name] = counts.get(name, 0) + len(rows)
            cpu = blk["cpu"][rows]
            s.add_samples(name, blk["time"][rows] + dt, cpu, PID, blk["tid"][rows], fields,
                          stack_id=blk["stack"][rows] if with_stack else None, ring=cpu)

    outstanding = n_older = c0 = 0
    seg_end = 0
    while c0 < n_calls:
        if c0 == seg_end:
            seg_end = min(n_calls, c0 + SEGMENT_NS // STEP_NS)
        m = min(block, seg_end - c0)
        n_pair = int(m * PAIRS)
        n_re = int(m * REALLOCS)
        n_re_null = int(n_re * REALLOC_NULL)
        n_re_move = int(n_re * REALLOC_MOVE)
        n_re_live = n_re - n_re_null
        n_long = m - 2 * n_pair - n_re
        n_re_live = min(n_re_live, outstanding)
        n_re_null = n_re - n_re_live
        n_re_move = min(n_re_move, n_re_live)
        deficit = live - outstanding - n_re_null
        a = n_long if deficit >= n_long else max(0, (n_long + deficit) // 2)
        f = n_long - a
        f_old = int(rng.binomial(f, PREEXISTING)) if f else 0
        f_live = min(f - f_old, outstanding - n_re_live)
        f_old = f - f_live

        free_slots = np.flatnonzero(~allocated)
        new = free_slots[rng.choice(len(free_slots), a + n_pair + n_re_null + n_re_move, replace=False)]
        new_long, new_pair = new[:a], new[a: a + n_pair]
        new_null, new_move = new[a + n_pair: a + n_pair + n_re_null], new[a + n_pair + n_re_null:]
        held = np.flatnonzero(allocated)
        pick = held[rng.choice(len(held), f_live + n_re_live, replace=False)]
        victims, re_old = pick[:f_live], pick[f_live:]

        # calls: kind 0 malloc, 1 calloc, 2 realloc, 3 free; rows in this order: long allocs, pair
        # allocs, realloc(NULL), realloc moving, realloc in place, long frees, older frees, pair frees
        n_call = a + n_pair + n_re + f_live + f_old + n_pair
        assert n_call == m
        is_calloc = rng.random(a + n_pair) < 0.15
        fails = (rng.random(a) < MALLOC_FAILS) & ~is_calloc[:a]
        kind = np.concatenate([np.where(is_calloc, 1, 0), np.full(n_re, 2), np.full(f_live + f_old + n_pair, 3)])
        ret_slot = np.concatenate([new_long, new_pair, new_null, new_move, re_old[n_re_move:],
                                   np.full(f_live + f_old + n_pair, -1)])
        ret_slot[:a][fails] = -1
        free_slot = np.concatenate([np.full(a + n_pair + n_re_null, -1), re_old, victims,
                                    np.full(f_old, -2), new_pair])
        nmemb = np.where(kind == 1, rng.integers(1, 65, m), 0)
        elem = np.where(kind == 1, rng.choice([8, 16, 24, 32, 48, 64, 128, 256], m), 0)
        req = np.clip(rng.lognormal(np.log(64), 1.4, m), 1, 1 << 20).astype(np.int64)
        req[:a][fails] = 1 << 50
        nbytes = np.where(kind == 1, nmemb * elem, req)
        u_pair = rng.random(n_pair)
        u_pair_free = u_pair + rng.lognormal(np.log(50_000), 1.5, n_pair) / (m * STEP_NS)
        late = u_pair_free >= 1.0
        u_pair_free[late] = u_pair[late] + (1.0 - u_pair[late]) * rng.random(int(late.sum()))
        u = np.concatenate([rng.random(a), u_pair, rng.random(n_re + f_live + f_old), u_pair_free])
        rank = np.empty(m, np.int64)
        rank[np.argsort(u, kind="stable")] = np.arange(m)
        t_call = (np.uint64(T0) + (np.uint64(c0) + rank.astype(np.uint64)) * np.uint64(STEP_NS)
                  + rng.integers(0, 200, m).astype(np.uint64))
        dur = rng.integers(300, 1200, m).astype(np.uint64)
        th = rng.choice(THREADS, m, p=THREAD_WEIGHTS)
        same = rng.random(n_pair) < 0.85  # pair frees: mostly the allocating thread
        th[m - n_pair:] = np.where(same, th[a: a + n_pair], rng.integers(0, THREADS, n_pair))
        tally["cross_thread_frees"] += int((th[m - n_pair:] != th[a: a + n_pair]).sum())
        cpu = np.where(rng.random(m) < 0.1, 1 - home_cpu[th], home_cpu[th]).astype(np.uint32)
        tid = tids[th]
        stack = stacks[rng.zipf(1.3, m).clip(1, len(stacks)) - 1]
        old_ptr = np.where(free_slot >= 0, slot_ptr[np.maximum(free_slot, 0)], np.uint64(0))
        n_older_here = int((free_slot == -2).sum())
        old_ptr[free_slot == -2] = older + (np.uint64(n_older) + np.arange(n_older_here, dtype=np.uint64)) * np.uint64(64)
        n_older += n_older_here
        new_ptr = np.where(ret_slot >= 0, slot_ptr[np.maximum(ret_slot, 0)], np.uint64(0))
        null_re = np.zeros(m, bool)
        null_re[a + n_pair: a + n_pair + n_re_null] = True

        blk = {"time": t_call, "cpu": cpu, "tid": tid, "stack": stack}
        for k, func in enumerate(("malloc", "calloc", "realloc")):
            rows = np.flatnonzero(kind == k)
            args: dict[str, Any] = {"__probe_ip": probe_ip[func]}
            if func == "calloc":
                args |= {"nmemb": nmemb[rows], "size": elem[rows]}
            elif func == "realloc":
                args |= {"oldptr": old_ptr[rows], "size": nbytes[rows]}
            else:
                args |= {"size": nbytes[rows]}
            add(blk, func, "entry", rows, np.uint64(0), args)
            add(blk, func, "return", rows, dur[rows], {"__probe_func": func_addr[func],
                                                  "__probe_ret_ip": ret_ip[stack[rows]], "ptr": new_ptr[rows]},
                with_stack=True)
        rows = np.flatnonzero(null_re)  # realloc(NULL, n) calls malloc(n): nested probe hits
        add(blk, "malloc", "entry", rows, dur[rows] // np.uint64(4), {"__probe_ip": probe_ip["malloc"], "size": nbytes[rows]})
        add(blk, "malloc", "return", rows, dur[rows] // np.uint64(2),
            {"__probe_func": func_addr["malloc"], "__probe_ret_ip": np.uint64(LIBC_BASE + LIBC_OFFSETS["realloc"] + 0x55),
             "ptr": new_ptr[rows]}, with_stack=True)
        rows = np.flatnonzero(kind == 3)
        add(blk, "free", "entry", rows, np.uint64(0), {"__probe_ip": probe_ip["free"], "ptr": old_ptr[rows]})
        if c0 + m == seg_end:
            s.end_segment()

        allocated[victims] = False
        allocated[re_old[:n_re_move]] = False
        ok = ret_slot >= 0
        allocated[ret_slot[ok]] = True
        size_of[ret_slot[ok]] = nbytes[ok]
        allocated[new_pair] = False  # freed again within the block
        outstanding = int(allocated.sum())
        tally["calls"] += m
        tally["failed_mallocs"] += int(fails.sum())
        tally["nested_mallocs"] += int(null_re.sum())
        c0 += m

    s.close()
    return {"samples": sum(counts.values()), "counts": counts, **tally, "frees_of_older_blocks": n_older,
            "threads": THREADS, "live_target": live, "outstanding": int(allocated.sum()),
            "leaked_bytes": int(size_of[allocated].sum()), "stacks": len(chains), "segments": s.segments}


# ----------------------------------------------------------------------------- the run


def _params(args: argparse.Namespace) -> dict[str, Any]:
    return {"samples": args.samples, "live": args.live, "seed": args.seed, "generator": GENERATOR}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=3_000_000, help="uprobe samples, about (default 3M)")
    ap.add_argument("--live", type=int, default=LIVE, help=f"outstanding blocks (default {LIVE:,})")
    ap.add_argument("--repeat", type=int, default=3, help="analyze runs (median, min, max shown)")
    ap.add_argument("--keep", type=Path, help="keep the recording: a DIR, or FILE.parquet")
    ap.add_argument("--reuse", action="store_true", help="with --keep: reuse a recording built with the same parameters")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--analyze-cmd", metavar="CMD", help="the analyze CLI to time (shell words, without 'analyze')")
    ap.add_argument("--build-only", metavar="FILE", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.samples < 100 or args.repeat < 1:
        ap.error("--samples must be >= 100 and --repeat >= 1")
    if args.build_only:
        t0 = time.perf_counter()
        info = build(Path(args.build_only), args.samples, args.live, args.seed)
        info["seconds"] = time.perf_counter() - t0
        info["params"] = _params(args)
        info_path(Path(args.build_only)).write_text(json.dumps(info, indent=1) + "\n")
        return 0
    if args.reuse and args.keep is None:
        ap.error("--reuse needs --keep")

    cmd0 = _analyze_command(args.analyze_cmd)
    print("\n".join(machine_lines()))
    print(f"analyze: {' '.join(cmd0)} analyze FILE; --repeat {args.repeat}", flush=True)
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="kmemleak-malloc-bench-")
    params = _params(args)
    name = f"malloc-{args.samples}samples-live{args.live}-s{args.seed}.parquet"
    path = keep_path(args.keep, name) if args.keep else Path(tmp.name) / name
    rc = 0
    try:
        info = reusable(path, params) if args.reuse else None
        if info is not None:
            how = f"reused {path} ({path.stat().st_size / 1e6:,.0f} MB, built in {info['seconds']:.1f} s)"
        else:
            run, info = build_in_child(Path(__file__), path, ["--samples", str(args.samples), "--live",
                                                              str(args.live), "--seed", str(args.seed)])
            if info is None:
                print(f"build:   FAILED (exit {run.returncode}): {run.error_line()}")
                return 1
            how = (f"in {run.wall:.1f} s, build peak RSS {gb(run.peak_rss)} GB -> {path} "
                   f"({path.stat().st_size / 1e6:,.0f} MB)")
        n = info["samples"]
        c = info["counts"]
        calls = ", ".join(f"{c.get(f'{GROUP}:{f}', 0):,} {f}" for f in FUNCS)
        print(f"build:   {n:,} uprobe samples ({info['calls']:,} calls of {info['threads']} threads: {calls} "
              f"entries, {info['nested_mallocs']:,} of the mallocs nested in realloc(NULL), "
              f"{info['failed_mallocs']:,} failed, {info['cross_thread_frees']:,} short-lived blocks freed by "
              f"another thread, {info['frees_of_older_blocks']:,} frees of blocks from before the recording; "
              f"live target {info['live_target']:,}, outstanding at the end {info['outstanding']:,} blocks = "
              f"{info['leaked_bytes']:,} bytes; {info['stacks']} user stacks) {how}", flush=True)

        floors = []
        for _ in range(args.repeat):
            frun, fl = read_floor(path)
            if not fl:
                print(f"read:    FAILED (exit {frun.returncode}): {frun.error_line()}")
                break
            floors.append(fl["seconds"])
        if floors:
            print(f"read:    floor (pyarrow, 8 sample columns, every row group, all cores): "
                  f"{fmt_spread(floors, secs, ' s')}; {n / spread(floors)[1] / 1e6:.2f} M samples/s")

        series = repeat_runs([*cmd0, "analyze", str(path)], args.repeat)
        r = series.runs[-1]
        if not series.ok:
            print(f"analyze: FAILED (exit {r.returncode}): {r.error_line()}")
            return 1
        print(f"analyze: {series.line(n, 'uprobe samples')}")
        wall = spread(series.walls())[1]
        if floors:
            print(f"         analyze / read floor = {wall / spread(floors)[1]:.2f}x (median over median)")
        totals = leak_totals(r.stdout)
        tl = total_line(r.stdout)
        want = (info["leaked_bytes"], info["outstanding"])
        got = (totals[0], totals[1]) if totals else None
        match = got == want
        rep = "no leak report parsed" if totals is None else \
            f"{totals[1]:,} objects, {totals[0]:,} bytes in {totals[2]:,} groups"
        print(f"         final report: {rep}{' (' + tl + ')' if tl else ''}; generated: {want[1]:,} objects, "
              f"{want[0]:,} bytes: {'match' if match else 'MISMATCH'}")
        rate = n / wall
        peak = max(series.peaks())
        print(f"         issue 7 targets: >= 1.5 M uprobe samples/s: {verdict(rate >= 1.5e6)} ({rate / 1e6:.2f}); "
              f"summed peak RSS <= 1 GB: {verdict(peak <= 1 * GB)} ({gb(peak)} GB)")
        rc = 0 if match else 1
    finally:
        if tmp is not None:
            tmp.cleanup()
    return rc


if __name__ == "__main__":
    sys.exit(main())
