"""`voxgate lockout list|clear` on real SQLite files, and the daemon's side of a clear
(LockoutBook.take_clears), in one process: the book stands for the running daemon, the
command writes the same file through its own connection as it would from a shell."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
import yaml

from voxgate.cli import main
from voxgate.config.service import LockoutConfig
from voxgate.lockout import LockoutBook
from voxgate.service.datadir import hold_data_dir

CFG = LockoutConfig(max_failures=3, device_max_failures=2, initial_s=3600)


@pytest.fixture
def door(tmp_path: Path) -> Path:
    """A config whose data_dir is tmp_path/data; returns the config path."""
    config = tmp_path / "voxgate.yaml"
    lockout = {"max_failures": 3, "device_max_failures": 2, "initial_s": 3600}
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "lockout": lockout}))
    return config


def _db(door: Path) -> Path:
    return door.parent / "data" / "lockout.db"


def _book(door: Path) -> LockoutBook:
    return LockoutBook(_db(door), CFG)


def _audit(door: Path) -> list[dict[str, object]]:
    path = door.parent / "data" / "audit.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_a_clear_reaches_the_running_book_and_is_audited(
    door: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    book = _book(door)
    for _ in range(3):
        book.record("Anna", False)
    assert book.state("anna").locked
    held = hold_data_dir(_db(door).parent)  # as the running daemon does
    try:
        assert main(["lockout", "clear", "ANNA", "--wait", "0.3", "-c", str(door)]) == 0
    finally:
        os.close(held)
    out = capsys.readouterr().out
    assert "cleared 'anna': 3 consecutive failure(s), was locked until" in out
    assert "no running daemon applied it" in out  # the book has not looked yet
    # Her 3 failures also locked the door (device_max_failures 2): clearing her alone
    # would leave her refused, so the command says so.
    assert "note: the door itself is locked until" in out
    assert "voxgate lockout clear --door" in out
    # Until the daemon takes it, its memory still holds the lock (it is what it enforces).
    assert book.state("anna").locked
    (taken,) = book.take_clears()
    assert (taken.entry.key, taken.entry.failures) == ("user:anna", 3)
    st = book.state("anna")
    assert st.scope == "device" and st.user_failures == 0  # her lock is gone
    assert st.device_failures == 3  # the door's counts (and lock) are not hers: they stay
    assert book.take_clears() == []  # taken once; the file's request is gone
    # A failure after the clear counts from zero, and the old count is not written back.
    book.record("anna", False)
    book.close()
    assert _book(door).state("anna").user_failures == 1
    (line,) = [x for x in _audit(door) if x["event"] == "lockout-clear"]
    assert (line["key"], line["user"], line["failures"], line["via"]) == (
        "user:anna",
        "anna",
        3,
        "cli",
    )
    assert line["by"]


def test_a_clear_with_no_daemon_running_says_so_at_once(
    door: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing holds the data folder: the command waited its 5 s for a daemon that was not
    there before asking whether it was stopped."""
    book = _book(door)
    for _ in range(3):
        book.record("lena", False)
    book.close()  # the daemon has stopped
    assert main(["lockout", "clear", "lena", "-c", str(door)]) == 0  # the default --wait
    out = capsys.readouterr().out
    assert "cleared 'lena'" in out
    assert f"no daemon is running on {_db(door).parent}" in out, out
    assert "within" not in out and "is it stopped" not in out, out


def test_clearing_the_door_drops_its_window_failures(
    door: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    book = _book(door)
    book.record(None, False)
    book.record("bob", False)
    book.record(None, True)  # a success starts the consecutive count over, not the window
    book.record(None, False)
    book.record(None, False)
    st = book.state(None)
    assert st.locked and st.device_window_failures == 4
    assert main(["lockout", "clear", "--door", "--wait", "0.2", "-c", str(door)]) == 0
    assert "cleared the door: 2 consecutive failure(s), 4 within the window" in (
        capsys.readouterr().out
    )
    book.take_clears()
    st = book.state("bob")
    assert not st.locked and st.device_window_failures == 0 and st.device_failures == 0
    assert st.user_failures == 1  # bob's own count is another key
    book.close()
    again = _book(door).state(None)
    assert again.device_window_failures == 0 and not again.locked


def test_list_shows_locks_counts_and_the_window(
    door: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    book = _book(door)
    for _ in range(3):
        book.record("carl", False)
    book.record("dora", False)
    book.close()
    assert main(["lockout", "list", "-c", str(door)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert "not locked" in rows["user:dora"] and " 1 " in rows["user:dora"]
    assert "not locked" not in rows["user:carl"]
    assert "door: 4 consecutive failure(s) of 2; 4 of 20 within the last 7200 s" in out
    assert main(["lockout", "list", "--json", "-c", str(door)]) == 0
    listed = json.loads(capsys.readouterr().out)
    keys = {k["key"]: k for k in listed["keys"]}
    assert keys["user:carl"]["locked"] and keys["user:carl"]["until"] is not None
    assert keys["user:dora"] == {
        "key": "user:dora",
        "user": "dora",
        "failures": 1,
        "locked": False,
        "until": None,
    }
    assert listed["door"]["window_failures"] == 4


def test_an_unknown_user_is_an_error_naming_who_is_held(
    door: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    book = _book(door)
    book.record("erin", False)
    book.close()
    assert main(["lockout", "clear", "erin", "--wait", "0.2", "-c", str(door)]) == 0
    assert "door itself is locked" not in capsys.readouterr().out  # 1 failure: not locked
    book = _book(door)
    book.take_clears()
    book.record("erin", False)
    book.close()
    assert main(["lockout", "clear", "frank", "-c", str(door)]) == 1
    err = capsys.readouterr().err
    assert "no lockout entry for 'frank'" in err and "counted: erin" in err
    assert [x["user"] for x in _audit(door) if x["event"] == "lockout-clear"] == ["erin"]
    assert _book(door).state("erin").user_failures == 1


def test_an_absent_file_lists_nothing_and_clears_nothing(
    door: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["lockout", "list", "-c", str(door)]) == 0
    got = capsys.readouterr()
    assert "no lockout state at" in got.err and "nothing locked" in got.out
    assert main(["lockout", "clear", "gina", "-c", str(door)]) == 1
    assert "the daemon creates it at its first start" in capsys.readouterr().err
    assert not _db(door).exists()  # a wrong data_dir gets no new empty file


@pytest.mark.parametrize(
    "content",
    [b"this is not a database, it is a text file\n" * 40, b""],
    ids=["garbage", "empty"],
)
def test_a_damaged_file_is_named_left_alone_and_exits_78(
    door: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    _db(door).parent.mkdir(parents=True)
    _db(door).write_bytes(content)
    for argv in (["list"], ["clear", "hana"], ["clear", "--door"]):
        assert main(["lockout", *argv, "-c", str(door)]) == 78
        err = capsys.readouterr().err
        assert f"lockout state {_db(door)} is damaged" in err and "left as it is" in err
    assert _db(door).read_bytes() == content


def test_a_file_of_another_schema_version_exits_78(
    door: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _book(door).close()
    db = sqlite3.connect(_db(door))
    db.execute("PRAGMA user_version=7")
    db.close()
    assert main(["lockout", "clear", "--door", "-c", str(door)]) == 78
    assert "schema version 7" in capsys.readouterr().err


def test_a_clear_the_audit_disk_refuses_stands_and_prints_the_line(
    door: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As `users erase` on a full audit disk (/dev/full: every write ENOSPC)."""
    full = door.parent / "audit-on-full-disk.jsonl"
    full.symlink_to("/dev/full")
    doc = yaml.safe_load(door.read_text())
    doc["audit"] = {"path": str(full)}
    door.write_text(yaml.safe_dump(doc))
    book = _book(door)
    for _ in range(3):
        book.record("ivan", False)
    assert main(["lockout", "clear", "ivan", "--wait", "0.2", "-c", str(door)]) == 0
    err = capsys.readouterr().err
    assert "this lockout-clear is not in it" in err
    line = json.loads(err.strip().splitlines()[-1])
    assert (line["event"], line["user"], line["failures"]) == ("lockout-clear", "ivan", 3)
    book.take_clears()
    assert book.state("ivan").scope == "device"  # his own lock is lifted


def test_a_clear_queued_while_the_daemon_was_stopped_is_taken_at_its_start(
    door: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    book = _book(door)
    for _ in range(3):
        book.record("jo", False)
    book.close()
    assert main(["lockout", "clear", "jo", "--wait", "0.2", "-c", str(door)]) == 0
    capsys.readouterr()
    assert main(["lockout", "list", "-c", str(door)]) == 0
    assert "clear of user:jo by" in capsys.readouterr().out  # "... not yet taken by the daemon"
    started = _book(door)
    assert started.state("jo").scope == "device"  # her lock was cleared in the file
    (taken,) = started.take_clears()  # and the request is removed at its first look
    assert taken.entry.key == "user:jo"
    assert main(["lockout", "list", "--json", "-c", str(door)]) == 0
    assert json.loads(capsys.readouterr().out)["pending_clears"] == []


def test_erasing_a_user_with_a_clear_still_queued_leaves_no_name_in_the_file(
    door: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from voxgate.lockout import forget_in_file

    book = _book(door)
    for _ in range(3):
        book.record("kasimir", False)
    book.close()
    assert main(["lockout", "clear", "kasimir", "--wait", "0.2", "-c", str(door)]) == 0
    assert forget_in_file(_db(door), "kasimir") is False  # the clear took the row already
    raw = b"".join(p.read_bytes() for p in _db(door).parent.glob("lockout.db*"))
    assert b"kasimir" not in raw


def test_config_before_or_after_the_action_is_the_same_file(
    door: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`voxgate lockout -c FILE list` read the default data_dir's file (the action's own -c,
    unset, overwrote the one given before it)."""
    book = _book(door)
    book.record("lena", False)
    book.close()
    for argv in (["-c", str(door), "list", "--json"], ["list", "--json", "-c", str(door)]):
        assert main(["lockout", *argv]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert listed["file"] == str(_db(door)), argv
        assert [k["user"] for k in listed["keys"]] == [None, "lena"]


def test_a_name_with_bytes_that_are_not_utf8_is_an_error_not_a_traceback(
    door: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # argv holds such bytes as lone surrogates: SQLite could not encode them.
    _book(door).close()
    assert main(["lockout", "clear", "al\udcffice", "-c", str(door)]) == 2
    assert "holds characters no user name has" in capsys.readouterr().err
    book = _book(door)
    book.record("mary\u00a0ann", False)  # a no-break space is a name's character
    book.close()
    assert main(["lockout", "clear", "mary\u00a0ann", "--wait", "0.2", "-c", str(door)]) == 0


def test_a_clear_on_a_door_whose_audit_log_was_lost_records_the_loss(
    door: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """lockout.db shows the daemon has run, the log and its anchor are gone: the clear's line
    began a new log from seq 1 that verified as intact, and the daemon's next start then
    found a log there and said nothing of the loss."""
    book = _book(door)
    for _ in range(3):
        book.record("lena", False)
    book.close()
    assert _audit(door) == []  # no log, no anchor: lost (or never written)
    assert main(["lockout", "clear", "lena", "-c", str(door)]) == 0
    assert [e["event"] for e in _audit(door)] == ["audit_log_lost", "lockout-clear"]
    capsys.readouterr()
    assert main(["audit", "verify", "-c", str(door)]) == 1
    assert "history before this line is lost" in capsys.readouterr().err
