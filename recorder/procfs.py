"""Snapshots from /proc and /sys taken at record start: the initial state a recording needs.

Comms of all threads, mappings (with build-ids) of traced processes, the kallsyms snapshot, the
online CPUs, and the tracefs mount.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from recorder.errors import RecordError, RecordInputError

TRACEFS_ENV = "KMEMLEAK_OFFLINE_TRACEFS"


def tracefs_root() -> Path:
    """The tracefs mount (mounting it if needed); RecordError saying how when impossible."""
    root = Path(os.environ.get(TRACEFS_ENV, "/sys/kernel/tracing"))
    if (root / "events").is_dir():
        return root
    if root == Path("/sys/kernel/tracing") and Path("/sys/kernel/debug/tracing/events").is_dir():
        return Path("/sys/kernel/debug/tracing")
    res = subprocess.run(["mount", "-t", "tracefs", "nodev", str(root)], check=False,
                         capture_output=True, text=True)
    if res.returncode == 0 and (root / "events").is_dir():
        return root
    why = (res.stderr.strip().splitlines() or ["mount failed"])[-1]
    raise RecordError(f"tracefs is not mounted at {root} and mounting it failed ({why}); "
                      f"mount it with: mount -t tracefs nodev {root}")


def parse_cpu_list(text: str) -> list[int]:
    """'0,2-3' -> [0, 2, 3]."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                if int(lo) > int(hi):
                    raise ValueError
                cpus.update(range(int(lo), int(hi) + 1))
            else:
                cpus.add(int(part))
        except ValueError:
            raise RecordInputError(f"bad CPU list {text!r} (expected e.g. 0,2-3)") from None
    return sorted(cpus)


def online_cpus() -> list[int]:
    try:
        return parse_cpu_list(Path("/sys/devices/system/cpu/online").read_text())
    except OSError:
        return list(range(os.cpu_count() or 1))


def threads_of(pid: int) -> list[int]:
    """Thread ids of a running process; RecordInputError if there is no such process."""
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except (FileNotFoundError, NotADirectoryError):
        raise RecordInputError(f"pid {pid} does not exist") from None


def tgid_of(tid: int) -> int:
    """Process id of a thread id; RecordInputError if there is no such thread."""
    try:
        for line in Path(f"/proc/{tid}/status").read_text().splitlines():
            if line.startswith("Tgid:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    raise RecordInputError(f"tid {tid} does not exist")


def initial_comms(time_ns: int) -> dict[str, list]:
    """`comm` rows for every thread alive now (races with exiting threads are ignored)."""
    rows: dict[str, list] = {"kind": [], "time": [], "pid": [], "tid": [], "comm": [], "exec": []}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tids:
            try:
                with open(f"/proc/{p}/task/{t}/comm", "rb") as f:
                    comm = f.read().rstrip(b"\n").decode(errors="replace")
            except OSError:
                continue
            rows["kind"].append("comm")
            rows["time"].append(time_ns)
            rows["pid"].append(int(p))
            rows["tid"].append(int(t))
            rows["comm"].append(comm)
            rows["exec"].append(False)
    return rows


_build_ids: dict[str, bytes | None] = {}


def build_id(path: str) -> bytes | None:
    """GNU build-id of an ELF file (cached), None when absent or unreadable."""
    if path in _build_ids:
        return _build_ids[path]
    bid = None
    try:
        from elftools.elf.elffile import ELFFile

        with open(path, "rb") as f:
            elf = ELFFile(f)
            for sec in elf.iter_sections():
                if sec.header.sh_type != "SHT_NOTE":
                    continue
                for note in sec.iter_notes():
                    if note["n_type"] == "NT_GNU_BUILD_ID":
                        bid = bytes.fromhex(note["n_desc"])
                        break
                if bid:
                    break
    except Exception:  # noqa: BLE001 - not an ELF, gone, unreadable: no build-id, never fatal
        bid = None
    _build_ids[path] = bid
    return bid


def initial_maps(pid: int, time_ns: int) -> dict[str, list]:
    """`mmap` rows for the executable mappings of a running process (as MMAP2 would report)."""
    cols = ("kind", "time", "pid", "tid", "addr", "len", "pgoff", "filename", "build_id")
    rows: dict[str, list] = {c: [] for c in cols}
    try:
        lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 5 or "x" not in parts[1]:
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        name = parts[5].strip() if len(parts) > 5 else "//anon"
        for c, v in zip(cols, ("mmap", time_ns, pid, pid, lo, hi - lo, int(parts[2], 16), name,
                               build_id(name) if name.startswith("/") else None)):
            rows[c].append(v)
    return rows


def kallsyms() -> dict[str, list]:
    """`ksym` rows: every /proc/kallsyms symbol (text and data), with its module. (Run by the
    converter after enabling: the row builder's pyarrow import stays out of the recorder's
    start-up.)"""
    from kmemleak_offline.format.symrows import ksym_rows

    with open("/proc/kallsyms", "rb") as f:
        return ksym_rows(f.read())