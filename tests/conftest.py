"""Shared test policy: what happens to Lava tests when Lava is missing.

Tests that run Lava's simulator carry ``@pytest.mark.lava``. Without Lava they are skipped, with
the import error as the reason, so that ``pytest -m "not lava"`` and a checkout without Lava pass.
Where the project's environment is installed (``make test`` and ``.ci/run`` set
``STFT_NEURO_REQUIRE_LAVA=1``), a Lava that does not import is a *failure* of every Lava test: a
broken install must not turn the equivalence ladder into silent skips.
"""
from __future__ import annotations

import os

import pytest

REQUIRE_LAVA = os.environ.get("STFT_NEURO_REQUIRE_LAVA") == "1"


def _lava_problem() -> str | None:
    from stft_neuro.sim.lava_runtime import LavaUnavailableError, load
    try:
        load()
    except LavaUnavailableError as exc:
        return str(exc)
    return None


def pytest_configure(config):
    """Import Lava (when it imports) before any test runs: Lava sets multiprocessing's start method
    at import and fails ("context has already been set") if something fixed it first, e.g. a
    training run's DataLoader or NeuroBench's tqdm lock in an earlier test of the same session."""
    from stft_neuro.sim.lava_runtime import lava_available
    lava_available()  # False: the Lava tests are then skipped or failed by _lava_policy


@pytest.fixture(autouse=True)
def _lava_policy(request):
    if request.node.get_closest_marker("lava") is None:
        return
    problem = _lava_problem()
    if problem is None:
        return
    if REQUIRE_LAVA:
        pytest.fail(f"Lava is required here (STFT_NEURO_REQUIRE_LAVA=1) but unusable: {problem}",
                    pytrace=False)
    pytest.skip(f"Lava not importable: {problem}")
