"""What a `perf record` command line says about the target: processes, threads or a workload.

perf.data files do not say whether they were recorded per task or per CPU; the command line in
HEADER_CMDLINE does. Per-task recordings (`-p`, `-t`, `perf record -- CMD`) keep the process of
each leak group, as `record -p/-- CMD` recordings do; `-a`/`-C` make it system-wide.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# perf record's options that take their value as the next argument (perf 5.x-6.x)
_SHORT_WITH_VALUE = set("eocFptCmGurDkj")  # -e EV, -o FILE, -c N, -F HZ, -p PID, -C CPUS, ...
_LONG_WITH_VALUE = {
    "event", "output", "count", "freq", "pid", "tid", "cpu", "mmap-pages", "call-graph", "filter",
    "cgroup", "uid", "realtime", "delay", "clockid", "affinity", "max-size", "branch-filter",
    "control", "synth", "off-cpu-thresh", "switch-output-event", "num-thread-synthesize",
    "mmap-flush",
}  # options with an optional value (--switch-output, --threads, -z levels) take it after '='
_SYSTEM_WIDE = {"-a", "--all-cpus"}


@dataclass(frozen=True)
class Target:
    pids: tuple[int, ...] | None = None
    tids: tuple[int, ...] | None = None
    command: tuple[str, ...] | None = None
    cpus: str | None = None
    system_wide: bool = False


def _ids(value: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        return None


def record_target(argv: Sequence[str] | None) -> Target:
    """The target of `perf record ARGS [--] [CMD...]` (an empty Target when it cannot tell)."""
    args = list(argv or [])
    if "record" not in args:
        return Target()
    args = args[args.index("record") + 1:]
    values: dict[str, str] = {}
    system_wide = False
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            i += 1
            break
        if not a.startswith("-") or a == "-":
            break  # the workload command
        if a in _SYSTEM_WIDE:
            system_wide = True
        elif a.startswith("--"):
            name, eq, val = a[2:].partition("=")
            if not eq and name in _LONG_WITH_VALUE and i + 1 < len(args):
                val = args[i + 1]
                i += 1
            values[name] = val
        else:  # short options, possibly bundled: -ag, -F99, -p 42
            for j, ch in enumerate(a[1:], start=1):
                if ch == "a":
                    system_wide = True
                if ch in _SHORT_WITH_VALUE:
                    val = a[j + 1:]
                    if not val and i + 1 < len(args):
                        val = args[i + 1]
                        i += 1
                    values[{"p": "pid", "t": "tid", "C": "cpu"}.get(ch, ch)] = val
                    break
        i += 1
    command = tuple(args[i:]) or None
    cpus = values.get("cpu")
    return Target(pids=_ids(values["pid"]) if "pid" in values else None,
                  tids=_ids(values["tid"]) if "tid" in values else None,
                  command=command if not (system_wide or cpus) else None,
                  cpus=cpus, system_wide=system_wide or cpus is not None)
