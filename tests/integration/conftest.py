"""Integration fixtures: a real mosquitto broker per test (see broker.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from broker import (
    SKIP_REASON,
    STANDARD_USERS,
    Broker,
    have_mosquitto,
    standard_acl,
)


@pytest.fixture(scope="session")
def mosquitto_available() -> None:
    """Skips the test (with the reason) when the mosquitto binary is missing."""
    if not have_mosquitto():
        pytest.skip(SKIP_REASON)


@pytest.fixture
def make_broker(tmp_path: Path, mosquitto_available: None) -> Iterator[Callable[..., Broker]]:
    """Factory: make_broker(tls=..., users=..., acl=..., start=True) -> a running Broker.

    Every broker made is killed at the end of the test.
    """
    made: list[Broker] = []

    def make(*, start: bool = True, **kwargs: Any) -> Broker:
        b = Broker(tmp_path / f"broker{len(made)}", **kwargs)
        made.append(b)
        if start:
            b.start()
        return b

    yield make
    for b in made:
        b.kill()


@pytest.fixture
def broker(make_broker: Callable[..., Broker]) -> Broker:
    """A running TLS broker with STANDARD_USERS and standard_acl() (device/lock/admin/intruder)."""
    return make_broker(tls=True, users=STANDARD_USERS, acl=standard_acl())


@pytest.fixture
def plain_broker(make_broker: Callable[..., Broker]) -> Broker:
    """A running broker without TLS, anonymous access allowed (for quick wiring tests)."""
    return make_broker(tls=False)
