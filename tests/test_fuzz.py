"""Property-based fuzzing, briefly (tests/fuzzcases.py; `bench/fuzz.py --runs N` runs it at length).

Each family draws a handful of cases from hypothesis (derandomised: the same cases every run, so
CI is not flaky) and runs them through the real CLI: damaged recordings and parts folders must be
refused (exit 2) or warned about, never change the figures silently; foreign values, metadata,
JSON reports, specs, expressions and options must end in exit 0 or 2, never an internal error or
a traceback, within a time bound (an alarm, generous: a hang is minutes, not seconds).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzzcases import FAMILIES, STRICT, fresh_dir, is_failure, make_bases, run_case

EXAMPLES = 25
TIME_BOUND_S = 120


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return make_bases(tmp_path_factory.mktemp("fuzz") / "bases")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-work")


@pytest.mark.parametrize("family", FAMILIES)
def test_fuzz_family(bases, work, family) -> None:
    seen: list[str] = []

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(rnd=st.randoms(use_true_random=False))
    def one(rnd) -> None:
        case, res, outcome = run_case(bases, family, rnd, fresh_dir(work / family), TIME_BOUND_S)
        seen.append(outcome)
        assert not is_failure(outcome), (
            f"{family}: {outcome}\n  damage: {case.what}\n  argv: {[a[:200] for a in case.argv]}\n"
            f"  stderr: {res.err[-1500:]}")

    one()
    assert len(seen) >= EXAMPLES
    if family in STRICT:  # the damage must have been seen: refused or warned at least sometimes
        assert any(o in ("refused", "warned") for o in seen), seen
