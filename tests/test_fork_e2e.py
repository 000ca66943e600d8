"""A process made by fork() without exec, recorded live (`record --malloc -g -- CMD`, root).

tests/c/fork_leak.c: the child leaks 5 x 256 bytes from child_leak(), the parent 3 x 1000 bytes
from parent_leak(). The child runs on maps it inherited: the kernel reports no mmap of its own, so
its frames are named only through its parent's maps as of the fork (symbols/machine.py; a lookup
by the child's own pid, as before, printed `Unknown` for all three of its frames). The binary is
deleted before analysing: names come from the embedded symbol rows. No uprobe is left behind
(the fixture from test_malloc_e2e checks it).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kmemleak_offline.format.recording import open_recording
from tests.test_malloc_e2e import (  # noqa: F401 (no_probes_left: autouse fixture)
    C_DIR,
    cli,
    no_probes_left,
    our_probes,
    per_function_json,
    per_function_text,
    remove_stale_groups,
)

EXPECTED = {"child_leak": (5 * 256, 5), "parent_leak": (3 * 1000, 3),
            "parent_late_leak": (2 * 256, 2)}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("fork")
    exe = folder / "fork_leak"
    subprocess.run(["gcc", "-O1", "-fno-omit-frame-pointer", "-o", str(exe),
                    str(C_DIR / "fork_leak.c")], check=True)
    out = folder / "r.parquet"
    remove_stale_groups()
    try:
        res = cli(["record", "--malloc", "-g", "-o", str(out), "--", str(exe)])
        assert res.returncode == 0, res.stderr
        assert our_probes() == []
    finally:
        remove_stale_groups()
    exe.unlink()
    return out, str(exe)


def test_the_child_has_no_mappings_of_its_own(recorded) -> None:
    """What makes the case: a fork row parent -> child, and no mmap row of a file under the
    child's pid (the kernel reports only its `[uprobes]` page)."""
    out, _ = recorded
    rec = open_recording(out)
    forks = rec.table(["fork"], ["pid", "ppid"]).to_pydict()
    children = {c for c, p in zip(forks["pid"], forks["ppid"], strict=True) if c != p}
    assert len(children) == 1
    mm = rec.table(["mmap"], ["pid", "filename"]).to_pydict()
    file_pids = {p for p, f in zip(mm["pid"], mm["filename"], strict=True) if f.startswith("/")}
    assert file_pids and children.isdisjoint(file_pids)  # files: the parent's maps only
    sample_pids = set(np.unique(rec.table(["sample"], ["pid"]).column("pid").to_numpy()).tolist())
    assert children <= sample_pids  # and the child did allocate


def test_analyze_text_names_the_childs_and_the_parents_leaks(recorded) -> None:
    out, exe = recorded
    res = cli(["analyze", str(out), "--comm"])
    assert res.returncode == 0, res.stderr
    assert per_function_text(res.stdout, exe) == EXPECTED
    assert "    comms: fork_leak(1280/5)" in res.stdout.splitlines()  # the comm, inherited too
    groups = res.stdout.split("Leak of ")
    child = [g for g in groups if "child_leak+" in g]
    assert len(child) == 1 and " Unknown" not in child[0]


def test_analyze_json_names_the_childs_and_the_parents_leaks(recorded) -> None:
    out, exe = recorded
    res = cli(["analyze", str(out), "--format", "json"])
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert per_function_json(doc, exe) == EXPECTED
    pids = {g["pid"] for g in doc["reports"][-1]["groups"]
            if any(f["symbol"] in EXPECTED for f in g["stack"])}
    assert len(pids) == 2  # the child's group is named under the child's own pid


def test_process_keys_never_match_across_processes() -> None:
    """Both encodings (process index in the high bits; dense ids for 64-bit pointers) keep
    (pid, ptr) pairs apart and equal pairs equal."""
    import numpy as np

    from kmemleak_offline.analysis import process_keys

    rng = np.random.default_rng(3)
    for top in (1 << 47, 1 << 64):
        pid = rng.integers(100, 110, 5000)
        ptr = rng.integers(0, 50, 5000).astype(np.uint64) * np.uint64(16) + np.uint64(top - 4096)
        key = process_keys(pid, ptr)
        pairs = {(int(a), int(b)) for a, b in zip(pid, ptr)}
        assert len(set(key.tolist())) == len(pairs)
        for k in set(key.tolist()):
            sel = key == k
            assert len({(int(a), int(b)) for a, b in zip(pid[sel], ptr[sel])}) == 1
    one = np.full(10, 7)
    assert (process_keys(one, np.arange(10, dtype=np.uint64)) == np.arange(10)).all()
