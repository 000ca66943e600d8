"""`kmemleak-offline import`: a `perf record` perf.data -> a recording, for postmortem analysis.

A thin Typer wrapper over perfdata.importer.import_perf_data; bad input is a CommandError (exit 2).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .common import fail


def import_(
    ctx: typer.Context,
    perf_data: Annotated[Path, typer.Argument(metavar="PERF_DATA", help="perf.data written by perf record "
                                              "(tracepoints/uprobes); `-`: a pipe stream on stdin (perf record -o -)")],
    output: Annotated[Path | None, typer.Option("-o", "--output",
                                                help="recording to write (default: PERF_DATA with .parquet)")] = None,
    alloc: Annotated[list[str] | None, typer.Option("--alloc", metavar="EVENT[,EVENT...]", help="alloc events "
                                                    "(default: the known kmem/percpu events present)")] = None,
    free: Annotated[list[str] | None, typer.Option("--free", metavar="EVENT[,EVENT...]", help="free events")] = None,
    kallsyms: Annotated[Path | None, typer.Option("--kallsyms", metavar="FILE", help="the target's /proc/kallsyms "
                                                  "(copied as root; plain, .gz or .xz) for kernel symbols")] = None,
    vmlinux: Annotated[Path | None, typer.Option("--vmlinux", metavar="FILE",
                                                 help="the target kernel's vmlinux (with symbols) for kernel symbols")] = None,
    formats: Annotated[Path | None, typer.Option("--formats", metavar="DIR", help="a copy of the target's "
                                                 "/sys/kernel/tracing/events: tracepoint formats for a perf.data "
                                                 "cut short or from a killed perf record")] = None,
) -> None:
    """Convert a perf.data (tracepoints and uprobes) into a recording."""
    from ..format.kernfile import KernelFileError, read_kernel_file
    from ..format.recording import RecordingError
    from ..perfdata.importer import PerfDataError, import_perf_data  # heavy: only when importing

    stdin = str(perf_data) == "-"
    if stdin and output is None:
        fail("import -: give the recording to write with -o")
    out = output if output is not None else perf_data.with_suffix(".parquet")
    if not stdin and out.resolve() == perf_data.resolve():
        fail(f"{out}: the output would overwrite the perf.data; give -o")

    def notice(msg: str) -> None:
        sys.stderr.write(f"kmemleak-offline import: {msg}\n")

    try:
        kernel = read_kernel_file(kallsyms, vmlinux)
    except KernelFileError as exc:
        fail(str(exc))
    try:
        res = import_perf_data(perf_data, out, list(alloc) if alloc else None,
                               list(free) if free else None, notice=notice, kernel=kernel,
                               formats_dir=formats)
    except (PerfDataError, RecordingError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{out}: cannot write the recording ({exc.strerror or exc})")
    total = sum(res.samples.values())
    per = ", ".join(f"{k} {v}" for k, v in sorted(res.samples.items()))
    sys.stderr.write(f"kmemleak-offline import: wrote {res.output}: {total} samples ({per}), "
                     f"{res.stacks} distinct call chains\n")
