"""The broker ACL that ansible/broker-acl.yml writes from the example inventory, on a real
mosquitto: a door reads the fleet topics of its own groups and nothing else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from broker import Broker
from mqtt_helpers import wait_until

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
pytestmark = pytest.mark.skipif(not PLAYBOOK.exists(), reason="ansible-core is not installed")

DOORS = ["door-hq-lobby-1", "door-hq-lab-1", "door-wh-dock-1"]
FLEET = "voxgate/_fleet/acme"


def _render_acl(tmp: Path) -> str:
    root = tmp / "root"
    (root / "etc/mosquitto").mkdir(parents=True)
    extra = {
        "voxgate_root": str(root),
        "voxgate_broker_reload": False,
        "ansible_become": False,
        "ansible_python_interpreter": sys.executable,
    }
    (tmp / "vars.json").write_text(json.dumps(extra))
    env = dict(os.environ, ANSIBLE_HOME=str(tmp / "ah"), ANSIBLE_LOCAL_TEMP=str(tmp / "at"))
    run = subprocess.run(
        [str(PLAYBOOK), "broker-acl.yml", "-c", "local", "--limit", "mqtt-hq",
         "--vault-password-file", "inventory/example/demo-vault-password.txt",
         "-e", f"@{tmp / 'vars.json'}"],
        cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:]
    return (root / "etc/mosquitto/voxgate.acl").read_text()


def _client(broker: Broker, user: str, seen: list[str] | None = None) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.username_pw_set(user, broker.users[user])
    if seen is not None:
        c.on_message = lambda c, u, m: seen.append(m.topic)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def test_generated_acl_keeps_each_door_to_its_groups(
    tmp_path: Path, make_broker: Callable[..., Broker]
) -> None:
    acl = _render_acl(tmp_path)
    assert f"topic read {FLEET}/hq_lab/#" in acl
    broker = make_broker(tls=False, users={d: f"pw-{d}" for d in DOORS}, acl=acl)
    lobby = _client(broker, "door-hq-lobby-1")
    for group in ("hq_lobby", "hq_lab", "wh_dock"):
        lobby.publish(f"{FLEET}/{group}/u1", b"x", qos=1, retain=True).wait_for_publish(5)
    # Each door subscribes to the whole fleet tree; the broker hands out only its groups.
    for door, group in (("door-hq-lab-1", "hq_lab"), ("door-wh-dock-1", "wh_dock")):
        seen: list[str] = []
        c = _client(broker, door, seen)
        c.subscribe(f"{FLEET}/#", qos=1)
        wait_until(lambda seen=seen: len(seen) >= 1, 10, f"{door} gets its group's message")
        time.sleep(0.3)  # would anything else arrive?
        assert seen == [f"{FLEET}/{group}/u1"]
        # ... and it cannot read another door's own topics either.
        c.subscribe("voxgate/door-hq-lobby-1/#", qos=1)
        lobby.publish("voxgate/door-hq-lobby-1/decision", b"d", qos=1).wait_for_publish(5)
        time.sleep(0.3)
        assert seen == [f"{FLEET}/{group}/u1"]
        c.disconnect()
        c.loop_stop()
    lobby.disconnect()
    lobby.loop_stop()
