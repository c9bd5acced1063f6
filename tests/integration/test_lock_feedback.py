"""The door hears when its lock refuses a decision: a real mosquitto with the ACL example of
docs/mqtt.md, the door's MqttLink, and `voxgate actuator` as a child process. Before, the
refusal was only in the lock's log: the door said "granted" and stayed shut."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from broker import Broker
from mqtt_helpers import ActuatorProcess, link_config, wait_until, write_key

from voxgate.decision import (
    DECISION_DOMAIN,
    Issuer,
    SequenceCounter,
    canonical_json,
    mac,
    open_sealed,
    seal,
    sign,
)
from voxgate.mqtt.client import MqttLink
from voxgate.mqtt.refusal import MAX_BYTES, REFUSAL_DOMAIN

REPO = Path(__file__).resolve().parents[2]
DEV = "front-door"
KEY = b"front-door-decision-key-for-feedback"
USERS = {"front-door": "p1", "lock-front": "p2", "operator": "p3", "homeassistant": "p4"}


def docs_acl() -> str:
    section = (REPO / "docs" / "mqtt.md").read_text().split("## Broker ACL", 1)[1]
    return re.search(r"```text\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


@pytest.fixture
def acl_broker(make_broker: Callable[..., Broker]) -> Broker:
    return make_broker(tls=False, users=USERS, acl=docs_acl())


@pytest.fixture
def door(acl_broker: Broker) -> Iterator[MqttLink]:
    link = MqttLink(link_config(acl_broker, user="front-door"), DEV, decision_key=KEY)
    link.start()
    wait_until(lambda: link.connected, 10, "the door connected")
    yield link
    link.stop()


def _report(body: dict[str, object], key: bytes = KEY) -> bytes:
    """A report as a lock holding `key` seals it."""
    return seal(body, key, REFUSAL_DOMAIN)


def _client(broker: Broker, user: str) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.username_pw_set(user, USERS[user])
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def _replayed_error(seq: int) -> str:
    """The door's ERROR for the lock's refusal of a grant it had already acted on."""
    return (
        f"MQTT: the lock REFUSED granted seq={seq}: replayed (seq {seq} <= last accepted "
        f"{seq}); the lock already accepted a higher sequence number from this door (data "
        "folder restored? see 'Sequence numbers and restored doors' in docs/mqtt.md)"
    )


def _lock_refuses_a_replayed_grant(door: Any, lock: Any, issuer: Any, client: Any) -> Any:
    """The door grants, the lock acts; `client` sends the same grant again and the lock
    refuses it (the door's first refusal). Returns the grant."""
    grant = issuer.issue("granted", "alice", time.time())
    assert door.publish_decision(grant)
    wait_until(lambda: len(lock.actions()) == 1, 10, "the grant acted on")
    client.publish(f"voxgate/{DEV}/decision", sign(grant, KEY), qos=1).wait_for_publish(5)
    wait_until(lambda: door.stats["lock_refusals"] == 1, 10, "the replay refused")
    return grant


def test_the_door_logs_and_counts_what_the_lock_refused(
    tmp_path: Path, acl_broker: Broker, door: MqttLink, caplog: pytest.LogCaptureFixture
) -> None:
    lock = ActuatorProcess(
        tmp_path, acl_broker, {DEV: write_key(tmp_path / "front.key", KEY)}, user="lock-front"
    ).start()
    seen: list[bytes] = []
    observer = _client(acl_broker, "operator")  # reads voxgate/#
    observer.on_message = lambda c, u, m: seen.append(bytes(m.payload))
    observer.subscribe(f"voxgate/{DEV}/decision/refused", qos=1)
    # The door's own account, sending what the door's link would not (a stale or forged
    # decision): how a wrong clock or a wrong key looks to the lock.
    raw = _client(acl_broker, "front-door")
    issuer = Issuer(DEV, SequenceCounter(tmp_path / "seq.json"), ttl_s=30)
    try:
        time.sleep(0.3)  # the observer's subscription
        with caplog.at_level(logging.INFO, logger="voxgate.mqtt.client"):
            grant = issuer.issue("granted", "alice", time.time())
            assert door.publish_decision(grant)
            wait_until(lambda: len(lock.actions()) == 1, 10, "the grant acted on")

            def refused(n: int) -> None:
                wait_until(lambda: door.stats["lock_refusals"] >= n, 10, f"{n} refusal(s)")

            # The same bytes again: replayed.
            raw.publish(f"voxgate/{DEV}/decision", sign(grant, KEY), qos=1).wait_for_publish(5)
            refused(1)
            # A door clock 40 s behind the lock's: expired on arrival.
            stale = issuer.issue("granted", "alice", time.time() - 40)
            raw.publish(f"voxgate/{DEV}/decision", sign(stale, KEY), qos=1).wait_for_publish(5)
            refused(2)
            # A key the lock does not hold: not authentic, so no seq is reported.
            forged = issuer.issue("granted", "alice", time.time())
            raw.publish(f"voxgate/{DEV}/decision", sign(forged, b"rotated-key-the-lock-lacks"))
            refused(3)
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert errors == [
            _replayed_error(grant.seq),
            errors[1],
            "MQTT: the lock REFUSED a decision: bad-signature (HMAC does not match); the lock "
            "holds another decision key for this door than the door's mqtt.hmac_key_file: "
            "give both the same key",
        ]
        assert re.fullmatch(
            rf"MQTT: the lock REFUSED granted seq={stale.seq}: expired \(expired 1\d\.\d{{3}} s "
            r"ago\); the door's and the lock's clocks differ.*check NTP on both",
            errors[1],
        ), errors[1]
        assert door.stats["lock_refusals"] == 3
        wait_until(lambda: len(seen) == 3, 5, "the observer saw the three reports")
        reports = [open_sealed(p, KEY, REFUSAL_DOMAIN, MAX_BYTES) for p in seen]
        assert [(r["reason"], r["seq"], r["outcome"]) for r in reports] == [
            ("replayed", grant.seq, "granted"),
            ("expired", stale.seq, "granted"),
            ("bad-signature", None, None),
        ]
        assert all(r["device"] == DEV and r["v"] == 1 for r in reports)
        assert not any(b"alice" in p for p in seen)  # the report names no one
        assert len(lock.actions()) == 1 and lock.alive
    finally:
        for c in (raw, observer):
            c.disconnect()
            c.loop_stop()
        lock.stop()


def test_a_lock_whose_account_may_not_report_still_obeys(
    tmp_path: Path, make_broker: Callable[..., Broker]
) -> None:
    """An ACL from before the reports (the lock may only read decisions): the broker drops
    the reports, and the lock keeps its connection and keeps acting on grants."""
    old_acl = docs_acl().replace("topic write voxgate/front-door/decision/refused\n", "")
    assert "decision/refused" not in old_acl
    broker = make_broker(tls=False, users=USERS, acl=old_acl)
    door = MqttLink(link_config(broker, user="front-door"), DEV, decision_key=KEY)
    door.start()
    lock = ActuatorProcess(
        tmp_path, broker, {DEV: write_key(tmp_path / "front.key", KEY)}, user="lock-front"
    ).start()
    try:
        wait_until(lambda: door.connected, 10, "the door connected")
        issuer = Issuer(DEV, SequenceCounter(tmp_path / "seq.json"), ttl_s=30)
        first = issuer.issue("granted", "alice", time.time())
        door.publish_decision(first)
        wait_until(lambda: len(lock.actions()) == 1, 10, "the first grant")
        raw = _client(broker, "front-door")
        raw.publish(f"voxgate/{DEV}/decision", sign(first, KEY), qos=1).wait_for_publish(5)
        raw.disconnect()
        lock.wait_log(r"REJECTED .*: replayed")
        door.publish_decision(issuer.issue("granted", "alice", time.time()))
        wait_until(lambda: len(lock.actions()) == 2, 10, "the grant after the dropped report")
        assert lock.log_count("disconnected from the broker") == 0 and lock.alive
        assert door.stats["lock_refusals"] == 0
    finally:
        lock.stop()
        door.stop()


def test_a_running_daemon_warns_of_a_lock_with_the_wrong_key(
    tmp_path: Path, broker: Broker
) -> None:
    """`voxgate run` and `voxgate actuator` as processes, the lock holding a key from before a
    rotation: every decision is refused as bad-signature, and the lock's reports are sealed
    with that other key. The door cannot tell that lock from a stranger, so it does not count
    the report as a refusal, but its warning names the likely cause and what to do."""
    import urllib.request

    import numpy as np
    import yaml
    from test_daemon_e2e import ATTEMPT, DaemonProcess, pause, speech, voxgate

    key = tmp_path / "voiceprint.key"
    assert voxgate("users", "init-key", str(key)).returncode == 0
    mqtt_cfg = broker.mqtt_settings("device")
    mqtt_cfg.update({"hmac_key_file": str(write_key(tmp_path / "decision.key", KEY))})
    doc = {
        "device_id": DEV,
        "data_dir": str(tmp_path / "data"),
        "logging": {"level": "info"},
        "audio": {"source": "stdin"},
        "speaker": {"key_file": str(key)},
        "challenge": {"mode": "off"},
        "mqtt": mqtt_cfg,
        "metrics": {"port": 0},
        "service": {"decided_hold_s": 0.5},
    }
    config = tmp_path / "voxgate.yaml"
    config.write_text(yaml.safe_dump(doc))
    lock_dir = tmp_path / "lock"
    lock_dir.mkdir()
    old_key = write_key(lock_dir / "front.key", b"the-key-before-the-rotation-0123")
    lock = ActuatorProcess(lock_dir, broker, {DEV: old_key}).start()
    daemon = DaemonProcess(config)
    try:
        daemon.feed(pause(0.3))
        daemon.wait_log("MQTT: connected")
        daemon.wait_log("metrics on http://")
        daemon.feed(np.concatenate([pause(0.5), speech(ATTEMPT, "en+m3"), pause(1.2)]))
        lock.wait_log(r"REJECTED on voxgate/front-door/decision: bad-signature", 30)
        daemon.wait_log("signed with another key (it claims 'bad-signature')", 10)
        m = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", daemon.log())
        assert m is not None
        url = f"http://127.0.0.1:{m.group(1)}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        assert "voxgate_lock_refusals_total{" not in text, text
        assert daemon.close() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
        lock.stop()
    assert not any("the lock REFUSED" in x for x in daemon.lines)
    line = next(x for x in daemon.lines if "signed with another key" in x)
    assert " WARNING " in line and "give it the door's mqtt.hmac_key_file" in line, line


def test_a_retained_report_is_not_taken_for_a_new_refusal_at_every_connect(
    acl_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """A lock never retains its reports (another make might, or a hand-made test message):
    the broker then hands the same report to the door at every connect, and each time the
    door logged "the lock REFUSED" as an ERROR and counted a refusal that happened once,
    maybe long ago. A retained report is ignored with a warning and cleared."""
    lock = _client(acl_broker, "lock-front")
    body = {"v": 1, "device": DEV, "reason": "expired", "detail": "old", "seq": 7}
    topic = f"voxgate/{DEV}/decision/refused"
    lock.publish(topic, json.dumps(body), qos=1, retain=True).wait_for_publish(5)
    lock.disconnect()
    lock.loop_stop()
    link = MqttLink(link_config(acl_broker, user="front-door"), DEV, decision_key=KEY)
    with caplog.at_level(logging.WARNING, logger="voxgate.mqtt.client"):
        link.start()
        try:
            wait_until(lambda: link.connected, 10, "the door connected")
            wait_until(
                lambda: link.stats["lock_refusals"] or "refusal report" in caplog.text,
                5,
                "the retained report handled",
            )
            time.sleep(0.3)
        finally:
            link.stop()
    assert link.stats["lock_refusals"] == 0
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "retained refusal report on voxgate/front-door/decision/refused ignored" in caplog.text
    # Cleared: a new reader of the topic gets nothing.
    seen: list[bytes] = []
    observer = _client(acl_broker, "operator")
    observer.on_message = lambda c, u, m: seen.append(bytes(m.payload))
    observer.subscribe(topic, qos=1)
    time.sleep(0.5)
    observer.disconnect()
    observer.loop_stop()
    assert seen == []


def test_a_report_naming_another_door_is_not_logged_as_this_doors_refusal(
    acl_broker: Broker, door: MqttLink, caplog: pytest.LogCaptureFixture
) -> None:
    """A report on this door's topic whose `device` names another door (a lock of another
    make that sends every door's reports to one topic, a lock configured with the wrong
    prefix) was logged as "the lock REFUSED" this door's decision and counted as one: the
    administrator went looking for a refusal that never happened here."""
    lock = _client(acl_broker, "lock-front")
    body = {"v": 1, "device": "back-door", "reason": "expired", "detail": "late", "seq": 9}
    topic = f"voxgate/{DEV}/decision/refused"
    with caplog.at_level(logging.WARNING, logger="voxgate.mqtt.client"):
        try:
            time.sleep(0.3)
            lock.publish(topic, _report(body), qos=1).wait_for_publish(5)
            wait_until(
                lambda: door.stats["lock_refusals"] or "refusal report" in caplog.text,
                5,
                "the report handled",
            )
            time.sleep(0.3)
        finally:
            lock.disconnect()
            lock.loop_stop()
    assert door.stats["lock_refusals"] == 0
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert (
        f"MQTT: refusal report on {topic} names device 'back-door', not this door "
        f"({DEV}): ignored" in caplog.text
    ), caplog.text


def test_reports_naming_another_door_cannot_hide_this_doors_refusals(
    acl_broker: Broker, door: MqttLink, caplog: pytest.LogCaptureFixture
) -> None:
    """Reports naming another door were ignored within the same log limit as this door's
    real refusals: a neighbour's lock sending a burst of them held back the ERROR line of
    this door's next refusal for the rest of the minute."""
    from voxgate.mqtt.client import REFUSAL_LOG_BURST

    lock = _client(acl_broker, "lock-front")
    topic = f"voxgate/{DEV}/decision/refused"
    stray = {"v": 1, "device": "back-door", "reason": "expired", "detail": "late", "seq": 9}
    mine = {"v": 1, "device": DEV, "reason": "expired", "detail": "expired 3 s ago", "seq": 7}
    with caplog.at_level(logging.WARNING, logger="voxgate.mqtt.client"):
        try:
            time.sleep(0.3)
            for _ in range(REFUSAL_LOG_BURST + 5):
                lock.publish(topic, _report(stray), qos=1).wait_for_publish(5)
            lock.publish(topic, _report(mine), qos=1).wait_for_publish(5)
            wait_until(lambda: door.stats["lock_refusals"] == 1, 10, "this door's refusal")
        finally:
            lock.disconnect()
            lock.loop_stop()
    assert caplog.text.count("names device 'back-door'") == REFUSAL_LOG_BURST
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "MQTT: the lock REFUSED decision seq=7: expired (expired 3 s ago); the door's and the "
        "lock's clocks differ, or the decision was held up on the way: check NTP on both"
    ], caplog.text


def test_junk_on_the_decision_topic_is_not_taken_for_a_version_mismatch(
    tmp_path: Path, acl_broker: Broker, door: MqttLink, caplog: pytest.LogCaptureFixture
) -> None:
    """Bytes that are not a decision, published on the door's decision topic by something
    other than the door (here a tool with the door's account), were reported by the lock as
    `malformed` and logged by the door as an ERROR telling its administrator to "compare the
    voxgate versions". They are now named for what they are, with the bytes received, as a
    warning within a limit of their own: a stream of them, or of reports naming another
    door, no longer uses up the lines of this door's real refusals."""
    from voxgate.mqtt.client import REFUSAL_LOG_BURST

    lock = ActuatorProcess(
        tmp_path, acl_broker, {DEV: write_key(tmp_path / "front.key", KEY)}, user="lock-front"
    ).start()
    tool = _client(acl_broker, "front-door")
    neighbour = _client(acl_broker, "lock-front")
    issuer = Issuer(DEV, SequenceCounter(tmp_path / "seq.json"), ttl_s=30)
    topic = f"voxgate/{DEV}/decision"
    stray = {"v": 1, "device": "back-door", "reason": "expired", "detail": "late", "seq": 9}
    try:
        with caplog.at_level(logging.INFO, logger="voxgate.mqtt.client"):
            tool.publish(topic, b"hello from a test tool", qos=1).wait_for_publish(5)
            wait_until(lambda: "not a voxgate decision" in caplog.text, 10, "the door's line")
            for _ in range(REFUSAL_LOG_BURST):
                tool.publish(topic, b"hello from a test tool", qos=1).wait_for_publish(5)
                neighbour.publish(f"{topic}/refused", _report(stray), qos=1).wait_for_publish(5)
            wait_until(lambda: "held back" in caplog.text, 10, "the stray reports' limit")
            # Then a real refusal of this door's own decision: the same grant twice.
            grant = _lock_refuses_a_replayed_grant(door, lock, issuer, tool)
    finally:
        for c in (tool, neighbour):
            c.disconnect()
            c.loop_stop()
        lock.stop()
    text = caplog.text
    assert "compare the voxgate versions" not in text, text
    junk = [r for r in caplog.records if "not a voxgate decision" in r.getMessage()]
    assert junk and all(r.levelno == logging.WARNING for r in junk)
    assert "received 22 bytes: b'hello from a test tool'" in junk[0].getMessage()
    assert "broker ACL" in junk[0].getMessage()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [_replayed_error(grant.seq)], text


def test_forged_reports_are_warnings_and_cannot_hide_the_locks_own(
    tmp_path: Path, acl_broker: Broker, door: MqttLink, caplog: pytest.LogCaptureFixture
) -> None:
    """Reports were unsigned: anyone the broker let write the topic (here the lock's own
    account, as a stolen password would) made the door log an ERROR with the advice to give
    both the same key, counted as a refusal, and a burst of them used up the lines of the
    lock's real refusals. Now only a report sealed with the door's decision key is a refusal:
    a bare one (what a lock of an older voxgate sends, byte for byte) and one sealed with
    another key are warnings within the stray reports' limit, not counted."""
    from voxgate.mqtt.client import REFUSAL_LOG_BURST

    lock = ActuatorProcess(
        tmp_path, acl_broker, {DEV: write_key(tmp_path / "front.key", KEY)}, user="lock-front"
    ).start()
    forger = _client(acl_broker, "lock-front")
    raw = _client(acl_broker, "front-door")
    issuer = Issuer(DEV, SequenceCounter(tmp_path / "seq.json"), ttl_s=30)
    topic = f"voxgate/{DEV}/decision/refused"
    claim = {"v": 1, "device": DEV, "reason": "bad-signature", "detail": "HMAC does not match"}
    claim |= {"seq": None, "outcome": None, "at": time.time()}
    bare = json.dumps(claim, separators=(",", ":"), sort_keys=True).encode()
    other = _report(claim, b"a-key-this-door-does-not-hold-00")
    try:
        with caplog.at_level(logging.INFO, logger="voxgate.mqtt.client"):
            time.sleep(0.3)
            forger.publish(topic, bare, qos=1).wait_for_publish(5)
            forger.publish(topic, other, qos=1).wait_for_publish(5)
            wait_until(lambda: door.stats["reports_unverified"] == 2, 10, "both forgeries")
            for _ in range(REFUSAL_LOG_BURST):
                forger.publish(topic, bare, qos=1).wait_for_publish(5)
            wait_until(lambda: "held back" in caplog.text, 10, "the stray reports' limit")
            # The lock's own refusal after the burst: the same grant twice.
            grant = _lock_refuses_a_replayed_grant(door, lock, issuer, raw)
    finally:
        for c in (forger, raw):
            c.disconnect()
            c.loop_stop()
        lock.stop()
    text = caplog.text
    assert "give both the same key" not in text, text
    assert door.stats["reports_unverified"] == 2 + REFUSAL_LOG_BURST
    warned = [r for r in caplog.records if f"refusal report on {topic} ignored" in r.getMessage()]
    assert len(warned) == REFUSAL_LOG_BURST and all(r.levelno == logging.WARNING for r in warned)
    first, second = warned[0].getMessage(), warned[1].getMessage()
    assert "not signed (it claims 'bad-signature')" in first, first
    assert "a lock of an older voxgate" in first and "check the broker ACL" in first, first
    assert "signed with another key (it claims 'bad-signature')" in second, second
    assert "check the broker ACL" in second, second
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [_replayed_error(grant.seq)], text


def test_a_decision_signed_with_an_unknown_algorithm_is_taken_for_a_version_mismatch(
    tmp_path: Path, acl_broker: Broker, door: MqttLink, caplog: pytest.LogCaptureFixture
) -> None:
    """A voxgate envelope whose `alg` this lock does not know (a newer door's signature
    scheme) was reported as `not-a-decision`, with the advice to fix the broker ACL; the
    likely cause is a version mismatch. Junk that is no envelope keeps `not-a-decision`."""
    lock = ActuatorProcess(
        tmp_path, acl_broker, {DEV: write_key(tmp_path / "front.key", KEY)}, user="lock-front"
    ).start()
    raw = _client(acl_broker, "front-door")
    issuer = Issuer(DEV, SequenceCounter(tmp_path / "seq.json"), ttl_s=30)
    body = canonical_json(issuer.issue("granted", "alice", time.time()).to_body())
    newer = {"alg": "HMAC-SHA3-256", "body": body, "sig": mac(KEY, DECISION_DOMAIN, body)}
    try:
        with caplog.at_level(logging.INFO, logger="voxgate.mqtt.client"):
            time.sleep(0.3)
            raw.publish(f"voxgate/{DEV}/decision", json.dumps(newer), qos=1).wait_for_publish(5)
            wait_until(lambda: door.stats["lock_refusals"] == 1, 10, "the refusal")
        lock.wait_log(r"REJECTED on voxgate/front-door/decision: malformed \(alg 'HMAC-SHA3-256'")
        assert lock.actions() == [] and lock.alive
    finally:
        raw.disconnect()
        raw.loop_stop()
        lock.stop()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "MQTT: the lock REFUSED a decision: malformed (alg 'HMAC-SHA3-256' is not HMAC-SHA256, "
        "the one this build knows); the lock cannot read this door's decisions: compare the "
        "voxgate versions"
    ], caplog.text
    assert "broker ACL" not in caplog.text
