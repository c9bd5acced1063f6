"""Hostile payloads on a real mosquitto: the door's command topic and the lock's decision topic.

Every bad message gets its refusal (a reply for a command, a REJECTED line at the lock), no
traceback, and the program keeps obeying good messages afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from broker import Broker, TestCA
from mqtt_helpers import (
    REPO,
    ActuatorProcess,
    Recorder,
    admin_client,
    link_config,
    wait_until,
    write_key,
)

from voxgate.decision import Issuer, SequenceCounter, sign
from voxgate.mqtt.client import MqttLink
from voxgate.mqtt.commands import make_command, read_reply

DEV = "front-door"
DKEY = b"decision-key-for-tests-0123456789"
CKEY = b"command-key-for-tests-0123456789"

# (payload, the error code the reply must carry)
HOSTILE_COMMANDS = [
    # sig not ASCII: hmac.compare_digest raised TypeError (traceback, no reply)
    (b'{"alg":"HMAC-SHA256","body":"{}","sig":"\\u00e9"}', "unauthorized"),
    (
        json.dumps({"alg": "HMAC-SHA256", "body": "{}", "sig": "\u2603" * 64}).encode(),
        "unauthorized",
    ),
    # deep nesting: json.loads raised RecursionError (traceback, no reply)
    (b"[" * 3000, "malformed"),
    (b"\x00\xff\xfe", "malformed"),
    (b'{"alg":"HMAC-SHA256","body":7,"sig":"00"}', "malformed"),
]


@contextmanager
def _door(
    broker: Broker, reload: Callable[[dict[str, str]], dict[str, object]]
) -> Iterator[tuple[MqttLink, Recorder, mqtt.Client]]:
    """A door link obeying 'reload', a recorder of its replies and a connected admin client."""
    link = MqttLink(link_config(broker), DEV, decision_key=DKEY, command_key=CKEY)
    link.on_command("reload", reload)
    link.start()
    replies = Recorder(broker, "admin", ["voxgate/front-door/cmd/+/result"])
    admin = admin_client(broker)
    try:
        wait_until(lambda: link.connected, 10, "link connected")
        yield link, replies, admin
    finally:
        admin.disconnect()
        admin.loop_stop()
        replies.close()
        link.stop()


def test_hostile_command_payloads_each_get_a_reply(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    topic = "voxgate/front-door/cmd/reload"
    with _door(broker, lambda args: {"reloaded": True}) as (link, replies, admin):
        for n, (payload, code) in enumerate([*HOSTILE_COMMANDS, (None, None)], 1):
            if payload is None:  # still obeying
                payload = make_command(CKEY, DEV, "reload", now=time.time())
            admin.publish(topic, payload, qos=1).wait_for_publish(5)
            wait_until(lambda n=n: len(replies.on(topic + "/result")) >= n, 5, f"reply {n}")
            reply = read_reply(replies.on(topic + "/result")[-1].payload, DKEY)
            assert reply["error"] == code, (payload[:40], reply)
        assert link.stats["commands_rejected"] == len(HOSTILE_COMMANDS)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def test_hostile_decisions_are_rejected_by_the_actuator_without_a_traceback(
    broker: Broker, tmp_path: Path
) -> None:
    key = write_key(tmp_path / "front-door.key", DKEY)
    act = ActuatorProcess(tmp_path, broker, {DEV: key}).start()
    device = admin_client(broker, "device")
    topic = "voxgate/front-door/decision"
    try:
        hostile = [p for p, _ in HOSTILE_COMMANDS]
        for payload in hostile:
            device.publish(topic, payload, qos=1).wait_for_publish(5)
        act.wait_log(r"decision REJECTED", 10, count=len(hostile))
        issuer = Issuer(DEV, SequenceCounter(tmp_path / "seq.json"), ttl_s=5)
        grant = sign(issuer.issue("granted", "alice", time.time()), DKEY)
        device.publish(topic, grant, qos=1).wait_for_publish(5)
        wait_until(lambda: len(act.actions()) == 1, 10, "the good grant acted on")
        assert act.log_count("Traceback|error handling a message") == 0, "\n".join(act.lines)
        assert act.alive
    finally:
        device.disconnect()
        device.loop_stop()
        act.stop()


def test_two_daemons_with_one_device_id_are_named_and_back_off(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    # Same device_id, same client id: each connect takes the connection from the other.
    # paho restarts its back-off at every accepted connect, so the two flapped every
    # reconnect_min_s (0.2 s here) forever, logging only 'connection lost (Unspecified error)'.
    cfg = link_config(broker, reconnect_min_s=0.2, reconnect_max_s=2.0)
    links = [MqttLink(cfg, DEV, decision_key=DKEY, command_key=CKEY) for _ in range(2)]
    try:
        for link in links:
            link.start()
        time.sleep(6)
        connects = sum(link.stats["connects"] for link in links)
        assert connects < 16, connects  # about 30 without the back-off
        assert "is another client connecting as 'voxgate-front-door'" in caplog.text
    finally:
        for link in links:
            link.stop()


def test_a_wrong_ca_is_named_in_the_log_not_called_unreachable(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # paho hides the reason from on_connect_fail: a certificate from another CA was logged
    # as 'cannot reach 127.0.0.1:<port>', at the door and at the lock alike.
    other = TestCA(tmp_path / "other-ca", name="someone else's CA")
    cfg = link_config(broker, tls={"ca_file": str(other.cert_file)})
    link = MqttLink(cfg, DEV, decision_key=DKEY, command_key=CKEY)
    link.start()
    try:
        wait_until(lambda: link.stats["connect_failures"] >= 1, 10, "a failed connect")
    finally:
        link.stop()
    assert "check tls.ca_file" in caplog.text and "cannot reach" not in caplog.text
    key = write_key(tmp_path / "front-door.key", DKEY)
    act = ActuatorProcess(tmp_path, broker, {DEV: key})
    broker_cfg = act.config.read_text().replace(str(broker.ca_file), str(other.cert_file))
    act.config.write_text(broker_cfg)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env["PYTHONPATH"] = str(REPO / "daemon")
    argv = [sys.executable, "-m", "voxgate", "actuator", "-c", str(act.config)]
    with pytest.raises(subprocess.TimeoutExpired) as run:  # it keeps retrying
        subprocess.run(argv, env=env, capture_output=True, text=True, timeout=4)
    said = run.value.stderr or ""
    said = said if isinstance(said, str) else said.decode()
    assert re.search(r"cannot connect to .*TLS: .*check tls.ca_file", said), said


def test_a_command_topic_too_long_for_a_reply_is_logged_not_a_traceback(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    base = "voxgate/front-door/cmd/"
    with _door(broker, lambda args: {"reloaded": True}) as (link, replies, admin):
        # The longest topic MQTT allows: paho refused the reply topic (65535 + '/result').
        admin.publish(base + "x" * (65535 - len(base)), b"{}", qos=1).wait_for_publish(5)
        wait_until(lambda: link.stats["commands_rejected"] == 1, 5, "the refusal")
        good = make_command(CKEY, DEV, "reload", now=time.time())
        admin.publish(base + "reload", good, qos=1).wait_for_publish(5)
        wait_until(lambda: replies.on(base + "reload/result"), 5, "the good command's reply")
    assert "reply topic would be too long" in caplog.text
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage()[:200] for r in errors]


def test_oversized_commands_are_refused_at_once_not_queued(broker: Broker) -> None:
    """While a command runs, others wait in a queue of 16; oversized ones waited there too,
    each holding its payload (mosquitto accepts up to 256 MB by default), and the 17th got
    'busy'. They are refused on arrival now, whatever is running."""
    import threading

    started, release = threading.Event(), threading.Event()

    def slow(args: dict[str, str]) -> dict[str, object]:
        started.set()
        return {"released": release.wait(20)}

    topic = "voxgate/front-door/cmd/reload"
    with _door(broker, slow) as (_link, replies, admin):
        try:
            admin.publish(topic, make_command(CKEY, DEV, "reload", now=time.time()), qos=1)
            wait_until(started.is_set, 5, "the slow command to start")
            for _ in range(20):
                admin.publish(topic, b"x" * 100_000, qos=1)
            wait_until(lambda: len(replies.on(topic + "/result")) >= 20, 10, "20 replies")
            errors = [read_reply(m.payload, DKEY)["error"] for m in replies.on(topic + "/result")]
            assert errors == ["oversized"] * 20
        finally:
            release.set()  # before the link stops: its worker is inside slow()


def test_a_command_replayed_just_after_a_restart_is_refused(broker: Broker) -> None:
    """The start-up check allowed command_max_skew_s (5 s) of clock difference: a signed
    erase-user captured from the door's command topic, sent again after the door restarted
    a second later (its nonce memory gone), was run a second time."""
    ran: list[dict[str, str]] = []

    def erase(args: dict[str, str]) -> dict[str, object]:
        ran.append(args)
        return {"erased": True}

    topic = f"voxgate/{DEV}/cmd/erase-user"
    with _door(broker, lambda a: {}) as (link, replies, admin):
        link.on_command("erase-user", erase)
        captured = make_command(CKEY, DEV, "erase-user", {"user": "alice"}, now=time.time())
        admin.publish(topic, captured, qos=1).wait_for_publish(5)
        wait_until(lambda: len(ran) == 1, 5, "the command to run")
    time.sleep(0.2)  # the door restarts: a new process, a new link
    with _door(broker, lambda a: {}) as (link, replies, admin):
        link.on_command("erase-user", erase)
        admin.publish(topic, captured, qos=1).wait_for_publish(5)
        reply = replies.wait_for(f"{topic}/result", lambda m: True, timeout=5)
        body = read_reply(reply.payload, DKEY)
        assert (body["ok"], body["error"]) == (False, "replayed"), body
        assert len(ran) == 1
        # A new command (new nonce, issued now) is obeyed.
        fresh = make_command(CKEY, DEV, "erase-user", {"user": "alice"}, now=time.time())
        admin.publish(topic, fresh, qos=1).wait_for_publish(5)
        wait_until(lambda: len(ran) == 2, 5, "the new command to run")


def test_a_huge_command_is_not_delivered_to_the_door(broker: Broker, tmp_path: Path) -> None:
    """mosquitto accepts messages up to 256 MB by default, and paho reads a whole message
    before the door can look at its size: a 200 MB command (retained, it comes back at every
    connect) took the door to 611 MB, twice its unit's MemoryMax. On MQTT 5 the door now
    tells the broker the largest packet it takes (MAX_PACKET_BYTES), and the broker drops
    larger ones for it."""
    from voxgate.mqtt.client import MAX_PACKET_BYTES

    big = tmp_path / "big"
    big.write_bytes(b"x" * 5_000_000)  # well over the 1 MB limit, light for CI
    topic = f"voxgate/{DEV}/cmd/reload"
    with _door(broker, lambda a: {"reloaded": True}) as (link, replies, admin):
        subprocess.run(
            ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-u", "admin",
             "-P", broker.users["admin"], "--cafile", str(broker.ca_file), "-t", topic,
             "-q", "1", "-f", str(big)],
            check=True, timeout=60,
        )  # fmt: skip
        # One just over the door's own limit still gets its refusal.
        admin.publish(topic, b"x" * (MAX_PACKET_BYTES // 2), qos=1).wait_for_publish(5)
        reply = replies.wait_for(f"{topic}/result", lambda m: True, timeout=20)
        assert read_reply(reply.payload, DKEY)["error"] == "oversized"
        time.sleep(0.5)
        assert link.stats["commands_rejected"] == 1  # the huge one never reached the door
        good = make_command(CKEY, DEV, "reload", now=time.time())
        admin.publish(topic, good, qos=1).wait_for_publish(5)
        wait_until(lambda: len(replies.on(f"{topic}/result")) == 2, 5, "the good reply")
