"""What every subcommand shares: the one error class, opening a recording, a closed stdout."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import typer

from ..format.text import printable  # noqa: F401 - re-exported for the commands


class CommandError(Exception):
    """Bad input or a failed step: its message (one line, or an expression's caret block) goes to
    stderr and the process exits with `code` (2: bad input). Raised anywhere under a command,
    printed once by `cli.main`."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def fail(msg: str, code: int = 2) -> None:
    raise CommandError(msg, code)


def silence_stdout() -> None:
    """Send whatever is still buffered for a closed stdout to /dev/null (Python's recipe)."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


@contextlib.contextmanager
def reader_may_leave() -> Iterator[None]:
    """`... | head`: the reader closing stdout ends the command quietly with status 0 (left to
    Click, it would exit 1)."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()
        raise typer.Exit(0) from None


@contextlib.contextmanager
def writing(what: str, path: Path | str | None) -> Iterator[None]:
    """An output that cannot be written (no such folder, a directory, a full disk) is one line,
    exit 2, not an internal error. A closed pipe is left to `reader_may_leave`."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        where = path if path is not None else "stdout"
        fail(f"cannot write {what} to {where} ({exc.strerror or exc})")


def check_dir(option: str, path: Path | None) -> None:
    """An option naming a folder: it must be one (one line, exit 2, otherwise)."""
    if path is None:
        return
    try:
        ok = path.is_dir()
    except OSError as exc:  # a name too long, a loop of links...
        fail(f"{option} {path}: {exc.strerror}")
    if not ok:
        fail(f"{option} {path}: not a directory")


def load(path: Path, convert: bool = True):
    """Open a recording file or parts folder; bad input is a CommandError. A raw recording (ring
    chunks) is converted first, once (commands/convert.py), unless `convert` is False."""
    from ..format.recording import RecordingError, open_recording

    try:
        rec = open_recording(path)
        if convert:
            from .convert import converted

            rec = converted(rec)
        return rec
    except RecordingError as exc:
        fail(str(exc))
    except OSError as exc:  # a name too long, a loop of links...
        fail(f"{path}: {exc.strerror or exc}")


def split_specs(values: list[str] | None) -> list[str] | None:
    return list(values) if values else None
