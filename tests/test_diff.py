"""`diff`: two recordings or JSON reports, leaks matched by (symbol, offset, dso) call chain."""

from __future__ import annotations

import json

from kmemleak_offline.synthetic import PERF_CONTEXT_USER as U
from kmemleak_offline.synthetic import RecordingBuilder
from tests.test_analyze_cli import KFREE, KMALLOC, MS, START, STOP, Ev, K, build, run, stack_lines


def _allocs(n: int, stack: str, size: int, base_ptr: int, t0: int = 10) -> list[Ev]:
    """n allocs on one chain, plus a free of a pointer nobody allocated (the recording needs kfree)."""
    return [Ev(t0 + i, 0, 100, 100, base_ptr + 64 * i, size=size, stack=stack) for i in range(n)] + [
        Ev(t0 + n, 1, 100, 100, 0xDEAD0000 + base_ptr)]


def test_diff_reports_new_grown_and_gone_chains(tmp_path, capsys):
    # base: udp leaks 3 x 64, pipe leaks 2 x 128 ; new: udp leaks 5 x 64, pipe none, udp2 1 x 32
    base = build(_allocs(3, "udp", 64, 0x1000) + _allocs(2, "pipe", 128, 0x9000), tmp_path / "a.parquet")
    new = build(_allocs(5, "udp", 64, 0x1000) + _allocs(1, "udp2", 32, 0x5000), tmp_path / "b.parquet")
    code, out, err = run(capsys, "diff", base, new)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[2] == "LEAKED bytes 448 -> 352 (-96) objects 5 -> 6 (+1)"
    blocks = out.split("\n\n", 1)[1]
    # ordered by |delta bytes|: pipe gone (-256), udp grown (+128), udp2 new (+32)
    heads = [ln for ln in blocks.splitlines() if not ln.startswith("    ")]
    assert heads == [
        "GONE: -256 bytes -2 objects (256 -> 0 bytes, 2 -> 0 objects)",
        "GROWN: +128 bytes +2 objects (192 -> 320 bytes, 3 -> 5 objects)",
        "NEW: +32 bytes +1 objects (0 -> 32 bytes, 0 -> 1 objects)",
    ]
    first_stack = blocks.splitlines()[1:1 + len(stack_lines("pipe"))]
    assert [ln.strip() for ln in first_stack] == [ln.strip() for ln in stack_lines("pipe")]

    code, out, err = run(capsys, "diff", base, new, "--format", "json")
    doc = json.loads(out)
    by_status = {c["status"]: c for c in doc["changes"]}
    assert by_status["grown"]["delta_bytes"] == 128 and by_status["grown"]["new"]["objects"] == 5
    assert by_status["new"]["base"] == {"bytes": 0, "objects": 0}


def test_diff_bad_input_is_one_line(tmp_path, capsys):
    base = build(_allocs(1, "udp", 64, 0x1000), tmp_path / "a.parquet")
    code, out, err = run(capsys, "diff", base, tmp_path / "missing.parquet")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------- matching ignores load addresses

def _kaslr(path, slide: int, n: int) -> object:
    """n kmalloc leaks of 64 bytes on one chain, the kernel (symbols and chain) moved by `slide`."""
    b = RecordingBuilder()
    b.add_ksyms([0xFFFFFFFF81000000 + slide, 0xFFFFFFFF81100000 + slide],
                ["__kmalloc_noprof", "udp_init_sock"])
    (sid,) = b.add_stacks([(K, 0xFFFFFFFF81000244 + slide, 0xFFFFFFFF8110007C + slide)])
    b.add_samples("kmem:kmalloc", [START + (10 + i) * MS for i in range(n)], 0, 1, 1,
                  {"ptr": [0x1000 + 64 * i for i in range(n)], "bytes_alloc": 64, "bytes_req": 64},
                  stack_id=sid)
    b.add_samples("kmem:kfree", START + 500 * MS, 0, 1, 1, {"ptr": 0x9000})
    return b.write(path, [KMALLOC], [KFREE], start_ns=START, stop_ns=STOP)


def test_diff_matches_kernel_chains_across_kaslr(tmp_path, capsys):
    boot1 = _kaslr(tmp_path / "boot1.parquet", 0, 1)
    boot2 = _kaslr(tmp_path / "boot2.parquet", 0x2000000, 1)
    code, out, err = run(capsys, "diff", boot1, boot2, "--format", "json")
    assert code == 0, err
    (c,) = json.loads(out)["changes"]
    assert c["status"] == "same" and c["base"] == c["new"] == {"bytes": 64, "objects": 1}
    # addresses are shown, those of the later recording
    assert c["stack"] == ["ffffffff83000244 __kmalloc_noprof+0x244 ([kernel.kallsyms])",
                          "ffffffff8310007c udp_init_sock+0x7c ([kernel.kallsyms])"]
    code, out, err = run(capsys, "diff", boot1, boot2)
    assert code == 0 and "GONE" not in out and "NEW" not in out
    assert out.splitlines()[2] == "LEAKED bytes 64 -> 64 (+0) objects 1 -> 1 (+0)"

    boot3 = _kaslr(tmp_path / "boot3.parquet", 0x3A00000, 3)  # same chain, grown
    code, out, err = run(capsys, "diff", boot1, boot3)
    heads = [ln for ln in out.split("\n\n", 1)[1].splitlines() if not ln.startswith("    ")]
    assert heads == ["GROWN: +128 bytes +2 objects (64 -> 192 bytes, 1 -> 3 objects)"]


PIE = "/usr/bin/leaky-pie"


def _pie(path, base: int, n: int, per_task: bool = True) -> object:
    """A PIE program mapped at `base` (recorded with -p 100) leaking n x 32 bytes: make_leak <- main.

    The program's symbols and PT_LOAD segment are embedded (usym rows), so no binary is needed.
    """
    b = RecordingBuilder()
    b.add_ksyms([0xFFFFFFFF81000000], ["__kmalloc_noprof"])
    b.add_mmap(START, 100, 100, base, 0x3000, 0, PIE)
    b.add_usyms([0, 0x1100, 0x1200], [0x3000, 0x80, 0x80], ["[PT_LOAD]", "main", "make_leak"], PIE)
    (sid,) = b.add_stacks([(K, 0xFFFFFFFF81000010, U, base + 0x1234, base + 0x1150)])
    b.add_samples("kmem:kmalloc", [START + (10 + i) * MS for i in range(n)], 0, 100, 100,
                  {"ptr": [0x1000 + 64 * i for i in range(n)], "bytes_alloc": 32, "bytes_req": 32},
                  stack_id=sid)
    b.add_samples("kmem:kfree", START + 500 * MS, 0, 100, 100, {"ptr": 0x9000})
    return b.write(path, [KMALLOC], [KFREE], start_ns=START, stop_ns=STOP,
                   options={"pids": [100]} if per_task else None)


def test_diff_names_user_frames_of_system_wide_recordings(tmp_path, capsys):
    """Groups of a system-wide recording print pid 0 (perf-prof's); their user frames are still
    named through the latest allocation's process, in diff as in analyze."""
    run1 = _pie(tmp_path / "a.parquet", 0x555555554000, 2, per_task=False)
    run2 = _pie(tmp_path / "b.parquet", 0x5612AB000000, 3, per_task=False)
    code, out, err = run(capsys, "diff", run1, run2, "--format", "json")
    assert code == 0, err
    (c,) = json.loads(out)["changes"]
    assert c["status"] == "grown"
    assert c["stack"][1:] == [f"00005612ab001234 make_leak+0x34 ({PIE})",
                              f"00005612ab001150 main+0x50 ({PIE})"]


def test_diff_matches_user_chains_across_pie_load_bases(tmp_path, capsys):
    run1 = _pie(tmp_path / "run1.parquet", 0x555555554000, 2)
    run2 = _pie(tmp_path / "run2.parquet", 0x5612AB000000, 2)
    code, out, err = run(capsys, "diff", run1, run2, "--format", "json")
    assert code == 0, err
    (c,) = json.loads(out)["changes"]
    assert c["status"] == "same" and c["new"] == {"bytes": 64, "objects": 2}
    assert c["stack"][1:] == [f"00005612ab001234 make_leak+0x34 ({PIE})",
                              f"00005612ab001150 main+0x50 ({PIE})"]

    run3 = _pie(tmp_path / "run3.parquet", 0x7F0000000000, 5)
    code, out, err = run(capsys, "diff", run1, run3)
    heads = [ln for ln in out.split("\n\n", 1)[1].splitlines() if not ln.startswith("    ")]
    assert heads == ["GROWN: +96 bytes +3 objects (64 -> 160 bytes, 2 -> 5 objects)"]


def test_unresolved_frames_match_on_dso_not_address(tmp_path, capsys):
    # no usym rows: user frames resolve to the mapped file only, at other addresses each run
    def rec(path, base):
        b = RecordingBuilder()
        b.add_ksyms([0xFFFFFFFF81000000], ["__kmalloc_noprof"])
        b.add_mmap(START, 100, 100, base, 0x3000, 0, "/nonexistent/leaky")
        (sid,) = b.add_stacks([(K, 0xFFFFFFFF81000010, U, base + 0x1234)])
        b.add_samples("kmem:kmalloc", START + 10 * MS, 0, 100, 100,
                      {"ptr": 0x1000, "bytes_alloc": 32, "bytes_req": 32}, stack_id=sid)
        b.add_samples("kmem:kfree", START + 500 * MS, 0, 100, 100, {"ptr": 0x9000})
        return b.write(path, [KMALLOC], [KFREE], start_ns=START, stop_ns=STOP,
                       options={"pids": [100]})

    code, out, err = run(capsys, "diff", rec(tmp_path / "a.parquet", 0x555555554000),
                         rec(tmp_path / "b.parquet", 0x560000000000), "--format", "json")
    assert code == 0, err
    (c,) = json.loads(out)["changes"]
    assert c["status"] == "same"
    assert c["stack"][1] == "0000560000001234 Unknown+0x0 (/nonexistent/leaky)"


# ------------------------------------------------------------- JSON reports as either side

def _json(capsys, rec, path, *opts) -> object:
    code, _, err = run(capsys, "analyze", rec, "--format", "json", "-o", path, *opts)
    assert code == 0, err
    return path


def test_diff_json_report_against_recording_and_json(tmp_path, capsys):
    base = build(_allocs(3, "udp", 64, 0x1000) + _allocs(2, "pipe", 128, 0x9000), tmp_path / "a.parquet")
    new = build(_allocs(5, "udp", 64, 0x1000) + _allocs(1, "udp2", 32, 0x5000), tmp_path / "b.parquet")
    base_json = _json(capsys, base, tmp_path / "a.json")
    new_json = _json(capsys, new, tmp_path / "b.json", "-v")  # -v adds events; groups still count
    code, want, err = run(capsys, "diff", base, new)
    assert code == 0, err
    for a, b in ((base_json, new), (base, new_json), (base_json, new_json)):
        code, out, err = run(capsys, "diff", a, b)
        assert code == 0 and err == ""
        assert out.splitlines()[1:] == want.splitlines()[1:]  # only the names in line 1 differ
        assert out.splitlines()[0] == f"LEAK DIFF: {a} -> {b}"
    code, out, err = run(capsys, "diff", base_json, base, "--format", "json")  # against its own report
    assert code == 0 and {c["status"] for c in json.loads(out)["changes"]} == {"same"}


def test_diff_json_report_matches_across_kaslr(tmp_path, capsys):
    boot1 = _json(capsys, _kaslr(tmp_path / "boot1.parquet", 0, 1), tmp_path / "boot1.json")
    boot2 = _kaslr(tmp_path / "boot2.parquet", 0x2000000, 2)
    code, out, err = run(capsys, "diff", boot1, boot2, "--format", "json")
    assert code == 0, err
    (c,) = json.loads(out)["changes"]
    assert c["status"] == "grown" and c["base"] == {"bytes": 64, "objects": 1}


def test_diff_event_list_json_report(tmp_path, capsys):
    from tests.test_analyze_cli import EVENTS_B, PAGE_ALLOC, PAGE_FREE, page_fields

    def pages(events, name):
        return build(events, tmp_path / name, alloc=[PAGE_ALLOC], free=[PAGE_FREE],
                     alloc_event="kmem:mm_page_alloc", free_event="kmem:mm_page_free",
                     extra_alloc_fields=page_fields)

    base = pages(EVENTS_B, "a.parquet")
    new = pages(EVENTS_B + [Ev(950, 0, 300, 300, 0x2000, 0, "udp")], "b.parquet")
    code, want, err = run(capsys, "diff", base, new, "--format", "json")
    assert code == 0, err
    base_json = _json(capsys, base, tmp_path / "a.json", "-v")  # -v: unselected samples listed too
    code, out, err = run(capsys, "diff", base_json, new, "--format", "json")
    assert code == 0, err
    assert json.loads(out)["changes"] == json.loads(want)["changes"]
    assert [c["status"] for c in json.loads(out)["changes"]] == ["grown", "same", "same"]


def test_diff_recording_options_apply_to_recordings_only(tmp_path, capsys):
    # udp leaks at 10..12 ms (old at the end), pipe leaks late (990 ms: younger than 100 ms)
    evs = _allocs(3, "udp", 64, 0x1000) + _allocs(1, "pipe", 128, 0x9000, t0=990)
    rec = build(evs, tmp_path / "a.parquet")
    rep = _json(capsys, rec, tmp_path / "a.json")  # analysed without --than: both chains
    code, out, err = run(capsys, "diff", rep, rec, "--than", "100ms", "--format", "json")
    assert code == 0
    assert err == f"kmemleak-offline: note: --than applies to recordings only; {rep} compared as analysed\n"
    by_status = {c["status"]: c for c in json.loads(out)["changes"]}
    assert set(by_status) == {"gone", "same"} and by_status["gone"]["delta_bytes"] == -128


def test_diff_bad_json_side_is_one_line(tmp_path, capsys):
    rec = build(_allocs(1, "udp", 64, 0x1000), tmp_path / "a.parquet")
    good = json.loads(_json(capsys, rec, tmp_path / "a.json").read_text())
    no_offset = json.loads(json.dumps(good))
    del no_offset["reports"][0]["groups"][0]["stack"][0]["offset"]
    cases = {
        "trunc.json": ('{"format_version": 1, "mode": ', "not valid JSON"),
        "list.json": ("[1, 2]", "not a kmemleak-offline analyze JSON report"),
        "other.json": ('{"hello": "world"}', "not a kmemleak-offline analyze JSON report"),
        "v2.json": (json.dumps({**good, "format_version": 2}), "format_version 2"),
        "offset.json": (json.dumps(no_offset), "reports[0].groups[0].stack[0] has no 'offset'"),
        "groups.json": (json.dumps({**good, "reports": [{"groups": 3}]}), "reports[0].groups is not a list"),
    }
    code, diff_out, _ = run(capsys, "diff", rec, rec, "--format", "json")
    cases["diff.json"] = (diff_out, "output of diff")
    for name, (text, message) in cases.items():
        p = tmp_path / name
        p.write_text(text)
        for argv in ((p, rec), (rec, p)):
            code, out, err = run(capsys, "diff", *argv)
            assert code == 2 and out == "", name
            assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (name, err)
            assert err.startswith(f"kmemleak-offline: {p}: ") and message in err, (name, err)


def test_diff_json_trend_series_out_of_range_is_read_as_no_trend(tmp_path, capsys):
    """A hand-edited series (past int64, infinity) compares like a report without trends (fuzz
    cases 1772, 3340 of bench/fuzz.py --seed 1 were internal errors)."""
    rec = build(_allocs(3, "udp", 64, 0x1000), tmp_path / "a.parquet")
    good = json.loads(_json(capsys, rec, tmp_path / "a.json").read_text())
    group = good["reports"][0]["groups"][0]
    assert group["trend"]["series"]["bytes"], "the report carries a series to damage"
    no_trend = json.loads(json.dumps(good))
    del no_trend["reports"][0]["groups"][0]["trend"]
    (tmp_path / "none.json").write_text(json.dumps(no_trend))
    code, want, err = run(capsys, "diff", tmp_path / "none.json", rec, "--format", "json")
    assert code == 0, err
    for field, value in (("bytes", 2**70), ("t_ns", float("inf")), ("bytes", -(2**64))):
        bad = json.loads(json.dumps(good))
        bad["reports"][0]["groups"][0]["trend"]["series"][field][0] = value
        p = tmp_path / "bad.json"
        p.write_text(json.dumps(bad))
        code, out, err = run(capsys, "diff", p, rec, "--format", "json")
        assert (code, err) == (0, ""), (field, value, err)
        got, exp = json.loads(out), json.loads(want)
        assert got["changes"] == exp["changes"], (field, value)
