"""A progress bar on stderr for long analyses: shown after ~2 s, and only on a terminal."""

from __future__ import annotations

import sys
import time
from typing import Self, TextIO

SHOW_AFTER_S = 2.0


class Progress:
    """Stages with a known amount of work each; rich draws the bar once the run is slow."""

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.t0 = time.monotonic()
        self._bar = None
        self._task = None
        self._name, self._total, self._done = "", 0, 0

    def stage(self, name: str, total: int) -> None:
        self._name, self._total, self._done = name, max(int(total), 1), 0
        if self._bar is not None:
            self._bar.update(self._task, description=name, total=self._total, completed=0)
        self._maybe_show()

    def advance(self, amount: int) -> None:
        self._done += int(amount)
        if self._bar is not None:
            self._bar.update(self._task, completed=self._done)
        else:
            self._maybe_show()

    def _maybe_show(self) -> None:
        if not self.enabled or self._bar is not None or time.monotonic() - self.t0 < SHOW_AFTER_S:
            return
        from rich.console import Console
        from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bar

        self._bar = Bar(TextColumn("{task.description:>10}"), BarColumn(),
                        TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                        console=Console(file=self.stream), transient=True)
        self._bar.start()
        self._task = self._bar.add_task(self._name, total=self._total, completed=self._done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
