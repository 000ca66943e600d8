"""The `kmemleak-offline` command: the Typer app, its subcommands (commands/), one error exit."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Annotated

import typer

try:  # typer >= 0.2x vendors click as typer._click (click itself may not be installed)
    from typer._click.exceptions import UsageError
except ImportError:  # older typer: plain click
    from click.exceptions import UsageError

from recorder.command import record, record_fast

from . import __version__
from .commands.analyze import analyze
from .commands.common import CommandError, silence_stdout
from .commands.convert import convert
from .commands.diff import diff
from .commands.fleet import fleet
from .commands.import_ import import_
from .commands.info import info
from .format.hugepages import small_pages
from .format.text import printable

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Record allocation/free events on a target; find leaks offline (perf-prof kmemleak, offline).",
)


def _usage_display_name(self) -> str:
    """Usage lines name required arguments plainly (`RECORDING`); typer >= 0.2x writes
    `{RECORDING}`, which reads like a shell brace expansion."""
    name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
    return name + ("..." if self.nargs != 1 else "")


if hasattr(typer.core.TyperArgument, "_usage_display_name"):
    typer.core.TyperArgument._usage_display_name = _usage_display_name


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"kmemleak-offline {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _top(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="print the version and exit")] = False) -> None:
    """Record allocation/free events on a target; find leaks offline (perf-prof kmemleak, offline)."""


# short help: the one line `kmemleak-offline --help` shows per command (never cut off)
app.command("analyze", short_help="Find the leaks in a recording (perf-prof's report).")(analyze)
app.command("diff", short_help="Compare two runs: chains that grew, appeared, went.")(diff)
app.command("fleet", short_help="Many hosts' recordings: leaks per call chain across them.")(fleet)
app.command("info", short_help="Summarise a recording.")(info)
app.command("record", short_help="Record alloc/free events on this machine (root).",
            context_settings={"allow_extra_args": True, "ignore_unknown_options": False})(record)
app.command("import", short_help="Convert a perf.data into a recording.")(import_)
app.command("convert", short_help="Turn a raw recording's ring chunks into events.")(convert)


_SIGINT_SEEN = [False]


def _on_sigint(signum: int, frame: object) -> None:
    """Python's Ctrl-C, remembered: inside an import or a class body it surfaces as another
    exception, which is then not an internal error."""
    _SIGINT_SEEN[0] = True
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point: Typer in non-standalone mode so usage errors become one line, exit 2."""
    _SIGINT_SEEN[0] = False
    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGINT, _on_sigint)
    try:
        rc = _main(argv)
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
    if rc == 130 and not _SAID[0]:  # typer turns a KeyboardInterrupt into a silent status 130
        _interrupted(argv)
    return rc


_SAID = [False]  # a command already said why it ended (its one line)


def _main(argv: list[str] | None) -> int:
    _SAID[0] = False
    args = sys.argv[1:] if argv is None else argv
    try:
        if args[:1] == ["record"] and record_fast(args[1:]):  # start-up: no Typer machinery
            return 0
        if args[:1] != ["record"]:  # record: its converter does it (never the traced command)
            small_pages()
        rc = app(args=argv, standalone_mode=False, prog_name="kmemleak-offline")
        sys.stdout.flush()  # a closed pipe (`| head`) shows up here, not at interpreter exit
    except typer.Exit as exc:
        return exc.exit_code
    except CommandError as exc:
        _SAID[0] = True
        msg = printable(str(exc))
        sys.stderr.write(f"kmemleak-offline: {msg.rstrip()}\n" if "\n" not in msg.strip()
                         else msg.rstrip() + "\n")
        return exc.code
    except UsageError as exc:
        ctx = exc.ctx
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            sys.stdout.write(ctx.get_help() + "\n")
            return 0
        where = f" ({ctx.command_path})" if ctx is not None else ""
        sys.stderr.write(printable(f"kmemleak-offline: {exc.format_message()}{where}") + "\n")
        return 2
    except typer.Abort:
        _SAID[0] = True
        sys.stderr.write("kmemleak-offline: aborted\n")
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        silence_stdout()
        return 0
    except KeyboardInterrupt:  # Ctrl-C before a command could handle it (start-up, imports)
        return 130
    except RecursionError:  # a spec, expression or JSON report nested thousands deep
        sys.stderr.write("kmemleak-offline: input nested too deeply (an expression, event spec or "
                         "JSON report): simplify it\n")
        return 2
    except Exception as exc:  # last resort: never a traceback for users
        if os.environ.get("KMEMLEAK_OFFLINE_DEBUG"):
            raise
        if _SIGINT_SEEN[0]:  # Ctrl-C inside an import or a class body becomes another error
            return 130
        recording = sys.modules.get(f"{__package__}.format.recording")  # loaded if it could have raised
        if recording is not None and isinstance(exc, recording.RecordingError):
            sys.stderr.write(printable(f"kmemleak-offline: {exc}") + "\n")  # damage found mid-analysis
            return 2
        if isinstance(exc, OSError):  # the environment: a path, a permission, a full disk
            what = f"{exc.filename}: " if exc.filename is not None else ""
            text = printable(f"kmemleak-offline: {what}{exc.strerror or exc}")
            sys.stderr.write(text.splitlines()[0][:400] + "\n")
            return 2
        sys.stderr.write(printable(f"kmemleak-offline: internal error: {type(exc).__name__}: {exc}"
                                   " (set KMEMLEAK_OFFLINE_DEBUG=1 for a traceback)") + "\n")
        return 1
    return rc if isinstance(rc, int) else 0  # non-standalone mode returns typer.Exit's code


def _interrupted(argv: list[str] | None) -> None:
    """Ctrl-C that no command handled: one line (record's says nothing was recorded)."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["record"]:
        sys.stderr.write("kmemleak-offline record: interrupted before recording started\n")
    else:
        sys.stderr.write("kmemleak-offline: interrupted\n")


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()

__all__ = ["__version__", "app", "main"]
