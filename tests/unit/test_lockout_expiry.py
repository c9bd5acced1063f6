"""Users' lockout entries expire. Every failed claim left a `user:<name>` row in lockout.db for
ever: anyone can claim any name at the door (one not enrolled too), so the file kept
attacker-chosen strings, and a person's name after nothing else held it. An entry now goes
once no lock is in force and its last failure is older than max(max_s, device_window_s): at a
start, on each record() and on expire() (the daemon's every second), a few at a time."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.clock_helpers import HOUR, Clocks, T
from voxgate.config.service import LockoutConfig
from voxgate.lockout import EXPIRE_BATCH, LockoutBook

CFG = LockoutConfig(max_failures=5, initial_s=30, max_s=600, device_window_s=3600)
QUIET = 3600.0  # max(max_s, device_window_s)


def book(path: Path, clk: Clocks) -> LockoutBook:
    return LockoutBook(path, CFG, wall=clk.wall, monotonic=clk.mono)


def rows(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return sorted(r[0] for r in db.execute("SELECT key FROM lockout"))
    finally:
        db.close()


def test_a_claimed_name_is_dropped_at_a_start_once_it_can_no_longer_matter(
    tmp_path: Path,
) -> None:
    path = tmp_path / "lockout.db"
    clk = Clocks(T)
    b = book(path, clk)
    b.record("Robert'); DROP TABLE", ok=False, now=clk.wall())
    b.record("alice", ok=False, now=clk.wall())
    b.close()
    assert rows(path) == ["device", "user:alice", "user:robert'); drop table"]
    clk.run(QUIET - 10)
    b = book(path, clk)  # not yet: a count below the limit still adds up
    assert b.users() == ["alice", "robert'); drop table"]
    b.close()
    clk.run(11)
    b = book(path, clk)
    assert b.users() == []
    assert rows(path) == ["device"]
    for f in (path, path.with_name("lockout.db-wal")):  # zeroed, not left in a page
        assert not f.exists() or b"drop table" not in f.read_bytes()
    b.close()


def test_counts_still_add_up_within_the_quiet_time_and_locks_are_kept(tmp_path: Path) -> None:
    clk = Clocks(T)
    b = book(tmp_path / "lockout.db", clk)
    for _ in range(4):
        b.record("alice", ok=False, now=clk.wall())
        clk.run(QUIET - 60)
        b.expire(clk.wall())
    st = b.record("alice", ok=False, now=clk.wall()).state
    assert st.locked and st.user_failures == 5
    # The lock ends, the count stays (the next failure doubles) until the quiet time passes.
    clk.run(600)
    b.expire(clk.wall())
    assert b.record("alice", ok=False, now=clk.wall()).state.until == clk.wall() + 60
    clk.run(QUIET + 1)
    assert b.expire(clk.wall()) == 1
    assert b.entry("alice") is None
    assert b.record("alice", ok=False, now=clk.wall()).state.user_failures == 1


def test_expiry_does_bounded_work_per_call_and_reaches_every_entry(tmp_path: Path) -> None:
    path = tmp_path / "lockout.db"
    clk = Clocks(T)
    b = book(path, clk)
    for i in range(3 * EXPIRE_BATCH + 5):
        b.record(f"name{i}", ok=False, now=clk.wall())
    clk.run(10)
    b.record("keep", ok=False, now=clk.wall())
    clk.run(QUIET - 9)
    # A round looks at the entries there when it began: one more call for those since.
    dropped = [b.expire(clk.wall()) for _ in range(6)]
    assert all(n <= EXPIRE_BATCH for n in dropped) and dropped[-1] == 0
    assert sum(dropped) == 3 * EXPIRE_BATCH + 5
    assert b.users() == ["keep"] and rows(path) == ["device", "user:keep"]


def test_recording_attempts_expires_old_entries(tmp_path: Path) -> None:
    path = tmp_path / "lockout.db"
    clk = Clocks(T)
    b = book(path, clk)
    b.record("mallory", ok=False, now=clk.wall())
    clk.run(QUIET + 1)
    b.record("bob", ok=True, now=clk.wall())
    assert b.entry("mallory") is None and rows(path) == []


def test_a_clock_step_forward_does_not_expire_a_count(tmp_path: Path) -> None:
    path = tmp_path / "lockout.db"
    clk = Clocks(T - 3 * HOUR)  # booted with fake-hwclock's time; NTP steps it forward
    b = book(path, clk)
    for _ in range(4):
        b.record("alice", ok=False, now=clk.wall())
    clk.run(10)
    clk.step(3 * HOUR)
    assert b.expire(clk.wall()) == 0
    assert b.state("alice", clk.wall()).user_failures == 4
    b.close()
    b = book(path, clk)  # the moved time reached the file
    assert b.state("alice", clk.wall()).user_failures == 4
    b.close()


def test_a_last_failure_in_the_future_counts_from_the_start(tmp_path: Path) -> None:
    """Written by a clock a year ahead: without a bound the entry would stay a year."""
    path = tmp_path / "lockout.db"
    ahead = Clocks(T + 365 * 24 * HOUR)
    b = book(path, ahead)
    b.record("carol", ok=False, now=ahead.wall())
    b.close()
    clk = Clocks(T)
    b = book(path, clk)
    assert b.users() == ["carol"]
    clk.run(QUIET + 1)
    assert b.expire(clk.wall()) == 1
    b.close()


def test_rows_the_previous_release_wrote_count_from_the_start_that_reads_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "lockout.db"
    db = sqlite3.connect(path)
    # The previous release's table: no last_failure column.
    db.execute(
        "CREATE TABLE lockout (key TEXT PRIMARY KEY, failures INTEGER NOT NULL, locked_until REAL)"
    )
    db.execute("INSERT INTO lockout (key, failures, locked_until) VALUES ('user:dave', 2, NULL)")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    clk = Clocks(T)
    b = book(path, clk)
    assert b.state("dave", clk.wall()).user_failures == 2
    b.close()
    clk.run(QUIET - 10)
    b = book(path, clk)  # dated at the first start, not at each
    assert b.users() == ["dave"]
    b.close()
    clk.run(11)
    b = book(path, clk)
    assert b.users() == [] and rows(path) == []
    b.close()
