"""logs.LogLimit: the rate limit of refusal lines, and "log once while a failure lasts"."""

from __future__ import annotations

import logging

import pytest

from voxgate.logs import LogLimit


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_burst_then_one_notice_then_the_count_after_the_window(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    limit = LogLimit(3, 60.0, what="refusals", logger=logging.getLogger("t"), clock=clock)
    with caplog.at_level(logging.WARNING, logger="t"):
        assert [limit.allow() for _ in range(10)] == [True] * 3 + [False] * 7
        notices = [r.getMessage() for r in caplog.records]
        # It said "counted in one line once that time has passed": the on-call waited for
        # a line that comes only with the next refusal, however long after.
        assert notices == [
            "refusals: more than 3 in 60 s; the next ones are held back, and their count is "
            "written with the first one after that time"
        ]
        clock.t += 59
        assert not limit.allow()  # still the same window: 8 held back
        clock.t += 2
        assert limit.allow()  # a new window, which starts with the count of the last one
        assert caplog.records[-1].getMessage() == "refusals: 8 more held back in the last 61 s"
        assert limit.allow() and limit.allow() and not limit.allow()
        clock.t += 60
        caplog.clear()
        assert limit.allow()
    assert [r.getMessage() for r in caplog.records] == [
        "refusals: 1 more held back in the last 60 s"
    ]


def test_a_quiet_window_writes_no_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limit = LogLimit(2, 60.0, what="x", logger=logging.getLogger("t"), clock=clock)
    with caplog.at_level(logging.DEBUG, logger="t"):
        assert limit.allow()
        clock.t += 600
        assert limit.allow() and limit.allow()
    assert not caplog.records


def test_once_while_failing_and_the_recovery() -> None:
    limit = LogLimit()
    assert not limit.active and not limit.reset()  # nothing failed: no "back" line
    assert limit.allow() and limit.active
    assert not any(limit.allow() for _ in range(100))  # no window: silent until reset
    assert limit.reset() and not limit.active  # the recovery line is due, once
    assert limit.allow()  # the next failure is logged again


def test_a_burst_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        LogLimit(0)
