"""Write samples/kmalloc-leak.parquet: a small, realistic, deterministic kernel recording.

    python samples/make_sample.py [OUT]

A 4-CPU box traced for 20 s with `--alloc kmem:kmalloc//ptr=ptr/size=bytes_alloc/stack/
--free kmem:kfree//ptr=ptr/`. Process "leaky" (pid 4242, forked from bash) opens 500 UDP sockets
and closes 200: 300 x kmalloc(64) leak through udp_init_sock <- inet_create <- __sock_create <-
__sys_socket. Around it, ordinary churn (pipes, exec, skbs, /proc reads, kworkers) from several
processes allocates and frees with short lifetimes; slab pointers are reused LIFO, as SLUB does,
and whatever is still in flight at the stop shows up as small noise next to the real leak.
"""

from __future__ import annotations

import heapq
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kmemleak_offline.synthetic import (
    KERNEL_TEXT_START,
    PERF_CONTEXT_KERNEL,
    RecordingBuilder,
    kernel_symbols,
)

SEED = 20250601
OUT = Path(__file__).resolve().parent / "kmalloc-leak.parquet"
ALLOC = ["kmem:kmalloc//ptr=ptr/size=bytes_alloc/stack/"]
FREE = ["kmem:kfree//ptr=ptr/"]
T0 = 5_000_000_000_000  # perf clock (CLOCK_MONOTONIC) at start: ~83 min of uptime
DURATION = 20_000_000_000
REALTIME = 1_748_772_000_000_000_000  # 2025-06-01 10:00:00 UTC
NCPUS = 4
LEAKY_PID = 4242
SYSCALL = ["do_syscall_64", "entry_SYSCALL_64_after_hwframe"]
KWORK = ["process_one_work", "worker_thread", "kthread", "ret_from_fork", "ret_from_fork_asm"]

LEAK_STACK = ["__kmalloc_noprof", "udp_init_sock", "inet_create", "__sock_create", "__sys_socket",
              "__x64_sys_socket", *SYSCALL]
# name: (stack, kmalloc sizes, free call site, pids allowed, allocs)
CHURN = {
    "pipe": (["__kmalloc_cache_noprof", "alloc_pipe_info", "create_pipe_files", "do_pipe2",
              "__x64_sys_pipe2", *SYSCALL], [192], "free_pipe_info", [2001, 3300], 2600),
    "exec": (["__kmalloc_noprof", "load_elf_phdrs", "load_elf_binary", "bprm_execve",
              "do_execveat_common", "__x64_sys_execve", *SYSCALL], [512, 1024], "load_elf_binary",
             [2001, 3300], 700),
    "skb": (["__kmalloc_node_track_caller_noprof", "kmalloc_reserve", "__alloc_skb",
             "alloc_skb_with_frags", "sock_alloc_send_pskb", "unix_stream_sendmsg",
             "sock_write_iter", "vfs_write", "ksys_write", *SYSCALL], [512, 1024, 2048, 4096],
            "skb_free_head", [812, 345, 1], 3200),
    "procfs": (["__kmalloc_cache_noprof", "single_open", "proc_single_open", "do_dentry_open",
                "vfs_open", "path_openat", "do_filp_open", "do_sys_openat2", "__x64_sys_openat",
                *SYSCALL], [32], "single_release", [3100, 1], 1700),
    "seqbuf": (["__kmalloc_noprof", "kvmalloc_node_noprof", "seq_read_iter", "vfs_read",
                "ksys_read", *SYSCALL], [4096], "kvfree", [3100], 900),
    "kworker": (["__kmalloc_cache_noprof", "flush_to_ldisc", *KWORK], [64, 128, 256], "n_tty_receive_buf",
                [57, 88], 600),
}
COMMS = {1: "systemd", 57: "kworker/0:1", 88: "kworker/1:2", 345: "systemd-journal", 812: "sshd",
         2001: "bash", 3100: "top", 3300: "make"}
EXTRA_FUNCS = ["sk_common_release", "udp_lib_close", "inet_release", "__sock_release", "sock_close",
               "__fput", "task_work_run"]


def symbol_table(rng: np.random.Generator) -> tuple[np.ndarray, list[str], dict[str, tuple[int, int]]]:
    """Used functions among ~2000 filler symbols at plausible addresses; name -> (addr, size)."""
    used = dict.fromkeys(LEAK_STACK + EXTRA_FUNCS + [f for s, *_ in CHURN.values() for f in s]
                         + [c[2] for c in CHURN.values()])
    _, filler = kernel_symbols(2000, SEED)
    names = list(dict.fromkeys([*used, *filler]))
    names = [names[i] for i in rng.permutation(len(names))]
    sizes = rng.integers(4, 257, len(names)) * 16
    addrs = np.uint64(KERNEL_TEXT_START) + np.r_[0, np.cumsum(sizes[:-1])].astype(np.uint64)
    return addrs.astype(np.uint64), names, {n: (int(a), int(s)) for n, a, s in zip(names, addrs, sizes, strict=True)}


def chain(rng: np.random.Generator, syms: dict[str, tuple[int, int]], funcs: list[str]) -> list[int]:
    """Kernel callchain words for funcs (leaf first): marker, then return addresses inside each."""
    return [PERF_CONTEXT_KERNEL] + [syms[f][0] + int(rng.integers(8, syms[f][1] - 8)) for f in funcs]


def assign_pointers(t_alloc: np.ndarray, t_free: np.ndarray, size: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SLUB-like pointers: per size class, the most recently freed object is handed out first."""
    base = {s: 0xFFFF888100000000 + k * 0x10000000 for k, s in enumerate(sorted(set(size.tolist())))}
    used = dict.fromkeys(base, 0)
    free_lists: dict[int, list[int]] = {s: [] for s in base}
    pending: list[tuple[int, int, int]] = []
    ptr = np.zeros(len(t_alloc), np.uint64)
    for i in np.argsort(t_alloc, kind="stable").tolist():
        while pending and pending[0][0] < t_alloc[i]:
            _, s, p = heapq.heappop(pending)
            free_lists[s].append(p)
        s = int(size[i])
        if free_lists[s]:
            p = free_lists[s].pop()
        else:
            p = base[s] + used[s] * s
            used[s] += 1
        ptr[i] = p
        if t_free[i] >= 0:
            heapq.heappush(pending, (int(t_free[i]), s, p))
    return ptr


def main(out: Path = OUT) -> Path:
    rng = np.random.default_rng(SEED)
    addrs, names, syms = symbol_table(rng)
    b = RecordingBuilder()
    b.add_ksyms(addrs, names)

    # Allocations: (time, pid, size, stack id, free time or -1, free call site)
    t_a, pid_a, size_a, sid_a, t_f, fsite = [], [], [], [], [], []
    leak_sid = b.add_stacks([chain(rng, syms, LEAK_STACK)])[0]
    n_leak, n_closed = 500, 200
    t = T0 + 1_500_000_000 + np.sort(rng.integers(0, 16_000_000_000, n_leak))
    closed = np.zeros(n_leak, bool)
    closed[rng.choice(n_leak, n_closed, replace=False)] = True
    t_a.append(t)
    pid_a.append(np.full(n_leak, LEAKY_PID))
    size_a.append(np.full(n_leak, 64))
    sid_a.append(np.full(n_leak, leak_sid))
    t_f.append(np.where(closed, t + rng.integers(1_000_000, 500_000_000, n_leak), -1))
    fsite.append(np.full(n_leak, syms["sk_common_release"][0] + 0x24))

    for stack, sizes, free_fn, pids, n in CHURN.values():
        sids = b.add_stacks([chain(rng, syms, stack) for _ in range(3)])  # 3 call sites' variants
        t = T0 + rng.integers(0, DURATION, n)
        t_a.append(t)
        pid_a.append(np.asarray(pids)[rng.integers(0, len(pids), n)])
        size_a.append(np.asarray(sizes)[rng.integers(0, len(sizes), n)])
        sid_a.append(np.asarray(sids)[rng.integers(0, 3, n)])
        t_f.append(t + rng.exponential(20_000_000, n).astype(np.int64) + 1000)
        fsite.append(np.full(n, syms[free_fn][0] + int(rng.integers(8, syms[free_fn][1] - 8))))
    t_a, pid_a, size_a, sid_a, t_f, fsite = (np.concatenate(x) for x in (t_a, pid_a, size_a, sid_a, t_f, fsite))
    t_f = np.where(t_f >= T0 + DURATION, -1, t_f)  # still in flight at stop: never freed
    ptr = assign_pointers(t_a, t_f, size_a, rng)

    stacks = b.stacks
    call_site = np.array([stacks[s][2] for s in sid_a.tolist()], np.uint64)
    n = len(t_a)
    req = np.where(size_a == 64, 64, size_a - rng.integers(0, size_a // 4 + 1, n))
    gfp = np.where(rng.random(n) < 0.85, 0xCC0, 0x820)  # GFP_KERNEL / GFP_ATOMIC
    cpu_a = rng.integers(0, NCPUS, n)
    b.add_samples("kmem:kmalloc", t_a, cpu_a, pid_a, pid_a,
                  {"call_site": call_site, "ptr": ptr, "bytes_req": req, "bytes_alloc": size_a,
                   "gfp_flags": gfp, "node": -1}, stack_id=sid_a)
    fr = t_f >= 0
    cpu_f = np.where(rng.random(n) < 0.6, cpu_a, rng.integers(0, NCPUS, n))[fr]
    b.add_samples("kmem:kfree", t_f[fr], cpu_f, pid_a[fr], pid_a[fr],
                  {"call_site": fsite[fr], "ptr": ptr[fr]})

    pids = sorted(COMMS)
    b.add_comm(T0, pids, pids, [COMMS[p] for p in pids])
    b.add_fork(T0 + 1_200_000_000, LEAKY_PID, LEAKY_PID, 2001, 2001)
    b.add_comm(T0 + 1_200_000_000, LEAKY_PID, LEAKY_PID, "bash")
    b.add_comm(T0 + 1_300_000_000, LEAKY_PID, LEAKY_PID, "leaky", exec=True)
    b.write(out, ALLOC, FREE, start_ns=T0, stop_ns=T0 + DURATION,
            anchor={"perf_ns": T0, "realtime_ns": REALTIME},
            host={"hostname": "sample-host", "kernel_release": "6.18.0-sample", "ncpus": NCPUS},
            options={"call_graph": True})
    return out


if __name__ == "__main__":
    path = main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
