"""Run tasks in forked worker processes (or inline for one job), with clean Ctrl-C.

Workers are forked so that they inherit the analysis set-up (compiled expressions, symbol
tables) without pickling it; they ignore SIGINT and are terminated by the parent, which owns the
cleanup (spill files) and the one-line error.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

_TASK: Callable[..., Any] | None = None  # set before the pool forks
_SHARED: Any = None  # the task's first argument, inherited (never pickled)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _call(args: tuple) -> Any:
    assert _TASK is not None
    return _TASK(_SHARED, *args)


def run_tasks(fn: Callable[..., Any], shared: Any, tasks: Sequence[tuple],
              jobs: int) -> Iterator[tuple[int, Any]]:
    """Yield (task index, fn(shared, *task)) as tasks finish; inline when jobs <= 1 or one task.
    `shared` reaches the workers through fork; tasks and results are pickled."""
    global _TASK, _SHARED
    if jobs <= 1 or len(tasks) <= 1:
        for i, t in enumerate(tasks):
            yield i, fn(shared, *t)
        return
    _TASK, _SHARED = fn, shared
    ex = ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=multiprocessing.get_context("fork"),
                             initializer=_ignore_sigint)
    try:
        pending: dict[Future, int] = {}
        todo = list(enumerate(tasks))
        todo.reverse()
        # keep at most 2 tasks per worker queued: results are collected (and freed) as they come
        while todo or pending:
            while todo and len(pending) < 2 * jobs:
                i, t = todo.pop()
                pending[ex.submit(_call, t)] = i
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                i = pending.pop(f)
                yield i, f.result()
    except BaseException:
        for p in list((getattr(ex, "_processes", None) or {}).values()):
            p.terminate()
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    else:
        ex.shutdown(wait=True)
    finally:
        _TASK = _SHARED = None
