"""Exact text output (perf-prof's format, byte for byte) against golden files in tests/golden.

The recordings are the hand-worked scenarios of test_analyze_cli.py, whose tests derive the same
numbers independently; the golden files pin the bytes (spacing, order, blank lines, <TS>).
`--utc` plus the builder's fixed clock anchor make the timestamps deterministic.
Regenerate after an intended format change with KMEMLEAK_UPDATE_GOLDEN=1, then review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("KMEMLEAK_UPDATE_GOLDEN") == "1"


def check(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden file {path} (run with KMEMLEAK_UPDATE_GOLDEN=1 and review it)"
    assert text == path.read_text()


def recording(kind: str, tmp_path: Path) -> Path:
    if kind == "a":
        return build(EVENTS_A, tmp_path / "a.parquet", comms=COMMS_A)
    if kind == "b":
        return build(EVENTS_B, tmp_path / "b.parquet", alloc=[PAGE_ALLOC], free=[PAGE_FREE],
                     alloc_event="kmem:mm_page_alloc", free_event="kmem:mm_page_free",
                     extra_alloc_fields=page_fields, comms=[(0, 300, 300, "sshd", False)])
    return build(EVENTS_C, tmp_path / "c.parquet", lost=LOST_C, comms=[(0, 100, 100, "python3", False)])


@pytest.mark.parametrize(("name", "kind", "args"), [
    ("leaked_bytes_comm", "a", ["--comm"]),
    ("leaked_bytes_verbose", "a", ["-v"]),
    ("leaked_bytes_than", "a", ["--than", "500ms", "--comm"]),
    ("event_list", "b", []),
    ("event_list_than", "b", ["--than", "700ms"]),
    ("event_list_verbose_than", "b", ["-v", "--than", "700ms"]),
    ("lost_early", "c", []),
    ("lost_early_than", "c", ["--than", "120ms"]),
    ("lost_early_vv", "c", ["-vv"]),  # the triggering sample prints before the early report
    ("interval", "a", ["-i", "250"]),
    ("size_expr", "b", ["--alloc", "kmem:mm_page_alloc//ptr=pfn/size=4096<<order/stack/",
                        "--free", PAGE_FREE, "--comm"]),
])
def test_text_report_golden(tmp_path, capsys, name, kind, args):
    code, out, err = run(capsys, "analyze", recording(kind, tmp_path), "--utc", *args)
    assert code == 0, err
    check(f"{name}.txt", out)
    if err or (GOLDEN / f"{name}.stderr").exists():
        check(f"{name}.stderr", err)


@pytest.mark.parametrize(("name", "kind", "args"), [
    ("flame_leaked_bytes", "a", []),
    ("flame_event_list", "b", []),
    ("flame_lost", "c", []),
])
def test_flame_graph_golden(tmp_path, capsys, name, kind, args):
    code, out, err = run(capsys, "analyze", recording(kind, tmp_path), "--utc", *args,
                         "--flame-graph", tmp_path / "fg")
    assert code == 0, err
    check(f"{name}.folded", (tmp_path / "fg.folded").read_text())
    tail = f"  flamegraph.pl {tmp_path / 'fg.folded'} > {tmp_path / 'fg.svg'}\n\n"
    assert out.endswith(tail)


@pytest.mark.parametrize("kind", ["a", "b", "c"])
def test_folded_format_is_the_flame_graph_file(tmp_path, capsys, kind):
    """`--format folded` (the reporter registry) writes what --flame-graph writes to its file."""
    rec = recording(kind, tmp_path)
    code, out, err = run(capsys, "analyze", rec, "--format", "folded")
    assert code == 0, err
    code, _, err = run(capsys, "analyze", rec, "--flame-graph", tmp_path / "fg")
    assert code == 0, err
    assert out == (tmp_path / "fg.folded").read_text() != ""


def test_every_registered_format_renders(tmp_path, capsys):
    from kmemleak_offline.reports import FORMATS, is_binary

    rec = recording("a", tmp_path)
    for name in FORMATS:
        if is_binary(name):  # bytes: to a file (stdout here is the test's text capture)
            code, out, err = run(capsys, "analyze", rec, "--format", name, "-o", tmp_path / name)
            assert code == 0 and out == "" and (tmp_path / name).stat().st_size, (name, err)
            continue
        code, out, err = run(capsys, "analyze", rec, "--format", name)
        assert code == 0 and out, (name, err)


def test_malloc_json_events_carry_their_sizes(capsys):
    """--malloc recordings have no size= expression, but paired calls know their sizes: JSON
    events give them (they were null), and they add up to the groups' bytes."""
    import json

    sample = Path(__file__).resolve().parents[1] / "samples" / "malloc-leak.parquet"
    code, out, err = run(capsys, "analyze", sample, "--format", "json", "-v")
    assert code == 0, err
    final = json.loads(out)["reports"][-1]
    sizes = [e["size"] for e in final["events"] if e["selected"]]
    assert sizes and all(isinstance(s, int) and s > 0 for s in sizes)
    assert sum(sizes) == sum(g["bytes"] for g in final["groups"])
