"""Tracepoint formats for a perf.data that lost its own: `--formats DIR`, else the bundled ones.

Why: perf writes the formats (HEADER_TRACING_DATA) at the END of a file, so a file cut short or
left by a killed `perf record` has none, and a pipe stream cut early may have none; without a
format a payload cannot be decoded. A format is taken for a tracepoint attr by the event's name
when the file still names it (a pipe stream's EVENT_DESC), else by its tracepoint id (the attr's
config) — ids are the target kernel's own, so an id only names the right event with formats of
the same kernel build: the target's tracefs copied as `--formats DIR`, or the formats bundled with
kmemleak-offline (kmem, percpu) when they match. A sanity check on the payloads (`EventFormat.min_payload`)
catches most wrong guesses later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..format import tracefs
from .errors import PerfDataError

BUNDLED_SYSTEMS = ("kmem", "percpu")  # known allocator events shipped in data/formats


@dataclass(frozen=True)
class FormatSource:
    """Formats from one place, by full name (`sys:name`), with a label for messages."""

    label: str
    by_name: dict[str, tracefs.EventFormat]

    def by_id(self, ev_id: int) -> tracefs.EventFormat | None:
        return next((f for f in self.by_name.values() if f.id == ev_id), None)


def bundled() -> FormatSource:
    """The kmem and percpu formats shipped in kmemleak_offline/data/formats (`<sys>_<name>.format`)."""
    out: dict[str, tracefs.EventFormat] = {}
    for p in sorted((Path(__file__).parents[1] / "data" / "formats").glob("*.format")):
        system = p.stem.split("_", 1)[0]
        if system in BUNDLED_SYSTEMS:
            fmt = tracefs.parse_format(p.read_text(), system)
            out[fmt.full_name] = fmt
    return FormatSource("the formats bundled with kmemleak-offline", out)


def events_dir(path: Path) -> FormatSource:
    """`--formats DIR`: a copy of the target's tracefs `events/` (DIR/SYS/NAME/format; DIR may also
    be the tracefs root holding `events/`, or one system's directory)."""
    root = path / "events" if (path / "events").is_dir() else path
    if not root.is_dir():
        raise PerfDataError(f"--formats {path}: not a directory")
    files = [(f.parts[-3], f) for f in root.glob("*/*/format")]
    files += [(root.name, f) for f in root.glob("*/format")]
    out: dict[str, tracefs.EventFormat] = {}
    for system, f in files:
        try:
            fmt = tracefs.parse_format(f.read_text(errors="replace"), system)
        except (OSError, tracefs.FormatError) as exc:
            raise PerfDataError(f"--formats {path}: cannot read {f}: {exc}") from None
        out[fmt.full_name] = fmt
    if not out:
        raise PerfDataError(f"--formats {path}: no SYS/NAME/format files in it (copy the target's "
                            "/sys/kernel/tracing/events)")
    return FormatSource(f"--formats {path}", out)


@dataclass
class Guess:
    """A format taken from outside the file for one attr, to check against its payloads."""

    source: str
    min_size: int
    by: str  # "name" or "id"


def fill(formats: dict[int, tracefs.EventFormat], wanted: list[tuple[int, str | None]],
         sources: list[FormatSource], note: Callable[[str], None]) -> dict[int, Guess]:
    """Formats for the tracepoint ids in `wanted` ((config, name the file gives or None)) that
    `formats` lacks, from the first source that has them; added to `formats` under the file's id.
    Returns what was guessed per id; ids found nowhere are said (their samples are skipped)."""
    guessed: dict[int, Guess] = {}
    missing: list[str] = []
    used: dict[str, list[str]] = {}
    for config, name in wanted:
        if config in formats:
            continue
        for src in sources:
            fmt = src.by_name.get(name) if name else src.by_id(config)
            if fmt is None:
                continue
            by = "name" if name else "id"
            if name and fmt.id != config:
                note(f"formats: {name} has id {config} in the perf.data but {fmt.id} in {src.label}: "
                     "taken by name; its layout is checked against the payloads")
            formats[config] = replace(fmt, id=config)
            guessed[config] = Guess(src.label, fmt.min_payload, by)
            used.setdefault(src.label, []).append(fmt.full_name)
            break
        else:
            missing.append(f"{name} (id {config})" if name else f"id {config}")
    for label, names in used.items():
        how = sorted({guessed[c].by for c in guessed if guessed[c].source == label})
        note(f"formats: not in the perf.data; {', '.join(names)} from {label} (matched by "
             f"{' and '.join(how)})")
    if missing:
        note(f"formats: no format for the tracepoint(s) {', '.join(missing)} (not in the perf.data, "
             "nor in " + (", ".join(s.label for s in sources) or "any --formats DIR")
             + "): their samples are skipped; give --formats DIR, a copy of the target's "
             "/sys/kernel/tracing/events")
    return guessed
