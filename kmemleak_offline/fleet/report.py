"""The fleet's outputs: `--format json` (docs/fleet.md) and the text report, from the reduce."""

from __future__ import annotations

import json
from typing import Any, TextIO

from ..diff import NO_CHAIN
from ..symbols.callchain import KERNEL_DSO, Frame

FORMATS = ("text", "json")


def _recording(r: dict[str, Any]) -> dict[str, Any]:
    return {"path": r["recording"], "host": r["host"], "kernel_release": r["kernel"],
            "events": r["events"], "lost": r["lost"], "mode": r["mode"],
            "total_alloc": r["total_alloc"], "total_free": r["total_free"],
            "duration_s": r["duration_s"], "chains": r["chains"],
            "leaked_bytes": r["leaked_bytes"], "leaked_objects": r["leaked_objects"]}


def _frame(f: dict[str, Any]) -> dict[str, Any]:
    return {"addr": f["addr"], "symbol": f["symbol"], "offset": f["offset"], "dso": f["dso"]}


def _site(s: dict[str, Any]) -> dict[str, Any]:
    slope = s["max_slope"]
    return {"stack": [_frame(f) for f in s["stack"]], "hosts": s["hosts"],
            "recordings": s["recordings"], "bytes": s["bytes"], "objects": s["objects"],
            "per_host": s["per_host"], "per_kernel": s["per_kernel"], "comms": s["comms"],
            "trend": {"growing": s["growing"], "bounded": s["bounded"],
                      "insufficient": s["insufficient"],
                      "max_slope_bytes_per_s": None if slope is None else round(slope, 3)},
            "chain_id": s["chain_id"]}


def build(recordings: list[dict[str, Any]], sites: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in recordings if r["error"] is None]
    return {"format_version": 1,
            "recordings": [_recording(r) for r in ok],
            "skipped": [{"path": r["recording"], "error": r["error"]}
                        for r in recordings if r["error"] is not None],
            "sites": [_site(s) for s in sites]}


def write_json(recordings: list[dict[str, Any]], sites: list[dict[str, Any]], out: TextIO) -> None:
    json.dump(build(recordings, sites), out, indent=1)
    out.write("\n")


def _lines(stack: list[dict[str, Any]]) -> list[str]:
    if not stack:
        return ["    " + NO_CHAIN[0]]
    return [Frame(f["addr"], f["symbol"], f["offset"], f["dso"],
                  f.get("context") or ("kernel" if f["dso"] == KERNEL_DSO else "user")).line()
            for f in stack]


def _n(k: int, one: str, many: str | None = None) -> str:
    return f"{k} {one if k == 1 else (many or one + 's')}"


def write_text(recordings: list[dict[str, Any]], sites: list[dict[str, Any]], out: TextIO,
               top: int | None = None) -> None:
    ok = [r for r in recordings if r["error"] is None]
    skipped = [r for r in recordings if r["error"] is not None]
    hosts = {r["host"] for r in ok}
    kernels = {r["kernel"] for r in ok}
    w = out.write
    w(f"FLEET: {_n(len(ok), 'recording')} from {_n(len(hosts), 'host')}, "
      f"{_n(len(kernels), 'kernel release')}"
      + (f"; {len(skipped)} skipped" if skipped else "") + "\n")
    for r in skipped:
        w(f"SKIPPED: {r['recording']}: {r['error']}\n")
    w(f"LEAKED {sum(s['bytes'] for s in sites)} bytes in {sum(s['objects'] for s in sites)} "
      f"objects, {_n(len(sites), 'call chain')}\n")
    for s in sites[:top] if top else sites:
        growing = f", growing in {s['growing']}" if s["growing"] else ""
        w(f"\nLeak of {s['bytes']} bytes in {s['objects']} objects on {_n(s['hosts'], 'host')} "
          f"in {_n(s['recordings'], 'recording')}{growing}\n")
        for line in _lines(s["stack"]):
            w(line + "\n")
        nw = max(len(x or "?") for x in [*(h["host"] for h in s["per_host"]),
                                         *(k["kernel_release"] for k in s["per_kernel"])])
        w("  per host:\n")
        for h in s["per_host"]:
            g = ""
            if h["growing"]:
                g = "  growing" + (f" in {h['growing']} of {h['recordings']}" if h["recordings"] > 1 else "")
            w(f"    {h['host'] or '?':<{nw}} {h['bytes']:>12} bytes {h['objects']:>10} objects"
              f"{g}\n")
        w("  per kernel release:\n")
        for k in s["per_kernel"]:
            w(f"    {k['kernel_release'] or '?':<{nw}} {k['bytes']:>12} bytes {k['objects']:>10} "
              f"objects on {_n(k['hosts'], 'host')}\n")
