"""format.hugepages: our processes turn numpy's huge-page advice off; the user's setting wins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# numpy's switch returns its previous value: what the process had when the probe ran
PROBE = ("from numpy._core.multiarray import _set_madvise_hugepage as s; "
         "print(int(s(True)))")


def _run(code: str, env_value: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    if env_value is not None:
        env["NUMPY_MADVISE_HUGEPAGE"] = env_value
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True)
    return out.stdout.split()[-1]


def test_numpy_default_is_on_here() -> None:
    """The premise: on this kernel numpy advises huge pages unless told otherwise."""
    assert _run(PROBE) == "1"


def test_off_when_numpy_is_already_imported() -> None:
    assert _run("import numpy; from kmemleak_offline.format.hugepages import small_pages; "
                "small_pages(); " + PROBE) == "0"


def test_off_when_numpy_comes_later() -> None:
    assert _run("from kmemleak_offline.format.hugepages import small_pages; small_pages(); "
                "import numpy; " + PROBE) == "0"


def test_the_users_setting_wins() -> None:
    assert _run("from kmemleak_offline.format.hugepages import small_pages; small_pages(); "
                "import numpy; " + PROBE, env_value="1") == "1"


def test_analysis_commands_run_without_it() -> None:
    sample = next(ROOT.glob("samples/*.parquet"))
    assert _run("import sys; from kmemleak_offline.cli import main; "
                f"main(['info', {str(sample)!r}]); " + PROBE) == "0"
