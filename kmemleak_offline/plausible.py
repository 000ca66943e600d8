"""Values no kernel produces, counted without analysing (for `info`).

`analyze` leaves such samples out of its report and warns (load.SIZE_LIMIT, load.time_limit);
`info` counts them the same way, row group by row group (memory stays flat): samples timed more
than load.TIME_SLACK_NS after the recording's stop, and allocations whose recorded `size=`
evaluates past load.SIZE_LIMIT. `record --malloc` sizes come from pairing calls with their
returns (a failed malloc(2**60) is a legitimate sample), so only `analyze` can check those.
"""

from __future__ import annotations

import numpy as np

from .format.recording import Recording
from .load import SAMPLE_COLUMNS, samples_from_table, time_limit
from .malloc import is_malloc_recording
from .roles import AnalysisError, build_roles, evaluate_roles, formats_of


def implausible(rec: Recording) -> dict[tuple[str, str], int]:
    """(event, "time" | "huge size") -> samples holding such a value."""
    from .engine.run import sample_units
    from .engine.scan import read_unit
    from .format.recording import _conform

    meta = rec.metadata
    roles = None
    if not is_malloc_recording(meta):
        try:
            roles = build_roles(meta, list(meta.get("alloc") or []), list(meta.get("free") or []),
                                formats_of(meta), lambda _msg: None)
        except AnalysisError:
            roles = None  # analyze says why
    if roles is not None:
        for r in roles:
            r.filter = None  # every sample's value counts, filtered or not
        names = [r.spec.full_name for r in roles]
        if not any(r.size is not None for r in roles):
            roles = None
    latest = time_limit(rec)
    out: dict[tuple[str, str], int] = {}
    units, _ = sample_units(rec)
    for u in units:
        sm = samples_from_table(_conform(read_unit(u, SAMPLE_COLUMNS), SAMPLE_COLUMNS), latest)
        if roles is None:
            counts = sm.implausible
        else:
            lut = np.array([names.index(e) if e in names else -1 for e in sm.event_names] + [-1],
                           np.int32)
            counts = evaluate_roles(sm, roles, names, lut).fail_counts
        for k, v in counts.items():
            if k[1] in ("time", "huge size", "short payload"):
                out[k] = out.get(k, 0) + v
    return out
