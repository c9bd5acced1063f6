"""`voxgate fleet resend/revoke` against a real broker: while its session is up it also
receives the retained fleet messages of the door's groups, and must apply them as the daemon
would."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import yaml
from broker import Broker
from mqtt_helpers import wait_until

from voxgate.audit import open_log
from voxgate.cli import main
from voxgate.config import parse_config
from voxgate.embedding import load_card
from voxgate.fleet import Codec, FleetKeys, public_key_hex, topic_root
from voxgate.voiceprints import VoiceprintStore, load_key


def _door_b(
    tmp_path: Path, broker: Broker, signers: dict[str, bytes], access: dict[str, list[str]]
) -> tuple[Path, bytes]:
    """Door B's config file (fleet on, in group lobby, signing with signers['door-b']) and its
    fleet key; `signers` maps door ids to their Ed25519 signing keys."""
    fleet_key = os.urandom(32)
    for name, value in (("fleet.key", fleet_key), ("signing.key", signers["door-b"])):
        (tmp_path / name).write_text(value.hex() + "\n")
        (tmp_path / name).chmod(0o600)
    assert main(["users", "init-key", str(tmp_path / "voiceprint.key")]) == 0
    doc = {
        "device_id": "door-b",
        "data_dir": str(tmp_path / "data"),
        "speaker": {"key_file": str(tmp_path / "voiceprint.key")},
        "mqtt": {"host": broker.host, "port": broker.port},
        "fleet": {
            "enabled": True,
            "site": "acme",
            "key_file": str(tmp_path / "fleet.key"),
            "signing_key_file": str(tmp_path / "signing.key"),
            "signers": {door: public_key_hex(sk) for door, sk in signers.items()},
            "groups": ["lobby"],
            "access": access,
        },
    }
    cfg_file = tmp_path / "voxgate.yaml"
    cfg_file.write_text(yaml.safe_dump(doc))
    return cfg_file, fleet_key


def test_revoke_cli_does_not_store_a_voiceprint_of_another_model(
    tmp_path: Path, plain_broker: Broker, no_secret_env: None
) -> None:
    """The CLI's agent had no model id, so the model check was skipped: a retained voiceprint
    made with another speaker model, which the daemon refuses, was stored by the CLI."""
    sk_a, sk_b = os.urandom(32), os.urandom(32)
    cfg_file, fleet_key = _door_b(
        tmp_path, plain_broker, {"door-a": sk_a, "door-b": sk_b}, {"lobby": ["*"]}
    )
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


def test_fleet_erase_tells_every_group_about_a_user_this_door_never_held(
    tmp_path: Path, plain_broker: Broker, no_secret_env: None
) -> None:
    """A person enrolled at a door that was since re-imaged: `users erase` here finds nobody,
    so nothing told the fleet. `fleet erase` sends a nameless erase to every group; a user this
    door holds is refused and pointed to `users erase` (which erases here as well)."""
    sk_b = os.urandom(32)
    access = {"lobby": ["*"], "lab": ["alice"]}
    cfg_file, fleet_key = _door_b(tmp_path, plain_broker, {"door-b": sk_b}, access)
    cfg = parse_config(cfg_file.read_text())
    with VoiceprintStore(tmp_path / "data" / "voiceprints.db", load_key(cfg.speaker)) as store:
        emb = np.random.default_rng(1).normal(size=(3, 256)).astype(np.float32)
        store.add_user("carol", emb, load_card(cfg.speaker.model).id)

    assert main(["fleet", "erase", "carol", "-c", str(cfg_file)]) == 1
    assert main(["fleet", "erase", "Alice", "-c", str(cfg_file)]) == 0

    reader = Codec(
        FleetKeys(fleet_key, None, {"door-b": bytes.fromhex(public_key_hex(sk_b))}),
        "acme",
        "door-b",
    )
    root = topic_root("voxgate", "acme")
    got: dict[str, bytes] = {}
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_message = lambda c, u, m: got.__setitem__(m.topic, bytes(m.payload))
    sub.connect(plain_broker.host, plain_broker.port)
    sub.subscribe(f"{root}/#", qos=1)
    sub.loop_start()
    try:
        wait_until(lambda: len(got) >= 2, 10, "two retained erases")
    finally:
        sub.loop_stop()
        sub.disconnect()
    tag = reader.user_tag("alice")
    assert sorted(got) == [f"{root}/lab/{tag}", f"{root}/lobby/{tag}"]
    for topic, payload in got.items():
        upd = reader.decode(topic.split("/")[-2], tag, payload, time.time())
        assert upd.kind == "erase" and upd.name is None
        assert b"alice" not in payload.lower()
    # This door erased a person everywhere: its audit log says so (and who ran it: the CLI).
    lines = (tmp_path / "data" / "audit.jsonl").read_text().splitlines()
    sent = [r for r in map(json.loads, lines) if r["event"] == "fleet_sent"]
    assert [(r["kind"], r["user"], r["groups"], r["via"]) for r in sent] == [
        ("erase", "Alice", ["lab", "lobby"], "cli")
    ]


def test_fleet_changes_a_command_line_session_applies_are_audited(
    tmp_path: Path, plain_broker: Broker, no_secret_env: None
) -> None:
    """`voxgate fleet ...` (and `voxgate enroll`, `voxgate users erase`) apply the fleet's
    retained messages while their session is up, and record them in the shared sync state, so
    the daemon's agent then skips them as seen: a voiceprint the CLI stored (or erased) left no
    line in the door's audit log at all."""
    sk_a, sk_b = os.urandom(32), os.urandom(32)
    cfg_file, fleet_key = _door_b(
        tmp_path, plain_broker, {"door-a": sk_a, "door-b": sk_b}, {"lobby": ["*"]}
    )
    cfg = parse_config(cfg_file.read_text())
    door_a = Codec(FleetKeys(fleet_key, sk_a, {}), "acme", "door-a")
    emb = np.random.default_rng(7).normal(size=(3, 256)).astype(np.float32)
    msg = door_a.encode(
        "voiceprint", "lobby", "carol", 5, model_id=load_card(cfg.speaker.model).id, embeddings=emb
    )
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect(plain_broker.host, plain_broker.port)
    pub.loop_start()
    topic = f"{topic_root('voxgate', 'acme')}/lobby/{door_a.user_tag('carol')}"
    pub.publish(topic, msg, qos=1, retain=True).wait_for_publish(5)
    pub.loop_stop()
    pub.disconnect()

    assert main(["fleet", "revoke", "dave", "--group", "lobby", "-c", str(cfg_file)]) == 0
    with VoiceprintStore(tmp_path / "data" / "voiceprints.db", load_key(cfg.speaker)) as store:
        assert store.get("carol") is not None  # applied by the command's session
    lines = (tmp_path / "data" / "audit.jsonl").read_text().splitlines()
    stored = [r for r in map(json.loads, lines) if r["event"] == "fleet_stored"]
    assert [(r["user"], r["signer"], r["version"]) for r in stored] == [("carol", "door-a", 5)]


def test_a_change_left_in_the_outbox_is_named_in_plain_words(
    tmp_path: Path, no_secret_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Seen with the broker down: `voxgate enroll` printed "the enrolled of Yusuf Brandt
    waits in .../fleet.db" and `voxgate users erase` "the erased of ..."."""
    down = Broker(tmp_path / "broker", port=1)  # never started: nothing listens there
    cfg_file, _ = _door_b(tmp_path, down, {"door-b": os.urandom(32)}, {"lobby": ["*"]})
    cfg = parse_config(cfg_file.read_text())
    with VoiceprintStore(cfg.data_dir / "voiceprints.db", load_key(cfg.speaker)) as store:
        store.add_user("alice", np.ones((2, 8), np.float32), "m/1")
    assert main(["users", "erase", "alice", "-c", str(cfg_file)]) == 0
    out = capsys.readouterr().out
    assert "the erase of alice waits in" in out, out


def test_a_refused_connection_is_told_apart_from_a_broker_that_does_not_answer(
    tmp_path: Path, no_secret_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """With mosquitto stopped, `voxgate users erase` said "broker not reachable within 5 s"
    though the connection was refused at once: the words sent people to the network. A
    refused connection now says so and asks whether mosquitto runs; a broker that takes the
    connection and never answers is "no answer ... within 5 s", with what to check."""
    import socket

    down = Broker(tmp_path / "broker", port=1)  # never started: nothing listens there
    cfg_file, _ = _door_b(tmp_path, down, {"door-b": os.urandom(32)}, {"lobby": ["*"]})
    cfg = parse_config(cfg_file.read_text())
    with VoiceprintStore(cfg.data_dir / "voiceprints.db", load_key(cfg.speaker)) as store:
        store.add_user("alice", np.ones((2, 8), np.float32), "m/1")
        store.add_user("bob", np.ones((2, 8), np.float32), "m/1")
    assert main(["users", "erase", "alice", "-c", str(cfg_file)]) == 0
    out = capsys.readouterr().out
    assert f"connection refused by {down.host}:1: is mosquitto running" in out, out
    assert "the erase of alice waits in" in out and "within 5 s" not in out
    # A port that takes the connection (the kernel completes it) and never answers MQTT.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        doc = yaml.safe_load(cfg_file.read_text())
        doc["mqtt"]["port"] = silent.getsockname()[1]
        doc["mqtt"]["host"] = "127.0.0.1"
        cfg_file.write_text(yaml.safe_dump(doc))
        assert main(["users", "erase", "bob", "-c", str(cfg_file)]) == 0
    finally:
        silent.close()
    out = capsys.readouterr().out
    assert f"no answer from the broker at 127.0.0.1:{doc['mqtt']['port']} within 5 s" in out, out
    assert "the erase of bob waits in" in out


def test_fleet_status_shows_unsent_changes_and_users_by_tag_with_their_names(
    tmp_path: Path, plain_broker: Broker, no_secret_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """An administrator could not see what a door had not yet sent to the fleet (an erase
    waiting in the outbox while the broker was down: the other doors still let the person
    in) short of opening fleet.db with sqlite3 by hand; and fleet.db names users only by
    their user tag. `voxgate fleet status` reads it, names the tags this door holds a
    voiceprint for, and exits 2 while changes wait."""
    sk_b = os.urandom(32)
    access = {"lobby": ["*"], "lab": ["alice"]}
    cfg_file, fleet_key = _door_b(tmp_path, plain_broker, {"door-b": sk_b}, access)
    cfg = parse_config(cfg_file.read_text())
    with VoiceprintStore(tmp_path / "data" / "voiceprints.db", load_key(cfg.speaker)) as store:
        emb = np.random.default_rng(2).normal(size=(3, 256)).astype(np.float32)
        store.add_user("Carol", emb, load_card(cfg.speaker.model).id)
    # Her enrollment's line: a voiceprint on a door without an audit log reads as a lost log.
    open_log(cfg).append("enrollment", user="Carol", via="cli")
    codec = Codec(FleetKeys(fleet_key, None, {}), "acme", "door-b")
    carol, alice = codec.user_tag("carol"), codec.user_tag("alice")
    c = ["-c", str(cfg_file)]

    assert main(["fleet", "status", *c]) == 0  # before any sync: nothing there yet
    assert "not there yet" in capsys.readouterr().out

    plain_broker.stop()  # the broker is down: both changes stay in the outbox
    assert main(["fleet", "resend", "carol", "--timeout", "0.5", *c]) == 2
    assert main(["fleet", "erase", "alice", "--timeout", "0.5", *c]) == 2
    capsys.readouterr()
    assert main(["fleet", "status", *c]) == 2
    out = capsys.readouterr().out
    assert "outbox: 3 message(s) not yet acknowledged by the broker" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("  ")]
    assert ["voiceprint", "lobby", carol] == rows[1][:3]
    assert {tuple(r[:3]) for r in rows[2:4]} == {("erase", "lab", alice), ("erase", "lobby", alice)}
    users = {r[0]: r[1:] for r in rows if len(r[0]) == 32}
    assert users[carol][:3] == ["Carol", "stored", "here"]  # the name as enrolled
    assert users[alice][:2] == ["-", "erased"]  # not held here: only the tag is known
    assert main(["fleet", "status", "--json", *c]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert [(p["kind"], p["user_tag"]) for p in doc["outbox"]] == [
        ("voiceprint", carol),
        ("erase", alice),
        ("erase", alice),
    ]
    assert {u["user_tag"]: u["name"] for u in doc["users"]} == {carol: "Carol", alice: None}

    plain_broker.start()  # a session delivers the outbox: the report says so
    assert main(["fleet", "resend", "carol", *c]) == 0
    capsys.readouterr()
    assert main(["fleet", "status", *c]) == 0
    assert "outbox: empty" in capsys.readouterr().out
    # The sessions' fleet_sent and applied changes are on the door's record, chain intact.
    events = [
        json.loads(x)["event"] for x in (tmp_path / "data/audit.jsonl").read_text().splitlines()
    ]
    assert events.count("fleet_sent") == 3
    assert main(["audit", "verify", *c]) == 0


def test_a_fleet_command_on_a_door_whose_audit_log_was_lost_records_the_loss(
    tmp_path: Path, plain_broker: Broker, no_secret_env: None
) -> None:
    """`voxgate fleet` opened the audit log without looking for a loss: on a door that had
    run, it began a new log (anchored at seq 0 when nothing was applied), which the daemon's
    next start then took for a log kept all along, and `audit verify` called intact."""
    from voxgate.config.service import LockoutConfig
    from voxgate.lockout import LockoutBook

    cfg_file, _ = _door_b(tmp_path, plain_broker, {"door-b": os.urandom(32)}, {"lobby": ["*"]})
    (tmp_path / "data").mkdir(exist_ok=True)
    LockoutBook(tmp_path / "data" / "lockout.db", LockoutConfig()).close()  # the door ran
    assert not (tmp_path / "data" / "audit.jsonl").exists()

    assert main(["fleet", "revoke", "dave", "--group", "lobby", "-c", str(cfg_file)]) == 0
    lines = (tmp_path / "data" / "audit.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["event"] == "audit_log_lost", lines
    assert any("lockout.db" in f for f in first["found"]), first
    assert main(["audit", "verify", "-c", str(cfg_file)]) == 1
