"""The `record` subcommand: parse options, run a recorder Session, turn errors into one line."""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """'10s', '500ms', '2m', bare number = seconds -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h)?\s*", text or "")
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"bad --duration {text!r} (expected e.g. 10s, 500ms, 2m)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _int_list(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"bad {what} list {text!r} (expected e.g. 123,456)") from None
    if not vals or any(v <= 0 for v in vals):
        raise ValueError(f"bad {what} list {text!r} (expected e.g. 123,456)")
    return vals


def record(
    ctx: typer.Context,
    alloc: Annotated[str, typer.Option("--alloc", metavar="SPEC[,SPEC...]", help="alloc events: sys:name/filter/ptr=../size=../stack/,...")] = "",
    free: Annotated[str, typer.Option("--free", metavar="SPEC[,SPEC...]", help="free events: sys:name/filter/ptr=../,...")] = "",
    cpus: Annotated[str | None, typer.Option("-C", "--cpus", metavar="CPUS", help="CPUs to record, e.g. 0,2-3")] = None,
    pids: Annotated[str | None, typer.Option("-p", "--pids", metavar="PIDS", help="processes to attach to (all threads, children)")] = None,
    tids: Annotated[str | None, typer.Option("-t", "--tids", metavar="TIDS", help="threads to attach to")] = None,
    mmap_pages: Annotated[int, typer.Option("-m", "--mmap-pages", metavar="PAGES", help="ring pages per CPU (power of 2)")] = 128,
    call_graph: Annotated[bool, typer.Option("-g", "--call-graph", help="record call chains on alloc events")] = False,
    duration: Annotated[str | None, typer.Option("--duration", metavar="T", help="stop after this long, e.g. 10s, 500ms")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", metavar="FILE", help="recording to write")] = Path("kmemleak.parquet"),
    order: Annotated[bool, typer.Option("--order", help="accepted for perf-prof compatibility; always on")] = False,
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="more output")] = 0,
    malloc: Annotated[bool, typer.Option("--malloc", help="user-space leaks: uprobes on the target's "
                                         "allocator (malloc, calloc, realloc, free...); needs -p/-t or -- CMD; "
                                         "replaces --alloc/--free")] = False,
    malloc_lib: Annotated[str | None, typer.Option("--malloc-lib", metavar="PATH", help="allocator library to probe "
                                                   "(default: the libc the target maps)")] = None,
    malloc_prefix: Annotated[str, typer.Option("--malloc-prefix", metavar="PREFIX", help="symbol prefix of the allocator "
                                               "functions, e.g. je_")] = "",
    embed_symbols: Annotated[bool, typer.Option("--embed-symbols/--no-embed-symbols",
                                                help="with --malloc: embed the symbol tables of the "
                                                "ELF files the traced processes mapped")] = True,
    defer_convert: Annotated[bool, typer.Option("--defer-convert", help="exit right after the stop, "
                                                "leaving the ring chunks unconverted (3-5x larger): "
                                                "`convert` or `analyze` converts them later, anywhere")] = False,
) -> None:
    """Record alloc/free tracepoints (as root) into a recording; `-- CMD ARGS...` traces a command.

    `--malloc` records a user-space program's allocator calls instead (uprobes, removed at exit).
    """
    from recorder.errors import RecordError
    from recorder.procfs import parse_cpu_list
    from recorder.session import RecordConfig, Session

    try:
        cmd = list(ctx.args)
        unknown = [a for a in cmd if a.startswith("-")] if cmd and cmd[0].startswith("-") else []
        if unknown:
            raise ValueError(f"unknown option {unknown[0]} (a command to trace goes after --)")
        cfg = RecordConfig(
            alloc=alloc, free=free, output=output,
            cpus=parse_cpu_list(cpus) if cpus is not None else None,
            pids=_int_list(pids, "pid"), tids=_int_list(tids, "tid"),
            mmap_pages=mmap_pages, call_graph=call_graph,
            duration_s=parse_duration(duration) if duration is not None else None,
            command=cmd, verbose=verbose, malloc=malloc, malloc_lib=malloc_lib,
            malloc_prefix=malloc_prefix, embed_symbols=embed_symbols, defer_convert=defer_convert)
        code = Session(cfg).run()
    except ValueError as exc:  # spec / option syntax
        _fail(str(exc), 2)
    except RecordError as exc:
        _fail(str(exc), exc.exit_code)
    except OSError as exc:
        _fail(f"record: {exc.strerror or exc}", 1)
    except KeyboardInterrupt as exc:  # SIGINT (Python's own) or SIGTERM (the session's handler)
        term = str(exc) == signal.Signals.SIGTERM.name
        _fail("interrupted before recording started",
              128 + (signal.SIGTERM if term else signal.SIGINT))
    if code:
        raise typer.Exit(code)


def _fail(msg: str, code: int) -> None:
    """One line; an expression error adds perf-prof's block (text, caret, available variables)."""
    lines = msg.strip().splitlines() or ["failed"]
    print(f"kmemleak-offline record: {lines[0]}", *lines[1:], sep="\n", file=sys.stderr)
    raise typer.Exit(code)
