"""Shared fixtures. ../shared/data is optional: tests that need it skip when it is absent."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("VOXGATE_SHARED_DATA", REPO.parent / "shared" / "data"))
# A benchmark imports its sibling helpers (`from _stats import ...`) as it does when run as a
# script, from its own folder: tests that import a benchmark module need that folder too.
sys.path.insert(0, str(REPO / "benchmarks"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real speech); skips the test on a machine without it."""
    if not (SHARED_DATA / "fsdd" / "manifest.csv").exists():
        pytest.skip("../shared/data is not present (evaluation audio lives beside the checkout)")
    return SHARED_DATA


@pytest.fixture
def no_secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets come only from the files a test names: no $VOXGATE_* variable and no systemd
    credentials folder leak in from the environment the tests run in."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    for var in list(os.environ):
        if var.startswith("VOXGATE_") and var != "VOXGATE_SHARED_DATA":
            monkeypatch.delenv(var)
