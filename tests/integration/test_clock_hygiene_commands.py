"""Signed commands after the door's clock was set back, on a real mosquitto. A door that
booted with its clock ahead (fake-hwclock's saved time from a clock that was wrong, an
admin's typo) and was then set right by NTP refused every command, erase-user included, as
"replayed: issued before this daemon started" for as long as the clock had been ahead. The
door's wall clock is injected (the machine's clock is never touched)."""

from __future__ import annotations

import time

from broker import Broker
from mqtt_helpers import Recorder, admin_client, link_config, wait_until

from voxgate.mqtt.client import MqttLink
from voxgate.mqtt.commands import make_command, read_reply

DEV = "front-door"
DKEY = b"decision-key-for-tests-0123456789"
CKEY = b"command-key-for-tests-0123456789"
HOUR = 3600.0


def test_commands_are_obeyed_after_ntp_sets_back_a_clock_that_was_ahead(broker: Broker) -> None:
    ran: list[dict[str, str]] = []
    ahead = [HOUR]  # the door starts with its clock an hour ahead
    # Signed and captured before the door started: must stay refused whatever the clock does.
    captured = make_command(CKEY, DEV, "erase-user", {"user": "alice"}, now=time.time() - 1)
    link = MqttLink(
        link_config(broker),
        DEV,
        decision_key=DKEY,
        command_key=CKEY,
        command_clock=lambda: time.time() + ahead[0],
    )
    link.on_command("erase-user", lambda args: ran.append(args) or {"erased": True})
    topic = f"voxgate/{DEV}/cmd/erase-user"
    status = link.topics.status
    replies = Recorder(broker, "admin", [f"{topic}/result", status])
    admin = admin_client(broker)
    link.start()
    try:
        # 'online' follows the door's SUBSCRIBE in its packet order: its command subscription
        # is in place (waiting for `connected` alone lost the command under load in CI).
        replies.wait_for(status, lambda m: m.payload == b"online", timeout=10)
        ahead[0] = 0.0  # NTP steps the door's clock back by the hour
        fresh = make_command(CKEY, DEV, "erase-user", {"user": "alice"}, now=time.time())
        admin.publish(topic, fresh, qos=1).wait_for_publish(5)
        reply = replies.wait_for(f"{topic}/result", lambda m: True, timeout=5)
        body = read_reply(reply.payload, DKEY)
        assert (body["ok"], body["error"]) == (True, None), body  # was (False, 'replayed')
        assert ran == [{"user": "alice"}]
        # A command issued before the start is still a replay.
        admin.publish(topic, captured, qos=1).wait_for_publish(5)
        wait_until(lambda: len(replies.on(f"{topic}/result")) == 2, 5, "the second reply")
        body = read_reply(replies.on(f"{topic}/result")[1].payload, DKEY)
        assert (body["ok"], body["error"]) == (False, "replayed"), body
        assert len(ran) == 1
    finally:
        admin.disconnect()
        admin.loop_stop()
        replies.close()
        link.stop()
