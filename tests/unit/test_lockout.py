"""LockoutBook: back-off schedule, per-user and per-door keys, persistence in a real SQLite file."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from voxgate.config.service import LockoutConfig
from voxgate.lockout import LockoutBook

CFG = LockoutConfig(max_failures=5, device_max_failures=8, initial_s=30, max_s=600)


def book(tmp_path: Path, cfg: LockoutConfig = CFG) -> LockoutBook:
    return LockoutBook(tmp_path / "lockout.db", cfg)


def test_five_failures_lock_for_30_s_then_doubling(tmp_path: Path) -> None:
    b = book(tmp_path)
    now = 1000.0
    for _ in range(4):
        res = b.record("alice", ok=False, now=now)
        assert not res.state.locked and not res.new_locks
    res = b.record("alice", ok=False, now=now)
    assert res.state.locked and res.state.scope == "user"
    assert res.state.until == now + 30
    assert [e.key for e in res.new_locks] == ["user:alice"]
    assert b.state("alice", now + 29.9).locked
    assert not b.state("alice", now + 30).locked
    # After the lock passes, each further failure doubles the period: 60, 120, 240, 480, 600 cap.
    t = now + 30
    for want in (60, 120, 240, 480, 600, 600):
        st = b.record("alice", ok=False, now=t).state
        assert st.until == t + want
        t += want


def test_other_users_are_not_affected_but_the_door_is(tmp_path: Path) -> None:
    b = book(tmp_path)
    for _ in range(5):
        b.record("alice", ok=False, now=0)
    assert b.state("alice", 1).locked
    assert not b.state("bob", 1).locked
    # Three more failures by anyone reach the door's limit (8): everybody waits.
    for _ in range(3):
        b.record("bob", ok=False, now=2)
    st = b.state("carol", 3)
    assert st.locked and st.scope == "device" and st.device_failures == 8
    assert b.state(None, 3).locked  # identify mode checks the door only
    assert b.state("alice", 3).scope == "both"


def test_a_success_starts_the_consecutive_counts_over_but_not_the_doors_window(
    tmp_path: Path,
) -> None:
    b = book(tmp_path)
    for _ in range(4):
        b.record("alice", ok=False, now=0)
    b.record("alice", ok=True, now=1)
    st = b.state("alice", 1)
    assert (st.user_failures, st.device_failures, st.device_window_failures) == (0, 0, 4)
    for _ in range(4):
        b.record("alice", ok=False, now=2)
    assert not b.state("alice", 2).locked  # the consecutive counts started over


def test_a_stranger_between_other_peoples_entries_is_stopped_by_the_door(
    tmp_path: Path,
) -> None:
    """The door's only count was reset by anyone's success: a stranger guessing between
    the entries of the people who work there (claiming names that do not exist, or in
    identify mode) got device_max_failures - 1 guesses per entry and the door never backed
    off (at 20 entries an hour about 1,700 guesses a day with the defaults;
    benchmarks/bench_lockout.py). Now the door also counts failures within
    device_window_s, which no success clears."""
    b = book(tmp_path)  # 8 consecutive; 20 within 2 h (the defaults)
    now, guesses = 1000.0, 0
    for entry in range(20):
        for i in range(7):  # one fewer than the consecutive limit, then someone comes in
            b.record(None if i % 2 else f"nobody{entry}-{i}", ok=False, now=now)
            guesses += 1
            now += 10
            if b.state(None, now).locked:
                break
        if b.state(None, now).locked:
            break
        b.record(("bob", "carol", "dave")[entry % 3], ok=True, now=now)
        now += 10
    assert guesses == 20  # device_window_failures (default)
    st = b.state("bob", now)
    assert st.locked and st.scope == "device" and st.until == now - 10 + 30
    assert (st.device_failures, st.device_window_failures) == (6, 20)
    # Once the lock has passed, each further failure within the window doubles the period.
    now = st.until
    assert b.record(None, ok=False, now=now).state.until == now + 60


def test_the_doors_failures_age_out_of_the_window(tmp_path: Path) -> None:
    cfg = LockoutConfig(
        device_max_failures=100, device_window_failures=3, device_window_s=600, initial_s=30
    )
    b = book(tmp_path, cfg)
    b.record("x", ok=False, now=0)
    b.record("y", ok=False, now=300)
    assert b.state(None, 599).device_window_failures == 2
    assert b.state(None, 600).device_window_failures == 1  # the first has left the window
    assert not b.record(None, ok=False, now=600).state.locked
    st = b.record(None, ok=False, now=700).state  # three within 600 s: 300, 600, 700
    assert st.locked and st.until == 730 and st.scope == "device"
    assert b.record(None, ok=False, now=730).state.until == 730 + 60
    # An admin unlock of the door clears both counts.
    b.reset(None)
    st = b.state(None, 791)
    assert (st.locked, st.device_failures, st.device_window_failures) == (False, 0, 0)


def test_the_doors_failure_times_survive_a_restart(tmp_path: Path) -> None:
    cfg = LockoutConfig(device_window_failures=3, device_window_s=600, initial_s=30)
    b = book(tmp_path, cfg)
    b.record("x", ok=False, now=0)
    b.record("y", ok=False, now=300)
    b.record("bob", ok=True, now=301)
    b.close()
    b = book(tmp_path, cfg)
    assert b.state(None, 301).device_window_failures == 2
    assert b.state(None, 600).device_window_failures == 1
    assert b.record(None, ok=False, now=590).state.locked
    b.close()
    with sqlite3.connect(tmp_path / "lockout.db") as db:
        times = [r[0] for r in db.execute("SELECT at FROM door_failures ORDER BY at")]
        row = db.execute("SELECT failures FROM lockout WHERE key = 'device'").fetchone()
        version = db.execute("PRAGMA user_version").fetchone()[0]
    db.close()
    # The row keeps the consecutive count, as the previous release reads it.
    assert times == [0.0, 300.0, 590.0] and row == (1,) and version == 1


def test_a_file_from_the_previous_release_gains_the_window_in_place(tmp_path: Path) -> None:
    con = sqlite3.connect(tmp_path / "lockout.db")
    con.execute(
        "CREATE TABLE lockout (key TEXT PRIMARY KEY, failures INTEGER NOT NULL, locked_until REAL)"
    )
    con.execute("INSERT INTO lockout VALUES ('device', 4, NULL), ('user:alice', 2, NULL)")
    con.execute("PRAGMA user_version=1")
    con.commit()
    con.close()
    b = book(tmp_path)
    st = b.state("alice", 10)
    assert (st.device_failures, st.user_failures, st.device_window_failures) == (4, 2, 0)
    for _ in range(4):
        b.record(None, ok=False, now=10)
    assert b.state(None, 10).locked  # 8 consecutive, as before the upgrade
    b.close()
    assert book(tmp_path).state(None, 11).device_window_failures == 4


def test_state_survives_a_restart(tmp_path: Path) -> None:
    b = book(tmp_path)
    t = time.time()  # entries whose last failure is long past expire at a restart
    for _ in range(5):
        b.record("alice", ok=False, now=t)
    b.close()
    again = book(tmp_path)
    st = again.state("alice", t + 10)
    assert st.locked and st.until == t + 30 and st.user_failures == 5
    assert [e.key for e in again.locked(t + 10)] == ["user:alice"]
    # The file is plain SQLite: an operator can read it.
    rows = sqlite3.connect(tmp_path / "lockout.db").execute("SELECT key FROM lockout").fetchall()
    assert ("user:alice",) in rows


def test_reset_unlocks(tmp_path: Path) -> None:
    b = book(tmp_path)
    for _ in range(5):
        b.record("alice", ok=False, now=0)
    b.reset("alice")
    b.close()
    assert not book(tmp_path).state("alice", 1).locked


def test_reconfigure_applies_to_next_failures(tmp_path: Path) -> None:
    b = book(tmp_path)
    b.reconfigure(LockoutConfig(max_failures=2, initial_s=5, max_s=5))
    b.record("alice", ok=False, now=0)
    assert b.record("alice", ok=False, now=0).state.until == 5


def test_corrupt_file_is_moved_aside_and_the_door_keeps_working(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "lockout.db").write_bytes(b"this is not a database" * 100)
    b = book(tmp_path)
    assert "unreadable" in caplog.text
    assert list(tmp_path.glob("lockout.db.corrupt-*"))
    for _ in range(5):
        b.record("alice", ok=False, now=0)
    assert b.state("alice", 1).locked


def test_unwritable_file_keeps_enforcing_from_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    b = book(tmp_path)
    b._db.execute("PRAGMA query_only=ON")  # every write now fails like a read-only disk
    for _ in range(5):
        b.record("alice", ok=False, now=0)
    assert "cannot save lockout state" in caplog.text
    assert b.state("alice", 1).locked


def test_config_rejects_max_below_initial() -> None:
    with pytest.raises(ValueError, match="max_s"):
        LockoutConfig(initial_s=60, max_s=30)


def test_names_the_store_reads_as_one_user_share_one_counter(tmp_path: Path) -> None:
    """The voiceprint store matches names case-insensitively (`ALICE` opens alice's
    voiceprint), but the lockout keyed users by the name as claimed: five wrong guesses as
    `alice` locked `user:alice`, and an attempt claiming `Alice` then found no lock and could
    be granted with alice's voiceprint. Found by claiming case variants after a lockout."""
    import numpy as np

    from voxgate.voiceprints import VoiceprintStore

    emb = np.eye(4, 8, dtype=np.float32)
    with VoiceprintStore(tmp_path / "vp.db", b"k" * 32) as store:
        store.add_user("alice", emb, "m")
        assert store.get("Alice") is not None and store.get("ALICE") is not None
    b = book(tmp_path)
    now = time.time()
    for _ in range(5):
        b.record("alice", ok=False, now=now)
    for other in ("Alice", "ALICE", " alice"):
        st = b.state(other, now + 1)
        assert st.locked and st.scope == "user", other
    # Failures under different spellings add up, and survive a restart under one key.
    b2 = book(tmp_path / "two")
    for name in ("Bob", "bob", "BOB", "bOb", "boB"):
        b2.record(name, ok=False, now=now)
    assert b2.state("bob", now + 1).locked
    b2.close()
    assert book(tmp_path / "two").state("BoB", now + 1).locked


def test_keys_saved_with_the_claimed_spelling_still_lock_after_an_upgrade(tmp_path: Path) -> None:
    """A lockout.db written before names were folded holds `user:Alice`; it must still lock
    whichever spelling is claimed next."""
    b = book(tmp_path)
    b.close()
    con = sqlite3.connect(tmp_path / "lockout.db")
    con.execute(
        "INSERT INTO lockout (key, failures, locked_until) VALUES ('user:Alice', 5, 2000.0)"
    )
    con.commit()
    con.close()
    b = book(tmp_path)
    assert b.state("alice", 1500.0).locked
    b.record("ALICE", ok=True, now=2500.0)  # a success clears every spelling for good
    b.close()
    assert book(tmp_path).state("Alice", 2500.0).user_failures == 0


def _make_read_only(folder: Path) -> Callable[[], None] | None:
    """Make `folder` read-only as a failing SD card does (ext4 remounted ro): a read-only
    tmpfs mounted over it as root, else its mode; the returned function undoes it."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)]).returncode:
        return None
    for name, data in files.items():
        (folder / name).write_bytes(data)
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)

    def undo() -> None:
        subprocess.run(["umount", str(folder)], check=True)

    return undo


def test_a_restart_on_a_read_only_disk_keeps_the_locks_it_finds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file that cannot be opened for writing (read-only or full disk, a busy file) was
    taken for a damaged one: moved aside, and the door restarted with no lockouts at all,
    though the file was intact. Found restarting the daemon's lockout book on a read-only
    and on a full tmpfs: both cleared alice's lock."""
    folder = tmp_path / "state"
    folder.mkdir()
    b = book(folder)
    t = time.time()
    for _ in range(5):
        b.record("alice", ok=False, now=t)
    b.close()
    undo = _make_read_only(folder)
    if undo is None:
        pytest.skip("cannot mount a read-only file system here")
    try:
        again = book(folder)
        st = again.state("alice", t + 1)
        assert st.locked and st.user_failures == 5
        assert not list(folder.glob("lockout.db.corrupt-*"))
        assert "moved to" not in caplog.text
        # Still enforced and counted from memory.
        again.record("bob", ok=False, now=t + 1)
        assert again.state("bob", t + 1).user_failures == 1
    finally:
        undo()
