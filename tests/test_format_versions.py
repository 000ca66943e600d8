"""Every earlier format_version still reads the same: recordings made by earlier recorders (kept
in tests/data) give byte for byte the reports the recorder of their time's analyser printed
(tests/golden/v1_*, made by that analyser)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kmemleak_offline.format.recording import FORMAT_VERSION, open_recording

ROOT = Path(__file__).resolve().parents[1]
DATA = Path("tests/data")
GOLDEN = ROOT / "tests" / "golden"


def cli(*args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "kmemleak_offline.cli", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.mark.parametrize("name", ["pipe", "malloc"])
def test_v1_recordings_analyse_as_before(name: str) -> None:
    path = DATA / f"v1-{name}-leak.parquet"
    rec = open_recording(ROOT / path)
    assert rec.metadata["format_version"] == 1 < FORMAT_VERSION
    assert "offset" not in rec.metadata and rec.table(["chunk"], ["ring"]).num_rows == 0
    assert cli("analyze", str(path)) == (GOLDEN / f"v1_{name}_leak.txt").read_text()


def test_v1_recordings_diff_as_before() -> None:
    out = cli("diff", str(DATA / "v1-pipe-leak.parquet"), str(DATA / "v1-malloc-leak.parquet"),
              "--top", "5")
    assert out == (GOLDEN / "v1_diff.txt").read_text()
