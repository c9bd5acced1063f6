"""Lockouts and clock steps. A Raspberry Pi has no RTC: it boots with fake-hwclock's saved
time and NTP steps it forward, sometimes by hours; admins step clocks back. The lockout kept
wall-clock end times only: a step back of 2 h turned a 30 s lock into 2 h, NTP stepping
forward ended a running lock at once, and a lock written with a clock a year ahead lasted a
year. Time within a process is now the monotonic clock, and a lock read back from the file
never has more left than its own period. The clocks are injected; the machine's clock is
never touched."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from tests.clock_helpers import HOUR, Clocks, T
from voxgate.config.service import LockoutConfig
from voxgate.lockout import LockoutBook

CFG = LockoutConfig(max_failures=5, device_max_failures=8, initial_s=30, max_s=600)


def book(path: Path, clk: Clocks) -> LockoutBook:
    return LockoutBook(path, CFG, wall=clk.wall, monotonic=clk.mono)


def lock_alice(b: LockoutBook, clk: Clocks) -> None:
    for _ in range(5):
        b.record("alice", ok=False, now=clk.wall())
    assert b.state("alice", clk.wall()).remaining_s(clk.wall()) == 30


def test_a_clock_stepped_back_does_not_lengthen_a_running_lock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clk = Clocks(T)
    b = book(tmp_path / "lockout.db", clk)
    lock_alice(b, clk)
    clk.run(5)
    clk.step(-2 * HOUR)  # an admin sets the clock back
    with caplog.at_level(logging.WARNING, logger="voxgate.lockout"):
        st = b.state("alice", clk.wall())
    assert st.locked and st.remaining_s(clk.wall()) == pytest.approx(25)  # was 7225 s
    assert "wall clock stepped -7200 s" in caplog.text
    # What MQTT shows (until) is in the new clock's terms, and the file agrees after a restart.
    [entry] = b.locked(clk.wall())
    assert entry.locked_until == pytest.approx(clk.wall() + 25)
    clk.run(24.9)
    assert b.state("alice", clk.wall()).locked
    clk.run(0.1)
    assert not b.state("alice", clk.wall()).locked
    # The lock that has passed does not come back when the clock is set right again.
    clk.step(2 * HOUR)
    assert not b.state("alice", clk.wall()).locked and not b.locked(clk.wall())


def test_ntp_stepping_forward_does_not_end_a_running_lock(tmp_path: Path) -> None:
    clk = Clocks(T - 3 * HOUR)  # booted with fake-hwclock's time, 3 h behind
    b = book(tmp_path / "lockout.db", clk)
    lock_alice(b, clk)
    clk.run(2)
    clk.step(3 * HOUR)  # NTP syncs
    st = b.state("alice", clk.wall())
    assert st.locked and st.remaining_s(clk.wall()) == pytest.approx(28)  # it had ended
    # A restart right after still finds the lock, with the time it has left.
    b.close()
    again = book(tmp_path / "lockout.db", clk)
    assert again.state("alice", clk.wall()).remaining_s(clk.wall()) == pytest.approx(28)
    clk.run(28)
    assert not again.state("alice", clk.wall()).locked


def test_a_restart_with_the_clock_behind_keeps_a_lock_to_its_own_period(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clk = Clocks(T)
    b = book(tmp_path / "lockout.db", clk)
    lock_alice(b, clk)
    b.close()
    # A power cut; the Pi boots with fake-hwclock's time, saved an hour before.
    clk.run(10)
    clk.step(-HOUR)
    with caplog.at_level(logging.WARNING, logger="voxgate.lockout"):
        again = book(tmp_path / "lockout.db", clk)
    st = again.state("alice", clk.wall())
    assert st.locked and st.remaining_s(clk.wall()) == pytest.approx(30)  # was 3590 s
    assert "user:alice" in caplog.text and "longer than its 30 s period" in caplog.text
    clk.run(30)
    assert not again.state("alice", clk.wall()).locked
    # NTP then sets the clock right: the lock does not come back.
    clk.step(HOUR)
    assert not again.state("alice", clk.wall()).locked


def test_a_lock_written_by_a_clock_far_ahead_is_not_permanent(tmp_path: Path) -> None:
    path = tmp_path / "lockout.db"
    clk = Clocks(T)
    book(path, clk).close()
    db = sqlite3.connect(path)
    year = 365 * 24 * HOUR
    # carol: 5 failures (a 30 s lock); the door: 12 failures (8 allowed: 30 * 2**4 = 480 s).
    db.execute(
        "INSERT INTO lockout (key, failures, locked_until) VALUES ('user:carol', 5, ?)",
        (T + year + 30,),
    )
    db.execute(
        "INSERT INTO lockout (key, failures, locked_until) VALUES ('device', 12, ?)",
        (T + year + 480,),
    )
    db.commit()
    db.close()
    b = book(path, clk)
    assert b.state("carol", clk.wall()).remaining_s(clk.wall()) == 480  # the door's, max
    assert b.entry("carol").locked_until == T + 30  # type: ignore[union-attr]
    clk.run(480)
    assert not b.state("carol", clk.wall()).locked
    # The bound was written back: a later restart does not see the year again.
    b.close()
    row = sqlite3.connect(path).execute("SELECT locked_until FROM lockout WHERE key='device'")
    assert row.fetchone()[0] == T + 480


def test_an_ordinary_restart_keeps_the_time_left(tmp_path: Path) -> None:
    clk = Clocks(T)
    b = book(tmp_path / "lockout.db", clk)
    lock_alice(b, clk)
    b.close()
    clk.run(12)
    again = book(tmp_path / "lockout.db", clk)
    assert again.state("alice", clk.wall()).remaining_s(clk.wall()) == pytest.approx(18)
    assert again.state("alice", clk.wall()).user_failures == 5


WINDOW = LockoutConfig(device_window_failures=3, device_window_s=HOUR, initial_s=30)


def test_the_doors_failures_count_their_real_time_across_clock_steps(tmp_path: Path) -> None:
    """The door's failures within device_window_s are wall-clock times: NTP stepping the
    clock forward 3 h must not age them out at once (free guesses right after a boot), and
    a clock set back must not keep them counting for hours more."""
    clk = Clocks(T - 3 * HOUR)  # fake-hwclock's time
    b = LockoutBook(tmp_path / "lockout.db", WINDOW, wall=clk.wall, monotonic=clk.mono)
    b.record(None, ok=False, now=clk.wall())
    b.record("nobody", ok=False, now=clk.wall())
    clk.run(60)
    clk.step(3 * HOUR)  # NTP syncs
    assert b.state(None, clk.wall()).device_window_failures == 2
    assert b.record(None, ok=False, now=clk.wall()).state.locked
    b.close()
    # A restart keeps them; a clock set back since (times in its future) counts them from now.
    clk.run(40)
    clk.step(-2 * HOUR)
    again = LockoutBook(tmp_path / "lockout.db", WINDOW, wall=clk.wall, monotonic=clk.mono)
    assert again.state(None, clk.wall()).device_window_failures == 3
    clk.run(HOUR - 1)
    assert again.state(None, clk.wall()).device_window_failures == 3
    clk.run(1)
    assert again.state(None, clk.wall()).device_window_failures == 0


def test_a_restart_keeps_a_door_lock_set_by_its_window_count(tmp_path: Path) -> None:
    """A door lock set by its failures within device_window_s was cut at a restart once
    the oldest of those failures had aged out while it ran: the bound on a lock read back
    took the window count of the restart's time, not the one the lock was set with. Seen:
    a 480 s lock with 232 s left cut to 30 s, so a crash loop shortened the back-off."""
    cfg = LockoutConfig(
        device_max_failures=100,
        device_window_failures=3,
        device_window_s=600,
        initial_s=30,
        max_s=3600,
    )
    clk = Clocks(T)
    b = LockoutBook(tmp_path / "lockout.db", cfg, wall=clk.wall, monotonic=clk.mono)
    for _ in range(3):  # the third: the first lock (30 s)
        st = b.record(None, ok=False, now=clk.wall()).state
    for want in (60, 120, 240, 480):  # each failure after a lock passes doubles it
        clk.run(st.remaining_s(clk.wall()))
        st = b.record(None, ok=False, now=clk.wall()).state
        assert st.remaining_s(clk.wall()) == want
    b.close()
    clk.run(248)  # the failures of the first 90 s are no longer within the window
    again = LockoutBook(tmp_path / "lockout.db", cfg, wall=clk.wall, monotonic=clk.mono)
    st = again.state(None, clk.wall())
    assert st.locked and st.remaining_s(clk.wall()) == 232  # was cut to 30
