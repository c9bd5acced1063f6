"""A flood of refused commands and lock refusal reports on a real mosquitto: anyone allowed
to publish on cmd/# (or decision/refused) made one log line each, without end, and journald's
own rate limit then dropped the lines that mattered. Now the first REFUSAL_LOG_BURST of a
minute are logged, then one notice; every one is still counted."""

from __future__ import annotations

import logging
import time

import pytest
from broker import Broker
from mqtt_helpers import Recorder, admin_client, link_config, wait_until

from voxgate.mqtt.client import REFUSAL_LOG_BURST, MqttLink
from voxgate.mqtt.commands import make_command, read_reply
from voxgate.mqtt.refusal import refusal_payload

DEV = "front-door"
DKEY = b"decision-key-for-tests-0123456789"
CKEY = b"command-key-for-tests-0123456789"
FLOOD = 120


def test_a_flood_of_refusals_is_logged_within_the_limit_and_counted_whole(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    link = MqttLink(link_config(broker), DEV, decision_key=DKEY, command_key=CKEY)
    link.on_command("reload", lambda args: {"reloaded": True})
    codes: list[str] = []
    reports: list[str] = []
    link.on_command_refusal = codes.append
    link.on_lock_refusal = lambda r: reports.append(r.reason)
    topic = f"voxgate/{DEV}/cmd/reload"
    replies = Recorder(broker, "admin", [f"{topic}/result"])
    admin, lock = admin_client(broker), admin_client(broker, "lock")
    link.start()
    try:
        wait_until(lambda: link.connected, 10, "link connected")
        with caplog.at_level(logging.INFO, logger="voxgate.mqtt.client"):
            for i in range(FLOOD):
                forged = make_command(b"not-the-key", DEV, "reload", now=time.time())
                admin.publish(topic, forged, qos=1).wait_for_publish(5)
                report = refusal_payload(
                    DEV, "bad-signature", f"report {i}", None, time.time(), DKEY
                )
                lock.publish(f"voxgate/{DEV}/decision/refused", report, qos=1)
                if i % 10 == 9:  # the door answers at its pace: at most 16 wait
                    wait_until(lambda i=i: len(codes) > i, 10, f"refusal {i + 1}")
            wait_until(lambda: len(codes) == FLOOD and len(reports) == FLOOD, 20, "all counted")
            # A good command still runs, and its line is not held back (it is no refusal).
            admin.publish(topic, make_command(CKEY, DEV, "reload", now=time.time()), qos=1)
            wait_until(lambda: link.stats["commands_ok"] == 1, 10, "the good command")
        wait_until(lambda: len(replies.on(f"{topic}/result")) == FLOOD + 1, 10, "every reply")
        last = read_reply(replies.on(f"{topic}/result")[-1].payload, DKEY)
        assert last["ok"] is True, last
    finally:
        admin.disconnect()
        admin.loop_stop()
        lock.disconnect()
        lock.loop_stop()
        replies.close()
        link.stop()
    lines = [r.getMessage() for r in caplog.records]
    rejected = [x for x in lines if "rejected: unauthorized" in x]
    refused = [x for x in lines if "the lock REFUSED" in x]
    # Seen: 120 of each.
    assert len(rejected) == REFUSAL_LOG_BURST, len(rejected)
    assert len(refused) == REFUSAL_LOG_BURST, len(refused)
    assert sum("MQTT command refusals: more than 10 in 60 s" in x for x in lines) == 1
    assert sum("MQTT lock refusal reports: more than 10 in 60 s" in x for x in lines) == 1
    assert codes == ["unauthorized"] * FLOOD  # the metrics' callback: every one
    assert link.stats["commands_rejected"] == FLOOD and link.stats["lock_refusals"] == FLOOD
    assert any("command reload done" in x for x in lines)
