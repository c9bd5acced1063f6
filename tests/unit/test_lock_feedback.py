"""Refusal reports: what the actuator publishes when it does not act on a decision, and how
the door reads a report (including ones that are not)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from voxgate.actuator import Actuator
from voxgate.config.mqtt import ActuatorConfig
from voxgate.decision import DECISION_DOMAIN, Issuer, SequenceCounter, open_sealed, seal, sign
from voxgate.mqtt.refusal import (
    MAX_BYTES,
    REFUSAL_DOMAIN,
    RefusalError,
    UnsignedReport,
    parse_refusal,
    refusal_payload,
)

KEY = b"unit-test-feedback-decision-key"
T0 = 1_790_000_000.0


def _actuator(tmp_path: Path, argv: list[str]) -> tuple[Actuator, list[tuple[str, dict]]]:
    cfg = ActuatorConfig.model_validate(
        {
            "broker": {"topic_prefix": "site"},
            "devices": [{"id": "front-door"}],
            "state_file": str(tmp_path / "state.json"),
            "command": {"argv": argv, "timeout_s": 5},
        }
    )
    a = Actuator(cfg, keys={"front-door": KEY}, clock=lambda: T0 + 1)
    sent: list[tuple[str, dict]] = []
    # Sealed with the door's key: opened as the door does.
    a.publish = lambda topic, payload: sent.append(
        (topic, open_sealed(payload, KEY, REFUSAL_DOMAIN, MAX_BYTES))
    )
    return a, sent


def test_the_lock_reports_refusals_and_failed_actions_but_not_other_doors(
    tmp_path: Path,
) -> None:
    a, sent = _actuator(tmp_path, [sys.executable, "-c", "raise SystemExit(3)"])
    door = Issuer("front-door", SequenceCounter(tmp_path / "seq.json", clock=None), ttl_s=5)
    grant = door.issue("granted", "alice", T0)
    assert a.handle("site/front-door/decision", sign(grant, KEY)) == grant
    a.act(a._jobs.get_nowait())  # the program exits 3: accepted, but the door stays shut
    a.handle("site/front-door/decision", sign(grant, KEY))  # replayed
    a.handle("site/front-door/decision", b"not json")
    # Signed with the door's key but not a body this build reads: another voxgate version.
    a.handle("site/front-door/decision", seal({"v": 1}, KEY, DECISION_DOMAIN))
    a.handle("site/back-door/decision", sign(grant, KEY))  # not a door of this lock: no one to tell
    assert [t for t, _ in sent] == ["site/front-door/decision/refused"] * 4
    got = [(b["reason"], b["seq"], b["outcome"]) for _, b in sent]
    assert got == [
        ("action-failed", grant.seq, "granted"),
        ("replayed", grant.seq, "granted"),
        ("not-a-decision", None, None),
        ("malformed", None, None),
    ]
    assert sent[0][1]["detail"] == "command exited 3"
    assert sent[2][1]["detail"].endswith("; received 8 bytes: b'not json'"), sent[2]
    assert all("alice" not in json.dumps(b) for _, b in sent)


def test_a_report_that_cannot_be_sent_does_not_stop_the_lock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = _actuator(tmp_path, ["/bin/true"])

    def broken(topic: str, payload: bytes) -> None:
        raise RuntimeError("socket gone")

    a.publish = broken
    with caplog.at_level(logging.WARNING):
        assert a.handle("site/front-door/decision", b"{}") is None
    assert a.rejected["not-a-decision"] == 1
    assert "cannot report the refusal to site/front-door/decision/refused" in caplog.text


def test_a_report_round_trips_and_hostile_ones_are_refused() -> None:
    r = parse_refusal(
        refusal_payload("front-door", "expired", "expired 3 s ago", None, T0, KEY), KEY
    )
    assert (r.device, r.reason, r.detail, r.seq, r.outcome, r.at) == (
        "front-door",
        "expired",
        "expired 3 s ago",
        None,
        None,
        T0,
    )
    # A forged log line in the detail arrives as one line.
    body = {"v": 1, "device": "d", "reason": "busy", "detail": "x\nERROR fake line", "seq": 1}
    assert parse_refusal(seal(body, KEY, REFUSAL_DOMAIN), KEY).detail == "x?ERROR fake line"
    for bad in (
        b"x" * 3000,
        b"\xff",
        b"[" * 5000,
        b"[]",
        b'{"v": 2, "device": "d", "reason": "busy"}',
        b'{"v": 1, "device": "d", "reason": "Not A Code"}',
        b'{"v": 1, "device": 5, "reason": "busy"}',
        b'{"v": 1, "device": "d", "reason": "busy", "seq": -1}',
        b'{"v": 1, "device": "d", "reason": "busy", "seq": true}',
        b'{"v": 1, "device": "d", "reason": "busy", "outcome": 7}',
    ):
        with pytest.raises(RefusalError):
            parse_refusal(bad, KEY)
        if bad.startswith(b"{"):  # sealed with the door's key, the same body is no report
            with pytest.raises(RefusalError) as raised:
                parse_refusal(seal(json.loads(bad), KEY, REFUSAL_DOMAIN), KEY)
            assert not isinstance(raised.value, UnsignedReport)


def test_the_door_ignores_a_report_it_cannot_read(caplog: pytest.LogCaptureFixture) -> None:
    import paho.mqtt.client as paho

    from voxgate.config.mqtt import MqttConfig
    from voxgate.mqtt.client import MqttLink

    link = MqttLink(MqttConfig(), "front-door", decision_key=KEY, command_key=KEY)
    counted: list[str] = []
    link.on_lock_refusal = lambda r: counted.append(r.reason)

    def deliver(payload: bytes) -> None:
        msg = paho.MQTTMessage(topic=b"voxgate/front-door/decision/refused")
        msg.payload = payload
        link._on_message(link._client, None, msg)

    with caplog.at_level(logging.WARNING):
        deliver(b"garbage")
        assert link.stats["lock_refusals"] == 0 and counted == []
        assert "unreadable report on voxgate/front-door/decision/refused ignored" in caplog.text
        deliver(refusal_payload("front-door", "not-yet-valid", "issued 9 s ahead", None, T0, KEY))
    assert link.stats["lock_refusals"] == 1 and counted == ["not-yet-valid"]
    assert "the door's clock is ahead of the lock's" in caplog.text


def test_an_envelope_with_an_unknown_algorithm_is_malformed_and_junk_is_not_a_decision(
    tmp_path: Path,
) -> None:
    """A newer door's signature scheme is a version mismatch (`malformed`, whose advice is to
    compare the versions), not bytes from a stranger (`not-a-decision`: fix the ACL)."""
    a, sent = _actuator(tmp_path, ["/bin/true"])
    newer = json.dumps({"alg": "Ed25519", "body": "{}", "sig": "00" * 64}).encode()
    a.handle("site/front-door/decision", newer)
    a.handle("site/front-door/decision", json.dumps({"alg": 7, "body": 1}).encode())
    got = [(b["reason"], b["detail"]) for _, b in sent]
    assert got[0] == ("malformed", "alg 'Ed25519' is not HMAC-SHA256, the one this build knows")
    assert got[1][0] == "not-a-decision", got


def test_the_door_does_not_count_reports_it_cannot_verify(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import paho.mqtt.client as paho

    from voxgate.config.mqtt import MqttConfig
    from voxgate.mqtt.client import MqttLink

    link = MqttLink(MqttConfig(), "front-door", decision_key=KEY, command_key=b"c" * 32)
    counted: list[str] = []
    link.on_lock_refusal = lambda r: counted.append(r.reason)
    body = {"v": 1, "device": "front-door", "reason": "bad-signature", "detail": "x", "seq": None}
    for payload in (json.dumps(body).encode(), seal(body, b"another-key", REFUSAL_DOMAIN)):
        msg = paho.MQTTMessage(topic=b"voxgate/front-door/decision/refused")
        msg.payload = payload
        with caplog.at_level(logging.WARNING):
            link._on_message(link._client, None, msg)
    assert counted == [] and link.stats["lock_refusals"] == 0
    assert link.stats["reports_unverified"] == 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "give both the same key" not in caplog.text
