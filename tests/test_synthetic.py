"""Synthetic recordings: payload encoding against the decoder, builder output, bench data, sample."""

from __future__ import annotations

import importlib.util
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from kmemleak_offline import __version__, synthetic
from kmemleak_offline.format import tracefs
from kmemleak_offline.format.recording import FORMAT_VERSION, open_recording
from kmemleak_offline.synthetic import (
    KERNEL_TEXT_START,
    PERF_CONTEXT_KERNEL,
    RecordingBuilder,
    bundled_formats,
    encode_payloads,
    kernel_symbols,
)

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ROOT / "tests" / "data" / "formats"
SAMPLE = ROOT / "samples" / "kmalloc-leak.parquet"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _fmt(key: str) -> tracefs.EventFormat:
    return tracefs.parse_format(bundled_formats()[key], key.split(":")[0])


def _random_ints(rng: np.random.Generator, fld: tracefs.Field, n: int) -> np.ndarray:
    bits = 8 * fld.elem_size
    if fld.signed:
        return rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), n, dtype=np.int64)
    hi = np.uint64((1 << bits) - 1)
    return rng.integers(0, hi, n, dtype=np.uint64, endpoint=True)


def _raw_bytes(raw: pa.Array) -> list[bytes]:
    return raw.to_pylist()


# ----------------------------------------------------------------------------- formats / payloads


def test_bundled_formats_are_the_real_kernel_formats() -> None:
    """The package-data copies must equal their tests/data/formats originals, keyed sys:name."""
    got = bundled_formats()
    want = {}
    for p in FORMATS.glob("*.format"):
        name = tracefs.parse_format(p.read_text()).name
        want[f"{p.stem[: -len(name) - 1]}:{name}"] = p.read_text()
    assert got.items() <= want.items()
    assert {"kmem:kmalloc", "kmem:kfree", "kmem:kmem_cache_alloc", "kmem:kmem_cache_free",
            "percpu:percpu_alloc_percpu", "kmlt_fmt:getenv_ent"} <= set(got)


@pytest.mark.parametrize("key", sorted(bundled_formats()))
def test_payload_round_trip_every_bundled_format(key: str) -> None:
    fmt = _fmt(key)
    rng = np.random.default_rng(len(key))
    n = 257
    values = {f.name: _random_ints(rng, f, n) for f in fmt.fields
              if not f.is_string and f.name != "common_type"}
    strings = {f.name: b"kmalloc-192" for f in fmt.fields if f.is_string}  # equal lengths
    raw = encode_payloads(fmt, n, values, strings)
    assert isinstance(raw, pa.BinaryArray) and len(raw) == n
    lens = np.array([len(b) for b in _raw_bytes(raw)])
    assert ((lens + 4) % 8 == 0).all()  # perf pads u32 size + payload to 8 bytes
    fixed = max(f.offset + f.size for f in fmt.fields)
    assert (lens >= fixed).all()
    out = tracefs.decode(fmt, raw)
    assert (out["common_type"] == fmt.id).all()
    for name, v in values.items():
        np.testing.assert_array_equal(out[name], v.astype(out[name].dtype), err_msg=name)
    for name in strings:
        assert (out[name] == b"kmalloc-192").all()
        assert (out[f"{name}_offset"] == fixed).all() and (out[f"{name}_len"] == 12).all()


def test_integer_values_wrap_to_field_width() -> None:
    fmt = _fmt("kmem:kmalloc")
    raw = encode_payloads(fmt, 2, {"ptr": -1, "node": np.array([-1, 7]), "bytes_alloc": 2**64 - 1})
    out = tracefs.decode(fmt, raw)
    assert out["ptr"].tolist() == [2**64 - 1] * 2
    assert out["node"].tolist() == [-1, 7]
    assert out["bytes_alloc"].tolist() == [2**64 - 1] * 2
    assert out["call_site"].tolist() == [0, 0]  # unset fields are zero


def test_data_loc_strings_of_varying_length_follow_the_fixed_part() -> None:
    """Checked on the raw bytes, the way the kernel lays them out: u32 (len << 16 | offset)."""
    fmt = _fmt("kmem:kmem_cache_free")
    names = [b"dentry", b"x", b"", b"ext4_inode_cache"]
    arr = encode_payloads(fmt, 4, {"ptr": np.arange(4)}, {"name": names})
    assert tracefs.decode(fmt, arr)["name"].tolist() == names
    raw = _raw_bytes(arr)
    fld = fmt.field_map()["name"]
    fixed = max(f.offset + f.size for f in fmt.fields)
    for b, s in zip(raw, names, strict=True):
        (loc,) = struct.unpack_from("<I", b, fld.offset)
        off, ln = loc & 0xFFFF, loc >> 16
        assert off == fixed and ln == len(s) + 1
        assert b[off: off + ln] == s + b"\0"
        assert (len(b) + 4) % 8 == 0 and len(b) - (off + ln) < 8


FAKE = """name: fake
ID: 4242
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:__data_loc char[] a;\toffset:24;\tsize:4;\tsigned:0;
\tfield:__data_loc char[] b;\toffset:28;\tsize:4;\tsigned:0;
\tfield:short delta;\toffset:32;\tsize:2;\tsigned:1;

print fmt: "comm=%s a=%s b=%s", REC->comm, __get_str(a), __get_str(b)
"""


def test_char_arrays_and_two_data_loc_strings() -> None:
    fmt = tracefs.parse_format(FAKE, "test")
    a = [b"first", b"", b"0123456789abcdef"]
    b = [b"zz", b"second-string", b""]
    raw = encode_payloads(fmt, 3, {"delta": np.array([-2, 0, 300]), "comm": [b"bash", b"a" * 20, b""]},
                          {"a": a, "b": b})
    out = tracefs.decode(fmt, raw)
    assert out["a"].tolist() == a and out["b"].tolist() == b
    assert out["comm"].tolist() == [b"bash", b"a" * 16, b""]  # truncated to the array
    assert out["delta"].tolist() == [-2, 0, 300]
    for row, sa, sb in zip(_raw_bytes(raw), a, b, strict=True):
        (la,) = struct.unpack_from("<I", row, 24)
        (lb,) = struct.unpack_from("<I", row, 28)
        assert la & 0xFFFF == 34 and la >> 16 == len(sa) + 1
        assert lb & 0xFFFF == 34 + len(sa) + 1 and lb >> 16 == len(sb) + 1
        assert row[34: 34 + len(sa) + 1] == sa + b"\0"
        assert row[(lb & 0xFFFF):(lb & 0xFFFF) + len(sb) + 1] == sb + b"\0"


def test_encode_rejects_bad_input_with_one_line() -> None:
    fmt = _fmt("kmem:kfree")
    with pytest.raises(ValueError, match="no field 'size'") as e:
        encode_payloads(fmt, 1, {"size": 1})
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="3 values for 2 rows"):
        encode_payloads(fmt, 2, {"ptr": np.arange(3)})
    with pytest.raises(ValueError, match="not a string field"):
        encode_payloads(fmt, 1, {}, {"ptr": b"x"})


def test_kernel_symbols_plausible_and_deterministic() -> None:
    addrs, names = kernel_symbols(5000, 7)
    assert addrs.dtype == np.uint64 and len(addrs) == len(names) == 5000
    assert int(addrs[0]) == KERNEL_TEXT_START
    d = np.diff(addrs.astype(np.int64))
    assert (d >= 16).all() and (d % 16 == 0).all()
    assert len(set(names)) == 5000
    assert {"__kmalloc_noprof", "kfree", "do_syscall_64"} <= set(names)
    a2, n2 = kernel_symbols(5000, 7)
    assert (a2 == addrs).all() and n2 == names
    assert kernel_symbols(5000, 8)[1] != names


# ----------------------------------------------------------------------------- builder


def test_builder_writes_a_recording_with_expected_rows_and_metadata(tmp_path: Path) -> None:
    b = RecordingBuilder()
    chain1 = [PERF_CONTEXT_KERNEL, 0xFFFFFFFF81000010, 0xFFFFFFFF81000200]
    ids = b.add_stacks([chain1, [PERF_CONTEXT_KERNEL, 0xFFFFFFFF81000400], list(chain1)])
    assert ids[0] == ids[2] != ids[1]
    # kmalloc on cpu 0 and 1, interleaved, deliberately added out of time order
    t_alloc = np.array([500, 100, 300, 200, 400], np.uint64)
    cpu_alloc = np.array([0, 1, 0, 1, 0])
    ptrs = np.array([0xFFFF888000001000 + 64 * i for i in range(5)], np.uint64)
    b.add_samples("kmem:kmalloc", t_alloc, cpu_alloc, 10, np.array([10, 11, 10, 11, 10]),
                  {"ptr": ptrs, "bytes_alloc": 64, "bytes_req": 60},
                  stack_id=np.array([ids[0], ids[1], -1, ids[0], ids[1]]))
    b.add_samples("kmem:kmem_cache_free", [350, 600], [1, 0], 20, 20,
                  {"ptr": ptrs[[1, 3]], "name": [b"dentry", b"filp"]})
    b.add_lost(250, 0, 17, event="kmem:kmalloc")
    b.add_comm(100, [10, 10, 20], [10, 11, 20], ["bash", "bash", "sshd"])
    b.add_comm(450, 10, 10, "leaky", exec=True)
    b.add_mmap(100, 10, 10, 0x400000, 0x1000, 0, "/usr/bin/leaky", b"\x01\x02")
    b.add_fork(90, 10, 10, 1, 1)
    b.add_exit(650, 20, 20, 1, 1)
    b.add_ksyms([KERNEL_TEXT_START, KERNEL_TEXT_START + 0x100], ["a_func", "b_func"], [None, "ext4"])
    path = b.write(tmp_path / "r.parquet", ["kmem:kmalloc//ptr=ptr/size=bytes_alloc/stack/"],
                   ["kmem:kmem_cache_free//ptr=ptr/"], stop_ns=700)

    rec = open_recording(path)
    m = rec.metadata
    assert m["producer"] == f"kmemleak-offline {__version__} synthetic" and m["format_version"] == FORMAT_VERSION
    assert m["alloc"] == ["kmem:kmalloc//ptr=ptr/size=bytes_alloc/stack/"]
    assert m["free"] == ["kmem:kmem_cache_free//ptr=ptr/"]
    assert set(m["events"]) == {"kmem:kmalloc", "kmem:kmem_cache_free"}
    assert m["events"]["kmem:kmalloc"] == {"id": 658, "format": bundled_formats()["kmem:kmalloc"]}
    assert m["counts"] == {"kmem:kmalloc": {"samples": 5, "lost": 17},
                           "kmem:kmem_cache_free": {"samples": 2, "lost": 0}}
    assert m["clock"]["start_ns"] == 90 and m["clock"]["stop_ns"] == 700  # earliest row: the fork
    assert m["clock"]["anchor"]["perf_ns"] == 90 and m["host"]["ncpus"] == 2

    kinds = rec.table(columns=["kind"]).column("kind").to_pylist()
    assert {k: kinds.count(k) for k in set(kinds)} == {
        "sample": 7, "stack": 2, "lost": 1, "comm": 4, "mmap": 1, "fork": 1, "exit": 1, "ksym": 2}

    s = rec.table(kinds=["sample", "lost"]).to_pandas()
    # seq: per cpu, samples and lost together, numbered in time order from 0
    for cpu, g in s.groupby("cpu"):
        g = g.sort_values("time")
        assert g["seq"].tolist() == list(range(len(g))), cpu
    assert s.loc[s.kind == "lost", "seq"].tolist() == [0]  # cpu 0: lost at t=250 precedes t=300..600
    km = s[(s.kind == "sample") & (s.event == "kmem:kmalloc")].sort_values("time")
    fmt = tracefs.parse_format(m["events"]["kmem:kmalloc"]["format"], "kmem")
    dec = tracefs.decode(fmt, pa.array(km["raw"].tolist(), pa.binary()))
    order = np.argsort(t_alloc)
    assert dec["ptr"].tolist() == ptrs[order].tolist()
    assert dec["common_pid"].tolist() == [11, 11, 10, 10, 10]  # defaults to tid
    assert (dec["bytes_alloc"] == 64).all() and (dec["bytes_req"] == 60).all()
    sid = km["stack_id"].tolist()
    assert pd.isna(sid[2])  # t=300 had stack_id -1: no callchain
    assert [sid[0], sid[1], sid[3], sid[4]] == [ids[1], ids[0], ids[1], ids[0]]

    st = rec.table(kinds=["stack"], columns=["stack_id", "callchain"]).to_pylist()
    assert {r["stack_id"]: r["callchain"] for r in st} == {ids[0]: chain1, ids[1]: [PERF_CONTEXT_KERNEL,
                                                                                   0xFFFFFFFF81000400]}
    comm = rec.table(kinds=["comm"], columns=["time", "pid", "tid", "comm", "exec"]).to_pylist()
    assert {"time": 450, "pid": 10, "tid": 10, "comm": "leaky", "exec": True} in comm
    ks = rec.table(kinds=["ksym"], columns=["addr", "name", "module"]).to_pylist()
    assert ks == [{"addr": KERNEL_TEXT_START, "name": "a_func", "module": None},
                  {"addr": KERNEL_TEXT_START + 0x100, "name": "b_func", "module": "ext4"}]
    mm = rec.table(kinds=["mmap"], columns=["addr", "len", "filename", "build_id"]).to_pylist()
    assert mm == [{"addr": 0x400000, "len": 0x1000, "filename": "/usr/bin/leaky", "build_id": b"\x01\x02"}]


def test_builder_chunks_large_inputs_and_numbers_rings(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(synthetic, "_CHUNK", 1000)
    n = 2500
    rng = np.random.default_rng(0)
    t = rng.permutation(n).astype(np.uint64) * 10 + 1000
    b = RecordingBuilder()
    b.add_samples("kmem:kfree", t, 0, 1, 1, {"ptr": t * 3}, ring=np.where(t % 20 == 0, 5, 6))
    path = b.write(tmp_path / "c.parquet", [], ["kmem:kfree//ptr=ptr/"])
    df = open_recording(path).table(kinds=["sample"]).to_pandas()
    assert len(df) == n
    fmt = _fmt("kmem:kfree")
    ptr = tracefs.decode(fmt, pa.array(df["raw"].tolist(), pa.binary()))["ptr"]
    assert (ptr == df["time"].to_numpy() * 3).all()
    for ring, g in df.groupby("ring"):
        g = g.sort_values("time")
        assert g["seq"].tolist() == list(range(len(g))), ring
    assert sorted(df["ring"].unique().tolist()) == [5, 6]


def test_builder_is_fast_enough_for_big_recordings(tmp_path: Path) -> None:
    """1M kmem_cache_alloc events (with strings and stacks) must build and write in seconds."""
    n = 1_000_000
    rng = np.random.default_rng(1)
    b = RecordingBuilder()
    sids = np.asarray(b.add_stacks([[PERF_CONTEXT_KERNEL, 0xFFFFFFFF81000000 + i] for i in range(100)]))
    t0 = time.perf_counter()
    b.add_samples("kmem:kmem_cache_alloc", np.arange(n), rng.integers(0, 2, n), 1, 1,
                  {"ptr": rng.integers(0, 1 << 40, n), "bytes_alloc": 192,
                   "name": np.array([b"dentry", b"kmalloc-192"])[rng.integers(0, 2, n)]},
                  stack_id=sids[rng.integers(0, 100, n)])
    b.write(tmp_path / "big.parquet", ["kmem:kmem_cache_alloc"], [])
    dt = time.perf_counter() - t0
    assert open_recording(tmp_path / "big.parquet").num_rows == n + 100
    assert dt < 20, f"1M events took {dt:.1f} s"


# ----------------------------------------------------------------------------- bench data


@pytest.fixture(scope="module")
def bench():
    return _load(ROOT / "bench" / "analyze_bench.py", "analyze_bench")


def _replay(df, fmts) -> tuple[dict[int, tuple], int, int]:
    """Independent reference: dict replay in time order; returns live, frees matched, frees unmatched."""
    cols = {}
    for ev, g in df.groupby("event", observed=True):
        fmt = tracefs.parse_format(fmts[ev]["format"], ev.split(":")[0])
        d = tracefs.decode(fmt, pa.array(g["raw"].tolist(), pa.binary()))
        cols[ev] = (g.index, d)
    ptr = np.zeros(len(df), np.uint64)
    for ev, (idx, d) in cols.items():
        ptr[df.index.get_indexer(idx)] = d["ptr"]
    df = df.assign(ptr=ptr).sort_values(["time", "cpu", "seq"])
    live: dict[int, tuple] = {}
    matched = unmatched = 0
    for ev, p, cpu, t in zip(df["event"], df["ptr"], df["cpu"], df["time"], strict=True):
        if ev.endswith("alloc"):
            live[int(p)] = (ev, int(cpu), int(t))
        elif live.pop(int(p), None) is None:
            unmatched += 1
        else:
            matched += 1
    return live, matched, unmatched


def test_bench_recording_is_realistic(tmp_path: Path, bench) -> None:
    n = 30_000
    info = bench.build(tmp_path / "b.parquet", n, seed=3)
    rec = open_recording(tmp_path / "b.parquet")
    m = rec.metadata
    df = rec.table(kinds=["sample"], columns=["time", "cpu", "seq", "event", "raw", "stack_id"]).to_pandas()
    df["event"] = df["event"].astype(str)
    assert len(df) == n == info["events"]
    counts = df["event"].value_counts().to_dict()
    assert counts == {k: v for k, v in info["counts"].items() if v}
    assert set(counts) == {"kmem:kmalloc", "kmem:kfree", "kmem:kmem_cache_alloc", "kmem:kmem_cache_free"}
    assert {k: v["samples"] for k, v in m["counts"].items()} == counts
    assert df["time"].is_unique  # replay order is unambiguous

    live, matched, unmatched = _replay(df, m["events"])
    allocs = counts["kmem:kmalloc"] + counts["kmem:kmem_cache_alloc"]
    assert unmatched == 0 and matched == n - allocs
    assert 0.4 < matched / allocs < 0.6  # about half the allocations are freed
    assert len(live) == allocs - matched
    # pointer reuse: freed pointers are handed out again later
    dec = {}
    for ev in ("kmem:kmalloc", "kmem:kmem_cache_alloc"):
        g = df[df.event == ev]
        fmt = tracefs.parse_format(m["events"][ev]["format"], "kmem")
        dec[ev] = tracefs.decode(fmt, pa.array(g["raw"].tolist(), pa.binary()))["ptr"]
    all_ptrs = np.concatenate(list(dec.values()))
    assert len(all_ptrs) - len(np.unique(all_ptrs)) > 0.2 * len(all_ptrs)
    frees_with_stack = df[df.event.str.endswith("free")]["stack_id"].notna().sum()
    assert frees_with_stack == 0 and df[df.event.str.endswith("alloc")]["stack_id"].notna().all()

    stacks = rec.table(kinds=["stack"], columns=["callchain"]).column("callchain").to_pylist()
    assert len(stacks) == 1000 == info["stacks"]
    assert all(c[0] == PERF_CONTEXT_KERNEL and 8 <= len(c) - 1 <= 24 for c in stacks)
    ks = rec.table(kinds=["ksym"], columns=["addr"]).column("addr").to_numpy()
    assert len(ks) == 50_000
    words = np.array([w for c in stacks for w in c[1:]], np.uint64)
    assert (words >= ks.min()).all()  # every frame lies inside the symbol table
    lost = rec.table(kinds=["lost"], columns=["lost"]).column("lost").to_pylist()
    assert len(lost) == 3 and all(10 <= x < 500 for x in lost)
    comm = rec.table(kinds=["comm"], columns=["pid", "tid"]).to_pylist()
    tasks = rec.table(kinds=["sample"], columns=["pid", "tid"]).to_pylist()
    assert {(r["pid"], r["tid"]) for r in tasks} <= {(r["pid"], r["tid"]) for r in comm}
    assert len({r["pid"] for r in tasks}) >= 20


def test_bench_frees_often_on_other_cpu(tmp_path: Path, bench) -> None:
    bench.build(tmp_path / "b.parquet", 20_000, seed=5)
    rec = open_recording(tmp_path / "b.parquet")
    df = rec.table(kinds=["sample"], columns=["time", "cpu", "seq", "event", "raw"]).to_pandas()
    df["event"] = df["event"].astype(str)
    ptr = np.zeros(len(df), np.uint64)
    for ev, g in df.groupby("event"):
        fmt = tracefs.parse_format(rec.metadata["events"][ev]["format"], "kmem")
        ptr[df.index.get_indexer(g.index)] = tracefs.decode(fmt, pa.array(g["raw"].tolist(), pa.binary()))["ptr"]
    df = df.assign(ptr=ptr).sort_values("time")
    df["prev_cpu"] = df.groupby("ptr")["cpu"].shift()
    frees = df[df.event.str.endswith("free")]
    other = (frees["cpu"] != frees["prev_cpu"]).mean()
    assert 0.25 < other < 0.55


def test_bench_reports_failure_and_success_clearly(tmp_path: Path, bench, monkeypatch, capsys) -> None:
    monkeypatch.setattr(bench, "analyze_command",
                        lambda: [sys.executable, "-c", "import sys; sys.exit('no such command: analyze')"])
    assert bench.main(["--events", "3000", "--keep", str(tmp_path / "k.parquet")]) == 1
    out = capsys.readouterr().out
    assert "analyze: FAILED (exit 1)" in out and "no such command: analyze" in out
    assert "naive:" in out and (tmp_path / "k.parquet").exists()
    monkeypatch.setattr(bench, "analyze_command", lambda: [sys.executable, "-c", "pass"])
    assert bench.main(["--events", "3000"]) == 0
    out = capsys.readouterr().out
    assert "M events/s" in out and "peak RSS" in out and "speedup:" in out and "build:" in out


# ----------------------------------------------------------------------------- bundled sample


def _symbolise(addr: int, ks_addr: np.ndarray, ks_name: list[str]) -> str:
    return ks_name[int(np.searchsorted(ks_addr, np.uint64(addr), side="right")) - 1]


def test_sample_recording_holds_the_documented_leak() -> None:
    assert SAMPLE.stat().st_size < 2_000_000
    rec = open_recording(SAMPLE)
    m = rec.metadata
    assert m["alloc"] == ["kmem:kmalloc//ptr=ptr/size=bytes_alloc/stack/"]
    assert m["free"] == ["kmem:kfree//ptr=ptr/"]
    df = rec.table(kinds=["sample"], columns=["time", "cpu", "seq", "pid", "event", "raw", "stack_id"]
                   ).to_pandas()
    df["event"] = df["event"].astype(str)
    assert 15_000 <= len(df) <= 25_000
    live, _, unmatched = _replay(df, m["events"])
    assert unmatched == 0
    km = df[df.event == "kmem:kmalloc"]
    fmt = tracefs.parse_format(m["events"]["kmem:kmalloc"]["format"], "kmem")
    d = tracefs.decode(fmt, pa.array(km["raw"].tolist(), pa.binary()))
    by_time = {int(t): (int(s), int(b), int(p)) for t, s, b, p in
               zip(km["time"], km["stack_id"], d["bytes_alloc"], km["pid"], strict=True)}
    groups: dict[int, list] = {}
    for _, _, t in live.values():
        sid, size, pid = by_time[t]
        groups.setdefault(sid, []).append((size, pid))
    top = max(groups, key=lambda s: sum(x for x, _ in groups[s]))
    assert len(groups[top]) == 300 and {x for x, _ in groups[top]} == {64}
    assert {p for _, p in groups[top]} == {4242}
    assert sum(len(v) for v in groups.values()) - 300 < 50  # the rest is in-flight noise
    assert len(groups) > 3

    ks = rec.table(kinds=["ksym"], columns=["addr", "name"]).to_pandas().sort_values("addr")
    ks_addr, ks_name = ks["addr"].to_numpy(np.uint64), ks["name"].tolist()
    chains = {r["stack_id"]: r["callchain"] for r in
              rec.table(kinds=["stack"], columns=["stack_id", "callchain"]).to_pylist()}
    names = [_symbolise(a, ks_addr, ks_name) for a in chains[top][1:]]
    assert chains[top][0] == PERF_CONTEXT_KERNEL
    assert names == ["__kmalloc_noprof", "udp_init_sock", "inet_create", "__sock_create", "__sys_socket",
                     "__x64_sys_socket", "do_syscall_64", "entry_SYSCALL_64_after_hwframe"]
    comm = rec.table(kinds=["comm"], columns=["time", "pid", "comm", "exec"]).to_pylist()
    first_leak = min(t for _, _, t in live.values() if by_time[t][2] == 4242)
    leaky = [c for c in comm if c["pid"] == 4242 and c["time"] <= first_leak]
    assert max(leaky, key=lambda c: c["time"])["comm"] == "leaky"


def test_sample_generator_reproduces_the_committed_file(tmp_path: Path) -> None:
    mod = _load(ROOT / "samples" / "make_sample.py", "make_sample")
    out = mod.main(tmp_path / "again.parquet")
    assert out.read_bytes() == SAMPLE.read_bytes()
