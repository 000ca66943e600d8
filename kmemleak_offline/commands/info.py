"""`kmemleak-offline info`: what a recording holds, at a glance."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .common import load, printable, reader_may_leave


def info(recording: Annotated[Path, typer.Argument(metavar="RECORDING", help="recording file or parts folder")]) -> None:
    """Summarise a recording: host, kernel, events, counts, lost, duration, size."""
    from ..info import summary
    from ..plausible import implausible
    from ..roles import warn_failures

    rec = load(recording, convert=False)  # a raw recording is shown as it is
    warnings = list(rec.warnings)
    warn_failures(implausible(rec), warnings.append, fate="analyze leaves them out")
    for w in warnings:
        sys.stderr.write(f"kmemleak-offline: {printable(w)}\n")
    with reader_may_leave():
        sys.stdout.write(summary(rec, warnings))
