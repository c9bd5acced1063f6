"""Decision sequence numbers when the door's counter file is rewound (a data folder restored
from a backup, a re-imaged SD card, a lost file): the door's numbers continue from its clock,
the lock keeps refusing replays, and says loudly when a door's numbers went backwards."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import pytest

from voxgate.actuator import Actuator
from voxgate.config.mqtt import ActuatorConfig
from voxgate.decision import DecisionError, Issuer, ReplayGuard, SequenceCounter, sign, verify

KEY = b"unit-test-decision-key"
TOPIC = "voxgate/front-door/decision"
T0 = 1_790_000_000.0  # a Unix time in 2026


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _actuator(tmp_path: Path, clock: Clock) -> Actuator:
    cfg = ActuatorConfig.model_validate(
        {
            "devices": [{"id": "front-door"}],
            "state_file": str(tmp_path / "lock-state.json"),
            "command": {"argv": ["/bin/true"]},
        }
    )
    return Actuator(cfg, keys={"front-door": KEY}, clock=clock)


def test_a_restored_counter_file_continues_above_every_number_handed_out(
    tmp_path: Path,
) -> None:
    path = tmp_path / "decision-seq.json"
    c = SequenceCounter(path)
    sent = [c.next() for _ in range(3)]
    backup = path.read_bytes()
    c = SequenceCounter(path)  # a restart: continues above the stored ceiling
    sent += [c.next() for _ in range(3)]
    assert sent == sorted(set(sent))
    path.write_bytes(backup)  # the older copy comes back
    while int(time.time() * 1000) <= max(sent):  # the clock moves on (far more, in life)
        time.sleep(0.01)
    assert SequenceCounter(path).next() > max(sent)


def test_a_lost_counter_file_starts_from_the_clock(tmp_path: Path) -> None:
    before_ms = int(time.time() * 1000)
    n = SequenceCounter(tmp_path / "decision-seq.json").next()
    assert before_ms <= n <= int(time.time() * 1000)


def test_the_rule_is_the_larger_of_last_plus_one_and_the_clock(tmp_path: Path) -> None:
    from voxgate.decision import MAX_CLOCK_SEQ, clock_floor

    path = tmp_path / "seq.json"
    clock = Clock(T0)
    c = SequenceCounter(path, clock=clock)
    assert c.next() == int(T0 * 1000)
    assert c.next() == int(T0 * 1000) + 1  # the same millisecond: last + 1
    clock.t = T0 + 2.5
    assert c.next() == int(T0 * 1000) + 2500
    # A clock far behind (a Pi without RTC, before NTP): the file's count goes on, after a
    # restart too (above the ceiling saved with the reserve, never a repeat).
    clock.t = 86_400.0
    assert c.next() == int(T0 * 1000) + 2501
    assert SequenceCounter(path, clock=clock).next() == int(T0 * 1000) + 2500 + 100
    # A clock that reads nonsense is no floor at all.
    for bad in (math.nan, math.inf, -5.0, 1e300):
        assert clock_floor(Clock(bad)) == 0
    assert clock_floor(Clock(MAX_CLOCK_SEQ / 1000 + 1)) == 0
    assert clock_floor(None) == 0

    def broken() -> float:
        raise OSError("no clock")

    c = SequenceCounter(tmp_path / "other.json", reserve=10, clock=broken)
    assert [c.next(), c.next()] == [1, 2]


def test_a_damaged_counter_file_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "decision-seq.json"
    for text in ("{not json", '{"seq": "x"}'):
        path.write_text(text)
        with pytest.raises(DecisionError, match="state-unreadable") as e:
            SequenceCounter(path)
        assert "delete the file" in str(e.value)
        path.unlink()  # what the message says: the next number then comes from the clock
        assert SequenceCounter(path, clock=Clock(T0)).next() == int(T0 * 1000)


def test_the_lock_takes_the_jump_and_a_restored_door_keeps_opening(tmp_path: Path) -> None:
    clock = Clock(T0)
    lock = _actuator(tmp_path, clock)
    door_seq = tmp_path / "decision-seq.json"
    # An older door: plain counting from its file (1, 2, ...).
    old_door = Issuer("front-door", SequenceCounter(door_seq, clock=None), ttl_s=5)
    assert lock.handle(TOPIC, sign(old_door.issue("granted", "alice", clock.t), KEY))
    # Upgraded: its numbers jump to the clock (about 1.8e12); the lock accepts the jump.
    clock.t += 60
    door = Issuer("front-door", SequenceCounter(door_seq, clock=clock), ttl_s=5)
    jumped = door.issue("granted", "alice", clock.t)
    assert jumped.seq == int(clock.t * 1000)
    assert lock.handle(TOPIC, sign(jumped, KEY)) == jumped
    backup = door_seq.read_bytes()
    clock.t += 3600
    d = door.issue("granted", "bob", clock.t)
    payload = sign(d, KEY)
    assert lock.handle(TOPIC, payload) == d
    # The lock restarts from its file: the big number is kept exactly, in the same map an
    # older lock reads.
    state = json.loads((tmp_path / "lock-state.json").read_text())
    assert state["last_seq"] == {"front-door": d.seq}
    lock = _actuator(tmp_path, clock)
    assert lock.guard.last("front-door") == d.seq
    # The door's data folder comes back from the backup, a day later.
    door_seq.write_bytes(backup)
    clock.t += 86_400
    door = Issuer("front-door", SequenceCounter(door_seq, clock=clock), ttl_s=5)
    new = door.issue("granted", "bob", clock.t)
    assert lock.handle(TOPIC, sign(new, KEY)) == new
    assert lock.rejected == {}
    # Replay protection is whole: the grant made before the restore, within its validity
    # (the lock's clock set back to it), and the new one again.
    lock.clock = Clock(d.issued_at + 1)
    assert lock.handle(TOPIC, payload) is None
    lock.clock = clock
    assert lock.handle(TOPIC, sign(new, KEY)) is None
    assert lock.rejected == {"replayed": 2}


def test_a_door_whose_numbers_went_backwards_is_logged_loudly_and_a_replay_is_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A state file written by an older lock (no issued_at): it loads, and gains it.
    state = tmp_path / "lock-state.json"
    state.write_text(json.dumps({"last_seq": {"front-door": 500}}))
    clock = Clock(T0)
    lock = _actuator(tmp_path, clock)
    door = Issuer("front-door", SequenceCounter(tmp_path / "seq.json", clock=None), ttl_s=5)
    for _ in range(500):
        door.seq.next()  # the door's numbers 1..500 went out before
    first = door.issue("granted", "alice", clock.t)
    assert lock.handle(TOPIC, sign(first, KEY)) == first  # 501
    assert json.loads(state.read_text())["last_issued_at"] == {"front-door": first.issued_at}

    # The door (an older voxgate, or a clock far behind) restarts its numbers from 1.
    clock.t += 30
    rewound = Issuer("front-door", SequenceCounter(tmp_path / "new-seq.json", clock=None), 5)
    with caplog.at_level(logging.WARNING, logger="voxgate.actuator"):
        assert lock.handle(TOPIC, sign(rewound.issue("granted", "a", clock.t), KEY)) is None
    loud = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(loud) == 1, caplog.text
    text = loud[0].getMessage()
    assert "front-door" in text and "WENT BACKWARDS (got seq 1 " in text
    assert "500 below the last one accepted, 501" in text
    assert "NTP" in text and "stop this actuator, run `voxgate actuator -c" in text
    assert "--forget front-door` and start it again" in text
    # A counter restored to exactly the last number accepted: a new decision all the same.
    (tmp_path / "new-seq.json").write_text('{"seq": 500}')
    clock.t += 1
    rewound = Issuer("front-door", SequenceCounter(tmp_path / "new-seq.json", clock=None), 5)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="voxgate.actuator"):
        assert lock.handle(TOPIC, sign(rewound.issue("granted", "a", clock.t), KEY)) is None
    assert "(got seq 501 in a new decision, equal to the last one accepted, 501)" in caplog.text
    assert lock.rejected == {"replayed": 2}

    # A replay (the exact bytes of an earlier decision, still valid) is refused as before,
    # with no advice to reset the lock's record.
    caplog.clear()
    lock.clock = Clock(first.issued_at + 1)
    with caplog.at_level(logging.WARNING, logger="voxgate.actuator"):
        assert lock.handle(TOPIC, sign(first, KEY)) is None
    assert "replayed" in caplog.text and "BACKWARDS" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_damaged_issued_at_record_does_not_keep_the_lock_shut(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    state.write_text(json.dumps({"last_seq": {"d": 7}, "last_issued_at": "garbage"}))
    guard = ReplayGuard(state)
    assert guard.last("d") == 7
    state.write_text(json.dumps({"last_seq": {"d": 7}, "last_issued_at": {"d": "x", "e": 1}}))
    d = Issuer("front-door", SequenceCounter(tmp_path / "q.json", clock=Clock(T0)), 5).issue(
        "granted", "a", T0
    )
    guard = ReplayGuard(state)
    assert verify(sign(d, KEY), KEY, T0 + 1, guard) == d
