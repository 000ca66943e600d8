"""The streaming engine (key partitions, scan ranges, worker processes) against the per-event
reference replay and against the in-memory path, on recordings with many row groups, keys that
cross row-group and range boundaries, clamped times and lost windows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from kmemleak_offline.analysis import AnalyzeOptions, analyze
from kmemleak_offline.format.integrity import seal
from kmemleak_offline.format.recording import open_recording
from kmemleak_offline.synthetic import RecordingBuilder
from tests.reference_replay import reference_replay
from tests.test_analyze_cli import (
    COMMS_A,
    EVENTS_A,
    EVENTS_B,
    EVENTS_C,
    LOST_C,
    PAGE_ALLOC,
    PAGE_FREE,
    build,
    page_fields,
    run,
)
from tests.test_replay import normalise, random_case

ALLOC = ["kmem:kmalloc//ptr=ptr/size=bytes_alloc/stack/"]
FREE = ["kmem:kfree//ptr=ptr/"]
START = 1_000_000


def regroup(path: Path, rows: int, segment: int | None = None) -> Path:
    """Rewrite a recording with `rows` rows per row group (samples and side-band rows mixed in
    some groups, as a foreign writer might), keeping its metadata. With `segment`, sample rows
    are laid out as the recorder does: per segment of that many seqs, ring after ring."""
    t = pq.read_table(path)
    kv = pq.ParquetFile(path).metadata.metadata
    if segment:
        kind = t.column("kind").to_pylist()
        smp = np.array([k == "sample" for k in kind])
        seq = t.column("seq").to_numpy(zero_copy_only=False)
        cpu = t.column("cpu").to_numpy(zero_copy_only=False)
        idx = np.flatnonzero(smp)
        o = idx[np.lexsort((seq[idx], cpu[idx], seq[idx] // segment))]
        t = t.take(np.concatenate([o, np.flatnonzero(~smp)]))
    t = t.replace_schema_metadata({k: v for k, v in kv.items() if k != b"ARROW:schema"})
    pq.write_table(t, path, row_group_size=rows)
    seal(path)  # rewritten: sealed again, as a writer would
    return path


def write_case(path: Path, samples, losts, rows_per_group: int, stop: int) -> Path:
    """A kmalloc/kfree recording of a reference case; each sample's size is its ident + 1."""
    b = RecordingBuilder()
    al = [s for s in samples if s.is_alloc]
    fr = [s for s in samples if not s.is_alloc]
    if al:
        b.add_samples("kmem:kmalloc", [START + s.time for s in al], [s.ring for s in al], 1, 1,
                      {"ptr": [s.key for s in al], "bytes_alloc": [s.ident + 1 for s in al],
                       "bytes_req": 1, "gfp_flags": 0, "call_site": 0},
                      seq=[s.seq for s in al])
    if fr:
        b.add_samples("kmem:kfree", [START + s.time for s in fr], [s.ring for s in fr], 1, 1,
                      {"ptr": [s.key for s in fr], "call_site": 0}, seq=[s.seq for s in fr])
    for lo in losts:
        b.add_lost(START, lo.ring, lo.count, seq=lo.seq)
    b.write(path, ALLOC, FREE, start_ns=START, stop_ns=START + stop)
    return regroup(path, rows_per_group, segment=max(3, rows_per_group // 3))


def streamed(path: Path, than: int = 0, **engine) -> tuple[list, int, int, object]:
    a = analyze(open_recording(path), AnalyzeOptions(than_ns=than, warn=lambda m: None, **engine))
    reports = []
    for r in a.reports:
        if r.reason == "lost" and r.num == 0:
            continue
        e = r.entries
        reports.append((r.reason, r.time_ns - START, [int(s) - 1 for s in e["size"]],
                        [bool(x) for x in e["selected"]], r.total_alloc, r.total_free))
    return reports, a.result.total_alloc, a.result.total_free, a


ENGINES = [
    {"partitions": 1, "scan_ranges": 1, "jobs": 1},
    {"partitions": 4, "scan_ranges": 3, "jobs": 1},
    {"partitions": 16, "scan_ranges": 5, "jobs": 2},
]


@pytest.mark.parametrize("seed", range(40))
def test_streaming_matches_reference(tmp_path, seed):
    rng = np.random.default_rng(1000 + seed)
    n = int(rng.integers(20, 400))
    samples, losts = random_case(rng, n, nrings=int(rng.integers(1, 4)),
                                 nkeys=int(rng.integers(1, 40)), nlost=int(rng.integers(0, 5)),
                                 tmax=int(rng.integers(5, 500)))
    stop = 600
    than = int(rng.choice([0, 0, 50, 200]))
    want = normalise(reference_replay(
        [s for s in samples], losts, 0, stop, than))
    # the reference numbers times from 0; the recording from START (times shift, nothing else)
    path = write_case(tmp_path / "r.parquet", samples, losts, int(rng.integers(7, 60)), stop)
    for eng in ENGINES[seed % 2:] if seed % 3 else ENGINES:
        reports, ta, tf, a = streamed(path, than, **eng)
        assert a.engine == "streaming"
        assert (reports, ta, tf) == want, eng


def test_keys_cross_row_groups_and_ranges(tmp_path):
    """One key allocated in the first row group and freed in the last, others the other way
    round, with rings interleaved: partitions and ranges split them, the answer stays."""
    rng = np.random.default_rng(7)
    samples, losts = random_case(rng, 3000, nrings=3, nkeys=50, nlost=6, tmax=5000)
    want = normalise(reference_replay(samples, losts, 0, 6000, 0))
    path = write_case(tmp_path / "x.parquet", samples, losts, 97, 6000)
    assert pq.ParquetFile(path).metadata.num_row_groups > 20
    for eng in ENGINES:
        reports, ta, tf, a = streamed(path, **eng)
        assert a.engine == "streaming"
        assert (reports, ta, tf) == want


def _scenarios(tmp_path: Path) -> dict[str, Path]:
    return {
        "a": regroup(build(EVENTS_A, tmp_path / "a.parquet", comms=COMMS_A), 3, segment=2),
        "b": regroup(build(EVENTS_B, tmp_path / "b.parquet", alloc=[PAGE_ALLOC], free=[PAGE_FREE],
                           alloc_event="kmem:mm_page_alloc", free_event="kmem:mm_page_free",
                           extra_alloc_fields=page_fields, comms=[(0, 300, 300, "sshd", False)]),
                     2, segment=3),
        "c": regroup(build(EVENTS_C, tmp_path / "c.parquet", lost=LOST_C,
                           comms=[(0, 100, 100, "python3", False)]), 4, segment=2),
    }


MODES = [[], ["-v"], ["--comm"], ["--than", "120ms", "--comm"], ["-i", "250"], ["-i", "100", "-v"],
         ["--format", "json"], ["--format", "json", "-v", "--comm"], ["--format", "json", "-i", "50"]]


@pytest.mark.parametrize("kind", ["a", "b", "c"])
def test_every_mode_byte_identical_to_in_memory(tmp_path, capsys, kind):
    path = _scenarios(tmp_path)[kind]
    assert streamed(path, partitions=8, scan_ranges=3)[3].engine == "streaming"
    for args in MODES:
        (tmp_path / "m").mkdir(exist_ok=True)
        (tmp_path / "s").mkdir(exist_ok=True)
        fg_mem, fg_str = tmp_path / "m" / "fg.folded", tmp_path / "s" / "fg.folded"
        code, want, want_err = run(capsys, "analyze", path, "--utc", *args, "--in-memory",
                                   "--flame-graph", fg_mem)
        assert code == 0, want_err
        for extra in (["--partitions", "1"], ["--partitions", "8", "--scan-ranges", "3", "-j", "2"]):
            code, got, err = run(capsys, "analyze", path, "--utc", *args, *extra,
                                 "--flame-graph", fg_str)
            assert code == 0, err
            assert got.replace(str(tmp_path / "s"), str(tmp_path / "m")) == want, (args, extra)
            assert err == want_err
            assert fg_str.read_text() == fg_mem.read_text()


def test_json_event_lines_fetch_only_reported_rows(tmp_path, capsys):
    """-v JSON events carry cpu/tid/payload lines read back for the leaked rows only; they
    match the in-memory path's."""
    path = _scenarios(tmp_path)["a"]
    code, want, _ = run(capsys, "analyze", path, "--format", "json", "-v", "--in-memory")
    code2, got, _ = run(capsys, "analyze", path, "--format", "json", "-v", "--partitions", "4",
                        "--scan-ranges", "2")
    assert code == code2 == 0
    w, g = json.loads(want), json.loads(got)
    assert g == w
    assert any(r["events"] for r in g["reports"])


def test_unordered_rings_fall_back_to_memory(tmp_path):
    """A writer whose row groups put one ring's seqs out of order across groups: the streaming
    scan notices and the in-memory path answers (same as the reference)."""
    rng = np.random.default_rng(3)
    samples, losts = random_case(rng, 200, nrings=2, nkeys=20, nlost=2, tmax=300)
    want = normalise(reference_replay(samples, losts, 0, 600, 0))
    path = tmp_path / "u.parquet"
    write_case(path, samples, losts, 10_000, 600)
    t = pq.read_table(path)
    kv = pq.ParquetFile(path).metadata.metadata
    t = t.take(np.argsort(-np.arange(t.num_rows)))  # every ring's rows reversed in file order
    t = t.replace_schema_metadata({k: v for k, v in kv.items() if k != b"ARROW:schema"})
    pq.write_table(t, path, row_group_size=17)
    seal(path)
    reports, ta, tf, a = streamed(path, partitions=4, scan_ranges=3, jobs=1)
    assert a.engine == "in-memory"
    assert (reports, ta, tf) == want


def test_spill_folder_removed_and_tmpdir_used(tmp_path):
    rng = np.random.default_rng(5)
    samples, losts = random_case(rng, 500, nrings=2, nkeys=30, nlost=1, tmax=400)
    path = write_case(tmp_path / "s.parquet", samples, losts, 50, 600)
    spill = tmp_path / "spill"
    spill.mkdir()
    seen = []
    import kmemleak_offline.engine.spill as spillmod

    orig = spillmod.SpillDir.remove

    def remove(self):
        seen.append(sorted(p.name for p in self.path.iterdir()))
        orig(self)

    spillmod.SpillDir.remove = remove
    try:
        streamed(path, partitions=4, scan_ranges=2, jobs=1, tmpdir=str(spill))
    finally:
        spillmod.SpillDir.remove = orig
    assert seen and any(n.endswith(".arrow") for n in seen[0])  # it did spill there
    assert list(spill.iterdir()) == []  # and left nothing behind
