"""The `record` subcommand: parse options, run a recorder Session, turn errors into one line."""

from __future__ import annotations

import argparse
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
    run_record(list(ctx.args), alloc=alloc, free=free, cpus=cpus, pids=pids, tids=tids,
               mmap_pages=mmap_pages, call_graph=call_graph, duration=duration, output=output,
               verbose=verbose, malloc=malloc, malloc_lib=malloc_lib, malloc_prefix=malloc_prefix,
               embed_symbols=embed_symbols, defer_convert=defer_convert)


def run_record(cmd: list[str], *, alloc: str, free: str, cpus: str | None, pids: str | None,
               tids: str | None, mmap_pages: int, call_graph: bool, duration: str | None,
               output: Path, verbose: int, malloc: bool, malloc_lib: str | None,
               malloc_prefix: str, embed_symbols: bool, defer_convert: bool) -> None:
    """The command's work, whichever parser read the options."""
    from recorder.errors import RecordError
    from recorder.procfs import parse_cpu_list
    from recorder.session import RecordConfig, Session

    try:
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
        if str(exc) != signal.Signals.SIGTERM.name:
            raise  # the CLI says it (and exits 130) wherever Ctrl-C lands
        _fail("interrupted before recording started", 128 + signal.SIGTERM)
    if code:
        raise typer.Exit(code)


class _NotFast(Exception):
    """argparse could not read the options: Typer will, and say what is wrong."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise _NotFast(message)


def _fast_parser() -> argparse.ArgumentParser:
    """The options of `record` above, for argparse (tests/test_record_split.py checks they match)."""
    p = _Parser(add_help=False, allow_abbrev=False, prog="kmemleak-offline record")
    p.add_argument("--alloc", default="")
    p.add_argument("--free", default="")
    p.add_argument("-C", "--cpus", default=None)
    p.add_argument("-p", "--pids", default=None)
    p.add_argument("-t", "--tids", default=None)
    p.add_argument("-m", "--mmap-pages", type=int, default=128)
    p.add_argument("-g", "--call-graph", action="store_true", default=False)
    p.add_argument("--duration", default=None)
    p.add_argument("-o", "--output", type=Path, default=Path("kmemleak.parquet"))
    p.add_argument("--order", action="store_true", default=False)
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("--malloc", action="store_true", default=False)
    p.add_argument("--malloc-lib", default=None)
    p.add_argument("--malloc-prefix", default="")
    p.add_argument("--embed-symbols", dest="embed_symbols", action="store_true", default=True)
    p.add_argument("--no-embed-symbols", dest="embed_symbols", action="store_false")
    p.add_argument("--defer-convert", action="store_true", default=False)
    return p


def record_fast(argv: list[str]) -> bool:
    """Run `record ARGV` without Typer when argparse reads every option; False: use Typer.

    Why: Typer >= 0.2x builds a pydantic adapter per option when it parses, 0.25 CPU s of
    start-up before the events can be enabled. --help and anything argparse does not read go to
    Typer, which prints the usual help and errors."""
    if "--" in argv:
        i = argv.index("--")
        opts, cmd = argv[:i], argv[i + 1:]
    else:
        opts, cmd = argv, []
    if any(a in ("--help", "-h") for a in opts):
        return False
    try:
        ns = _fast_parser().parse_args(opts)
    except _NotFast:
        return False
    kw = vars(ns)
    kw.pop("order")
    run_record(cmd, **kw)
    return True


def _fail(msg: str, code: int) -> None:
    """One line; an expression error adds perf-prof's block (text, caret, available variables)."""
    from kmemleak_offline.format.text import printable

    lines = printable(msg.strip()).splitlines() or ["failed"]
    print(f"kmemleak-offline record: {lines[0]}", *lines[1:], sep="\n", file=sys.stderr)
    raise typer.Exit(code)
