"""Pipe-mode perf.data (`perf record -o -`): the file header's sections arrive as records.

Why: perf cannot seek back into a pipe to write a header, so after a 16-byte header it sends the
attrs (PERF_RECORD_HEADER_ATTR, with their sample ids), the feature sections
(PERF_RECORD_HEADER_FEATURE: host, command line, EVENT_DESC, ...), the tracepoint formats
(PERF_RECORD_HEADER_TRACING_DATA, its payload after the record), event names
(PERF_RECORD_EVENT_UPDATE) and build ids (PERF_RECORD_HEADER_BUILD_ID) in the record stream,
before the samples that need them. `absorb` folds those of a window into the PerfData before the
window's samples are converted. They are few: one Python step each.
"""

from __future__ import annotations

import struct

import numpy as np

from .chain import REC_HEADER_TRACING_DATA
from .errors import PerfDataError
from .reader import F_BUILD_ID, F_TRACING_DATA, PerfData, _build_ids, parse_attr
from .stream import Window

REC_HEADER_ATTR, REC_HEADER_BUILD_ID = 64, 67
REC_EVENT_UPDATE, REC_HEADER_FEATURE = 78, 80
HEADER_RECORDS = (REC_HEADER_ATTR, REC_HEADER_TRACING_DATA, REC_HEADER_BUILD_ID, REC_EVENT_UPDATE,
                  REC_HEADER_FEATURE)
EVENT_UPDATE_NAME = 2  # perf_event_update type: the event's name


def absorb(pd_: PerfData, win: Window) -> None:
    """Take the header records of a window into pd_ (attrs, features, formats, names)."""
    sel = np.flatnonzero(np.isin(win.types, HEADER_RECORDS))
    for i in sel.tolist():
        o, e = int(win.offs[i]), int(win.ends[i])
        rec = win.buf[o:e].tobytes()
        typ = int(win.types[i])
        where = f"{pd_.path}: corrupt record of type {typ} at offset {16 + win.base + o}"
        if typ == REC_HEADER_ATTR:
            asz = struct.unpack_from("<I", rec, 12)[0] if len(rec) >= 16 else 0
            if asz < 64 or 8 + asz > len(rec):
                raise PerfDataError(f"{where} (attr size {asz} in {len(rec)} bytes)")
            ids = np.frombuffer(rec, "<u8", count=(len(rec) - 8 - asz) // 8, offset=8 + asz).tolist()
            pd_.attrs.append(parse_attr(rec, 8, asz, len(pd_.attrs), ids))
        elif typ == REC_HEADER_FEATURE:
            if len(rec) < 16:
                raise PerfDataError(where)
            pd_.add_feature(struct.unpack_from("<Q", rec, 8)[0], rec[16:])
        elif typ == REC_HEADER_TRACING_DATA:
            size = struct.unpack_from("<I", rec, 8)[0]
            pd_.add_feature(F_TRACING_DATA, rec[16:16 + size])
        elif typ == REC_HEADER_BUILD_ID:
            pd_.values.setdefault(F_BUILD_ID, {}).update(
                {k: v for k, v in _build_ids(rec, pd_.warnings.append).items()
                 if k not in pd_.values.get(F_BUILD_ID, {})})
        elif typ == REC_EVENT_UPDATE and len(rec) >= 24:
            kind, ev_id = struct.unpack_from("<QQ", rec, 8)
            if kind == EVENT_UPDATE_NAME:
                name = rec[24:].split(b"\0", 1)[0].decode(errors="replace")
                for a in pd_.attrs:
                    if ev_id in a.ids:
                        pd_.event_names[a.index] = name
    if len(sel):
        pd_.name_attrs()
