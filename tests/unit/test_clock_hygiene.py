"""Clock steps while the door runs, beyond the lockout book itself (test_lockout_clock.py):
an attempt that spans a step, a suspend, and signed commands after the clock was set back.
Every clock is injected; the machine's clock is never touched."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from voxgate.config import VoxgateConfig
from voxgate.config.service import LockoutConfig
from voxgate.lockout import LockoutBook
from voxgate.service.attempt import Attempt, conclude
from voxgate.service.stages import Stages
from voxgate.vad import Utterance

LOCKOUT = LockoutConfig(max_failures=5, device_max_failures=8, initial_s=30, max_s=600)
T = 1_790_000_000.0
HOUR = 3600.0


class Clocks:
    """A wall clock that can be stepped and a monotonic clock that only runs."""

    def __init__(self, wall: float) -> None:
        self.w = wall
        self.m = 1000.0

    def wall(self) -> float:
        return self.w

    def mono(self) -> float:
        return self.m

    def run(self, seconds: float) -> None:
        self.w += seconds
        self.m += seconds

    def step(self, seconds: float) -> None:
        self.w += seconds


@dataclass(frozen=True)
class Match:
    user: str | None
    accepted: bool
    score: float = 0.9
    threshold: float = 0.5
    quality_ok: bool = True
    reasons: tuple[str, ...] = ()


class SlowEmbedding:
    """Finishing the embedding takes 3 s, and the clock is stepped meanwhile."""

    def __init__(self, clk: Clocks, step_s: float) -> None:
        self.clk, self.step_s = clk, step_s

    def finish(self) -> np.ndarray:
        self.clk.run(3)
        self.clk.step(self.step_s)
        return np.ones(4, dtype=np.float32)


class Scorer:
    def __init__(self, accepted: bool) -> None:
        self.accepted = accepted

    def verify(self, emb: object, user: str, quality: object = None, need: object = None) -> Match:
        return Match(user if self.accepted else None, self.accepted)

    def identify(self, emb: object, quality: object = None, need: object = None) -> Match:
        raise AssertionError("the attempts here claim a user")


def _attempt(b: LockoutBook, clk: Clocks, step_s: float, accepted: bool) -> object:
    stages = Stages(None, None, Scorer(accepted), None, None)  # type: ignore[arg-type]
    a = Attempt(claimed_user="alice", emb_stream=SlowEmbedding(clk, step_s))
    pcm = np.zeros(16000, dtype=np.int16)
    utt = Utterance(pcm, 0.0, 1.0, 1.0)
    cfg = VoxgateConfig.model_validate({"challenge": {"mode": "off"}})
    return conclude(a, utt, stages, b, cfg, clk.wall(), clk.wall)


def test_a_clock_set_back_during_an_attempt_does_not_let_it_through_a_running_lock(
    tmp_path: Path,
) -> None:
    clk = Clocks(T)
    b = LockoutBook(tmp_path / "lockout.db", LOCKOUT, wall=clk.wall, monotonic=clk.mono)
    for _ in range(5):
        b.record("alice", ok=False, now=clk.wall())
    clk.run(5)  # 25 s of the lock left; the voice matches (a recording, a lucky guess)
    done = _attempt(b, clk, -2 * HOUR, accepted=True)
    verdict = done.result.verdict  # type: ignore[attr-defined]
    # The lock was read with the time the attempt ended, before the step, against end
    # times the book had just moved back by 2 h: it looked over, and the door opened.
    assert (verdict.outcome, verdict.reasons) == ("denied", ("locked_out",))
    assert b.state("alice").remaining_s(clk.wall()) == pytest.approx(22)


def test_ntp_stepping_forward_during_an_attempt_does_not_end_the_lock_it_starts(
    tmp_path: Path,
) -> None:
    clk = Clocks(T - 3 * HOUR)  # fake-hwclock's time, NTP not synced yet
    b = LockoutBook(tmp_path / "lockout.db", LOCKOUT, wall=clk.wall, monotonic=clk.mono)
    for _ in range(4):
        b.record("alice", ok=False, now=clk.wall())
    done = _attempt(b, clk, 3 * HOUR, accepted=False)  # the fifth failure, NTP syncs
    assert done.result.verdict.outcome == "denied"  # type: ignore[attr-defined]
    # The lock was set from the time before the step: in the new clock's terms it had
    # ended 3 h ago, so the next guess came at once.
    [lock] = done.record.new_locks  # type: ignore[attr-defined]
    assert lock.locked_until == pytest.approx(clk.wall() + 30)
    st = b.state("alice")
    assert st.locked and st.remaining_s(clk.wall()) == pytest.approx(30)
