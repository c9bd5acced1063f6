"""Clock steps while the door runs, beyond the lockout book itself (test_lockout_clock.py):
an attempt that spans a step, a suspend, and signed commands after the clock was set back.
Every clock is injected; the machine's clock is never touched."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.clock_helpers import HOUR, Clocks, T
from voxgate.config import VoxgateConfig
from voxgate.config.service import LockoutConfig
from voxgate.lockout import LockoutBook
from voxgate.mqtt.commands import CommandError, CommandGate, make_command
from voxgate.service.attempt import Attempt, conclude
from voxgate.service.stages import Stages
from voxgate.vad import Utterance

LOCKOUT = LockoutConfig(max_failures=5, device_max_failures=8, initial_s=30, max_s=600)


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


class Machine:
    """The clocks of a machine that can be suspended: the wall clock and CLOCK_BOOTTIME run
    through a suspend, CLOCK_MONOTONIC does not."""

    def __init__(self, wall: float) -> None:
        self.wall, self.mono, self.boot = wall, 500.0, 700.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def clock_gettime(self, clk: int) -> float:
        return self.boot if clk == time.CLOCK_BOOTTIME else self.mono

    def run(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds
        self.boot += seconds

    def suspend(self, seconds: float) -> None:
        self.wall += seconds
        self.boot += seconds


@pytest.mark.skipif(not hasattr(time, "CLOCK_BOOTTIME"), reason="CLOCK_BOOTTIME is Linux's")
def test_a_suspend_does_not_lengthen_a_running_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    m = Machine(T)
    monkeypatch.setattr(time, "monotonic", m.monotonic)
    monkeypatch.setattr(time, "clock_gettime", m.clock_gettime)
    b = LockoutBook(tmp_path / "lockout.db", LOCKOUT, wall=m.time)  # the daemon's clocks
    for _ in range(5):
        b.record("alice", ok=False)
    m.run(5)
    m.suspend(20)  # the Jetson sleeps 20 s of the lock's 30
    with caplog.at_level(logging.WARNING, logger="voxgate.lockout"):
        st = b.state("alice")
    # The monotonic clock had not moved while asleep: the wake-up was taken for a step of
    # +20 s, and the lock moved 20 s later (25 s left instead of 5).
    assert st.locked and st.remaining_s(m.time()) == pytest.approx(5)
    assert "stepped" not in caplog.text
    m.run(5)
    assert not b.state("alice").locked
    # A real step is still followed (bob's failures also lock the door: 10 > 8, 120 s).
    for _ in range(5):
        b.record("bob", ok=False)
    m.wall -= HOUR
    with caplog.at_level(logging.WARNING, logger="voxgate.lockout"):
        assert b.state("bob").remaining_s(m.time()) == pytest.approx(120)
    assert "stepped -3600 s" in caplog.text


CKEY = b"command-key-for-tests-0123456789"


def _refusal(gate: CommandGate, issued: float, now: float) -> str | None:
    payload = make_command(CKEY, "front-door", "reload", now=issued)
    try:
        gate.check("reload", payload, now)
    except CommandError as exc:
        return exc.code
    return None


def test_the_command_gate_start_follows_clock_steps() -> None:
    boot = [100.0]  # CLOCK_BOOTTIME
    # Started with the clock an hour ahead; 10 s later NTP has set it right (now: T + 10).
    gate = CommandGate("front-door", CKEY, started_at=T + HOUR, elapsed=lambda: boot[0])
    boot[0] += 10
    assert _refusal(gate, T + 9, T + 10) is None  # was 'replayed', for the next hour
    assert _refusal(gate, T - 1, T + 10) == "replayed"  # issued before the start
    # Started with the clock an hour behind, NTP steps it forward: a command signed before
    # the start (captured, sent again after the restart) is still refused.
    gate = CommandGate("front-door", CKEY, started_at=T - HOUR, elapsed=lambda: boot[0])
    boot[0] += 5
    assert _refusal(gate, T - 2, T + 5) == "replayed"  # was obeyed
    assert _refusal(gate, T + 4, T + 5) is None


def test_the_unit_starts_after_the_clock_is_set_without_pulling_in_a_wait() -> None:
    unit = Path(__file__).resolve().parents[2] / "systemd" / "voxgate.service"
    deps: dict[str, set[str]] = {}
    section = ""
    for line in unit.read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Unit" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            deps.setdefault(key, set()).update(value.split())
    # With systemd-time-wait-sync enabled (the admin's choice), the door waited for nothing
    # and started with fake-hwclock's time: its decisions were dated hours off.
    assert "time-sync.target" in deps["After"]
    # Only the services that sync the clock pull it in: pulled in by a consumer it is
    # reached at once, whether or not the clock has been synchronized.
    pulled = set().union(*(deps.get(k, set()) for k in ("Wants", "Requires", "BindsTo")))
    assert "time-sync.target" not in pulled
