"""Changes another process queued in the fleet outbox (`voxgate enroll` while the broker was
unreachable) are sent by the daemon's connected agent (`flush_outbox`), once."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from broker import Broker
from mqtt_helpers import wait_until

from voxgate.config import VoxgateConfig
from voxgate.fleet import FleetSync, public_key_hex
from voxgate.voiceprints import VoiceprintStore


def test_connected_agent_sends_what_another_process_queued(
    tmp_path: Path, plain_broker: Broker
) -> None:
    signing = os.urandom(32)
    for name, value in (("fleet.key", os.urandom(32).hex()), ("signing.key", signing.hex())):
        (tmp_path / name).write_text(value)
        (tmp_path / name).chmod(0o600)
    cfg = VoxgateConfig.model_validate(
        {
            "device_id": "door-a",
            "data_dir": str(tmp_path),
            "mqtt": {"host": plain_broker.host, "port": plain_broker.port},
            "fleet": {
                "enabled": True,
                "site": "acme",
                "key_file": str(tmp_path / "fleet.key"),
                "signing_key_file": str(tmp_path / "signing.key"),
                "signers": {"door-a": public_key_hex(signing)},
                "groups": ["lobby"],
                "access": {"lobby": ["*"]},
            },
        }
    )
    store = VoiceprintStore(tmp_path / "voiceprints.db", os.urandom(32))
    emb = np.random.default_rng(0).normal(size=(3, 256)).astype(np.float32)
    store.add_user("carol", emb / np.linalg.norm(emb, axis=1, keepdims=True), "m/int8")
    daemon_agent = FleetSync.from_config(cfg, store, model_id="m/int8", client_id="daemon")
    daemon_agent.start()
    wait_until(daemon_agent.connected.is_set, 10, "daemon agent connected")
    assert daemon_agent.flush_outbox() == 0

    # The "CLI": same state file, never connected, so its change waits in the outbox.
    cli = FleetSync.from_config(cfg, store, model_id="m/int8", client_id="cli")
    cli.on_local_change("enrolled", "carol")
    assert len(cli.state.outbox()) == 1
    cli.stop()

    import paho.mqtt.client as mqtt

    got: list[str] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_connect = lambda c, *a: c.subscribe("voxgate/_fleet/#", 1)
    sub.on_message = lambda c, u, m: got.append(m.topic)
    sub.connect(plain_broker.host, plain_broker.port)
    sub.loop_start()
    try:
        assert daemon_agent.flush_outbox() == 1
        wait_until(lambda: not daemon_agent.state.outbox(), 10, "the outbox to empty")
        wait_until(lambda: len(got) == 1, 10, "the retained voiceprint on the group topic")
        assert got[0].startswith("voxgate/_fleet/acme/lobby/")
        assert daemon_agent.flush_outbox() == 0  # acknowledged: not sent again
    finally:
        sub.loop_stop()
        daemon_agent.stop()
        store.close()
