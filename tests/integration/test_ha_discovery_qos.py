"""Home Assistant subscribes to each entity's topics at the discovery config's `qos` (HA's
default 0 when the config sets none: "the maximum QoS level to be used when receiving and
publishing messages"). The configs set none, so the door's QoS 1 state and last-user updates
reached Home Assistant at QoS 0, lost on a flaky link. A subscriber that does what HA does
now receives every topic at the QoS the door publishes it with."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from broker import STANDARD_USERS, Broker
from mqtt_helpers import Recorder, link_config, wait_until

from voxgate.decision import Issuer, SequenceCounter
from voxgate.mqtt.client import MqttLink

DEV = "front-door"
# What the door publishes each HA topic with (docs/mqtt.md, "Topic tree").
DOOR_QOS = {
    "voxgate/front-door/state": 1,
    "voxgate/front-door/user": 1,
    "voxgate/front-door/event": 0,
}


class LikeHomeAssistant:
    """Subscribes to each config's state_topic with the config's qos, as HA does."""

    def __init__(self, broker: Broker, configs: list[dict[str, Any]]) -> None:
        self.got: dict[str, int] = {}
        self._lock = threading.Lock()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.username_pw_set("ha", STANDARD_USERS["ha"])
        if broker.tls:
            c.tls_set(ca_certs=str(broker.ca_file))
        self.subs = [(cfg["state_topic"], int(cfg.get("qos", 0))) for cfg in configs]
        self.acked = threading.Event()
        c.on_connect = lambda cl, *a: cl.subscribe(self.subs)
        c.on_subscribe = lambda *a: self.acked.set()
        c.on_message = self._on_message
        c.connect(broker.host, broker.port, keepalive=10)
        c.loop_start()
        self.client = c
        assert self.acked.wait(10), "subscription"

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.payload and not msg.retain:
            with self._lock:
                self.got[msg.topic] = msg.qos

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def link(broker: Broker) -> Iterator[MqttLink]:
    link = MqttLink(link_config(broker), DEV, decision_key=b"d" * 32, command_key=b"c" * 32)
    link.start()
    wait_until(lambda: link.connected, 10, "link connected")
    yield link
    link.stop()


def test_home_assistant_receives_each_topic_at_the_qos_the_door_publishes_it(
    broker: Broker, link: MqttLink, tmp_path: Any
) -> None:
    rec = Recorder(broker, "ha", ["homeassistant/#"])
    wait_until(lambda: len(rec.on_prefix("homeassistant/")) >= 3, 10, "discovery configs")
    configs = [json.loads(m.payload) for m in rec.on_prefix("homeassistant/")]
    assert sorted(c["state_topic"] for c in configs) == sorted(DOOR_QOS)
    ha = LikeHomeAssistant(broker, configs)
    try:
        link.publish_state("listening")
        issuer = Issuer(DEV, SequenceCounter(tmp_path / "seq.json"), ttl_s=5)
        link.publish_decision(issuer.issue("granted", "alice", time.time(), reasons=["ok"]))
        wait_until(lambda: set(ha.got) == set(DOOR_QOS), 10, "every topic")
        assert ha.got == DOOR_QOS
    finally:
        ha.stop()
