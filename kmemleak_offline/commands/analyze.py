"""`kmemleak-offline analyze`: one recording -> perf-prof's leak report (text, JSON, folded) or a
profile (pprof, speedscope)."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from .common import check_dir, fail, load, reader_may_leave, split_specs, writing

MAX_INTERVAL_MS = (1 << 63) // 1_000_000 - 1  # the grid is in int64 nanoseconds


def _terminate_cleanly() -> None:
    """SIGTERM unwinds like Ctrl-C (spill files and worker processes are cleaned up on the way
    out), then exits 143 as a killed process would."""
    import signal

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    with contextlib.suppress(ValueError):  # not the main thread (tests running the CLI in one)
        signal.signal(signal.SIGTERM, on_term)


def _arrow_keeps_freed_memory() -> None:
    """pyarrow's allocator (mimalloc) returns freed pages to the kernel after 10 ms; the analysis
    reads one row group after another into buffers of the same sizes, so each was faulted in
    again (page faults are dear on VMs: ~0.3 s of system time at 10M events). Keep them, as
    glibc is told to (analysis._keep_freed_memory). Must run before pyarrow is first imported;
    a value in the environment wins."""
    os.environ.setdefault("MIMALLOC_PURGE_DELAY", "-1")


def analyze(
    recording: Annotated[Path, typer.Argument(metavar="RECORDING", help="recording file (.parquet) or parts folder")],
    alloc: Annotated[list[str] | None, typer.Option("--alloc", metavar="EVENT[,EVENT...]", help="re-interpret: alloc events")] = None,
    free: Annotated[list[str] | None, typer.Option("--free", metavar="EVENT[,EVENT...]", help="re-interpret: free events")] = None,
    than: Annotated[str | None, typer.Option("--than", metavar="T", help="only leaks older than T: N[s|ms|us|ns] (bare = ns)")] = None,
    comm: Annotated[bool, typer.Option("--comm", help="per-stack comms line (leaked-bytes mode)")] = False,
    flame_graph: Annotated[str | None, typer.Option("--flame-graph", metavar="FILE", help="write folded stacks to FILE(.folded)")] = None,
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="-v: event list too; -vv: every sample")] = 0,
    interval: Annotated[int | None, typer.Option("-i", "--interval", metavar="MS", help="stats every MS of trace time")] = None,
    fmt: Annotated[str, typer.Option("--format", metavar="FORMAT", help="text (perf-prof's), json, folded, "
                                     "pprof (gzipped profile.proto: give -o), speedscope or html "
                                     "(a page with plots: give -o FILE)")] = "text",
    trend: Annotated[bool, typer.Option("--trend", help="text: a growth-trend line per call chain "
                                        "(growing/bounded/insufficient, docs/trends.md)")] = False,
    sort: Annotated[str, typer.Option("--sort", metavar="ORDER", help="call chains by bytes "
                                      "(perf-prof's) or growth (growing first, steepest first)")] = "bytes",
    output: Annotated[Path | None, typer.Option("-o", "--output", metavar="FILE", help="write the report here")] = None,
    utc: Annotated[bool, typer.Option("--utc", help="timestamps in UTC instead of local time")] = False,
    symfs: Annotated[Path | None, typer.Option("--symfs", metavar="DIR", help="look for user ELF files under DIR")] = None,
    kallsyms: Annotated[Path | None, typer.Option("--kallsyms", metavar="FILE", help="kernel symbols from this "
                                                  "/proc/kallsyms copy (plain, .gz, .xz) instead of the recording's")] = None,
    vmlinux: Annotated[Path | None, typer.Option("--vmlinux", metavar="FILE", help="kernel symbols from this "
                                                 "vmlinux instead of the recording's")] = None,
    call_graph: Annotated[bool, typer.Option("-g", "--call-graph", help="accepted (stacks are used when recorded)")] = False,
    order: Annotated[bool, typer.Option("--order", help="accepted; ordering is always on")] = False,
    jobs: Annotated[int | None, typer.Option("-j", "--jobs", metavar="N", help="worker processes (default: all cores)")] = None,
    tmpdir: Annotated[Path | None, typer.Option("--tmpdir", metavar="DIR", help="spill files go here (default: TMPDIR)")] = None,
    partitions: Annotated[int | None, typer.Option("--partitions", hidden=True)] = None,
    scan_ranges: Annotated[int | None, typer.Option("--scan-ranges", hidden=True)] = None,
    in_memory: Annotated[bool, typer.Option("--in-memory", hidden=True)] = False,
) -> None:
    """Match allocs with frees and print perf-prof's leak reports."""
    _arrow_keeps_freed_memory()
    from ..reports import FORMATS, ReportOptions, flamegraph, is_binary, reporter

    if fmt not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    from ..analysis import SORTS

    if sort not in SORTS:
        fail(f"--sort must be one of {', '.join(SORTS)}, not {sort!r}")
    try:
        binary = is_binary(fmt)
    except ImportError as exc:  # a format's library is missing (pprof: protobuf)
        fail(f"--format {fmt} needs the Python package {exc.name}: pip install {exc.name}"
             if exc.name else f"--format {fmt}: {exc}")
    if binary and output is None and sys.stdout.isatty():
        fail(f"--format {fmt} writes binary data: give -o FILE (or redirect stdout), "
             "not a terminal")
    if interval is not None and not 0 < interval <= MAX_INTERVAL_MS:
        fail(f"-i/--interval must be 1..{MAX_INTERVAL_MS} milliseconds, not {interval}")
    if fmt == "html" and output is None and sys.stdout.isatty():
        fail("--format html writes a page to open in a browser: give -o FILE "
             "(or redirect stdout to a file)")
    _terminate_cleanly()
    if jobs is not None and jobs < 1:
        fail(f"-j/--jobs must be at least 1, not {jobs}")
    check_dir("--tmpdir", tmpdir)
    engine = {"jobs": jobs, "tmpdir": str(tmpdir) if tmpdir else None, "partitions": partitions,
              "scan_ranges": scan_ranges, "in_memory": in_memory}
    if kallsyms is not None or vmlinux is not None:
        from ..format.kernfile import KernelFileError, read_kernel_file

        try:
            engine["kernel"] = read_kernel_file(kallsyms, vmlinux)
        except KernelFileError as exc:
            fail(str(exc))
    a, stacks = run_analysis(recording, alloc, free, than, comm=comm, verbose=verbose,
                          interval=interval, symfs=symfs, engine=engine,
                          trend=trend or sort == "growth" or fmt in ("json", "html"))
    if a.result.total_alloc == 0 and fmt == "text":  # perf-prof prints nothing then: say why
        names = ", ".join(r.spec.full_name for r in a.roles if r.is_alloc)
        sys.stderr.write(f"kmemleak-offline: note: no allocations to report ({names}: none "
                         "recorded or all filtered out)\n")
    folded = None
    if flame_graph is not None:  # first: a path that cannot be written fails before any report
        with writing("the flame graph", flamegraph.folded_path(flame_graph)):
            folded = flamegraph.write_folded(a, stacks, flame_graph)
    try:
        out = open(output, "wb" if binary else "w") if output else (  # noqa: SIM115 (closed below)
            sys.stdout.buffer if binary else sys.stdout)
    except OSError as exc:
        fail(f"-o {output}: cannot write the report there ({exc.strerror or exc})")
    with reader_may_leave(), writing("the report", output):
        try:
            reporter(fmt)(a, stacks, out, ReportOptions(recording=str(recording), verbose=verbose,
                                                        comm=comm, utc=utc, trend=trend, sort=sort))
            if folded is not None and fmt == "text":
                out.write(flamegraph.hint(folded))
        finally:
            if output:
                out.close()
    note_unreadable(stacks, verbose)


def run_analysis(recording: Path, alloc, free, than, *, comm: bool = False, verbose: int = 0,
              interval: int | None = None, symfs: Path | None = None, engine: dict | None = None,
              trend: bool = False):
    """Open and analyse one recording; bad input -> one line, exit 2."""
    from ..analysis import AnalysisError, AnalyzeOptions
    from ..analysis import analyze as run
    from ..format.spec import SpecError, parse_duration
    from ..symbols.callchain import StackResolver

    try:
        than_ns = parse_duration(than) if than is not None else 0
    except SpecError as exc:
        fail(f"--than: {exc}")
    check_dir("--symfs", symfs)
    rec = load(recording)
    opts = AnalyzeOptions(alloc=split_specs(alloc), free=split_specs(free), than_ns=than_ns,
                          comm=comm, verbose=verbose, interval_ms=interval, trend=trend,
                          symfs=str(symfs) if symfs else None, **(engine or {}))
    try:
        a = run(rec, opts)
    except AnalysisError as exc:
        fail(str(exc))
    return a, StackResolver(a.stacks, a.ksyms, user_resolver(a, symfs))


def user_resolver(a, symfs: Path | None):
    """User-space symbolisation over the analysis's machine (its maps are built on first use:
    only stacks with user frames need them) and the recording's embedded symbol rows."""
    from ..symbols.callchain import UserResolver
    from ..symbols.user import Dsos

    dsos = a.dsos if a.dsos is not None else Dsos(a.side["usym"], symfs=str(symfs) if symfs else None)
    return UserResolver(a.comms, dsos)


def note_unreadable(stacks, verbose: int) -> None:
    """-v: one stderr line per ELF file that could not be read (its frames print as Unknown)."""
    if verbose:
        for path, why in stacks.unreadable.items():
            sys.stderr.write(f"kmemleak-offline: note: cannot read ELF file {path} ({why}): "
                             "its frames are Unknown\n")
