"""`kmemleak-offline fleet`: many recordings (hosts, runs), each analysed alone, reduced by call chain."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from .common import fail, reader_may_leave


def fleet(
    recordings: Annotated[list[str], typer.Argument(metavar="REC", help="recordings, folders of them, globs, or fsspec URLs (s3://...)")],
    fmt: Annotated[str, typer.Option("--format", metavar="text|json", help="output format")] = "text",
    output: Annotated[Path | None, typer.Option("-o", "--output", metavar="FILE", help="write the report here")] = None,
    jobs: Annotated[int | None, typer.Option("-j", "--jobs", metavar="N", help="local worker processes (default: all cores)")] = None,
    scheduler: Annotated[str | None, typer.Option("--scheduler", metavar="ADDRESS", help="run on this Dask cluster (tcp://host:port) instead")] = None,
    summaries: Annotated[Path | None, typer.Option("--summaries", metavar="DIR", help="keep the per-recording summaries (Parquet) here")] = None,
    top: Annotated[int | None, typer.Option("--top", metavar="N", help="text: show the N biggest call chains")] = None,
) -> None:
    """Analyse every recording on its own, then sum the leaks per call chain across hosts.

    Call chains are matched by (symbol, offset, dso), never by address. A recording that cannot
    be read is reported and skipped; the exit status is 2 only when none could be read.
    """
    from ..fleet import reduce, report, run, sources
    from ..fleet.sources import FleetError

    if fmt not in report.FORMATS:
        fail(f"--format must be text or json, not {fmt!r}")
    if jobs is not None and jobs < 1:
        fail(f"-j/--jobs must be at least 1, not {jobs}")
    if jobs is not None and scheduler is not None:
        fail("-j/--jobs is for local runs; a --scheduler run uses the cluster's workers")
    if top is not None and top < 1:
        fail(f"--top must be at least 1, not {top}")
    if summaries is not None and summaries.exists() and (
            not summaries.is_dir() or any(summaries.iterdir())):
        fail(f"--summaries {summaries}: exists and is not an empty directory")
    if output is not None and not (output.parent if str(output.parent) else Path(".")).is_dir():
        fail(f"-o {output}: no such directory {output.parent}")
    try:  # checked before any work
        import duckdb  # noqa: F401
    except ImportError as exc:
        fail(f"fleet needs DuckDB: pip install 'kmemleak-offline[fleet]' ({exc})")
    try:
        found = sources.expand(recordings)
        made = run.dask(found, scheduler) if scheduler else run.local(found, jobs)
        with tempfile.TemporaryDirectory(prefix="kmlo-fleet-") as tmp:
            folder = summaries if summaries is not None else Path(tmp)
            for sub in ("sites", "stacks"):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            rows = _collect(made, found, folder)
            if not any(r["error"] is None for r in rows):
                first = next(r for r in rows if r["error"] is not None)
                fail(f"no recording could be analysed ({len(rows)} tried); "
                     f"{first['recording']}: {first['error']}")
            reduce.write_recordings(folder, rows)
            con = reduce.connect(folder)
            recs, sites = reduce.recordings(con), reduce.sites(con)
            con.close()
    except FleetError as exc:
        fail(str(exc))
    try:
        out = open(output, "w") if output else sys.stdout  # noqa: SIM115 (closed below)
    except OSError as exc:
        fail(f"-o {output}: {exc.strerror}")
    with reader_may_leave():
        try:
            if fmt == "json":
                report.write_json(recs, sites, out)
            else:
                report.write_text(recs, sites, out, top)
        finally:
            if output:
                out.close()


def _collect(made, found, folder: Path) -> list[dict]:
    """Write each summary as it arrives; one stderr line per recording that was skipped."""
    from .. import __version__

    rows: list[dict | None] = [None] * len(found)
    other_versions: set[str] = set()
    for s in made:
        row = {"index": s.index, "recording": s.label, **s.info, "error": s.error}
        version = s.info.get("analyser_version")
        if version and version != __version__:
            other_versions.add(version)
        if s.error is not None:
            sys.stderr.write(f"kmemleak-offline: warning: {s.label}: {s.error}; skipped\n")
        else:
            (folder / "sites" / f"{s.index:05d}.parquet").write_bytes(s.sites)
            (folder / "stacks" / f"{s.index:05d}.parquet").write_bytes(s.stacks)
            for msg in s.info.get("warnings") or []:
                sys.stderr.write(f"kmemleak-offline: {s.label}: {msg}\n")
        rows[s.index] = row
    if other_versions:
        sys.stderr.write(f"kmemleak-offline: warning: workers ran kmemleak-offline "
                         f"{', '.join(sorted(other_versions))}, this is {__version__}\n")
    return [r for r in rows if r is not None]
