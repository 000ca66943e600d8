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
    fmt: Annotated[str, typer.Option("--format", metavar="text|json|markdown|html", help="output format "
                                     "(markdown: a pull-request comment; html: a page with both runs, give -o FILE)")] = "text",
    fail_on_growth: Annotated[str | None, typer.Option("--fail-on-growth", metavar="SIZE", help="exit 1 when a call chain's leaked bytes grew by more than SIZE: bytes, or with K/M/G (1024-based) or kB/MB/GB")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", metavar="FILE", help="write the diff here")] = None,
    symfs: Annotated[Path | None, typer.Option("--symfs", metavar="DIR", help="look for user ELF files under DIR")] = None,
) -> None:
    """Compare the leaks of two recordings or reports: per call chain, what grew, appeared or went away.

    A JSON report (`analyze --format json`) is used as it was analysed: --alloc/--free/--than
    apply to the recording side(s) only. With --fail-on-growth (a CI gate) the exit status is 1
    when any chain grew by more than SIZE bytes (a new chain grows from 0), else 0.
    """
    import json

    from .. import diff as diffmod
    from ..format.spec import SpecError, parse_duration

    if fmt not in ("text", "json", "markdown", "html"):
        fail(f"--format must be text, json, markdown or html, not {fmt!r}")
    if fmt == "html" and output is None and sys.stdout.isatty():
        fail("--format html writes a page to open in a browser: give -o FILE "
             "(or redirect stdout to a file)")
    limit = None
    if fail_on_growth is not None:
        try:
            limit = diffmod.parse_size(fail_on_growth)
        except ValueError as exc:
            fail(f"--fail-on-growth: {exc}")
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
            a, stacks = run_analysis(path, alloc, free, than, symfs=symfs, trend=fmt == "html")
            tables[i] = diffmod.recording_table(str(path), a, stacks)
    ta, tb = tables
    if limit is not None:
        no_sizes = [t.name for t in (ta, tb) if t.mode != diffmod.LEAKED_BYTES]
        if no_sizes:
            fail(f"--fail-on-growth: {' and '.join(no_sizes)} "
                 f"ha{'s' if len(no_sizes) == 1 else 've'} no allocation sizes (event-list mode): "
                 "nothing to compare bytes of")
    changes = diffmod.compare(ta.leaks, tb.leaks)
    failing = diffmod.over_limit(changes, limit) if limit is not None else []
    if fmt == "json":
        text = json.dumps(diffmod.to_json(str(base), str(new), changes), indent=1) + "\n"
    elif fmt == "markdown":
        from .. import diff_markdown

        text = diff_markdown.render(ta, tb, changes, top, limit, failing)
    elif fmt == "html":
        from ..reports import diff_html

        text = diff_html.build(ta, tb, changes, top)
    else:
        text = diffmod.render_text(ta, tb, changes, top)
    if output is not None:
        try:
            output.write_text(text)
        except OSError as exc:
            fail(f"-o {output}: {exc.strerror or exc}")
    else:
        with reader_may_leave():
            sys.stdout.write(text)
    if failing:
        worst = failing[0]
        fail(f"leak gate: {len(failing)} call chain{'s' if len(failing) != 1 else ''} grew by more "
             f"than {limit} bytes (largest {worst.delta_bytes:+d} bytes, {worst.status}: "
             f"{diffmod.describe(worst.key)})", code=1)
