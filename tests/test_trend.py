"""Growth trends per call chain (docs/trends.md): the rule on synthetic series, the series against
an independent per-allocation count, the same answer from every engine, and the CLI (`--trend`,
`--sort growth`, JSON `trend`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from kmemleak_offline.analysis import AnalyzeOptions, analyze
from kmemleak_offline.format.recording import open_recording
from kmemleak_offline.synthetic import KERNEL_TEXT_START, PERF_CONTEXT_KERNEL, RecordingBuilder
from kmemleak_offline.trend import classify
from tests.test_analyze_cli import run
from tests.test_streaming import regroup

ALLOC = ["kmem:kmalloc//ptr=ptr/size=bytes_alloc/stack/"]
FREE = ["kmem:kfree//ptr=ptr/"]
START = 10_000_000_000
SEC = 1_000_000_000
ENGINES = [
    {"in_memory": True},
    {"partitions": 1, "scan_ranges": 1, "jobs": 1},
    {"partitions": 5, "scan_ranges": 3, "jobs": 2},
]


# ------------------------------------------------------------------ the rule on synthetic series

def _judge(y: np.ndarray, allocs: int = 1000, t_s: np.ndarray | None = None):
    y = np.atleast_2d(np.asarray(y, np.float64))
    t = np.linspace(0.3, 60, y.shape[1]) if t_s is None else t_s
    cls, slope, conf = classify(y, t, np.full(len(y), allocs))
    return cls[0], float(slope[0]), float(conf[0])


def _t(n: int = 200) -> np.ndarray:
    return np.linspace(0, 1, n)


@pytest.mark.parametrize("name,y,want", [
    ("steady leak", 1000 * _t(), "growing"),
    ("leak with noise", 1000 * _t() + np.random.default_rng(1).normal(0, 60, 200), "growing"),
    ("leak in steps (bursts)", 100 * np.floor(10 * _t()), "growing"),
    ("leak starting late", np.where(_t() < 0.6, 0, 1000 * (_t() - 0.6)), "growing"),
    ("cache fills then replaces", np.minimum(1.0, 4 * _t()) * 5000, "bounded"),
    ("cache with churn noise", np.minimum(1.0, 3 * _t()) * 5000
     + np.random.default_rng(2).normal(0, 150, 200), "bounded"),
    ("start-up burst", np.full(200, 4096.0), "bounded"),
    ("rise then drained", np.where(_t() < 0.5, 1000 * _t(), 500 * (1 - _t()) * 2), "bounded"),
    ("saw-tooth pool", 1000 * ((10 * _t()) % 1), "bounded"),
])
def test_rule_on_shapes(name, y, want):
    cls, slope, conf = _judge(y)
    assert cls == want, name
    assert 0 <= conf <= 1
    if want == "growing":
        assert slope > 0 and conf > 0.5
    if name == "start-up burst":
        assert slope == 0 and conf == 1


def test_rule_steady_leak_slope_in_bytes_per_second():
    t = np.linspace(0.3, 60, 200)
    cls, slope, conf = _judge(64 * t, t_s=t)  # 64 bytes/s
    assert cls == "growing" and slope == pytest.approx(64) and conf == pytest.approx(1)


def test_rule_insufficient_too_few_allocations_or_points():
    assert _judge(1000 * _t(), allocs=3)[0] == "insufficient"
    cls, slope, conf = _judge(1000 * _t(10))  # a 10-point -i grid
    assert (cls, slope, conf) == ("insufficient", 0.0, 0.0)


# ------------------------------------------------------------------ recordings

CHAINS = {"leak": 1, "cache": 2, "burst": 3, "few": 4, "churn": 5}


def _three_sites(path: Path, seconds: int = 60, lost_at: int | None = None) -> tuple[Path, dict]:
    """A steady leak (one 64-byte object every 100 ms), an LRU cache of 50 entries (one insert
    every 50 ms, evicting the oldest once full), a burst of 100 at start-up, 3 stray objects,
    and alloc/free churn. Returns the path and each allocation's (chain, size, t_alloc, t_free)."""
    b = RecordingBuilder()
    ids = b.add_stacks([[PERF_CONTEXT_KERNEL, KERNEL_TEXT_START + 0x100 * c, KERNEL_TEXT_START + 0x9000]
                        for c in CHAINS.values()])
    sid = dict(zip(CHAINS, ids, strict=True))
    allocs = []  # chain, size, t_alloc, t_free (None: never)
    span = seconds * SEC
    for k in range(1, seconds * 10):
        allocs.append(("leak", 64, START + k * SEC // 10, None))
    cache_t = [START + k * SEC // 20 for k in range(1, seconds * 20)]
    for i, t in enumerate(cache_t):
        allocs.append(("cache", 512, t, cache_t[i + 50] if i + 50 < len(cache_t) else None))
    for k in range(100):
        allocs.append(("burst", 4096, START + SEC // 10 + k * 1000, None))
    for k in range(3):
        allocs.append(("few", 32, START + (k + 1) * span // 4, None))
    for k in range(1, 2000):
        t = START + k * span // 2000
        allocs.append(("churn", 128, t, t + 500))
    ptr = 0xFFFF888000000000 + 64 * np.arange(len(allocs), dtype=np.uint64)
    b.add_samples("kmem:kmalloc", [a[2] for a in allocs], 0, 1, 1,
                  {"ptr": ptr, "bytes_alloc": [a[1] for a in allocs], "bytes_req": 1,
                   "gfp_flags": 0, "call_site": 0}, stack_id=[sid[a[0]] for a in allocs])
    fr = [i for i, a in enumerate(allocs) if a[3] is not None]
    b.add_samples("kmem:kfree", [allocs[i][3] for i in fr], 1, 1, 1,
                  {"ptr": ptr[fr], "call_site": 0})
    if lost_at is not None:
        b.add_lost(START + lost_at, 0, 7)
    b.write(path, ALLOC, FREE, start_ns=START, stop_ns=START + span)
    return path, {"allocs": allocs}


def _classes(a) -> dict[str, tuple[str, np.ndarray]]:
    names = {KERNEL_TEXT_START + 0x100 * c: n for n, c in CHAINS.items()}
    out = {}
    for g in (g for r in a.reports for g in r.groups):  # early reports' groups too
        leaf = int(a.stacks[g.stack_id][1])
        out[names[leaf]] = g.trend
    return out


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    return _three_sites(tmp_path_factory.mktemp("trend") / "three.parquet")


@pytest.mark.parametrize("engine", ENGINES, ids=["in-memory", "one-partition", "five-partitions"])
def test_recording_classes_and_series_against_direct_count(three, engine):
    path, truth = three
    a = analyze(open_recording(path), AnalyzeOptions(trend=True, warn=lambda m: None, **engine))
    tr = _classes(a)
    assert {k: t.cls for k, t in tr.items()} == {"leak": "growing", "cache": "bounded",
                                                  "burst": "bounded", "few": "insufficient"}
    assert tr["leak"].slope_bytes_per_s == pytest.approx(640, rel=0.02)
    for name, t in tr.items():
        assert len(t.t_ns) == 200 and t.t_ns[-1] == 60 * SEC
        g = START + t.t_ns
        want = np.zeros(len(g), np.int64)
        for chain, size, ta, tf in truth["allocs"]:
            if chain == name:
                want += size * ((ta <= g) & ((tf is None) | (g < (tf or 0))))
        np.testing.assert_array_equal(t.bytes, want, err_msg=name)


def test_engines_agree_on_trends_with_lost_windows(tmp_path):
    """A LOST record in the middle gives an early report; every engine gives the same series,
    equal to a direct count."""
    b_path = tmp_path / "lost.parquet"
    b = RecordingBuilder()
    ids = b.add_stacks([[PERF_CONTEXT_KERNEL, KERNEL_TEXT_START + 0x100, KERNEL_TEXT_START + 0x9000]])
    n = 150
    ts = START + np.arange(1, n + 1) * (20 * SEC // n)
    ptr = 0xFFFF888000000000 + 64 * np.arange(n, dtype=np.uint64)
    b.add_samples("kmem:kmalloc", ts, np.arange(n) % 2, 1, 1,
                  {"ptr": ptr, "bytes_alloc": 64, "bytes_req": 1, "gfp_flags": 0, "call_site": 0},
                  stack_id=ids[0])
    b.add_samples("kmem:kfree", ts[::3] + SEC // 2, 1, 1, 1, {"ptr": ptr[::3], "call_site": 0})
    b.add_lost(START + 5 * SEC, 0, 7)
    b.write(b_path, ALLOC, FREE, start_ns=START, stop_ns=START + 20 * SEC)
    regroup(b_path, 40)
    got = []
    for engine in ENGINES:
        a = analyze(open_recording(b_path), AnalyzeOptions(trend=True, warn=lambda m: None, **engine))
        assert a.reports[0].reason == "lost"
        trs = [(g.trend.cls, round(g.trend.slope_bytes_per_s, 6), g.trend.bytes.tolist())
               for r in a.reports for g in r.groups]
        got.append(trs)
    assert got[0] == got[1] == got[2]
    assert got[0][-1][0] == "growing"
    # against a direct count: the LOST record on ring 0 drops every ring's events strictly between
    # ring 0's samples around it; the series runs on across the early report (frees end entries)
    t0 = ts[::2]  # ring 0's samples (allocs on cpu 0)
    lo, hi = t0[t0 < START + 5 * SEC].max(), t0[t0 > START + 5 * SEC].min()
    g = START + a.reports[-1].groups[0].trend.t_ns
    want = np.zeros(len(g), np.int64)
    for i, ta in enumerate(ts):
        if lo < ta < hi:
            continue  # dropped with the lost window
        tf = ta + SEC // 2 if i % 3 == 0 else None
        end = g < tf if tf is not None and not lo < tf < hi else np.ones(len(g), bool)
        want += 64 * ((ta <= g) & end)
    assert got[0][-1][2] == want.tolist()


def test_an_early_report_late_in_the_recording_does_not_make_caches_grow(tmp_path):
    """Lost events at 80 % of the recording empty perf-prof's tree (an early report), not the
    process's memory: the cache and the start-up burst stay bounded and their series do not
    drop to zero there (the frees after the window still end the cache's entries)."""
    path, _ = _three_sites(tmp_path / "late-lost.parquet", lost_at=48 * SEC)
    regroup(path, 500)
    for engine in ENGINES:
        a = analyze(open_recording(path), AnalyzeOptions(trend=True, warn=lambda m: None, **engine))
        assert a.reports[0].reason == "lost"
        tr = _classes(a)  # churn in flight at the early report is one of its groups: bounded
        assert {k: t.cls for k, t in tr.items()} == {"leak": "growing", "cache": "bounded",
                                                      "burst": "bounded", "few": "insufficient",
                                                      "churn": "bounded"}, engine
        assert tr["burst"].bytes[-1] == 100 * 4096
        assert tr["cache"].bytes.max() <= 51 * 512


def test_cli_trend_line_sort_growth_and_json(three, capsys):
    path, _ = three
    code, plain, _ = run(capsys, "analyze", path)
    assert code == 0 and "trend:" not in plain
    code, out, err = run(capsys, "analyze", path, "--trend")
    assert code == 0, err
    lines = out.splitlines()
    assert [ln for ln in lines if "trend:" not in ln] == plain.splitlines()
    heads = [i for i, ln in enumerate(lines) if ln.startswith("Leak of")]
    assert [lines[i + 1].split(",")[0].split(" (")[0].strip() for i in heads] == [
        "trend: bounded", "trend: growing", "trend: bounded", "trend: insufficient"]  # by bytes
    m = re.fullmatch(r"    trend: growing, \+([0-9.]+) bytes/s \(confidence ([0-9.]+)\)", lines[heads[1] + 1])
    assert m and float(m[1]) == pytest.approx(640, rel=0.01) and float(m[2]) > 0.9
    first = run(capsys, "analyze", path, "--trend", "--sort", "growth")[1].splitlines()
    i = next(i for i, ln in enumerate(first) if ln.startswith("Leak of"))
    assert first[i + 1].startswith("    trend: growing")
    groups = json.loads(run(capsys, "analyze", path, "--format", "json")[1])["reports"][-1]["groups"]
    assert [g["trend"]["class"] for g in groups] == ["bounded", "growing", "bounded", "insufficient"]
    assert all(len(g["trend"]["series"]["t_ns"]) == len(g["trend"]["series"]["bytes"]) == 200
               for g in groups)
    assert all(0 <= g["trend"]["confidence"] <= 1 for g in groups)
    code, _, err = run(capsys, "analyze", path, "--sort", "age")
    assert code == 2 and "--sort must be one of bytes, growth" in err


def test_interval_grid_is_the_trend_grid(three, capsys):
    path, _ = three
    out = run(capsys, "analyze", path, "--format", "json", "-i", "1000")[1]
    groups = json.loads(out)["reports"][-1]["groups"]
    t = groups[0]["trend"]["series"]["t_ns"]
    assert t == [k * SEC for k in range(1, 61)]
    assert {g["trend"]["class"] for g in groups} == {"growing", "bounded", "insufficient"}



def _random_events(seed: int, wide: bool):
    """(rng, n, keys, alloc mask): events on 50 pointers, 60% allocs; `wide` keys do not pack
    into the sort key with the position (the fallback)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3000))
    keys = rng.integers(0, 50, n).astype(np.uint64) * np.uint64(64)
    if wide:
        keys = keys * np.uint64(1 << 40) + rng.integers(0, 2, n).astype(np.uint64)
    alloc = rng.random(n) < 0.6
    return rng, n, keys, alloc


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("wide", [False, True])
def test_live_allocs_against_a_walk(seed, wide):
    """What stays in the tree (packed-key sort and the wide-key fallback): the allocs no later
    event of the same key frees or replaces."""
    from kmemleak_offline.replay import _live_allocs

    _, n, keys, alloc = _random_events(seed, wide)
    nxt = np.full(n, -1)
    last: dict[int, int] = {}
    for i in range(n - 1, -1, -1):
        nxt[i] = last.get(int(keys[i]), -1)
        last[int(keys[i])] = i
    np.testing.assert_array_equal(np.flatnonzero(alloc & (nxt < 0)), _live_allocs(keys, alloc))


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("wide", [False, True])
def test_alloc_ends_against_a_walk(seed, wide):
    """The partition replay's fates of allocs for trends (packed sort and the wide-key fallback):
    which a later event of the same key ends, where, and which survive their stretch (no later
    event of the key before the stretch's early report)."""
    from kmemleak_offline.replay import alloc_ends, kept_alloc_ends

    rng, n, keys, alloc = _random_events(seed, wide)
    cuts = np.sort(rng.integers(0, n + 1, int(rng.integers(0, 4))))
    stops = np.concatenate(([0], cuts, [n])).astype(np.int64)
    apos, ended, epos, surv = alloc_ends(keys, alloc, stops)
    want_end: dict[int, int] = {}
    want_surv = []
    for i in np.flatnonzero(alloc):
        later = [j for j in range(i + 1, n) if keys[j] == keys[i]]
        if later:
            want_end[int(i)] = later[0]
        stop = stops[np.searchsorted(stops, i, side="right")]
        if not later or later[0] >= stop:
            want_surv.append(int(i))
    assert sorted(apos.tolist()) == np.flatnonzero(alloc).tolist()
    assert dict(zip(apos[ended].tolist(), epos.tolist())) == want_end
    assert surv.tolist() == want_surv
    # without stretches (the in-memory replay): the same ends, no survivors computed
    apos2, ended2, epos2, surv2 = alloc_ends(keys, alloc)
    assert surv2 is None
    assert dict(zip(apos2[ended2].tolist(), epos2.tolist())) == want_end

    # only the kept events (a lost window drops the others), in stream positions
    kept = rng.random(n) < 0.8
    kapos, kended, kepos, ksurv = kept_alloc_ends(keys, alloc, kept, stops)
    ka = np.flatnonzero(alloc & kept)
    want_kend = {}
    want_ksurv = []
    for i in ka:
        later = [j for j in range(i + 1, n) if kept[j] and keys[j] == keys[i]]
        if later:
            want_kend[int(i)] = later[0]
        if not later or later[0] >= stops[np.searchsorted(stops, i, side="right")]:
            want_ksurv.append(int(i))
    assert sorted(kapos.tolist()) == ka.tolist()
    assert dict(zip(kapos[kended].tolist(), kepos.tolist())) == want_kend
    assert ksurv.tolist() == want_ksurv
