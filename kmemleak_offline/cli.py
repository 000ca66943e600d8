"""The `kmemleak-offline` command: one short function per subcommand, calling the modules."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

try:  # typer >= 0.2x vendors click as typer._click (click itself may not be installed)
    from typer._click.exceptions import UsageError
except ImportError:  # older typer: plain click
    from click.exceptions import UsageError

from . import __version__

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Record allocation/free events on a target; find leaks offline (perf-prof kmemleak, offline).",
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"kmemleak-offline {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _top(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="print the version and exit")] = False) -> None:
    """Record allocation/free events on a target; find leaks offline (perf-prof kmemleak, offline)."""


class UserError(Exception):
    """Bad input: one line on stderr, exit 2."""


def _fail(msg: str, code: int = 2) -> None:
    sys.stderr.write(f"kmemleak-offline: {msg.rstrip()}\n" if "\n" not in msg.strip()
                     else msg.rstrip() + "\n")
    raise typer.Exit(code)


def _silence_stdout() -> None:
    """Send whatever is still buffered for a closed stdout to /dev/null (Python's recipe)."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


@contextlib.contextmanager
def _reader_may_leave() -> Iterator[None]:
    """`... | head`: the reader closing stdout ends the command quietly with status 0 (left to
    Click, it would exit 1)."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        raise typer.Exit(0) from None


def _load(path: Path):
    from .recording import RecordingError, open_recording

    try:
        return open_recording(path)
    except RecordingError as exc:
        _fail(str(exc))


def _terminate_cleanly() -> None:
    """SIGTERM unwinds like Ctrl-C (spill files and worker processes are cleaned up on the way
    out), then exits 143 as a killed process would."""
    import signal

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    with contextlib.suppress(ValueError):  # not the main thread (tests running the CLI in one)
        signal.signal(signal.SIGTERM, on_term)


def _split_specs(values: list[str] | None) -> list[str] | None:
    return list(values) if values else None


@app.command()
def analyze(
    recording: Annotated[Path, typer.Argument(help="recording file (.parquet) or parts folder")],
    alloc: Annotated[list[str] | None, typer.Option("--alloc", metavar="EVENT[,EVENT...]", help="re-interpret: alloc events")] = None,
    free: Annotated[list[str] | None, typer.Option("--free", metavar="EVENT[,EVENT...]", help="re-interpret: free events")] = None,
    than: Annotated[str | None, typer.Option("--than", metavar="T", help="only leaks older than T: N[s|ms|us|ns] (bare = ns)")] = None,
    comm: Annotated[bool, typer.Option("--comm", help="per-stack comms line (leaked-bytes mode)")] = False,
    flame_graph: Annotated[str | None, typer.Option("--flame-graph", metavar="FILE", help="write folded stacks to FILE(.folded)")] = None,
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="-v: event list too; -vv: every sample")] = 0,
    interval: Annotated[int | None, typer.Option("-i", "--interval", metavar="MS", help="stats every MS of trace time")] = None,
    fmt: Annotated[str, typer.Option("--format", metavar="text|json", help="report format")] = "text",
    output: Annotated[Path | None, typer.Option("-o", "--output", metavar="FILE", help="write the report here")] = None,
    utc: Annotated[bool, typer.Option("--utc", help="timestamps in UTC instead of local time")] = False,
    symfs: Annotated[Path | None, typer.Option("--symfs", metavar="DIR", help="look for user ELF files under DIR")] = None,
    call_graph: Annotated[bool, typer.Option("-g", "--call-graph", help="accepted (stacks are used when recorded)")] = False,
    order: Annotated[bool, typer.Option("--order", help="accepted; ordering is always on")] = False,
    jobs: Annotated[int | None, typer.Option("-j", "--jobs", metavar="N", help="worker processes (default: all cores)")] = None,
    tmpdir: Annotated[Path | None, typer.Option("--tmpdir", metavar="DIR", help="spill files go here (default: TMPDIR)")] = None,
    partitions: Annotated[int | None, typer.Option("--partitions", hidden=True)] = None,
    scan_ranges: Annotated[int | None, typer.Option("--scan-ranges", hidden=True)] = None,
    in_memory: Annotated[bool, typer.Option("--in-memory", hidden=True)] = False,
) -> None:
    """Match allocs with frees and print perf-prof's leak reports."""
    from .reports import flamegraph, json_report
    from .reports.text import TextReport

    if fmt not in ("text", "json"):
        _fail(f"--format must be text or json, not {fmt!r}")
    if interval is not None and interval <= 0:
        _fail(f"-i/--interval must be a positive number of milliseconds, not {interval}")
    _terminate_cleanly()
    if jobs is not None and jobs < 1:
        _fail(f"-j/--jobs must be at least 1, not {jobs}")
    if tmpdir is not None and not tmpdir.is_dir():
        _fail(f"--tmpdir {tmpdir}: not a directory")
    engine = {"jobs": jobs, "tmpdir": str(tmpdir) if tmpdir else None, "partitions": partitions,
              "scan_ranges": scan_ranges, "in_memory": in_memory}
    a, stacks = _analysis(recording, alloc, free, than, comm=comm, verbose=verbose,
                          interval=interval, symfs=symfs, engine=engine)
    if a.result.total_alloc == 0 and fmt == "text":  # perf-prof prints nothing then: say why
        names = ", ".join(r.spec.full_name for r in a.roles if r.is_alloc)
        sys.stderr.write(f"kmemleak-offline: note: no allocations to report ({names}: none "
                         "recorded or all filtered out)\n")
    out = open(output, "w") if output else sys.stdout  # noqa: SIM115 (closed below)
    with _reader_may_leave():
        try:
            if fmt == "json":
                json_report.write(a, stacks, str(recording), out, verbose=verbose, comm=comm)
            else:
                TextReport(a, stacks, out, sys.stderr, verbose=verbose, utc=utc).write()
            if flame_graph is not None:
                path = flamegraph.write_folded(a, stacks, flame_graph)
                if path is not None and fmt == "text":
                    out.write(flamegraph.hint(path))
        finally:
            if output:
                out.close()


def _analysis(recording: Path, alloc, free, than, *, comm: bool = False, verbose: int = 0,
              interval: int | None = None, symfs: Path | None = None, engine: dict | None = None):
    """Open and analyse one recording; bad input -> one line, exit 2."""
    from .analysis import AnalysisError, AnalyzeOptions
    from .analysis import analyze as run
    from .reports.frames import StackResolver
    from .spec import SpecError, parse_duration

    try:
        than_ns = parse_duration(than) if than is not None else 0
    except SpecError as exc:
        _fail(f"--than: {exc}")
    rec = _load(recording)
    opts = AnalyzeOptions(alloc=_split_specs(alloc), free=_split_specs(free), than_ns=than_ns,
                          comm=comm, verbose=verbose, interval_ms=interval, **(engine or {}))
    try:
        a = run(rec, opts)
    except AnalysisError as exc:
        _fail(str(exc))
    return a, StackResolver(a.stacks, a.ksyms, _user_resolver(rec, symfs))


def _user_resolver(rec, symfs: Path | None):
    """User-space symbolisation, built on first use (only stacks with user frames need it)."""
    from .symbols.user import from_recording

    state: dict = {}

    def resolve(pids, addrs, times, is_return):
        if "sym" not in state:
            state["sym"] = from_recording(rec, symfs=str(symfs) if symfs else None)
        return state["sym"].resolve(pids, addrs, times, is_return)

    return resolve


@app.command()
def diff(
    base: Annotated[Path, typer.Argument(help="the earlier recording, or analyze's JSON report")],
    new: Annotated[Path, typer.Argument(help="the later recording, or analyze's JSON report")],
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

    from . import diff as diffmod
    from .spec import SpecError, parse_duration

    if fmt not in ("text", "json"):
        _fail(f"--format must be text or json, not {fmt!r}")
    if than is not None:
        try:
            parse_duration(than)
        except SpecError as exc:
            _fail(f"--than: {exc}")
    tables: list = []  # diff.Table of a JSON report, or None for a recording (analysed below)
    for path in (base, new):
        try:
            doc = diffmod.read_report(path)
            tables.append(diffmod.report_table(str(path), doc) if doc is not None else None)
        except diffmod.ReportError as exc:
            _fail(str(exc))
    given = [o for o, v in (("--alloc", alloc), ("--free", free), ("--than", than)) if v]
    reports = [str(p) for p, t in zip((base, new), tables) if t is not None]
    if given and reports:
        sys.stderr.write(f"kmemleak-offline: note: {'/'.join(given)} "
                         f"appl{'ies' if len(given) == 1 else 'y'} to recordings only; "
                         f"{' and '.join(reports)} compared as analysed\n")
    for i, path in enumerate((base, new)):
        if tables[i] is None:
            a, stacks = _analysis(path, alloc, free, than, symfs=symfs)
            tables[i] = diffmod.recording_table(str(path), a, stacks)
    ta, tb = tables
    changes = diffmod.compare(ta.leaks, tb.leaks)
    with _reader_may_leave():
        if fmt == "json":
            sys.stdout.write(json.dumps(diffmod.to_json(str(base), str(new), changes), indent=1) + "\n")
        else:
            sys.stdout.write(diffmod.render_text(ta, tb, changes, top))


@app.command()
def info(recording: Annotated[Path, typer.Argument(help="recording file or parts folder")]) -> None:
    """Summarise a recording: host, kernel, events, counts, lost, duration, size."""
    from .info import summary

    rec = _load(recording)
    with _reader_may_leave():
        sys.stdout.write(summary(rec))


def _register_record() -> None:
    from recorder.command import record

    app.command("record", context_settings={"allow_extra_args": True,
                                            "ignore_unknown_options": False})(record)


try:
    _register_record()
except (ImportError, AttributeError):  # recorder not installed next to the analyser: analyse only
    pass

try:
    from .import_cmd import import_ as _import

    app.command("import")(_import)
except ImportError:  # importer not available
    pass


def main(argv: list[str] | None = None) -> int:
    """Entry point: Typer in non-standalone mode so usage errors become one line, exit 2."""
    try:
        rc = app(args=argv, standalone_mode=False, prog_name="kmemleak-offline")
        sys.stdout.flush()  # a closed pipe (`| head`) shows up here, not at interpreter exit
    except typer.Exit as exc:
        return exc.exit_code
    except UsageError as exc:
        ctx = exc.ctx
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            sys.stdout.write(ctx.get_help() + "\n")
            return 0
        where = f" ({ctx.command_path})" if ctx is not None else ""
        sys.stderr.write(f"kmemleak-offline: {exc.format_message()}{where}\n")
        return 2
    except typer.Abort:
        sys.stderr.write("kmemleak-offline: aborted\n")
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # last resort: never a traceback for users
        if os.environ.get("KMEMLEAK_OFFLINE_DEBUG"):
            raise
        recording = sys.modules.get(f"{__package__}.recording")  # loaded if it could have raised
        if recording is not None and isinstance(exc, recording.RecordingError):
            sys.stderr.write(f"kmemleak-offline: {exc}\n")  # corrupt data found mid-analysis
            return 2
        sys.stderr.write(f"kmemleak-offline: internal error: {type(exc).__name__}: {exc}"
                         " (set KMEMLEAK_OFFLINE_DEBUG=1 for a traceback)\n")
        return 1
    return rc if isinstance(rc, int) else 0  # non-standalone mode returns typer.Exit's code


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()

__all__ = ["__version__", "app", "main"]
