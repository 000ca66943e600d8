"""`info`: what a recording holds, without analysing it."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from .format.recording import Recording
from .format.text import printable


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _salvaged(s: dict) -> str:
    """`import` of a damaged perf.data: what was recovered and why the rest is not there."""
    end = s.get("end_offset")
    where = f" up to byte {end}" + (f" of {s['file_bytes']}" if s.get("file_bytes") else "") if end is not None else ""
    return (f"salvaged:    {s.get('records')} whole records ({s.get('samples')} samples){where}; "
            f"{s.get('reason')}; formats from {', '.join(s.get('formats') or ['?'])}")


def summary(rec: Recording, warnings: list[str] = ()) -> str:
    """The `info` text; `warnings` (stray or missing parts, values no kernel produces) end it."""
    return printable(_summary(rec, warnings))


def _summary(rec: Recording, warnings: list[str]) -> str:
    m = rec.metadata
    host, clock, opts = m.get("host") or {}, m.get("clock") or {}, m.get("options") or {}
    start, stop = int(clock.get("start_ns") or 0), int(clock.get("stop_ns") or 0)
    kinds = rec.table(columns=["kind"]).column("kind")
    vc = pc.value_counts(kinds.cast("string")) if len(kinds) else []
    by_kind = {str(x["values"]): int(x["counts"]) for x in (vc.to_pylist() if len(kinds) else [])}
    samples = rec.table(kinds=["sample"], columns=["event"]).column("event")
    ev_counts = ({str(x["values"]): int(x["counts"])
                  for x in pc.value_counts(samples.cast("string")).to_pylist()} if len(samples) else {})
    lost_rows = rec.table(kinds=["lost"], columns=["lost"]).column("lost")
    lost_sum = int(np.nansum(lost_rows.to_numpy(zero_copy_only=False).astype(float))) if len(lost_rows) else 0
    lines = [
        f"recording:   {rec.path}{'  (PARTIAL: a parts folder: recorder running, killed or out of room)' if rec.partial else ''}",
        *([f"stopped:     {m['stopped']}"] if m.get("stopped") else []),
        *([_salvaged(m["salvaged"])] if m.get("salvaged") else []),
        f"producer:    {m.get('producer')}  (format_version {m.get('format_version')})",
        (f"host:        {host.get('hostname', '?')}  kernel {host.get('kernel_release', '?')}  "
        f"{host.get('machine', '?')}  {host.get('ncpus', '?')} CPUs  page {host.get('page_size', '?')}"),
        (f"clock:       {clock.get('perf_clock', '?')}  start {start}  stop {stop}  "
        f"duration {max(stop - start, 0) / 1e9:.3f} s"),
        f"size:        {_human(rec.size_bytes)} in {len(rec.files)} file(s), {rec.num_rows} rows",
        "rows:        " + ", ".join(f"{k} {v}" for k, v in sorted(by_kind.items())),
        "alloc:       " + " ".join(m.get("alloc") or []),
        "free:        " + " ".join(m.get("free") or []),
        (f"options:     cpus={opts.get('cpus')} pids={opts.get('pids')} tids={opts.get('tids')} "
        f"mmap_pages={opts.get('mmap_pages')} call_graph={opts.get('call_graph')} "
        f"command={opts.get('command')}"),
        "events:",
    ]
    counts = m.get("counts") or {}
    for name in sorted(set(ev_counts) | set(counts) | set(m.get("events") or {})):
        c = counts.get(name) or {}
        line = (f"  {name:<32} samples {ev_counts.get(name, 0):>10}   kernel count "
                f"{c.get('kernel_count', '-')}  lost {c.get('lost', '-')}")
        kc, lost = c.get("kernel_count"), c.get("lost")
        if isinstance(kc, int) and isinstance(lost, int) and m.get("ring_chunks") is None:
            # docs/format.md (counts): count - samples - lost (a raw recording has no samples yet)
            left = kc - ev_counts.get(name, 0) - lost
            if left >= 0:
                line += f"  unaccounted {left}"
            else:  # counters read before the last samples were written (a killed recorder)
                line += "  unaccounted ? (kernel count older than the samples)"
        lines.append(line)
    if m.get("ring_chunks") is not None:
        from .format.convert import chunk_bytes

        lines.append(f"raw:         {by_kind.get('chunk', 0)} ring chunks, {_human(chunk_bytes(rec))}, not "
                     "converted yet (samples above: 0); `convert` or `analyze` converts them")
    lines.append(f"lost:        {lost_sum} events in {by_kind.get('lost', 0)} LOST records"
                 + ("  (per-event split estimated)" if m.get("lost_split") == "estimated" else ""))
    if m.get("probes"):
        lines.append("probes:")
        lines.extend(f"  {p.get('definition', p) if isinstance(p, dict) else p}" for p in m["probes"])
    if warnings:
        lines.append("warnings:")
        lines.extend(f"  {w.removeprefix('warning: ')}" for w in warnings)
    return "\n".join(lines) + "\n"
