"""`kmemleak-offline info`: what a recording holds, at a glance."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .common import load, reader_may_leave


def info(recording: Annotated[Path, typer.Argument(metavar="RECORDING", help="recording file or parts folder")]) -> None:
    """Summarise a recording: host, kernel, events, counts, lost, duration, size."""
    from ..info import summary

    rec = load(recording, convert=False)  # a raw recording is shown as it is
    with reader_may_leave():
        sys.stdout.write(summary(rec))
