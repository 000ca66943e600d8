"""Where the per-recording summaries are made: local worker processes, or a Dask cluster.

Either way each task reads one recording where it runs and sends back only its summary (a few
kB to a few MB of Parquet); results come back as they finish.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from .sources import FleetError, Source
from .summary import Summary, summarise


def _task(shared, index: int, label: str, path: str, remote: bool) -> Summary:
    return summarise(index, label, path, remote)


def local(sources: list[Source], jobs: int | None) -> Iterator[Summary]:
    """`jobs` forked worker processes (default: one per usable core), one recording each at a
    time; inline for one job or one recording."""
    from ..engine.pool import Workers

    if jobs is None:
        try:
            jobs = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            jobs = os.cpu_count() or 1
    tasks = [(i, s.label, s.path, s.remote) for i, s in enumerate(sources)]
    with Workers(min(jobs, len(tasks)) or 1, None) as w:
        for _, summary in w.run(_task, tasks):
            yield summary


def dask(sources: list[Source], address: str) -> Iterator[Summary]:
    """The same tasks on an existing Dask distributed cluster. Its workers need
    kmemleak-offline installed, and must be able to open every path given (a shared
    filesystem) or URL (their own credentials). How long to try connecting is Dask's
    `distributed.comm.timeouts.connect` (env DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT)."""
    try:
        from distributed import Client, as_completed
    except ImportError as exc:
        raise FleetError("--scheduler needs Dask's distributed scheduler: pip install "
                         f"'kmemleak-offline[fleet]' ({exc})") from None
    try:
        client = Client(address, set_as_default=False)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        raise FleetError(f"--scheduler {address}: cannot connect ({exc})") from None
    try:
        futures = client.map(summarise, range(len(sources)), [s.label for s in sources],
                             [s.path for s in sources], [s.remote for s in sources], pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        for fut in as_completed(futures, loop=client.loop):
            i = index[fut.key]
            try:
                yield fut.result()
            except Exception as exc:  # noqa: BLE001 - e.g. the package missing on a worker
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                yield Summary(i, sources[i].label, error=f"on the Dask worker: "
                              f"{type(exc).__name__}: {msg}")
            fut.release()
    finally:
        client.close()
