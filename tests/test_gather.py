"""gather: the bulk byte copies of conversion and import against a plain Python slice."""

from __future__ import annotations

import numpy as np
import pytest

from kmemleak_offline.format.gather import FEW, fixed_rows, groups, payload_bytes


@pytest.mark.parametrize("layout", ["interleaved", "grouped", "many", "empty-items"])
def test_payload_bytes_matches_slices(layout: str) -> None:
    rng = np.random.default_rng(7)
    buf = rng.integers(0, 256, 1 << 16, dtype=np.uint8)
    n = 500
    widths = {"interleaved": rng.choice([20, 44, 8], n), "grouped": np.sort(rng.choice([20, 44], n)),
              "many": rng.integers(1, 200, n), "empty-items": rng.choice([0, 12], n)}[layout]
    starts = rng.integers(0, len(buf) - 200, n)
    flat, offs = payload_bytes(buf, starts, widths)
    want = [buf[s:s + w].tobytes() for s, w in zip(starts.tolist(), widths.tolist(), strict=True)]
    got = [flat[a:b].tobytes() for a, b in zip(offs[:-1].tolist(), offs[1:].tolist(), strict=True)]
    assert got == want


def test_fixed_rows_of_words_and_bytes() -> None:
    words = np.arange(100, dtype=np.uint64) * 3
    starts = np.array([0, 5, 94, 5])
    assert fixed_rows(words, starts, 6).tolist() == [words[s:s + 6].tolist() for s in starts]
    b = words.view(np.uint8)
    assert fixed_rows(b, np.array([1, 9]), 16).tolist() == [b[1:17].tolist(), b[9:25].tolist()]
    with pytest.raises(IndexError):
        fixed_rows(words, np.array([95]), 6)  # runs past the end: no silent garbage


@pytest.mark.parametrize("distinct", [1, FEW, FEW + 1, 300])
def test_groups_are_each_values_ascending_indices(distinct: int) -> None:
    rng = np.random.default_rng(distinct)
    values = rng.choice(rng.choice(1 << 15, distinct, replace=False), 2000).astype(np.uint64)
    got = groups(values)
    assert [v for v, _ in got] == sorted(set(values.tolist()))
    for v, idx in got:
        assert idx.tolist() == np.flatnonzero(values == v).tolist()
    assert sum(len(i) for _, i in got) == len(values)
