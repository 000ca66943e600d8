"""numpy without transparent huge pages for its arrays, in our own processes.

Why: numpy madvises every array of 4 MB or more as huge pages. On the VMs this tool is built and
tested on (2 vCPUs, memory backed lazily by the host), a 2 MB fault costs more than the TLB misses
it saves, most after a load has fragmented memory: `convert` of 1.34M events right after 5 s of
socket churn took 0.72-0.92 CPU us/event with them and 0.45-0.66 without; `analyze` of 10M events
3.8-5.1 s wall with them, 3.4-3.9 s without. NUMPY_MADVISE_HUGEPAGE, when the user sets it, wins.
Never for `record`'s traced command: only this process (and the helpers it forks) is changed.
"""

from __future__ import annotations

import os
import sys

ENV = "NUMPY_MADVISE_HUGEPAGE"


def small_pages() -> None:
    """Turn numpy's huge-page advice off in this process (before or after numpy is imported)."""
    if ENV in os.environ:
        return
    if "numpy" not in sys.modules:
        os.environ[ENV] = "0"  # read once, when numpy is imported
        return
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # numpy < 2: the same switch under its old name
        try:
            from numpy.core.multiarray import _set_madvise_hugepage
        except ImportError:
            return
    _set_madvise_hugepage(False)
