"""Run tasks in forked worker processes (or inline for one job), with clean Ctrl-C.

Workers are forked once per analysis, so that they inherit the set-up (compiled expressions,
symbol tables) without pickling it, and serve both passes with warm heaps; they ignore SIGINT and
are terminated by the parent, which owns the cleanup (spill files) and the one-line error.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Self

_SHARED: Any = None  # inherited by the workers at fork (never pickled)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _call(fn: Callable[..., Any], args: tuple) -> Any:
    return fn(_SHARED, *args)


class Workers:
    """`jobs` forked processes sharing `shared`; `run(fn, tasks)` yields (index, fn(shared, *task))
    as tasks finish (fn must be a module-level function: it is pickled by reference)."""

    def __init__(self, jobs: int, shared: Any) -> None:
        self.jobs, self.shared = jobs, shared
        self._ex: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        global _SHARED
        if self._ex is None:
            _SHARED = self.shared
            try:
                self._ex = ProcessPoolExecutor(self.jobs, initializer=_ignore_sigint,
                                               mp_context=multiprocessing.get_context("fork"))
                self._ex.submit(int).result()  # fork now, while _SHARED is set
            finally:
                _SHARED = None
        return self._ex

    def run(self, fn: Callable[..., Any], tasks: Sequence[tuple]) -> Iterator[tuple[int, Any]]:
        if self.jobs <= 1 or len(tasks) <= 1:
            for i, t in enumerate(tasks):
                yield i, fn(self.shared, *t)
            return
        ex = self._executor()
        pending: dict[Future, int] = {}
        todo = list(enumerate(tasks))
        todo.reverse()
        # at most 2 tasks per worker queued: results are collected (and freed) as they come
        while todo or pending:
            while todo and len(pending) < 2 * self.jobs:
                i, t = todo.pop()
                pending[ex.submit(_call, fn, t)] = i
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                yield pending.pop(f), f.result()

    def close(self, kill: bool = False) -> None:
        ex, self._ex = self._ex, None
        if ex is None:
            return
        if kill:
            for p in list((getattr(ex, "_processes", None) or {}).values()):
                p.terminate()
            ex.shutdown(wait=False, cancel_futures=True)
        else:
            ex.shutdown(wait=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.close(kill=exc_type is not None)
