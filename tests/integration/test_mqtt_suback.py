"""A subscription the broker refuses is named in the log, with what the door loses.

mosquitto 2.0's acl_file grants every subscription and filters at delivery, so the refusal
comes from a real mosquitto with its dynamic-security plugin, whose subscribe ACL is checked
when the SUBACK is sent.
"""

from __future__ import annotations

import glob
import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
from broker import Broker
from mqtt_helpers import link_config, wait_until

from voxgate.mqtt.client import MqttLink

DEV = "front-door"
PLUGINS = glob.glob("/usr/lib/*/mosquitto_dynamic_security.so") + glob.glob(
    "/usr/lib/mosquitto_dynamic_security.so"
)
TOPICS = {
    "commands": f"voxgate/{DEV}/cmd/+",
    "user": f"voxgate/{DEV}/user",
    "refusals": f"voxgate/{DEV}/decision/refused",
}


def _dynsec_broker(directory: Path, refused: str) -> Broker:
    """A broker whose door user may subscribe to every door topic but `refused`."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "dynsec.json"
    # mosquitto_ctrl writes the user with a real password hash; its roles are replaced.
    subprocess.run(
        ["mosquitto_ctrl", "dynsec", "init", str(config), DEV, "door-pass"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    data = json.loads(config.read_text())
    acls = [
        {"acltype": "publishClientSend", "topic": f"voxgate/{DEV}/#", "allow": True},
        {"acltype": "publishClientSend", "topic": "homeassistant/#", "allow": True},
    ] + [
        {"acltype": "subscribePattern", "topic": topic, "allow": True}
        for topic in TOPICS.values()
        if topic != refused
    ]
    data["roles"] = [{"rolename": "door", "acls": acls}]
    data["clients"][0]["roles"] = [{"rolename": "door"}]
    config.write_text(json.dumps(data))
    conf = f"plugin {PLUGINS[0]}\nplugin_opt_config_file {config}"
    return Broker(directory, tls=False, extra_conf=conf)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
@pytest.mark.parametrize("which", sorted(TOPICS))
def test_a_refused_subscription_names_its_topic_and_what_the_door_loses(
    tmp_path: Path,
    mosquitto_available: None,
    caplog: pytest.LogCaptureFixture,
    which: str,
    protocol: str,
) -> None:
    """Any refused subscription was logged as 'command subscription refused ... commands
    will not arrive', also when the commands arrived and the refusal reports did not."""
    if not PLUGINS or shutil.which("mosquitto_ctrl") is None:
        pytest.skip("mosquitto's dynamic-security plugin or mosquitto_ctrl is not installed")
    refused = TOPICS[which]
    broker = _dynsec_broker(tmp_path / "broker", refused).start()
    password = tmp_path / "mqtt.password"
    password.write_text("door-pass\n")
    password.chmod(0o600)
    cfg = link_config(broker, user=None, username=DEV, password_file=str(password))
    cfg = cfg.model_copy(update={"protocol": protocol})
    link = MqttLink(cfg, DEV, decision_key=b"k" * 32)
    try:
        with caplog.at_level(logging.INFO, logger="voxgate.mqtt.client"):
            link.start()
            wait_until(
                lambda: any("refused the subscription" in r.getMessage() for r in caplog.records),
                10,
                "the SUBACK",
            )
    finally:
        link.stop()
        broker.stop()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"MQTT: the broker refused the subscription to {refused} ("), errors
    assert f"let user {DEV} subscribe to (read) it" in errors[0]
    lost = {
        "commands": "MQTT commands (docs/mqtt.md) will not arrive",
        "user": "erasing that user cannot clear it",
        "refusals": "the lock's refusal reports will not arrive",
    }
    assert lost[which] in errors[0], errors[0]
    assert all(lost[other] not in errors[0] for other in lost if other != which)
