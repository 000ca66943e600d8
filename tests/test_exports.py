"""`analyze --format pprof|speedscope`, read back by real consumers: `go tool pprof` (Debian's
golang-go; .ci/run installs it) and speedscope's published JSON schema (a reconstruction in
tests/data, see its description), plus the checks of speedscope's importer the schema cannot
state (frame indices, one weight per sample).

The expected figures come from the analysis itself (`analyze --format json`, whose groups the
text report shows) or from the independent model replay of test_analyze_cli.
"""

from __future__ import annotations

import gzip
import json
import os
import pty
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import jsonschema
import pytest

from tests.test_analyze_cli import (
    COMMS_A,
    EVENTS_A,
    EVENTS_B,
    PAGE_ALLOC,
    PAGE_FREE,
    build,
    comm_of_pid_a,
    model_replay,
    page_fields,
    run,
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "samples").glob("*.parquet"))
SCHEMA = json.loads((ROOT / "tests" / "data" / "speedscope-file-format-schema.json").read_text())


@pytest.fixture(scope="module")
def go() -> str:
    go = shutil.which("go")
    if go is None:
        pytest.fail("`go` not found: install Debian's golang-go (.ci/run does) - these tests read "
                    "the pprof files with `go tool pprof`")
    return go


def pprof(go: str, tmp_path: Path, *args: str) -> str:
    """`go tool pprof ARGS`: stdout; it must succeed without a word on stderr (no failed
    symbolisation, no parse warning)."""
    env = {**os.environ, "HOME": str(tmp_path), "PPROF_TMPDIR": str(tmp_path)}
    res = subprocess.run([go, "tool", "pprof", *map(str, args)], check=False, capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "", res.stderr
    return res.stdout


def top(go: str, tmp_path: Path, path: Path, sample_index: str) -> tuple[int, list[tuple[str, int, int]]]:
    """(total, [(function, flat, cum)...] in pprof's order) from `pprof -top`, exact units."""
    out = pprof(go, tmp_path, "-top", f"-sample_index={sample_index}", "-nodecount=100000",
                "-nodefraction=0", "-edgefraction=0", *(["-unit=B"] if sample_index == "space" else []),
                path)
    total = int(re.search(r"Showing nodes accounting for \S+, 100% of (\d+)B? total", out).group(1))
    rows = []
    for line in out.splitlines():
        m = re.fullmatch(r"\s*(\d+)B?\s+\S+%\s+\S+%\s+(\d+)B?\s+\S+%\s+(.+)", line)
        if m:
            rows.append((m.group(3), int(m.group(1)), int(m.group(2))))
    assert rows, out
    return total, rows


def tags(go: str, tmp_path: Path, path: Path, sample_index: str) -> dict[str, dict[str, float]]:
    """`pprof -tags`: {label key: {value: weight}}."""
    out = pprof(go, tmp_path, "-tags", f"-sample_index={sample_index}",
                *(["-unit=B"] if sample_index == "space" else []), path)
    res: dict[str, dict[str, float]] = {}
    key = None
    for line in out.splitlines():
        if m := re.fullmatch(r"\s*(\S+): Total .*", line):
            key = m.group(1)
            res[key] = {}
        elif m := re.fullmatch(r"\s*([0-9.]+)B? \(\s*[0-9.]+%\): (.+)", line):
            res[key][m.group(2)] = float(m.group(1))
    return res


def export(capsys, rec: Path, fmt: str, path: Path, *opts: str) -> Path:
    code, out, err = run(capsys, "analyze", rec, "--format", fmt, "-o", path, *opts)
    assert code == 0 and out == "", err
    return path


def analysis_groups(capsys, rec: Path) -> list[dict]:
    """The groups of every report, as `analyze --format json` gives them."""
    code, out, err = run(capsys, "analyze", rec, "--format", "json")
    assert code == 0, err
    return [g for r in json.loads(out)["reports"] for g in r["groups"]]


def leaf_totals(groups: list[dict], what: str) -> Counter:
    """Flat weight per leaf function, as pprof -top adds it up (unresolved leaves: none here)."""
    acc: Counter = Counter()
    for g in groups:
        if g["stack"]:
            assert g["stack"][0]["symbol"] is not None
            acc[g["stack"][0]["symbol"]] += g[what]
        else:
            acc["[no call chain recorded]"] += g[what]
    return acc


# ----------------------------------------------------------------------------------------- pprof

@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_go_tool_pprof_top_equals_the_analysis(go, sample, tmp_path, capsys):
    groups = analysis_groups(capsys, sample)
    prof = export(capsys, sample, "pprof", tmp_path / "leaks.pb.gz")
    assert prof.read_bytes()[:2] == b"\x1f\x8b"  # gzip, as pprof files are
    for index, what in (("space", "bytes"), ("objects", "objects")):
        want = leaf_totals(groups, what)
        total, rows = top(go, tmp_path, prof, index)
        assert total == sum(g[what] for g in groups) > 0
        flat = {name: f for name, f, _ in rows if f}
        assert flat == dict(want)
        # the top function is the heaviest leaf (pprof breaks ties by name)
        best = max(want.values())
        assert rows[0][1] == best and rows[0][0] == min(n for n, v in want.items() if v == best)
    # pprof's default sample type is space
    assert "Type: space" in pprof(go, tmp_path, "-top", prof)


def test_pprof_default_sample_type_reads_right_in_speedscope_too(tmp_path, capsys):
    """profile.proto's default_sample_type is a string-table index; speedscope's pprof importer
    takes it for an index into sample_type (else the last type). Both must give space."""
    from kmemleak_offline.reports.profile_proto import Profile

    prof = export(capsys, ROOT / "samples" / "pipe-leak.parquet", "pprof", tmp_path / "p.pb.gz")
    p = Profile.FromString(gzip.decompress(prof.read_bytes()))
    types = [p.string_table[t.type] for t in p.sample_type]
    assert types == ["objects", "space"]
    assert p.string_table[p.default_sample_type] == "space"  # profile.proto's reading
    assert types[p.default_sample_type] == "space"  # speedscope's reading
    assert p.string_table[0] == ""


def expected_a() -> list[tuple[str | None, int, str, int]]:
    """(stack, pid, comm, size) of every leaked entry of scenario A (the independent model)."""
    return [(e.stack, e.pid, comm_of_pid_a(e.pid, e.t), e.size) for e in model_replay(EVENTS_A)]


def test_pprof_labels_comm_pid_host_and_chainless_leaks(go, tmp_path, capsys):
    rec = build(EVENTS_A, tmp_path / "a.parquet", comms=COMMS_A)
    prof = export(capsys, rec, "pprof", tmp_path / "a.pb.gz")
    leaked = expected_a()
    by_tag = tags(go, tmp_path, prof, "space")
    comm_bytes = Counter()
    pid_bytes = Counter()
    for _, pid, comm, size in leaked:
        comm_bytes[comm] += size
        pid_bytes[str(pid)] += size
    assert by_tag["comm"] == dict(comm_bytes)  # python3, bash and date (pid 200 exec'd) and sshd
    assert set(comm_bytes) == {"python3", "bash", "date", "sshd"}
    assert by_tag["pid"] == dict(pid_bytes)
    assert by_tag["host"] == {"synthetic": sum(s for *_, s in leaked)}
    objects = tags(go, tmp_path, prof, "objects")
    assert objects["pid"] == dict(Counter(str(pid) for _, pid, _, _ in leaked))
    # the allocation without a call chain is a frame of its own, not lost
    total, rows = top(go, tmp_path, prof, "space")
    assert ("[no call chain recorded]", 288, 288) in rows
    assert total == sum(s for *_, s in leaked)
    # callers have cumulative weight: every chain goes through do_syscall_64
    cum = {name: c for name, _, c in rows}
    assert cum["do_syscall_64"] == total - 288


def test_pprof_samples_are_per_chain_process_and_comm(go, tmp_path, capsys):
    rec = build(EVENTS_A, tmp_path / "a.parquet", comms=COMMS_A)
    prof = export(capsys, rec, "pprof", tmp_path / "a.pb.gz")
    raw = pprof(go, tmp_path, "-raw", prof)
    samples = re.findall(r"^\s+(\d+)\s+(\d+): [\d ]+\n\s+comm:\[(.*?)\] host:\[synthetic\] "
                         r"pid:\[(\d+)\]$", raw, re.MULTILINE)
    got = Counter()
    for n, b, comm, pid in samples:
        got[(int(pid), comm)] += int(b)
        assert int(b) % int(n) == 0  # every leak of this scenario is 64, 128 or 288 bytes
    want = Counter()
    for _, pid, comm, size in expected_a():
        want[(pid, comm)] += size
    assert got == want
    # one sample per (chain, pid, comm): udp alone has python3, bash and date
    assert len(samples) == len({(s, p, c) for s, p, c, _ in expected_a()})
    assert "objects/count space/bytes[dflt]" in raw


def test_exports_add_up_the_early_reports_at_lost_events(go, tmp_path, capsys):
    # as test_analyze_cli's lost-total case: early reports hold P1, then P2+P3; the final one P4
    from tests.test_analyze_cli import Ev, P

    events = [Ev(100, 0, 1, 1, P(1), 64, "udp"), Ev(200, 0, 1, 1, P(2), 64, "udp"),
              Ev(400, 0, 1, 1, P(3), 64, "udp"), Ev(600, 0, 1, 1, P(4), 64, "udp"),
              Ev(700, 0, 1, 1, P(9))]
    rec = build(events, tmp_path / "e.parquet", lost=[(150, 0, 3), (500, 0, 4)])
    code, out, _ = run(capsys, "analyze", rec, "--format", "json")
    assert code == 0
    assert [r["reason"] for r in json.loads(out)["reports"] if r["groups"]] == ["lost", "lost", "final"]
    total, rows = top(go, tmp_path, export(capsys, rec, "pprof", tmp_path / "e.pb.gz"), "objects")
    assert total == 4 and ("__kmalloc_noprof", 4, 4) in rows
    doc = json.loads(export(capsys, rec, "speedscope", tmp_path / "e.json").read_text())
    check_speedscope(doc)
    assert doc["profiles"][0]["weights"] == [4 * 64]


def test_pprof_event_list_recording_counts_objects_only(go, tmp_path, capsys):
    rec = build(EVENTS_B, tmp_path / "b.parquet", alloc=[PAGE_ALLOC], free=[PAGE_FREE],
                alloc_event="kmem:mm_page_alloc", free_event="kmem:mm_page_free",
                extra_alloc_fields=page_fields, comms=[(0, 300, 300, "sshd", False)])
    prof = export(capsys, rec, "pprof", tmp_path / "b.pb.gz")
    out = pprof(go, tmp_path, "-top", prof)
    assert "Type: objects" in out
    total, rows = top(go, tmp_path, prof, "objects")
    leaked = model_replay(EVENTS_B)
    assert total == len(leaked) == 3
    assert {n: f for n, f, _ in rows if f} == {"__kmalloc_noprof": 2, "[no call chain recorded]": 1}
    assert {n for n, _, _ in rows} >= {"udp_init_sock", "alloc_pipe_info"}


def test_pprof_names_user_frames_without_pprof_symbolising(go, tmp_path, capsys):
    from tests.test_diff import PIE, _pie

    rec = _pie(tmp_path / "pie.parquet", 0x555555554000, 3)
    prof = export(capsys, rec, "pprof", tmp_path / "pie.pb.gz")
    total, rows = top(go, tmp_path, prof, "space")  # stderr empty: no local symbolisation tried
    cum = {name: c for name, _, c in rows}
    assert total == 96 and cum["make_leak"] == cum["main"] == 96
    traces = pprof(go, tmp_path, "-traces", prof)
    assert traces.index("__kmalloc_noprof") < traces.index("make_leak") < traces.index("main")
    assert PIE.rsplit("/", 1)[1] in pprof(go, tmp_path, "-top", prof).splitlines()[0]  # File:


def test_pprof_output_is_deterministic_and_pipes_to_stdout(tmp_path, capsys):
    sample = ROOT / "samples" / "pipe-leak.parquet"
    a = export(capsys, sample, "pprof", tmp_path / "a.pb.gz").read_bytes()
    b = export(capsys, sample, "pprof", tmp_path / "b.pb.gz").read_bytes()
    assert a == b
    res = subprocess.run([sys.executable, "-m", "kmemleak_offline", "analyze", sample,
                          "--format", "pprof"], check=False, capture_output=True, cwd=ROOT,
                         timeout=300)
    assert res.returncode == 0 and res.stdout == a, res.stderr
    assert gzip.decompress(a)  # well-formed gzip


def test_binary_format_refuses_a_terminal(tmp_path):
    sample = ROOT / "samples" / "pipe-leak.parquet"
    primary, secondary = pty.openpty()
    try:
        res = subprocess.run([sys.executable, "-m", "kmemleak_offline", "analyze", sample,
                              "--format", "pprof"], stdout=secondary, stderr=subprocess.PIPE, check=False,
                             cwd=ROOT, timeout=300, text=True)
    finally:
        os.close(secondary)
        os.close(primary)
    assert res.returncode == 2
    assert res.stderr == ("kmemleak-offline: --format pprof writes binary data: give -o FILE "
                          "(or redirect stdout), not a terminal\n")


def test_export_bad_output_path_is_one_line(tmp_path, capsys):
    sample = ROOT / "samples" / "pipe-leak.parquet"
    for fmt in ("pprof", "speedscope"):
        code, out, err = run(capsys, "analyze", sample, "--format", fmt,
                             "-o", tmp_path / "missing" / "x")
        assert code == 2 and out == ""
        assert err == (f"kmemleak-offline: -o {tmp_path / 'missing' / 'x'}: cannot write the report "
                       "there (No such file or directory)\n")


def test_pprof_without_protobuf_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['google.protobuf'] = None\n"
            "from kmemleak_offline.cli import main\n"
            f"sys.exit(main(['analyze', {str(ROOT / 'samples' / 'pipe-leak.parquet')!r}, "
            f"'--format', 'pprof', '-o', {str(tmp_path / 'x.pb.gz')!r}]))\n")
    res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert res.returncode == 2
    assert res.stderr == ("kmemleak-offline: --format pprof needs the Python package protobuf: "
                          "pip install protobuf\n")
    assert not (tmp_path / "x.pb.gz").exists()


# ------------------------------------------------------------------------------------ speedscope

def check_speedscope(doc: dict) -> None:
    """The published schema, then what speedscope's importer also insists on."""
    jsonschema.Draft6Validator(SCHEMA).validate(doc)
    n = len(doc["shared"]["frames"])
    for p in doc["profiles"]:
        assert p["type"] == "sampled"
        assert len(p["samples"]) == len(p["weights"])  # "Expected samples.length to equal ..."
        assert all(isinstance(i, int) and 0 <= i < n for st in p["samples"] for i in st)
        assert p["startValue"] <= p["endValue"] == sum(p["weights"])
    assert 0 <= doc["activeProfileIndex"] < len(doc["profiles"])


def test_the_schema_rejects_what_speedscope_would():
    good = {"$schema": "https://www.speedscope.app/file-format-schema.json",
            "shared": {"frames": [{"name": "a"}]},
            "profiles": [{"type": "sampled", "name": "p", "unit": "bytes", "startValue": 0,
                          "endValue": 1, "samples": [[0]], "weights": [1]}]}
    v = jsonschema.Draft6Validator(SCHEMA)
    assert v.is_valid(good)
    bad = [
        {**good, "$schema": "https://example.com/other.json"},
        {k: v for k, v in good.items() if k != "shared"},
        {**good, "shared": {"frames": [{"file": "x"}]}},  # a frame needs a name
        {**good, "profiles": [{**good["profiles"][0], "unit": "kilobytes"}]},
        {**good, "profiles": [{**good["profiles"][0], "samples": [["a"]]}]},
        {**good, "profiles": [{k: v for k, v in good["profiles"][0].items() if k != "weights"}]},
    ]
    assert [v.is_valid(doc) for doc in bad] == [False] * len(bad)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_speedscope_of_the_samples_is_valid_and_weighs_the_leaks(sample, tmp_path, capsys):
    groups = analysis_groups(capsys, sample)
    doc = json.loads(export(capsys, sample, "speedscope", tmp_path / "leaks.json").read_text())
    check_speedscope(doc)
    total = sum(g["bytes"] for g in groups)
    everything, *per_process = doc["profiles"]
    assert everything["unit"] == "bytes" and everything["endValue"] == total
    assert sum(p["endValue"] for p in per_process) == total
    # stacks are root first: the last frame of each is its leaf, weighted as pprof's flat
    frames = doc["shared"]["frames"]
    leaves = Counter()
    for st, w in zip(everything["samples"], everything["weights"], strict=True):
        leaves[frames[st[-1]]["name"]] += w
    assert leaves == leaf_totals(groups, "bytes")


def test_speedscope_one_profile_per_process(tmp_path, capsys):
    rec = build(EVENTS_A, tmp_path / "a.parquet", comms=COMMS_A)
    doc = json.loads(export(capsys, rec, "speedscope", tmp_path / "a.json").read_text())
    check_speedscope(doc)
    leaked = expected_a()
    per_pid = Counter()
    for _, pid, _, size in leaked:
        per_pid[pid] += size
    # profile 0: all processes; then one per pid, heaviest first, named after its comms
    assert doc["profiles"][0]["name"] == "all processes (synthetic)"
    assert [(p["name"], p["endValue"]) for p in doc["profiles"][1:]] == [
        ("python3 (pid 100)", per_pid[100]), ("sshd (pid 300)", per_pid[300]),
        ("bash, date (pid 200)", per_pid[200])]
    assert per_pid[100] > per_pid[300] > per_pid[200]
    frames = doc["shared"]["frames"]
    first = doc["profiles"][0]
    names = [[frames[i]["name"] for i in st] for st in first["samples"]]
    assert ["[no call chain recorded]"] in names
    udp = ["entry_SYSCALL_64_after_hwframe", "do_syscall_64", "udp_init_sock", "__kmalloc_noprof"]
    assert names.count(udp) == 1  # pids and comms merge in the overall profile
    assert first["weights"][names.index(udp)] == sum(s for st, _, _, s in leaked if st == "udp")
    assert {f.get("file") for f in frames} == {"[kernel.kallsyms]", None}
    assert doc["exporter"].startswith("kmemleak-offline@")


def test_speedscope_event_list_weighs_objects(tmp_path, capsys):
    rec = build(EVENTS_B, tmp_path / "b.parquet", alloc=[PAGE_ALLOC], free=[PAGE_FREE],
                alloc_event="kmem:mm_page_alloc", free_event="kmem:mm_page_free",
                extra_alloc_fields=page_fields, comms=[(0, 300, 300, "sshd", False)])
    doc = json.loads(export(capsys, rec, "speedscope", tmp_path / "b.json").read_text())
    check_speedscope(doc)
    assert [(p["name"], p["unit"], p["endValue"]) for p in doc["profiles"]] == [
        ("all processes (synthetic)", "none", 3), ("sshd (pid 300)", "none", 3)]
    frames = doc["shared"]["frames"]
    leaves = Counter()
    for st, w in zip(doc["profiles"][0]["samples"], doc["profiles"][0]["weights"], strict=True):
        leaves[frames[st[-1]]["name"]] += w
    assert leaves == {"__kmalloc_noprof": 2, "[no call chain recorded]": 1}
