"""The broker ACL that ansible/broker-acl.yml writes from the example inventory, on a real
mosquitto: a door reads the fleet topics of its own groups and nothing else."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from broker import Broker
from mqtt_helpers import wait_until

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
pytestmark = pytest.mark.skipif(not PLAYBOOK.exists(), reason="ansible-core is not installed")

DOORS = ["door-hq-lobby-1", "door-hq-lab-1", "door-wh-dock-1"]
FLEET = "voxgate/_fleet/acme"


def _render_acl(tmp: Path, inventory: Path | None = None) -> str:
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
         "-e", f"@{tmp / 'vars.json'}",
         *(["-i", str(inventory)] if inventory else [])],
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


FQDN_DOOR = "door-hq-lab-2.hq.acme.example"


def _inventory_with_a_dotted_door(tmp: Path) -> Path:
    """The example inventory plus a door named by its FQDN, as many inventories name hosts."""
    inv = tmp / "inventory"
    shutil.copytree(ANSIBLE_DIR / "inventory" / "example", inv)
    doc = yaml.safe_load((inv / "hosts.yml").read_text())
    doors = doc["all"]["children"]["voxgate_doors"]["children"]
    doors["site_hq"]["children"]["hq_lab"]["hosts"][FQDN_DOOR] = {"ansible_host": "192.0.2.22"}
    doors["pi5_doors"]["hosts"][FQDN_DOOR] = None
    (inv / "hosts.yml").write_text(yaml.safe_dump(doc))
    return inv / "hosts.yml"


def _role_device_id(tmp: Path, inventory: Path, host: str) -> str:
    """device_id and mqtt.username as the role renders them into the door's config."""
    root = tmp / "door-root"
    extra = {
        "voxgate_root": str(root),
        "voxgate_test_mode": True,
        "ansible_become": False,
        "ansible_python_interpreter": sys.executable,
        "voxgate_validate_command": f"{sys.executable} -m voxgate config check --quiet %s",
        "voxgate_mqtt_ca_src": "",
        "voxgate_alsa_profile": "",
    }
    (tmp / "door-vars.json").write_text(json.dumps(extra))
    env = dict(os.environ, ANSIBLE_HOME=str(tmp / "ah"), ANSIBLE_LOCAL_TEMP=str(tmp / "at"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "daemon"), env.get("PYTHONPATH")]))
    run = subprocess.run(
        [str(PLAYBOOK), "site.yml", "-i", str(inventory), "-c", "local", "--limit", host,
         "--tags", "voxgate_config",
         "--vault-password-file", "inventory/example/demo-vault-password.txt",
         "-e", f"@{tmp / 'door-vars.json'}"],
        cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:]
    cfg = yaml.safe_load((root / "etc/voxgate/voxgate.yaml").read_text())
    assert cfg["mqtt"]["username"] == cfg["device_id"]  # the example logs in as its device_id
    return str(cfg["device_id"])


def test_a_door_named_by_its_fqdn_gets_acl_lines_under_its_device_id(
    tmp_path: Path, make_broker: Callable[..., Broker]
) -> None:
    """The role's device_id is the short host name (`inventory_hostname_short`), the ACL's
    was the whole name with dots turned into dashes: a door named `door-hq-lab-2.hq.acme...`
    logged in as `door-hq-lab-2` and found no ACL line for it, so the broker gave it nothing
    (no fleet sync, no status, no commands)."""
    inventory = _inventory_with_a_dotted_door(tmp_path)
    device = _role_device_id(tmp_path, inventory, FQDN_DOOR)
    assert device == "door-hq-lab-2"
    acl = _render_acl(tmp_path, inventory)
    assert f"\nuser {device}\n" in acl
    broker = make_broker(tls=False, users={device: "pw", "door-hq-lobby-1": "pw1"}, acl=acl)
    lobby = _client(broker, "door-hq-lobby-1")  # an enrolling door (in voxgate_fleet_signers)
    lobby.publish(f"{FLEET}/hq_lab/u1", b"x", qos=1, retain=True).wait_for_publish(5)
    seen: list[str] = []
    door = _client(broker, device, seen)
    door.subscribe(f"{FLEET}/#", qos=1)
    wait_until(lambda: len(seen) >= 1, 10, f"{device} gets its group's message")
    assert seen == [f"{FLEET}/hq_lab/u1"]
    # ... and it may write its own topics (status, decisions).
    got: list[str] = []
    watch = _client(broker, device, got)
    watch.subscribe(f"voxgate/{device}/#", qos=1)
    time.sleep(0.3)
    door.publish(f"voxgate/{device}/status", b"online", qos=1, retain=True).wait_for_publish(5)
    wait_until(lambda: got == [f"voxgate/{device}/status"], 10, "its own status topic")
    for c in (door, watch, lobby):
        c.disconnect()
        c.loop_stop()
