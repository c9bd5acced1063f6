"""`voxgate fleet resend/revoke` against a real broker: while its session is up it also
receives the retained fleet messages of the door's groups, and must apply them as the daemon
would."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import yaml
from broker import Broker

from voxgate.cli import main
from voxgate.config import parse_config
from voxgate.embedding import load_card
from voxgate.fleet import Codec, FleetKeys, public_key_hex, topic_root
from voxgate.voiceprints import VoiceprintStore, load_key


def test_revoke_cli_does_not_store_a_voiceprint_of_another_model(
    tmp_path: Path, plain_broker: Broker, no_secret_env: None
) -> None:
    """The CLI's agent had no model id, so the model check was skipped: a retained voiceprint
    made with another speaker model, which the daemon refuses, was stored by the CLI."""
    fleet_key, sk_a, sk_b = os.urandom(32), os.urandom(32), os.urandom(32)
    for name, value in (("fleet.key", fleet_key), ("signing.key", sk_b)):
        (tmp_path / name).write_text(value.hex() + "\n")
        (tmp_path / name).chmod(0o600)
    assert main(["users", "init-key", str(tmp_path / "voiceprint.key")]) == 0
    doc = {
        "device_id": "door-b",
        "data_dir": str(tmp_path / "data"),
        "speaker": {"key_file": str(tmp_path / "voiceprint.key")},
        "mqtt": {"host": plain_broker.host, "port": plain_broker.port},
        "fleet": {
            "enabled": True,
            "site": "acme",
            "key_file": str(tmp_path / "fleet.key"),
            "signing_key_file": str(tmp_path / "signing.key"),
            "signers": {"door-a": public_key_hex(sk_a), "door-b": public_key_hex(sk_b)},
            "groups": ["lobby"],
            "access": {"lobby": ["*"]},
        },
    }
    cfg_file = tmp_path / "voxgate.yaml"
    cfg_file.write_text(yaml.safe_dump(doc))
    cfg = parse_config(cfg_file.read_text())
    ours = load_card(cfg.speaker.model).id

    door_a = Codec(FleetKeys(fleet_key, sk_a, {}), "acme", "door-a")
    emb = np.random.default_rng(5).normal(size=(3, 256)).astype(np.float32)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect(plain_broker.host, plain_broker.port)
    pub.loop_start()
    root = topic_root("voxgate", "acme")
    for name, model in (("alice", "another-model/v9"), ("carol", ours)):
        msg = door_a.encode("voiceprint", "lobby", name, 5, model_id=model, embeddings=emb)
        topic = f"{root}/lobby/{door_a.user_tag(name)}"
        pub.publish(topic, msg, qos=1, retain=True).wait_for_publish(5)
    pub.loop_stop()
    pub.disconnect()

    assert main(["fleet", "revoke", "dave", "--group", "lobby", "-c", str(cfg_file)]) == 0
    with VoiceprintStore(tmp_path / "data" / "voiceprints.db", load_key(cfg.speaker)) as store:
        assert store.get("carol") is not None  # the CLI did receive and apply the fleet's
        assert store.get("alice") is None  # ...but not a voiceprint of another model
