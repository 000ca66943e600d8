"""Event lines (`comm pid LAT [cpu] sec.usec: sys:name: INFO`), as perf-prof prints them (tep.c)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

from ..printfmt import PrintFormatter, lat_flags


def wall_clock(meta: dict, perf_ns: int, utc: bool = False) -> str:
    """`<TS>`: wall-clock time of a perf timestamp via the recording's clock anchor, one trailing space;
    `time unknown` when the recording has no anchor (never 1970-01-01)."""
    anchor = (meta.get("clock") or {}).get("anchor") or {}
    if not int(anchor.get("realtime_ns") or 0):  # no anchor (an import without HEADER_CLOCK_DATA)
        return "time unknown "
    real = int(anchor.get("realtime_ns") or 0) + (int(perf_ns) - int(anchor.get("perf_ns") or 0))
    sec, ns = divmod(real, 1_000_000_000)
    tz = UTC if utc else None
    dt = datetime.fromtimestamp(sec, tz=tz) if tz else datetime.fromtimestamp(sec)
    return dt.strftime("%Y-%m-%d %H:%M:%S") + f".{ns // 1000:06d} "


class EventLines:
    """Renders the event line of stream rows, decoding each event type's payloads in one batch."""

    def __init__(self, analysis) -> None:
        self.a = analysis
        self._fmt = {r.code: PrintFormatter(r.fmt, analysis.ksyms.lookup) for r in analysis.roles}

    def render(self, rows: pd.DataFrame) -> list[str]:
        """One line per row of `rows` (stream columns), in the given order."""
        sm = self.a.samples
        out = np.empty(len(rows), dtype=object)
        role_col = rows["role"].to_numpy()
        comms = self.a.comms
        for code in np.unique(role_col):
            sel = np.flatnonzero(role_col == code)
            role = self.a.roles[int(code)]
            sub = rows.iloc[sel]
            idx = sub["row"].to_numpy()
            cols = sm.decode(role.fmt, idx)
            info = self._fmt[int(code)].render(cols, np.arange(len(sel)))
            cpid = cols.get("common_pid", sub["tid"].to_numpy())
            flags = cols.get("common_flags", np.zeros(len(sel), np.uint8))
            preempt = cols.get("common_preempt_count", np.zeros(len(sel), np.uint8))
            extra_names = [f for f in ("common_migrate_disable", "common_preempt_lazy_count",
                                       "common_lock_depth") if f in cols]
            names = comms.comm(np.asarray(cpid), sub["time"].to_numpy()).tolist()
            # LAT per distinct (flags, preempt count, extra fields): a handful per event type
            lat_keys = zip(np.asarray(flags).tolist(), np.asarray(preempt).tolist(),
                           *(np.asarray(cols[f]).tolist() for f in extra_names), strict=True)
            lats: dict[tuple, str] = {}
            pids = (np.asarray(cpid).astype(np.int64) & 0xFFFFFFFF).tolist()
            head = role.fmt.full_name
            for j, name, pid, key, cpu, t, text in zip(
                    sel.tolist(), names, pids, lat_keys, sub["cpu"].to_numpy().tolist(),
                    sub["time"].to_numpy().astype(np.uint64).tolist(), info, strict=True):
                lat = lats.get(key)
                if lat is None:
                    lat = lats[key] = lat_flags(role.fmt, key[0], key[1],
                                                dict(zip(extra_names, key[2:], strict=True)))
                us = (t + 500) // 1000
                out[j] = (f"{name:>16} {pid:6d} {lat} [{cpu:03d}] "
                          f"{us // 1_000_000}.{us % 1_000_000:06d}: {head}: {text}")
        return list(out)

