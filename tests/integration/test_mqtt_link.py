"""MqttLink against a real mosquitto (TLS, passwords, ACL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import MOSQUITTO_PASSWD, STANDARD_USERS, Broker, standard_acl
from mqtt_helpers import (
    REPO,
    ActuatorProcess,
    Recorder,
    admin_client,
    link_config,
    wait_until,
    write_key,
)

from voxgate.config.mqtt import MqttConfig
from voxgate.decision import Issuer, SequenceCounter, verify
from voxgate.mqtt.client import MqttLink, MqttSetupError
from voxgate.mqtt.commands import make_command, read_reply

DEV = "front-door"
DKEY = b"decision-key-for-tests-0123456789"
CKEY = b"command-key-for-tests-0123456789"
TOPIC_DECISION = "voxgate/front-door/decision"


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    return Issuer(DEV, SequenceCounter(tmp_path / "seq.json"), ttl_s=5)


@pytest.fixture
def link_factory(broker: Broker) -> Iterator[Callable[..., MqttLink]]:
    links: list[MqttLink] = []

    def make(b: Broker | None = None, **overrides: object) -> MqttLink:
        link = MqttLink(
            link_config(b or broker, **overrides), DEV, decision_key=DKEY, command_key=CKEY
        )
        links.append(link)
        link.start()
        return link

    yield make
    for link in links:
        link.stop()


def test_status_discovery_state_decision(
    broker: Broker, link_factory: Callable[..., MqttLink], issuer: Issuer
) -> None:
    ha = Recorder(broker, "ha", ["voxgate/#", "homeassistant/#"])
    try:
        link = link_factory()
        wait_until(lambda: link.connected, 10, "link connected")
        ha.wait_for("voxgate/front-door/status", lambda m: m.payload == b"online")
        disc = ha.wait_for("homeassistant/event/front-door/decision/config", lambda m: True)
        assert json.loads(disc.payload)["event_types"] == ["granted", "denied", "retry"]
        link.publish_state("listening")
        ha.wait_for("voxgate/front-door/state", lambda m: m.payload == b"listening")
        d = issuer.issue("granted", "alice", time.time(), reasons=["speaker-match"])
        assert link.publish_decision(d)
        got = ha.wait_for("voxgate/front-door/decision", lambda m: True)
        assert not got.retain
        assert verify(got.payload, DKEY, time.time(), None, device=DEV) == d
        event = ha.wait_for("voxgate/front-door/event", lambda m: True)
        assert json.loads(event.payload)["event_type"] == "granted"
        ha.wait_for("voxgate/front-door/user", lambda m: m.payload == b"alice")
        wait_until(lambda: link.stats["decisions_acked"] == 1, 5, "PUBACK")
        link.stop()
        ha.wait_for("voxgate/front-door/status", lambda m: m.payload == b"offline")
    finally:
        ha.close()


def test_retained_status_seen_by_late_subscriber(
    broker: Broker, link_factory: Callable[..., MqttLink]
) -> None:
    link = link_factory()
    wait_until(lambda: link.connected, 10, "link connected")
    time.sleep(0.2)
    assert _retained(broker, "lock", "voxgate/front-door/status") == b"online"


def test_unreachable_broker_at_start_then_connects(
    make_broker: Callable[..., Broker], tmp_path: Path
) -> None:
    from broker import standard_acl

    b = make_broker(start=False, tls=True, users=STANDARD_USERS, acl=standard_acl())
    link = MqttLink(link_config(b), DEV, decision_key=DKEY, command_key=CKEY)
    t0 = time.monotonic()
    link.start()
    try:
        assert time.monotonic() - t0 < 1.0, "start() must not block on the broker"
        wait_until(lambda: link.stats["connect_failures"] >= 2, 10, "retries")
        assert not link.connected and link.connection_state == "unreachable"
        b.start()
        wait_until(lambda: link.connected, 10, "connect after the broker came up")
        rec = Recorder(b, "lock", ["voxgate/front-door/status"])
        assert rec.wait_for("voxgate/front-door/status", lambda m: True).payload == b"online"
        rec.close()
    finally:
        link.stop()


def test_wrong_password_keeps_retrying_without_crash(
    broker: Broker, tmp_path: Path, issuer: Issuer
) -> None:
    bad = tmp_path / "bad.password"
    bad.write_text("nope")
    bad.chmod(0o600)
    cfg = link_config(broker, password_file=str(bad))
    link = MqttLink(cfg, DEV, decision_key=DKEY, command_key=CKEY)
    link.start()
    try:
        wait_until(lambda: link.stats["connect_failures"] >= 2, 10, "refusals")
        assert not link.connected and link.connection_state.startswith("refused")
        # Decisions made meanwhile are held, and dropped once expired rather than sent late.
        assert link.publish_decision(issuer.issue("granted", "a", time.time() - 4.5))
        time.sleep(0.7)
        assert link.publish_decision(issuer.issue("denied", None, time.time()))
        assert link.stats["decisions_expired"] == 1
    finally:
        link.stop()


def test_missing_ca_file_is_a_setup_error(broker: Broker, tmp_path: Path) -> None:
    cfg = link_config(broker, tls={"ca_file": str(tmp_path / "nope.crt")})
    with pytest.raises(MqttSetupError, match="does not exist"):
        MqttLink(cfg, DEV, decision_key=DKEY)


def test_mqtt311_protocol(
    broker: Broker, link_factory: Callable[..., MqttLink], issuer: Issuer
) -> None:
    rec = Recorder(broker, "lock", ["voxgate/front-door/decision"])
    try:
        link = link_factory(protocol="3.1.1")
        wait_until(lambda: link.connected, 10, "link connected")
        link.publish_decision(issuer.issue("denied", None, time.time()))
        got = rec.wait_for("voxgate/front-door/decision", lambda m: True)
        assert verify(got.payload, DKEY, time.time(), None).outcome == "denied"
    finally:
        rec.close()


def test_last_will_on_crash(broker: Broker, tmp_path: Path) -> None:
    rec = Recorder(broker, "lock", ["voxgate/front-door/status"])
    cfg = link_config(broker)
    script = f"""
import time
from voxgate.config.mqtt import MqttConfig
from voxgate.mqtt.client import MqttLink
cfg = MqttConfig.model_validate_json({cfg.model_dump_json()!r})
link = MqttLink(cfg, "front-door", decision_key=b"k")
link.start()
while not link.connected:
    time.sleep(0.01)
print("up", flush=True)
time.sleep(60)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"up"
        rec.wait_for("voxgate/front-door/status", lambda m: m.payload == b"online")
        proc.send_signal(signal.SIGKILL)
        rec.wait_for("voxgate/front-door/status", lambda m: m.payload == b"offline", timeout=10)
    finally:
        proc.kill()
        proc.wait()
        rec.close()


def _retained(broker: Broker, user: str, topic: str) -> bytes:
    """What the broker retains on `topic`, as a client subscribing now receives it."""
    late = Recorder(broker, user, [topic])
    try:
        return late.wait_for(topic, lambda m: m.retain).payload
    finally:
        late.close()


def test_commands_are_subscribed_before_online_is_announced(
    make_broker: Callable[..., Broker], link_factory: Callable[..., MqttLink]
) -> None:
    """An integrator may send a command the moment it sees 'online'; the broker handles the
    door's packets in order, so the SUBSCRIBE must come before that PUBLISH (it came after)."""
    b = make_broker(tls=True, users=STANDARD_USERS, acl=standard_acl(), extra_conf="log_type debug")
    link = link_factory(b)

    def has(*words: str) -> bool:
        return any(all(w in x for w in words) for x in b.log_text().splitlines())

    # The topic also shows in the CONNECT's will line, before the PUBLISH arrives.
    wait_until(lambda: has("Received PUBLISH", "front-door/status"), 10, "the status publish")
    wait_until(lambda: has("Received SUBSCRIBE"), 10, "the subscription")
    lines = b.log_text().splitlines()
    subscribe = next(i for i, x in enumerate(lines) if "Received SUBSCRIBE" in x)
    online = next(
        i for i, x in enumerate(lines) if "Received PUBLISH" in x and "front-door/status" in x
    )
    assert link.connected
    assert subscribe < online, "\n".join(lines[min(subscribe, online) : max(subscribe, online) + 1])


def test_messages_held_in_a_dead_connection_do_not_overwrite_the_republished_state(
    plain_broker: Broker, link_factory: Callable[..., MqttLink]
) -> None:
    """'listening' and two challenges are published into a connection that is dead but not
    yet noticed (broker stopped, then killed); the attempt ends ('idle') while offline. paho
    used to re-send the held messages after the reconnect's republish: 'listening' stayed
    retained and the display got a challenge after it had expired. The challenge still
    valid must arrive."""
    import signal
    from types import SimpleNamespace

    b = plain_broker
    link = link_factory(b, user=None, reconnect_min_s=1.0, reconnect_max_s=1.0)
    wait_until(lambda: link.connected, 10, "link connected")
    link.publish_state("idle")
    display = Recorder(b, "admin", ["voxgate/front-door/challenge"])
    try:
        assert b.proc is not None
        os.kill(b.proc.pid, signal.SIGSTOP)  # the link's socket is dead, not yet noticed
        link.publish_state("listening")
        now = time.time()
        for text, valid_s in (("4719", 2.0), ("8052", 60.0)):  # one expires while offline
            link.publish_challenge(
                SimpleNamespace(
                    mode="digits",
                    text=text,
                    words=(),
                    nonce="ab" * 8,
                    issued_at=now,
                    expires_at=now + valid_s,
                )
            )
        time.sleep(0.2)
        b.kill()
        wait_until(lambda: not link.connected, 10, "the link notices")
        link.publish_state("idle")  # the attempt is over; offline, so only remembered
        time.sleep(2.3)  # the challenge expires
        b.start()
        wait_until(lambda: link.connected, 10, "the link reconnects")
        wait_until(lambda: display.subscribed_gen >= 2, 10, "the display re-subscribed")
        time.sleep(1.0)
        assert _retained(b, "admin", "voxgate/front-door/state") == b"idle"
        # The expired challenge is not shown; the one still valid is, with its time left.
        wait_until(lambda: display.on("voxgate/front-door/challenge"), 5, "the valid challenge")
        shown = [json.loads(m.payload)["text"] for m in display.on("voxgate/front-door/challenge")]
        assert shown == ["8052"]
    finally:
        display.close()


def test_challenge_and_lockout_times_have_millisecond_precision(
    broker: Broker, link_factory: Callable[..., MqttLink]
) -> None:
    """docs/mqtt.md: "Times are Unix seconds (float, millisecond precision)". Seen on a real
    door: the challenge carried "issued_at":1795779076.594386 and the lockout
    "until":1795779274.4883978, where decisions, events and replies carry milliseconds."""
    from types import SimpleNamespace

    link = link_factory()
    wait_until(lambda: link.connected, 10, "link connected")
    display = Recorder(
        broker, "admin", ["voxgate/front-door/challenge", "voxgate/front-door/lockout"]
    )
    try:
        now = round(time.time(), 3) + 0.000386  # below the millisecond, as time.time() is
        link.publish_challenge(
            SimpleNamespace(
                mode="digits", text="4719", words=(), nonce="ab" * 8,
                issued_at=now, expires_at=now + 10.000123,
            )
        )  # fmt: skip
        link.publish_lockout([{"key": "device", "failures": 5, "until": now + 30.0000017}])
        shown = json.loads(display.wait_for("voxgate/front-door/challenge", lambda m: True).payload)
        locked = json.loads(display.wait_for("voxgate/front-door/lockout", lambda m: True).payload)
        times = [
            shown["issued_at"],
            shown["expires_at"],
            locked["at"],
            locked["locked"][0]["until"],
        ]
        assert all(t == round(t, 3) for t in times), times
        assert abs(shown["expires_at"] - (now + 10)) < 0.001
    finally:
        display.close()


def test_a_signed_command_refused_after_its_signature_is_answered_with_its_nonce(
    broker: Broker, link_factory: Callable[..., MqttLink]
) -> None:
    # Found following docs/mqtt.md against a running daemon: the doc says a reply's nonce is
    # null "when the command was refused before its nonce could be read (e.g. malformed)",
    # but every refusal came back with null: a signed command refused as expired, replayed
    # or bad-args could not be matched to what was sent. Unsigned ones still get null.
    link = link_factory()
    link.on_command("erase-user", lambda args: {"erased": args["user"]})
    wait_until(lambda: link.connected, 10, "link connected")
    replies = Recorder(broker, "admin", ["voxgate/front-door/cmd/+/result"])
    admin = admin_client(broker)
    topic = "voxgate/front-door/cmd/erase-user"

    def send(payload: bytes) -> dict[str, object]:
        before = len(replies.on(topic + "/result"))
        admin.publish(topic, payload, qos=1).wait_for_publish(5)
        wait_until(lambda: len(replies.on(topic + "/result")) > before, 5, "a reply")
        return read_reply(replies.on(topic + "/result")[-1].payload, DKEY)

    try:
        now = time.time()
        cases = {
            "expired": make_command(CKEY, DEV, "erase-user", {"user": "a"}, now=now - 100),
            "bad-args": make_command(CKEY, DEV, "erase-user", {"who": "a"}, now=now),
            "wrong-device": make_command(CKEY, "back-door", "erase-user", {"user": "a"}, now=now),
        }
        for code, payload in cases.items():
            r = send(payload)
            sent = json.loads(json.loads(payload)["body"])["nonce"]
            assert (r["error"], r["nonce"]) == (code, sent), r
        good = make_command(CKEY, DEV, "erase-user", {"user": "a"}, now=now)
        assert send(good)["ok"] is True
        r = send(good)
        assert (r["error"], r["nonce"]) == (
            "replayed",
            json.loads(json.loads(good)["body"])["nonce"],
        )
        forged = make_command(b"guessed key", DEV, "erase-user", {"user": "b"}, now=now)
        r = send(forged)
        assert (r["error"], r["nonce"]) == ("unauthorized", None)  # not echoed unsigned
    finally:
        admin.disconnect()
        admin.loop_stop()
        replies.close()


def test_commands_authenticated(
    broker: Broker, link_factory: Callable[..., MqttLink], caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[dict[str, str]] = []

    def erase(args: dict[str, str]) -> dict[str, object]:
        if args["user"] == "ghost":
            raise ValueError("no such user")
        if args["user"] == "boom":
            raise RuntimeError("bug")
        calls.append(args)
        return {"erased": args["user"]}

    link = link_factory()
    link.on_command("erase-user", erase)
    link.on_command("reload", lambda args: {"reloaded": True})
    link.on_command("attempt", lambda args: {"ok": False, "error": "challenge mode is off"})
    wait_until(lambda: link.connected, 10, "link connected")
    replies = Recorder(broker, "admin", ["voxgate/front-door/cmd/+/result"])
    admin = admin_client(broker)
    topic = "voxgate/front-door/cmd/erase-user"
    result = "voxgate/front-door/cmd/erase-user/result"

    def send(payload: bytes, t: str = topic) -> dict[str, object]:
        before = len(replies.on(t + "/result"))
        admin.publish(t, payload, qos=1).wait_for_publish(5)
        wait_until(lambda: len(replies.on(t + "/result")) > before, 5, "a reply")
        return read_reply(replies.on(t + "/result")[-1].payload, DKEY)

    try:
        now = time.time()
        good = make_command(CKEY, DEV, "erase-user", {"user": "alice"}, now=now)
        r = send(good)
        assert r["ok"] is True and r["result"] == {"erased": "alice"}
        assert calls == [{"user": "alice"}]
        # Every bad case gets an error reply, and the handler is not called.
        assert send(good)["error"] == "replayed"
        forged = make_command(b"guessed key", DEV, "erase-user", {"user": "bob"}, now=now)
        assert send(forged)["error"] == "unauthorized"
        assert send(b"{definitely not json")["error"] == "malformed"
        assert send(b"x" * 10_000)["error"] == "oversized"
        assert send(b"", "voxgate/front-door/cmd/format-disk")["error"] == "unknown-command"
        no_handler = make_command(CKEY, DEV, "enroll-start", {"user": "c"}, now=now)
        assert send(no_handler, "voxgate/front-door/cmd/enroll-start")["error"] == "unsupported"
        ghost = make_command(CKEY, DEV, "erase-user", {"user": "ghost"}, now=now)
        r = send(ghost)
        assert (r["error"], r["detail"]) == ("failed", "no such user")
        boom = make_command(CKEY, DEV, "erase-user", {"user": "boom"}, now=now)
        assert send(boom)["error"] == "internal-error"
        assert calls == [{"user": "alice"}]
        att = make_command(CKEY, DEV, "attempt", now=now)
        r = send(att, "voxgate/front-door/cmd/attempt")
        assert (r["ok"], r["error"], r["detail"]) == (False, "failed", "challenge mode is off")
        # An account without write access on cmd/# cannot even reach the device.
        intruder = admin_client(broker, "intruder")
        n = len(replies.on(result))
        intruder.publish(topic, make_command(CKEY, DEV, "erase-user", {"user": "x"}, now=now), 1)
        time.sleep(0.5)
        assert len(replies.on(result)) == n and calls == [{"user": "alice"}]
        intruder.disconnect()
        intruder.loop_stop()
        # Still alive and obeying.
        ok = make_command(CKEY, DEV, "reload", now=time.time())
        assert send(ok, "voxgate/front-door/cmd/reload")["ok"] is True
        assert link.stats["commands_rejected"] == 9
        assert "rejected: unauthorized" in caplog.text
    finally:
        admin.disconnect()
        admin.loop_stop()
        replies.close()


def test_reconnect_republishes_retained(
    broker: Broker, link_factory: Callable[..., MqttLink]
) -> None:
    link = link_factory()
    wait_until(lambda: link.connected, 10, "link connected")
    link.publish_state("idle")
    link.publish_lockout([{"key": "alice", "failures": 5, "until": time.time() + 60}])
    time.sleep(0.2)
    # This broker keeps nothing across a restart (persistence off), like a fresh broker would.
    broker.restart(hard=True)
    wait_until(lambda: link.connected and link.stats["connects"] == 2, 10, "reconnect")
    time.sleep(0.3)
    ha = Recorder(broker, "ha", ["voxgate/#", "homeassistant/#"])
    try:
        assert ha.wait_for("voxgate/front-door/status", lambda m: m.retain).payload == b"online"
        assert ha.wait_for("voxgate/front-door/state", lambda m: m.retain).payload == b"idle"
        lockout = ha.wait_for("voxgate/front-door/lockout", lambda m: m.retain)
        assert json.loads(lockout.payload)["locked"][0]["key"] == "alice"
        ha.wait_for("homeassistant/sensor/front-door/last_user/config", lambda m: m.retain)
        assert link.stats["disconnects"] == 1
    finally:
        ha.close()


def test_acl_refusals_are_logged(
    make_broker: Callable[..., Broker], caplog: pytest.LogCaptureFixture, issuer: Issuer
) -> None:
    # A device account that may only write its decision topic: everything else is refused.
    acl = "user device\ntopic write voxgate/front-door/decision\n"
    b = make_broker(tls=True, users=STANDARD_USERS, acl=acl)
    link = MqttLink(link_config(b), DEV, decision_key=DKEY, command_key=CKEY)
    link.start()
    try:
        wait_until(lambda: link.connected, 10, "link connected")
        # (mosquitto grants any subscription and filters on delivery, so no SUBACK refusal.)
        wait_until(lambda: "check the ACL" in caplog.text, 5, "PUBACK refusal log")
        link.publish_decision(issuer.issue("denied", None, time.time()))
        wait_until(lambda: link.stats["decisions_acked"] == 1, 5, "decision allowed")
    finally:
        link.stop()


def test_mutual_tls_client_certificate(make_broker: Callable[..., Broker]) -> None:
    b = make_broker(tls=True, require_client_cert=True)
    cert, key = b.client_cert("front-door")
    with_cert = link_config(
        b,
        user=None,
        tls={"ca_file": str(b.ca_file), "cert_file": str(cert), "key_file": str(key)},
    )
    link = MqttLink(with_cert, DEV, decision_key=DKEY)
    no_cert = MqttLink(link_config(b, user=None), "back-door", decision_key=DKEY)
    link.start()
    no_cert.start()
    try:
        wait_until(lambda: link.connected, 10, "mutual-TLS connect")
        wait_until(lambda: no_cert.stats["connect_failures"] >= 2, 10, "refusals without a cert")
        assert not no_cert.connected
    finally:
        link.stop()
        no_cert.stop()


def test_a_grant_made_while_offline_reaches_the_user_sensor_on_reconnect(
    broker: Broker, link_factory: Callable[..., MqttLink], issuer: Issuer
) -> None:
    """The retained `user` topic (Home Assistant's sensor) was only published while
    connected, and not re-published on reconnect: a grant made offline never showed."""
    link = link_factory()
    wait_until(lambda: link.connected, 10, "link connected")
    link.publish_decision(issuer.issue("granted", "alice", time.time()))
    broker.stop()
    wait_until(lambda: not link.connected, 10, "the link notices")
    link.publish_decision(issuer.issue("granted", "bob", time.time()))
    broker.start()
    wait_until(lambda: link.connected, 15, "the link reconnects")
    assert _retained(broker, "ha", "voxgate/front-door/user") == b"bob"


def test_a_retained_command_is_not_run_again_after_a_restart(
    broker: Broker, link_factory: Callable[..., MqttLink]
) -> None:
    """A signed command published with retain runs once; the door restarting within the
    start-up skew got the retained copy and, its nonce memory gone, ran it again."""
    calls: list[dict[str, str]] = []
    first = link_factory()
    first.on_command("erase-user", lambda args: calls.append(args) or {"erased": args["user"]})
    wait_until(lambda: first.connected, 10, "link connected")
    admin = admin_client(broker)
    try:
        cmd = make_command(CKEY, DEV, "erase-user", {"user": "alice"}, now=time.time())
        admin.publish("voxgate/front-door/cmd/erase-user", cmd, qos=1, retain=True)
        wait_until(lambda: len(calls) == 1, 10, "the command run once")
        first.stop()
        second = link_factory()  # the restarted door, well within the 5 s skew
        second.on_command("erase-user", lambda args: calls.append(args) or {"erased": args["user"]})
        wait_until(lambda: second.connected, 10, "restarted link connected")
        wait_until(
            lambda: second.stats["commands_rejected"] >= 1 or len(calls) > 1,
            5,
            "the retained copy seen",
        )
        assert len(calls) == 1
    finally:
        admin.publish("voxgate/front-door/cmd/erase-user", b"", qos=1, retain=True)
        admin.disconnect()


def test_decisions_held_over_an_outage_reach_the_lock_before_newer_ones(
    broker: Broker, link_factory: Callable[..., MqttLink], tmp_path: Path
) -> None:
    """paho re-sends what it held over an outage only after on_connect returns: a decision
    made while the link reconnected (or the moment it was back) reached the broker first,
    and the lock refused the older held ones as replayed. Here one grant is in flight in a
    connection that died unnoticed, two are made while the link is down, one while it
    reconnects (CONNACK in, the link's on_connect not yet run) and one just after: the lock
    must get all five, in the order they were made."""
    issuer = Issuer(DEV, SequenceCounter(tmp_path / "seq.json"), ttl_s=30)
    actuator = ActuatorProcess(tmp_path, broker, {DEV: write_key(tmp_path / "k", DKEY)}).start()
    lock = Recorder(broker, "lock", [TOPIC_DECISION])
    link = link_factory()
    wait_until(lambda: link.connected, 10, "link connected")
    made = [issuer.issue("granted", f"u{i}", time.time()) for i in range(5)]
    gen = lock.subscribed_gen
    errors: list[BaseException] = []
    link_on_connect = link._client.on_connect
    assert link_on_connect is not None

    def subscribers_back() -> bool:
        return lock.subscribed_gen > gen and actuator.log_count(r"subscribed to 1 topic") >= 2

    def reconnecting(*args: Any) -> None:
        # Runs on paho's thread once the CONNACK is in; nothing but CONNECT has been sent
        # yet, so waiting here for both subscribers loses nothing.
        try:
            wait_until(subscribers_back, 15, "the lock and the recorder back")
            assert link.publish_decision(made[3])  # during the reconnect
            link_on_connect(*args)
            assert link.publish_decision(made[4])  # as soon as the link is up
        except BaseException as exc:  # reported by the test thread, not lost in paho's
            errors.append(exc)

    try:
        assert broker.proc is not None
        pid = broker.proc.pid
        os.kill(pid, signal.SIGSTOP)  # the link's connection dies, not yet noticed
        stat = Path(f"/proc/{pid}/stat")
        wait_until(lambda: stat.read_text().split(") ")[1][0] == "T", 5, "the broker stopped")
        assert link.publish_decision(made[0])  # in flight when the connection drops
        broker.kill()
        wait_until(lambda: not link.connected, 10, "the link notices")
        link._client.on_connect = reconnecting
        assert link.publish_decision(made[1]) and link.publish_decision(made[2])  # held
        broker.start()
        wait_until(lambda: len(lock.on(TOPIC_DECISION)) >= 5, 20, "5 decisions")
        assert not errors, errors
        got = [verify(m.payload, DKEY, time.time(), None).seq for m in lock.on(TOPIC_DECISION)]
        assert got == [d.seq for d in made]
        wait_until(lambda: len(actuator.actions()) == 5, 10, "5 grants acted on")
        assert [int(a["VOXGATE_SEQ"]) for a in actuator.actions()] == [d.seq for d in made]
        assert actuator.log_count("REJECTED") == 0
        assert link.stats["decisions_expired"] == 0
        wait_until(lambda: link.pending_decisions() == 0, 5, "PUBACKs")
    finally:
        lock.close()
        actuator.stop()


def test_decisions_still_held_at_stop_are_reported(
    broker: Broker,
    link_factory: Callable[..., MqttLink],
    issuer: Issuer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stop while the broker is away dropped the held decisions without a word."""
    link = link_factory()
    wait_until(lambda: link.connected, 10, "link connected")
    broker.kill()
    wait_until(lambda: not link.connected, 10, "the link notices")
    for user in ("alice", "bob"):
        assert link.publish_decision(issuer.issue("granted", user, time.time()))
    link.stop()
    warned = [r.getMessage() for r in caplog.records if "never acknowledged" in r.getMessage()]
    assert warned and warned[0].startswith("MQTT: stopping with 2 decision(s)")


def test_a_command_sent_while_the_link_reconnects_is_run_when_it_is_back(
    broker: Broker, link_factory: Callable[..., MqttLink]
) -> None:
    """The link keeps its session (MQTT 5) while it is down, so the broker holds a command
    sent meanwhile; with a clean session each connect it was dropped without a reply."""
    import socket

    calls: list[dict[str, str]] = []
    # Reconnecting only after 2 s leaves a window in which the door is away.
    link = link_factory(reconnect_min_s=2.0, reconnect_max_s=2.0)
    link.on_command("erase-user", lambda args: calls.append(args) or {"erased": args["user"]})
    wait_until(lambda: link.connected, 10, "link connected")
    replies = Recorder(broker, "admin", ["voxgate/front-door/cmd/+/result"])
    admin = admin_client(broker)
    try:
        sock = link._client.socket()
        assert sock is not None
        sock.shutdown(socket.SHUT_RDWR)  # the network drops; the broker sees the link go
        wait_until(lambda: not link.connected, 5, "link down")
        cmd = make_command(CKEY, DEV, "erase-user", {"user": "alice"}, now=time.time())
        admin.publish("voxgate/front-door/cmd/erase-user", cmd, qos=1).wait_for_publish(5)
        wait_until(lambda: link.stats["connects"] == 2, 10, "link back")
        result = "voxgate/front-door/cmd/erase-user/result"
        wait_until(lambda: replies.on(result), 10, "a reply to the command")
        assert read_reply(replies.on(result)[-1].payload, DKEY)["ok"] is True
        assert calls == [{"user": "alice"}]
    finally:
        admin.disconnect()
        admin.loop_stop()
        replies.close()


def test_a_new_process_does_not_resume_the_last_ones_session(
    broker: Broker, link_factory: Callable[..., MqttLink]
) -> None:
    """Only reconnects resume the session: a restarted daemon starts a fresh one, so commands
    the broker held for the old process (one it may have run, if it crashed before its
    acknowledgement) are not delivered to a process without its nonce memory."""
    calls: list[dict[str, str]] = []
    first = link_factory()
    wait_until(lambda: first.connected, 10, "link connected")
    first._client.loop_stop()
    sock = first._client.socket()
    assert sock is not None
    sock.close()  # a crash: no DISCONNECT, so the broker keeps the session
    admin = admin_client(broker)
    try:
        wait_until(
            lambda: "voxgate-front-door closed its connection" in broker.log_text(),
            10,
            "the broker noticed the crash",
        )
        cmd = make_command(CKEY, DEV, "erase-user", {"user": "alice"}, now=time.time())
        admin.publish("voxgate/front-door/cmd/erase-user", cmd, qos=1).wait_for_publish(5)
        second = link_factory()
        second.on_command("erase-user", lambda args: calls.append(args) or {})
        wait_until(lambda: second.connected, 10, "restarted link connected")
        time.sleep(1.0)
        assert calls == [] and second.stats["commands_rejected"] == 0
    finally:
        admin.disconnect()
        admin.loop_stop()


def test_a_refused_first_connect_still_starts_a_fresh_session(
    make_broker: Callable[..., Broker], tmp_path: Path
) -> None:
    """paho took a refused CONNACK (here: a password the broker does not know yet) for the
    first connect, and the retry resumed the last process's session (clean start 0), with the
    commands it may have held (found in review)."""
    users = {**STANDARD_USERS, "device": "not-yet"}
    broker = make_broker(users=users, acl=standard_acl())
    settings = broker.mqtt_settings("device")
    secret = tmp_path / "device.password"
    secret.write_text(STANDARD_USERS["device"] + "\n")
    secret.chmod(0o600)
    settings.update({"password_file": str(secret), "reconnect_min_s": 0.5, "reconnect_max_s": 0.5})
    link = MqttLink(MqttConfig.model_validate(settings), DEV, decision_key=DKEY, command_key=CKEY)
    link.start()
    try:
        wait_until(lambda: link.stats["connect_failures"] >= 1, 10, "a refused connect")
        # The broker learns the password: its file rewritten and hashed as the fixture does.
        passwd = broker.directory / "passwd"
        passwd.write_text("".join(f"{u}:{p}\n" for u, p in STANDARD_USERS.items()))
        subprocess.run([str(MOSQUITTO_PASSWD), "-U", str(passwd)], check=True, timeout=30)
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGHUP)  # mosquitto reloads its password file
        wait_until(lambda: link.connected, 15, "the link connected")
        joined = [
            line for line in broker.log_text().splitlines() if "as voxgate-front-door" in line
        ]
        assert joined and "c1," in joined[-1], joined
    finally:
        link.stop()
