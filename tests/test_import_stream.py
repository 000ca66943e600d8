"""Streaming import: a real perf.data read in tiny windows (records cut by every window end, the
vectorised boundary walk restarted thousands of times) gives the rows of one read in one window,
and the boundaries equal a plain per-record walk; kallsyms split by Arrow equals the line loop."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pyarrow as pa

from kmemleak_offline.format import symrows
from kmemleak_offline.format.recording import open_recording
from kmemleak_offline.perfdata import reader as perfreader
from kmemleak_offline.perfdata.chain import record_starts
from kmemleak_offline.perfdata.importer import import_perf_data
from tests.test_import import pipes_data  # noqa: F401 (fixture)


def _walk(raw: bytes, start: int, end: int) -> list[int]:
    out, pos = [], start
    while pos + 8 <= end:
        out.append(pos - start)
        pos += struct.unpack_from("<H", raw, pos + 6)[0]
    return out


def test_boundaries_equal_a_plain_walk(pipes_data: Path) -> None:  # noqa: F811
    pd_ = perfreader.read_perf_data(pipes_data)
    raw = pipes_data.read_bytes()
    body = np.frombuffer(raw[pd_.data_offset:pd_.data_offset + pd_.data_size], np.uint8)
    offs, ends, consumed = record_starts(body, len(body))
    assert offs.tolist() == _walk(raw, pd_.data_offset, pd_.data_offset + pd_.data_size)
    assert consumed == len(body) and (ends[:-1] == offs[1:]).all()


def test_tiny_windows_import_the_same_rows(pipes_data: Path, tmp_path: Path) -> None:  # noqa: F811
    big, small = tmp_path / "big.parquet", tmp_path / "small.parquet"
    import_perf_data(pipes_data, big)
    import_perf_data(pipes_data, small, window=4096)
    a, b = open_recording(big), open_recording(small)
    assert a.metadata["counts"] == b.metadata["counts"]
    chains = []
    for r in (a, b):  # stack ids are numbered in the order windows meet chains: compare chains
        st = r.table(["stack"])
        chains.append(dict(zip(st.column("stack_id").to_pylist(), map(tuple, st.column("callchain").to_pylist()),
                               strict=True)))
    assert sorted(chains[0].values()) == sorted(chains[1].values())
    for kinds in (["sample"], ["comm"], ["mmap"], ["fork"], ["exit"]):
        ta, tb = a.table(kinds), b.table(kinds)
        assert ta.num_rows == tb.num_rows
        for c in ta.column_names:
            x, y = ta.column(c), tb.column(c)
            if c == "stack_id":
                assert [chains[0].get(i) for i in x.to_pylist()] == [chains[1].get(i) for i in y.to_pylist()]
                continue
            if pa.types.is_dictionary(x.type):
                x, y = x.cast(pa.string()), y.cast(pa.string())
            assert x.equals(y), (kinds, c)


def test_kallsyms_split_by_arrow_equals_the_line_loop() -> None:
    texts = [Path("/proc/kallsyms").read_bytes(),
             (b"ffffffff81000000 T a\n\nbad line\nffffffff81000001 t b\t[mod]\nffffffff81000002 t c []\n"
              b"  ffffffff81000003 D d\n"), b"", b"\n", b"81000000 T a\n"]
    for text in texts:
        fast = symrows._ksym_rows_vectorised(text)
        slow = symrows._ksym_rows_loop(text)
        assert fast is not None
        for k in ("addr", "name", "module"):
            assert pa.array(fast[k]).equals(pa.array(slow[k])), k
