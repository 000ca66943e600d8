"""`fleet`: recordings of several hosts, each analysed alone, reduced by symbolised call chain.

The expected answer is computed here independently: every recording goes through
`analyze --format json` (the CLI), and its groups (events, in event-list mode) are summed per
call chain keyed by the frames' (symbol, offset, dso) - as docs/fleet.md defines a site - with
plain Python dicts. The fleet's answer (local processes, URLs, a real Dask cluster) must match.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from kmemleak_offline.synthetic import PERF_CONTEXT_KERNEL as K
from kmemleak_offline.synthetic import RecordingBuilder
from tests.test_analyze_cli import run

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted(str(p) for p in (ROOT / "samples").glob("*.parquet"))
MS = 1_000_000
START = 1_000_000_000
STOP = START + 1000 * MS
KMALLOC = "kmem:kmalloc//ptr=ptr/size=bytes_alloc/stack/"
KMALLOC_NO_SIZE = "kmem:kmalloc//ptr=ptr/stack/"  # event-list mode: objects only
KFREE = "kmem:kfree//ptr=ptr/"

FUNCS = ["__kmalloc_noprof", "udp_init_sock", "alloc_pipe_info", "ext4_fill_super",
         "do_syscall_64", "seq_open"]
CHAINS = {  # name -> (function, offset) frames, leaf first
    "udp": [("__kmalloc_noprof", 0x244), ("udp_init_sock", 0x7C), ("do_syscall_64", 0x71)],
    "pipe": [("__kmalloc_noprof", 0x100), ("alloc_pipe_info", 0x30), ("do_syscall_64", 0x71)],
    "ext4": [("__kmalloc_noprof", 0x10), ("ext4_fill_super", 0x20)],
    "seq": [("__kmalloc_noprof", 0x10), ("seq_open", 0x8)],  # always freed: never a site
}


def host_recording(path: Path, host: str, kernel: str, slide: int, counts: dict[str, int],
                   lost_at_ms: int | None = None, event_list: bool = False) -> Path:
    """One host's kmalloc recording, the kernel moved by `slide` (KASLR: other addresses, same
    chains). `counts`: leaked allocations per chain: udp's spread over the whole recording (a
    growing chain), pipe's and ext4's in the first tenth (bounded), seq allocations all freed."""
    b = RecordingBuilder()
    base = {f: 0xFFFFFFFF81000000 + slide + 0x100000 * i for i, f in enumerate(FUNCS)}
    b.add_ksyms(list(base.values()), list(base))
    names = list(CHAINS)
    sids = dict(zip(names, b.add_stacks([(K, *(base[f] + o for f, o in CHAINS[n])) for n in names]),
                    strict=True))
    times, ptrs, sizes, stack, pids = [], [], [], [], []
    ptr = 0xFFFF888100000000
    pid_of = {"udp": 100, "pipe": 200, "ext4": 300, "seq": 100}
    size_of = {"udp": 64, "pipe": 1024, "ext4": 192, "seq": 32}
    for name, n in counts.items():
        for i in range(n):
            if name == "udp":
                t = 10 + i * 980 // max(n, 1)
            else:
                t = 5 + i * 90 // max(n, 1)
            times.append(START + t * MS + i)
            ptrs.append(ptr)
            ptr += 0x100
            sizes.append(size_of[name])
            stack.append(sids[name])
            pids.append(pid_of[name] + (i % 2 if name == "pipe" else 0))
    for i in range(20):  # seq: allocated and freed
        times.append(START + (50 + 40 * i) * MS + 7)
        ptrs.append(0xFFFF888200000000 + 0x40 * i)
        sizes.append(32)
        stack.append(sids["seq"])
        pids.append(100)
    b.add_samples("kmem:kmalloc", times, 0, pids, pids,
                  {"ptr": ptrs, "bytes_alloc": sizes, "bytes_req": sizes, "gfp_flags": 0xCC0},
                  stack_id=stack)
    b.add_samples("kmem:kfree", [START + (52 + 40 * i) * MS for i in range(20)], 1, 100, 100,
                  {"ptr": [0xFFFF888200000000 + 0x40 * i for i in range(20)]})
    b.add_comm(START, [100, 200, 201, 300], [100, 200, 201, 300], ["udpd", "pipes", "pipes2", "mount"])
    if lost_at_ms is not None:  # an early report: what is outstanding then is reported and forgotten
        b.add_lost(START + lost_at_ms * MS, 0, 5)
    return b.write(path, [KMALLOC_NO_SIZE if event_list else KMALLOC], [KFREE], start_ns=START,
                   stop_ns=STOP, host={"hostname": host, "kernel_release": kernel})


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fleet")
    host_recording(d / "a1.parquet", "alpha", "6.18.44", 0, {"udp": 40, "pipe": 3})
    host_recording(d / "a2.parquet", "alpha", "6.18.44", 0x2000000, {"udp": 25, "pipe": 5})
    host_recording(d / "b.parquet", "beta", "6.18.44", 0x3A00000, {"udp": 30, "ext4": 2})
    host_recording(d / "c.parquet", "gamma", "6.12.9", 0x1200000, {"udp": 12, "pipe": 4, "ext4": 1},
                   lost_at_ms=500)
    host_recording(d / "d.parquet", "delta", "6.12.9", 0x4400000, {"udp": 8, "pipe": 2},
                   event_list=True)
    return d


def recordings(d: Path) -> list[str]:
    return sorted(str(p) for p in d.glob("*.parquet")) + SAMPLES


# ------------------------------------------------------------------ the independent answer

def _key(stack: list[dict]) -> tuple:
    """A site's identity: (symbol, offset, dso) per frame; unresolved frames by dso alone."""
    return tuple(("Unknown", 0, f["dso"] or "Unknown") if f["symbol"] is None
                 else (f["symbol"], f["offset"], f["dso"] or "Unknown") for f in stack)


def _host(path: str) -> tuple[str, str]:
    import pyarrow.parquet as pq

    meta = json.loads(pq.ParquetFile(path).metadata.metadata[b"kmemleak_offline"])
    return meta["host"]["hostname"], meta["host"]["kernel_release"]


def expected(capsys, paths: list[str]) -> dict:
    """Sites and recordings from `analyze --format json` of each recording, summed by hand."""
    sites: dict[tuple, dict] = {}
    recs = []
    for path in paths:
        code, out, err = run(capsys, "analyze", path, "--format", "json")
        assert code == 0, err
        doc = json.loads(out)
        host, kernel = _host(path)
        recs.append({"path": path, "host": host, "kernel_release": kernel,
                     "events": doc["stats"]["total_alloc"] + doc["stats"]["total_free"],
                     "lost": doc["stats"]["lost_events"]})
        trend: dict[tuple, tuple[str, float]] = {}
        for rep in doc["reports"]:
            items = ([(g["stack"], g["bytes"], g["objects"], g["trend"]) for g in rep["groups"]]
                     if doc["mode"] == "leaked-bytes" else
                     [(e["stack"], 0, 1, None) for e in rep["events"] if e["selected"]])
            for stack, b, n, tr in items:
                k = _key(stack)
                s = sites.setdefault(k, {"bytes": 0, "objects": 0, "hosts": {}, "recs": set(),
                                         "kernels": {}, "trend": {}})
                s["bytes"] += b
                s["objects"] += n
                s["recs"].add(path)
                h = s["hosts"].setdefault(host, [0, 0, set()])
                h[0] += b
                h[1] += n
                h[2].add(path)
                kk = s["kernels"].setdefault(kernel, [0, 0, set(), set()])
                kk[0] += b
                kk[1] += n
                kk[2].add(host)
                kk[3].add(path)
                if tr is not None:
                    trend[k] = (tr["class"], tr["slope_bytes_per_s"])  # the latest report wins
        for k, (cls, slope) in trend.items():
            sites[k]["trend"][path] = (host, cls, slope)
    return {"recordings": recs, "sites": sites}


def check_json(doc: dict, want: dict) -> None:
    assert doc["format_version"] == 1
    assert doc["skipped"] == []
    assert doc["recordings"] == [{**r, **{k: v for k, v in got.items() if k not in r}}
                                 for r, got in zip(want["recordings"], doc["recordings"], strict=True)]
    got = {_key(s["stack"]): s for s in doc["sites"]}
    assert len(got) == len(doc["sites"])  # one site per chain
    assert set(got) == set(want["sites"])
    for k, w in want["sites"].items():
        s = got[k]
        assert (s["bytes"], s["objects"]) == (w["bytes"], w["objects"]), k
        assert s["hosts"] == len(w["hosts"]) and s["recordings"] == len(w["recs"]), k
        assert {h["host"]: (h["bytes"], h["objects"], h["recordings"]) for h in s["per_host"]} == \
            {h: (b, n, len(r)) for h, (b, n, r) in w["hosts"].items()}, k
        assert {x["kernel_release"]: (x["bytes"], x["objects"], x["hosts"], x["recordings"])
                for x in s["per_kernel"]} == \
            {kr: (b, n, len(hs), len(rs)) for kr, (b, n, hs, rs) in w["kernels"].items()}, k
        classes = [c for _, c, _ in w["trend"].values()]
        slopes = [sl for _, c, sl in w["trend"].values() if c == "growing"]
        if slopes:
            assert s["trend"]["max_slope_bytes_per_s"] == pytest.approx(max(slopes), abs=0.01), k
        else:
            assert s["trend"]["max_slope_bytes_per_s"] is None, k
        assert (s["trend"]["growing"], s["trend"]["bounded"], s["trend"]["insufficient"]) == \
            (classes.count("growing"), classes.count("bounded"), classes.count("insufficient")), k
        growing_by_host = {h: sum(1 for hh, c, _ in w["trend"].values() if hh == h and c == "growing")
                           for h in w["hosts"]}
        assert {h["host"]: h["growing"] for h in s["per_host"]} == growing_by_host, k
        assert sum(c["bytes"] for c in s["comms"]) == s["bytes"]
        assert sum(c["objects"] for c in s["comms"]) == s["objects"]
    order = [(-s["bytes"], -s["objects"]) for s in doc["sites"]]
    assert order == sorted(order)


def fleet_json(capsys, *args) -> dict:
    code, out, err = run(capsys, "fleet", *args, "--format", "json")
    assert code == 0, err
    return json.loads(out)


# ------------------------------------------------------------------ local runs

def test_fleet_json_matches_the_per_recording_analyses(fleet_dir, capsys):
    paths = recordings(fleet_dir)
    want = expected(capsys, paths)
    doc = fleet_json(capsys, *paths, "-j", "2")
    check_json(doc, want)
    # the KASLR-moved udp chain is one site on every synthetic host, growing where it had a trend
    udp = want["sites"][(("__kmalloc_noprof", 0x244, "[kernel.kallsyms]"),
                         ("udp_init_sock", 0x7C, "[kernel.kallsyms]"),
                         ("do_syscall_64", 0x71, "[kernel.kallsyms]"))]
    assert set(udp["hosts"]) == {"alpha", "beta", "gamma", "delta"}
    site = next(s for s in doc["sites"] if s["stack"] and s["stack"][0]["offset"] == 0x244
                and s["stack"][1]["symbol"] == "udp_init_sock")
    assert site["trend"]["growing"] >= 3 and site["hosts"] == 4
    assert {c["comm"] for c in site["comms"]} == {"udpd"}
    # gamma's early report (events lost at 500 ms) counts, as diff counts it
    gamma = str(fleet_dir / "c.parquet")
    assert next(r for r in doc["recordings"] if r["path"] == gamma)["lost"] == 5
    _, out, _ = run(capsys, "analyze", gamma, "--format", "json")
    early = [r for r in json.loads(out)["reports"] if r["reason"] == "lost"]
    assert len(early) == 1 and early[0]["groups"]
    assert site["per_host"][[h["host"] for h in site["per_host"]].index("gamma")]["objects"] == 12


def test_fleet_directory_glob_and_one_process_agree(fleet_dir, capsys):
    by_dir = fleet_json(capsys, fleet_dir, "-j", "1")
    by_glob = fleet_json(capsys, str(fleet_dir / "*.parquet"), "-j", "2")
    assert by_dir == by_glob
    check_json(by_dir, expected(capsys, recordings(fleet_dir)[:5]))


_LEAK = re.compile(r"^Leak of (\d+) bytes in (\d+) objects on (\d+) hosts? in (\d+) recordings?"
                   r"(?:, growing in (\d+))?$")


def test_fleet_text_report(fleet_dir, capsys):
    paths = recordings(fleet_dir)
    doc = fleet_json(capsys, *paths)
    code, out, err = run(capsys, "fleet", *paths)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "FLEET: 8 recordings from 6 hosts, 4 kernel releases"
    total_b = sum(s["bytes"] for s in doc["sites"])
    total_n = sum(s["objects"] for s in doc["sites"])
    assert lines[1] == f"LEAKED {total_b} bytes in {total_n} objects, {len(doc['sites'])} call chains"
    heads = [m.groups() for m in map(_LEAK.match, lines) if m]
    assert [(int(b), int(n), int(h), int(r), int(g or 0)) for b, n, h, r, g in heads] == \
        [(s["bytes"], s["objects"], s["hosts"], s["recordings"], s["trend"]["growing"])
         for s in doc["sites"]]
    # each site: its stack lines (perf-prof's), then one line per host and per kernel release
    blocks = out.split("\n\n")[1:]
    for block, s in zip(blocks, doc["sites"], strict=True):
        bl = block.splitlines()
        assert len(bl) == 1 + max(len(s["stack"]), 1) + 1 + len(s["per_host"]) + 1 + len(s["per_kernel"])
        hosts = bl[bl.index("  per host:") + 1: bl.index("  per kernel release:")]
        assert [h.split()[:5] for h in hosts] == [
            [h["host"], str(h["bytes"]), "bytes", str(h["objects"]), "objects"] for h in s["per_host"]]
    code, out2, err = run(capsys, "fleet", *paths, "--top", "2")
    assert code == 0 and len([ln for ln in out2.splitlines() if _LEAK.match(ln)]) == 2


def test_fleet_summaries_and_the_documented_queries(fleet_dir, capsys, tmp_path):
    keep = tmp_path / "summaries"
    paths = recordings(fleet_dir)
    doc = fleet_json(capsys, *paths, "--summaries", keep)
    files = sorted((keep / "sites").glob("*.parquet"))
    assert len(files) == len(paths)
    con = duckdb.connect()
    sites = f"read_parquet('{keep}/sites/*.parquet')"
    got = con.execute(f"SELECT sum(bytes), sum(objects), count(DISTINCT chain_id), "
                      f"count(DISTINCT host) FROM {sites}").fetchone()
    assert got == (sum(s["bytes"] for s in doc["sites"]), sum(s["objects"] for s in doc["sites"]),
                   len(doc["sites"]), 6)
    # every recording's summary holds what analyze said of it
    for r in doc["recordings"]:
        b, n = con.execute(f"SELECT coalesce(sum(bytes), 0), coalesce(sum(objects), 0) FROM {sites} "
                           "WHERE recording = ?", [r["path"]]).fetchone()
        assert (b, n) == (r["leaked_bytes"], r["leaked_objects"])
    # the queries docs/fleet.md shows run on these files and agree with the report
    text = (ROOT / "docs" / "fleet.md").read_text()
    queries = re.findall(r"```sql\n(.*?)```", text, flags=re.DOTALL)
    assert len(queries) >= 4
    os.chdir(tmp_path)  # the docs' queries name the folder `summaries`
    try:
        results = [con.execute(q).fetchall() for q in queries]
    finally:
        os.chdir(ROOT)
    top = results[0]  # the first: sites by bytes, with hosts and recordings
    assert [(r[1], r[2], r[3], r[4]) for r in top] == \
        [(s["hosts"], s["recordings"], s["bytes"], s["objects"]) for s in doc["sites"]][:len(top)]


def test_fleet_reads_urls(fleet_dir, capsys):
    import fsspec

    local = fleet_json(capsys, fleet_dir)
    by_file_url = fleet_json(capsys, f"file://{fleet_dir}/*.parquet")
    assert by_file_url["sites"] == local["sites"]
    fs = fsspec.filesystem("memory")
    for p in sorted(fleet_dir.glob("*.parquet")):
        fs.pipe(f"/kmlo-fleet-test/{p.name}", p.read_bytes())
    try:
        doc = fleet_json(capsys, "memory://kmlo-fleet-test/*.parquet", "-j", "1")
        assert doc["sites"] == local["sites"]
        assert [r["path"] for r in doc["recordings"]] == \
            [fs.unstrip_protocol(f"/kmlo-fleet-test/{p.name}") for p in sorted(fleet_dir.glob("*.parquet"))]
        assert doc == fleet_json(capsys, "memory://kmlo-fleet-test", "-j", "2")  # a folder URL
    finally:
        fs.rm("/kmlo-fleet-test", recursive=True)


# ------------------------------------------------------------------ bad input

def _one_line(code: int, out: str, err: str, code_want: int = 2) -> str:
    assert code == code_want and out == "", err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_fleet_bad_arguments_are_one_line(fleet_dir, capsys, tmp_path):
    good = str(fleet_dir / "a1.parquet")
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    cases = [
        ([good, str(tmp_path / "missing.parquet")], "no such file or directory"),
        ([good, str(tmp_path / "nothing-*.parquet")], "no file matches"),
        ([str(tmp_path / "empty")], "no *.parquet file or *.parts folder"),
        ([good, "--format", "xml"], "--format must be text or json"),
        ([good, "-j", "0"], "-j/--jobs must be at least 1"),
        ([good, "-j", "2", "--scheduler", "tcp://127.0.0.1:1"], "a --scheduler run uses"),
        ([good, "--summaries", str(tmp_path / "full")], "not an empty directory"),
        ([good, "--top", "0"], "--top must be at least 1"),
        (["nosuchproto://bucket/x.parquet"], "nosuchproto"),
        ([good, "-o", str(tmp_path / "no" / "such" / "dir.json")], "no such directory"),
    ]
    for args, words in cases:
        line = _one_line(*run(capsys, "fleet", *args))
        assert words in line, (args, line)


def test_fleet_skips_unreadable_recordings_and_fails_only_when_none_is_read(fleet_dir, capsys, tmp_path):
    junk = tmp_path / "junk.parquet"
    junk.write_text("not a recording\n")
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes((fleet_dir / "b.parquet").read_bytes()[:3000])
    good = str(fleet_dir / "a1.parquet")
    code, out, err = run(capsys, "fleet", good, junk, truncated, "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert [r["path"] for r in doc["recordings"]] == [good]
    assert [s["path"] for s in doc["skipped"]] == [str(junk), str(truncated)]
    assert all(s["error"] and "\n" not in s["error"] for s in doc["skipped"])
    warn = err.strip().splitlines()
    assert len(warn) == 2 and all(w.startswith("kmemleak-offline: warning: ") and
                                  w.endswith("; skipped") for w in warn)
    assert doc["sites"] == fleet_json(capsys, good)["sites"]
    code, out, err = run(capsys, "fleet", good, junk)
    assert code == 0 and out.splitlines()[1] == f"SKIPPED: {junk}: " + doc["skipped"][0]["error"]
    # nothing readable: exit 2, the warnings and one line saying so
    code, out, err = run(capsys, "fleet", junk, truncated)
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1].startswith("kmemleak-offline: no recording could be analysed")


def _child(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {}),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300, check=False)


def _cli_without(module: str, *args: str) -> subprocess.CompletedProcess:
    """The CLI in a child where `import module` fails (as if the extra were not installed)."""
    return _child(f"import sys; sys.modules[{module!r}] = None\n"
                  "from kmemleak_offline.cli import main\n"
                  f"sys.exit(main({list(args)!r}))\n")


def test_fleet_without_its_extra_is_one_line(fleet_dir):
    good = str(fleet_dir / "a1.parquet")
    res = _cli_without("distributed", "fleet", good, "--scheduler", "tcp://127.0.0.1:1")
    line = _one_line(res.returncode, res.stdout, res.stderr)
    assert "--scheduler needs Dask" in line and "pip install 'kmemleak-offline[fleet]'" in line
    res = _cli_without("duckdb", "fleet", good)
    line = _one_line(res.returncode, res.stdout, res.stderr)
    assert "fleet needs DuckDB" in line and "kmemleak-offline[fleet]" in line
    # without Dask, a local run still works
    res = _cli_without("distributed", "fleet", good, "--format", "json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["recordings"][0]["host"] == "alpha"


def test_fleet_unreachable_scheduler_is_one_line(fleet_dir):
    import socket

    with socket.socket() as s:  # a port nobody listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
        res = _child("import sys\nfrom kmemleak_offline.cli import main\n"
                     f"sys.exit(main(['fleet', {str(fleet_dir / 'a1.parquet')!r}, "
                     f"'--scheduler', {address!r}]))\n",
                     env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"})
    line = _one_line(res.returncode, res.stdout, res.stderr)
    assert line.startswith(f"kmemleak-offline: --scheduler {address}: cannot connect")


# ------------------------------------------------------------------ a real Dask cluster

def test_fleet_on_a_real_dask_cluster_gives_the_local_answer(fleet_dir, capsys, tmp_path):
    from tests.dask_cluster import local_cluster

    paths = recordings(fleet_dir)
    junk = tmp_path / "junk.parquet"
    junk.write_text("not a recording\n")
    local = fleet_json(capsys, *paths, junk, "-j", "2")
    with local_cluster(workers=2) as cluster:
        code, out, err = run(capsys, "fleet", *paths, junk, "--scheduler", cluster.address,
                             "--format", "json", "--summaries", tmp_path / "s")
        assert code == 0, err + cluster.logs()
        code_t, out_t, err_t = run(capsys, "fleet", *paths, "--scheduler", cluster.address)
        assert code_t == 0, err_t
    assert json.loads(out) == local
    assert err.count("; skipped") == 1
    assert len(list((tmp_path / "s" / "sites").glob("*.parquet"))) == len(paths)
    # the recordings were read by both worker processes, not by this one
    workers = duckdb.sql(f"SELECT DISTINCT worker FROM '{tmp_path}/s/recordings.parquet' "
                         "WHERE error IS NULL").fetchall()
    assert len(workers) == 2 and all(not w.endswith(f":{os.getpid()}") for (w,) in workers)
    code, out_local, _ = run(capsys, "fleet", *paths)
    assert out_t == out_local
