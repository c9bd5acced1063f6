"""The broker ACL example in docs/mqtt.md, on a real mosquitto: each account gets what the
page says, and a door cannot write another device's Home Assistant discovery config."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from broker import Broker
from mqtt_helpers import wait_until

from voxgate.mqtt import discovery
from voxgate.mqtt.topics import Topics

REPO = Path(__file__).resolve().parents[2]


def docs_acl() -> str:
    text = (REPO / "docs" / "mqtt.md").read_text()
    section = text.split("## Broker ACL", 1)[1]
    return re.search(r"```text\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def _client(broker: Broker, user: str, seen: list[tuple[str, bytes]] | None = None) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.username_pw_set(user, broker.users[user])
    if seen is not None:
        c.on_message = lambda c, u, m: seen.append((m.topic, m.payload))
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def test_door_writes_its_own_discovery_configs_and_no_one_elses(
    tmp_path: Path, make_broker: Callable[..., Broker]
) -> None:
    # docs/mqtt.md gave the door `topic readwrite homeassistant/#`: a door's account (its
    # password is on the door's SD card) could replace any discovery config on the broker,
    # e.g. turn another integration's lock entity's command_topic to a topic it controls.
    # The Ansible role's ACL already kept each door to <discovery>/+/<device>/#.
    users = {
        "front-door": "p1",
        "lock-front": "p2",
        "operator": "p3",
        "homeassistant": "p4",
        "observer": "p5",
    }
    acl = docs_acl() + "\nuser observer\ntopic read #\n"
    broker = make_broker(tls=False, users=users, acl=acl)
    seen: list[tuple[str, bytes]] = []
    observer = _client(broker, "observer", seen)
    observer.subscribe("#", qos=1)
    ha_seen: list[tuple[str, bytes]] = []
    ha = _client(broker, "homeassistant", ha_seen)
    ha.subscribe([("homeassistant/#", 1), ("voxgate/#", 1)])
    door = _client(broker, "front-door")
    try:
        time.sleep(0.3)
        ours = [topic for topic, _ in discovery.messages(Topics("voxgate", "front-door",
                                                                "homeassistant"), "0")]  # fmt: skip
        for topic in ours:
            door.publish(topic, b"{}", qos=1, retain=True).wait_for_publish(5)
        door.publish("homeassistant/lock/garage/config", b"{}", qos=1, retain=True)
        door.publish("voxgate/front-door/status", b"online", qos=1, retain=True)
        wait_until(lambda: any(t == "voxgate/front-door/status" for t, _ in seen), 5, "status")
        time.sleep(0.3)
        topics = {t for t, _ in seen}
        assert set(ours) <= topics
        assert "homeassistant/lock/garage/config" not in topics
        # Home Assistant's account reads the configs and the door's availability.
        assert set(ours) | {"voxgate/front-door/status"} <= {t for t, _ in ha_seen}
    finally:
        for c in (door, observer, ha):
            c.loop_stop()
            c.disconnect()
