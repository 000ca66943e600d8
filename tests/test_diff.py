"""`diff`: two recordings, leaks matched by symbolised call chain."""

from __future__ import annotations

import json

from tests.test_analyze_cli import Ev, build, run, stack_lines


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
