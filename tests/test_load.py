"""Loading: payloads stay in their row-group chunks; decoding any rows, in any order, across chunks
must equal decoding the same payloads from one contiguous column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from kmemleak_offline.format import tracefs
from kmemleak_offline.format.recording import RecordingWriter, open_recording
from kmemleak_offline.load import load
from kmemleak_offline.synthetic import RecordingBuilder


@pytest.fixture(scope="module")
def chunked(tmp_path_factory) -> Path:
    """kmem_cache_alloc (a __data_loc name of varying length) and kfree samples, 7 row groups."""
    tmp = tmp_path_factory.mktemp("load")
    rng = np.random.default_rng(3)
    b = RecordingBuilder()
    n = 3000
    t = np.arange(n, dtype=np.uint64) * 1000 + 10**9
    names = [b"x" * int(k) for k in rng.integers(1, 40, n)]
    b.add_samples("kmem:kmem_cache_alloc", t, rng.integers(0, 2, n), 7, 7,
                  {"ptr": t * 8, "name": names, "bytes_req": rng.integers(1, 999, n),
                   "bytes_alloc": np.full(n, 1024)})
    b.add_samples("kmem:kfree", t + 500, rng.integers(0, 2, n), 7, 7, {"ptr": t * 8})
    one = b.write(tmp / "one.parquet", ["kmem:kmem_cache_alloc"], ["kmem:kfree"], segment_ns=10**6)
    rec = open_recording(one)
    w = RecordingWriter(tmp / "many.parquet", rec.metadata, row_group_rows=1000)
    w.write(rec.table())
    return w.close()


def test_decode_any_rows_across_chunks(chunked: Path) -> None:
    rec = open_recording(chunked)
    sm = load(rec).samples
    _, bufs = sm._chunks
    assert len(bufs) >= 6  # the payloads really are in several chunks
    raw = rec.table(kinds=["sample"], columns=["raw"]).column("raw").combine_chunks()
    rng = np.random.default_rng(9)
    for event in ("kmem:kmem_cache_alloc", "kmem:kfree"):
        fmt = tracefs.parse_format(rec.metadata["events"][event]["format"], event.split(":")[0])
        code = sm.event_names.index(event)
        mine = np.flatnonzero(sm.event == code)
        whole = tracefs.decode(fmt, raw.take(pa.array(mine)))
        for rows in (mine, rng.permutation(mine), mine[::-7], mine[-1:], mine[:0]):
            got = sm.decode(fmt, rows)
            pos = np.searchsorted(mine, rows)
            for field, values in whole.items():
                assert np.array_equal(got[field], values[pos]), (event, field, len(rows))
