"""`kmemleak-offline diff`: which call chains grew, appeared or went away between two runs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .analyze import run_analysis
from .common import fail, reader_may_leave


def diff(
    base: Annotated[Path, typer.Argument(metavar="BASE", help="the earlier recording, or analyze's JSON report")],
    new: Annotated[Path, typer.Argument(metavar="NEW", help="the later recording, or analyze's JSON report")],
    alloc: Annotated[list[str] | None, typer.Option("--alloc", metavar="EVENT[,EVENT...]", help="re-interpret recordings: alloc events")] = None,
    free: Annotated[list[str] | None, typer.Option("--free", metavar="EVENT[,EVENT...]", help="re-interpret recordings: free events")] = None,
    than: Annotated[str | None, typer.Option("--than", metavar="T", help="recordings: only leaks older than T: N[s|ms|us|ns]")] = None,
    top: Annotated[int | None, typer.Option("--top", metavar="N", help="show the N biggest changes")] = None,
    fmt: Annotated[str, typer.Option("--format", metavar="text|json", help="output format")] = "text",
    symfs: Annotated[Path | None, typer.Option("--symfs", metavar="DIR", help="look for user ELF files under DIR")] = None,
) -> None:
    """Compare the leaks of two recordings or reports: per call chain, what grew, appeared or went away.

    A JSON report (`analyze --format json`) is used as it was analysed: --alloc/--free/--than
    apply to the recording side(s) only.
    """
    import json

    from .. import diff as diffmod
    from ..format.spec import SpecError, parse_duration

    if fmt not in ("text", "json"):
        fail(f"--format must be text or json, not {fmt!r}")
    if top is not None and top < 1:
        fail(f"--top must be at least 1, not {top}")
    if than is not None:
        try:
            parse_duration(than)
        except SpecError as exc:
            fail(f"--than: {exc}")
    tables: list = []  # diff.Table of a JSON report, or None for a recording (analysed below)
    for path in (base, new):
        try:
            doc = diffmod.read_report(path)
            tables.append(diffmod.report_table(str(path), doc) if doc is not None else None)
        except diffmod.ReportError as exc:
            fail(str(exc))
    given = [o for o, v in (("--alloc", alloc), ("--free", free), ("--than", than)) if v]
    reports = [str(p) for p, t in zip((base, new), tables) if t is not None]
    if given and reports:
        sys.stderr.write(f"kmemleak-offline: note: {'/'.join(given)} "
                         f"appl{'ies' if len(given) == 1 else 'y'} to recordings only; "
                         f"{' and '.join(reports)} compared as analysed\n")
    for i, path in enumerate((base, new)):
        if tables[i] is None:
            a, stacks = run_analysis(path, alloc, free, than, symfs=symfs)
            tables[i] = diffmod.recording_table(str(path), a, stacks)
    ta, tb = tables
    changes = diffmod.compare(ta.leaks, tb.leaks)
    with reader_may_leave():
        if fmt == "json":
            sys.stdout.write(json.dumps(diffmod.to_json(str(base), str(new), changes), indent=1) + "\n")
        else:
            sys.stdout.write(diffmod.render_text(ta, tb, changes, top))
