"""Used command nonces on disk (mqtt.nonces.UsedCommands): a command runs once, whatever the
door's clock does after and across restarts. Real files; the clocks are injected."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.clock_helpers import Clocks, T
from voxgate.decision import DecisionError
from voxgate.mqtt.commands import CommandError, CommandGate, make_command
from voxgate.mqtt.nonces import UsedCommands

CKEY = b"command-key-for-tests-0123456789"


def _gate(c: Clocks, used: UsedCommands | None = None) -> CommandGate:
    return CommandGate(
        "front-door",
        CKEY,
        started_at=c.wall(),
        max_skew_s=5,
        elapsed=c.mono,
        used=used if used is not None else UsedCommands(None),
    )


def _signed_now(c: Clocks) -> bytes:
    """A reload signed by a sender whose clock agrees with the door's."""
    return make_command(CKEY, "front-door", "reload", now=c.wall())


def _refusal(gate: CommandGate, payload: bytes, now: float) -> str | None:
    try:
        gate.check("reload", payload, now)
    except CommandError as exc:
        return f"{exc.code}: {exc.detail}"
    return None


def test_a_command_run_is_refused_after_the_clock_is_set_back() -> None:
    """Seen: the nonce was forgotten once the door's clock passed the command's expiry; an
    admin (or NTP undoing a clock that ran ahead) set the clock back into its validity and
    the same captured command ran a second time."""
    c = Clocks(T)
    gate = _gate(c)
    c.run(10)
    erase = make_command(CKEY, "front-door", "reload", now=c.wall())
    assert _refusal(gate, erase, c.wall() + 1) is None
    c.run(90)  # another command, 90 s later, cleared the expired nonce
    assert _refusal(gate, _signed_now(c), c.wall()) is None
    c.step(-95)  # the clock set back: 5 s after the first command was issued
    why = _refusal(gate, erase, c.wall())
    assert why is not None and why.startswith("replayed"), why


def test_a_restart_does_not_reopen_a_command_when_the_clock_is_set_back(tmp_path: Path) -> None:
    """The attack of the review: a door started with a right clock takes a captured
    pre-restart command once its clock is set back by more than the command's age."""
    path = tmp_path / "command-nonces.json"
    c = Clocks(T)
    first = _gate(c, UsedCommands(path))
    c.run(10)
    captured = make_command(CKEY, "front-door", "erase-user", {"user": "alice"}, now=c.wall())
    assert first.check("erase-user", captured, c.wall() + 1).args == {"user": "alice"}
    c.run(200)
    second = _gate(c, UsedCommands(path))  # a new process, clock right
    c.run(20)
    c.step(-225)  # set back: the captured command is 5 s old by the door's clock
    with pytest.raises(CommandError) as e:
        second.check("erase-user", captured, c.wall())
    assert (e.value.code, e.value.detail) == ("replayed", "nonce already used")
    # A command signed at the door's time now still runs.
    assert _refusal(second, _signed_now(c), c.wall()) is None


def test_the_floor_refuses_what_expired_before_a_later_command_and_nothing_else() -> None:
    c = Clocks(T)
    used = UsedCommands(None)
    gate = _gate(c, used)
    c.run(100)
    a = make_command(CKEY, "front-door", "reload", now=c.wall(), ttl_s=10)
    b = make_command(CKEY, "front-door", "reload", now=c.wall() - 9, ttl_s=10)  # a sender behind
    assert _refusal(gate, a, c.wall()) is None
    assert _refusal(gate, b, c.wall()) is None  # expires 1 s after a was issued: allowed
    assert len(used) == 2
    c.run(60)
    assert _refusal(gate, _signed_now(c), c.wall()) is None
    assert len(used) == 1  # a and b expired before the floor: refused by it, not kept
    c.step(-60)
    why = _refusal(gate, a, c.wall())
    assert why is not None and "expired before a command this door ran" in why, why


def test_with_a_steady_door_clock_the_floor_refuses_no_command_the_door_takes() -> None:
    """docs/mqtt.md said a sender more than command_max_skew_s behind one the door obeyed
    could get `replayed`. It cannot while the door's clock is steady: a floor is at most the
    door's time when it was set (issued_at <= now + max_skew_s), and a command the door
    still takes expires after its time now. Senders from the limit ahead to almost a whole
    validity behind, in any order: each runs."""
    import random

    rnd = random.Random(7)
    c = Clocks(T)
    gate = _gate(c)
    c.run(70)  # past the start check (nothing issued before the daemon started)
    for _ in range(400):
        ttl = rnd.choice([1.0, 5.0, 10.0, 30.0, 60.0])
        offset = rnd.uniform(-ttl + 0.01, 5.0)  # the sender's clock against the door's
        payload = make_command(CKEY, "front-door", "reload", now=c.wall() + offset, ttl_s=ttl)
        assert _refusal(gate, payload, c.wall()) is None, (ttl, offset)
        c.run(rnd.uniform(0.0, 2.0))


def test_the_kept_nonces_are_bounded_and_never_reopened(tmp_path: Path) -> None:
    path = tmp_path / "command-nonces.json"
    used = UsedCommands(path, max_kept=3)
    c = Clocks(T)
    gate = _gate(c, used)
    c.run(1)
    sent = [make_command(CKEY, "front-door", "reload", now=c.wall() + i * 0.01) for i in range(6)]
    for p in sent:
        assert _refusal(gate, p, c.wall() + 1) is None
    assert len(used) == 3
    assert len(json.loads(path.read_text())["used"]) == 3
    for p in sent:  # evicted or kept: each is refused
        assert str(_refusal(gate, p, c.wall() + 1)).startswith("replayed")
    # Refused commands (a flood of unsigned ones) record nothing.
    size = path.stat().st_size
    for i in range(50):
        forged = make_command(b"wrong-key", "front-door", "reload", now=c.wall(), nonce=f"{i:032x}")
        assert str(_refusal(gate, forged, c.wall() + 1)).startswith("unauthorized")
    assert path.stat().st_size == size


@pytest.mark.parametrize(
    "text",
    [
        "garbage",
        "[]",
        '{"floor": "x", "used": {}}',
        '{"floor": 1, "used": {"a": null}}',
        "[" * 20000 + "]" * 20000,  # was a RecursionError traceback at the start
    ],
)
def test_a_damaged_file_is_moved_aside_and_the_door_goes_on(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A damaged file stopped the start with 78, which leaves the door down until someone
    comes, for the sake of one more run of a command from the last minute (and only while
    the door's clock is set back)."""
    import logging

    path = tmp_path / "command-nonces.json"
    path.write_text(text)
    with caplog.at_level(logging.ERROR, logger="voxgate.mqtt.nonces"):
        used = UsedCommands(path)
    assert len(used) == 0 and used.floor == 0.0
    (aside,) = tmp_path.glob("command-nonces.json.corrupt-*")
    assert aside.read_text() == text and not path.exists()  # kept for whoever looks
    (line,) = [r.getMessage() for r in caplog.records]
    assert str(path) in line and "moved aside to " + aside.name in line
    assert used.use("n1", 100.0, 160.0, 5.0) is None and path.is_file()  # and it goes on


def test_a_file_that_cannot_be_read_still_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "command-nonces.json"
    path.mkdir()  # a folder in its place: not damage a move aside should hide
    with pytest.raises(DecisionError) as e:
        UsedCommands(path)
    assert e.value.reason == "state-unreadable"
    assert str(path) in e.value.detail and "move it aside" in e.value.detail
    assert path.is_dir()


def test_a_file_that_cannot_be_written_keeps_the_nonces_in_memory_and_saves_them_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "command-nonces.json"
    used = UsedCommands(path)
    folder.rmdir()
    folder.write_text("not a folder")  # every save fails (ENOTDIR), as on a full disk
    c = Clocks(T)
    gate = _gate(c, used)
    c.run(1)
    one, two, three = (make_command(CKEY, "front-door", "reload", now=c.wall()) for _ in range(3))
    with caplog.at_level(logging.WARNING, logger="voxgate.mqtt.nonces"):
        assert _refusal(gate, one, c.wall()) is None  # the command still runs
        assert _refusal(gate, two, c.wall()) is None
        assert str(_refusal(gate, one, c.wall())).startswith("replayed")  # from memory
        assert caplog.text.count("cannot save") == 1, caplog.text  # once, not per command
        folder.unlink()
        folder.mkdir()
        assert _refusal(gate, three, c.wall()) is None
    assert "saved again" in caplog.text
    again = _gate(c, UsedCommands(path))  # a restart reads all three
    for p in (one, two, three):
        assert str(_refusal(again, p, c.wall())).startswith("replayed")
