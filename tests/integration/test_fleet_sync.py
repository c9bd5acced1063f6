"""Fleet sync between real doors: sync agents with their own stores, one real mosquitto.

Doors A and B are in group "lobby", C in group "lab"; the broker ACL lets each door read only
its groups' topics. Speech is espeak-ng, embedded by the shipped speaker model.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from broker import Broker
from fleet_tts import DIGITS, ESPEAK, say
from mqtt_helpers import wait_until

from voxgate.api.users import UserAdmin
from voxgate.config import parse_config
from voxgate.fleet import FleetSync, public_key_hex, topic_root
from voxgate.scoring import Scorer
from voxgate.voiceprints import VoiceprintStore

pytestmark = pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not installed")

ROOT = topic_root("voxgate", "acme")
ACCESS = {"lobby": ["alice", "bob", "dave"], "lab": ["carol"]}
USERS = {"door-a": "pw-a-123", "door-b": "pw-b-456", "door-c": "pw-c-789", "door-d": "pw-d-012"}
USERS["door-e"] = "pw-e-345"
ACL = f"""
user door-a
topic read {ROOT}/lobby/#
topic write {ROOT}/#

user door-b
topic read {ROOT}/lobby/#
topic write {ROOT}/#

user door-c
topic read {ROOT}/lab/#

user door-d
topic read {ROOT}/lobby/#
topic read {ROOT}/lab/#

user door-e
topic read {ROOT}/lobby/#
"""
ALICE, MALLORY = "en+m3", "en+f2"  # espeak voices


@pytest.fixture(scope="module")
def embedder() -> Any:
    from voxgate.embedding import load_embedder

    return load_embedder()


@pytest.fixture(scope="module")
def alice_takes() -> list[np.ndarray]:
    return [say(t, ALICE) for t in DIGITS[:3]]


class Door:
    def __init__(
        self, base: Path, name: str, broker: Broker, groups: list[str], **fleet: Any
    ) -> None:
        self.name = name
        self.dir = base / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.broker = broker
        self.groups = groups
        self.fleet = fleet
        self.store = VoiceprintStore(self.dir / "voiceprints.db", os.urandom(32))
        self.agent: FleetSync | None = None
        self.audit: list[tuple[str, dict]] = []

    def config(self) -> Any:
        mqtt_cfg = {**self.broker.mqtt_settings(self.name), "reconnect_min_s": 0.1}
        mqtt_cfg["reconnect_max_s"] = 1.0
        fleet = {
            "enabled": True,
            "site": "acme",
            "key_file": str(self.dir.parent / "fleet-key"),
            "signing_key_file": str(self.dir / "signing-key"),
            "signers": SIGNERS,
            "groups": self.groups,
            "access": ACCESS,
            **self.fleet,
        }
        return parse_config_dict(
            {
                "device_id": self.name,
                "data_dir": str(self.dir),
                "mqtt": mqtt_cfg,
                "fleet": fleet,
                "speaker": {"enroll_min_speech_s": 6, "threshold": 0.9},
            }
        )

    def agent_for(self, model_id: str | None = None, **kwargs: Any) -> FleetSync:
        """This door's agent, not started (e.g. offline: its changes wait in the outbox)."""
        cfg = self.config()
        self.cfg = cfg
        self.agent = FleetSync(
            cfg.fleet,
            cfg.mqtt,
            cfg.device_id,
            self.store,
            self.dir / "fleet.db",
            model_id=model_id,
            audit_event=lambda event, **f: self.audit.append((event, f)),
            **kwargs,
        )
        return self.agent

    def start(self, model_id: str | None = None, **kwargs: Any) -> FleetSync:
        if self.agent is None:
            self.agent_for(model_id, **kwargs)
        assert self.agent is not None
        self.agent.start()
        wait_until(self.agent.connected.is_set, 10, f"{self.name} connected")
        return self.agent

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.stop()
            self.agent = None

    def admin(self, embedder: Any) -> UserAdmin:
        assert self.agent is not None
        return UserAdmin(
            self.store,
            self.cfg.speaker,
            self.cfg.vad,
            lambda: embedder,
            on_change=self.agent.on_local_change,
        )


SIGNERS: dict[str, str] = {}


def parse_config_dict(doc: dict) -> Any:
    import yaml

    return parse_config(yaml.safe_dump(doc))


@pytest.fixture()
def fleet(
    tmp_path: Path, make_broker: Callable[..., Broker], no_secret_env: None
) -> Iterator[dict[str, Any]]:
    broker = make_broker(tls=False, users=USERS, acl=ACL)
    key = tmp_path / "fleet-key"
    key.write_text(os.urandom(32).hex() + "\n")
    key.chmod(0o600)
    SIGNERS.clear()
    doors = {
        "a": Door(tmp_path, "door-a", broker, ["lobby"]),
        "b": Door(tmp_path, "door-b", broker, ["lobby"]),
        "c": Door(tmp_path, "door-c", broker, ["lab"]),
    }
    for d in doors.values():
        sk = os.urandom(32)
        (d.dir / "signing-key").write_text(sk.hex() + "\n")
        (d.dir / "signing-key").chmod(0o600)
        if d.name != "door-c":  # C only receives: nobody trusts its signature
            SIGNERS[d.name] = public_key_hex(sk)
    yield {"broker": broker, **doors}
    for d in doors.values():
        d.stop()
        d.store.close()


def _scorer(door: Door, embedder: Any) -> Scorer:
    return Scorer(door.store, embedder, door.config().speaker, cohort=None)


class Snoop:
    """A raw client with a door's broker account, recording every message it may read."""

    def __init__(self, broker: Broker, user: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.subscribed = False
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.username_pw_set(user, USERS[user])
        c.on_connect = lambda c, *a: c.subscribe([(f"{ROOT}/#", 1)])
        c.on_subscribe = lambda *a: setattr(self, "subscribed", True)
        c.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload)))
        c.connect(broker.host, broker.port)
        c.loop_start()
        self.client = c
        wait_until(lambda: self.subscribed, 10, "snoop subscription")

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_enroll_on_a_verify_on_b_erase_on_a_then_b_refuses(
    fleet: dict, embedder: Any, alice_takes: list[np.ndarray]
) -> None:
    a, b, c = fleet["a"], fleet["b"], fleet["c"]
    for d in (a, b, c):
        d.start(model_id=embedder.model_id)
    snoop_c = Snoop(fleet["broker"], "door-c")  # what door C's account can see at all
    result = a.admin(embedder).enroll("alice", alice_takes)
    assert result["name"] == "alice"

    wait_until(lambda: b.store.get("alice") is not None, 10, "alice on door B")
    attempt = embedder.embed(say(DIGITS[3], ALICE))
    impostor = embedder.embed(say(DIGITS[3], MALLORY))
    on_b = _scorer(b, embedder)
    ok = on_b.verify(attempt, "alice")
    assert ok.accepted, ok
    assert not on_b.verify(impostor, "alice").accepted
    # B holds its own, differently encrypted copy of the same voiceprint, and knows which
    # model file made it.
    np.testing.assert_allclose(b.store.get("alice").mean, a.store.get("alice").mean, atol=1e-6)
    assert b.store.get("alice").model_sha256 == embedder.model_sha256 == embedder.card.model.sha256

    # Door C (group lab) is not allowed for alice: it neither stores nor even receives her.
    assert c.store.get("alice") is None
    assert snoop_c.messages == []
    assert c.agent.stats["applied"] == 0

    a.admin(embedder).erase("alice")
    wait_until(lambda: b.store.get("alice") is None, 10, "alice erased on door B")
    refused = on_b.verify(attempt, "alice")
    assert not refused.accepted and "unknown_user" in refused.reasons
    wait_until(lambda: len(b.audit) >= 2, 10, "B's audit events")
    events = [(e, f["user"], f["signer"]) for e, f in b.audit]
    assert events == [("fleet_stored", "alice", "door-a"), ("fleet_erased", "alice", "door-a")]
    snoop_c.close()


def test_offline_door_catches_up_and_erase_wins_over_a_replay(
    fleet: dict, embedder: Any, alice_takes: list[np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = fleet["a"], fleet["b"]
    a.start(embedder.model_id)
    b.start(embedder.model_id)
    snoop = Snoop(fleet["broker"], "door-a")  # e.g. a stolen door's broker credentials
    admin_a = a.admin(embedder)
    admin_a.enroll("alice", alice_takes)
    wait_until(lambda: b.store.get("alice") is not None, 10, "alice on door B")

    def lobby() -> list[tuple[str, bytes]]:
        return [m for m in snoop.messages if m[0].startswith(f"{ROOT}/lobby/")]

    # The snoop's copy may arrive after door B's: wait for it rather than race it.
    wait_until(lambda: len(lobby()) >= 1, 10, "alice's voiceprint seen by the snoop")
    old = lobby()
    assert len(old) == 1

    b.stop()  # door B goes offline; meanwhile alice is erased and bob enrolled
    admin_a.erase("alice")
    admin_a.enroll("bob", [say(t, "en-us") for t in DIGITS[:3]])
    b.start(embedder.model_id)
    wait_until(lambda: b.store.get("bob") is not None, 10, "bob on door B after reconnect")
    wait_until(lambda: b.store.get("alice") is None, 10, "alice erased on door B")

    # Someone replays alice's old (validly signed) voiceprint: the newer erase wins.
    caplog.set_level(logging.INFO, logger="voxgate.fleet")
    ignored = b.agent.stats["ignored_old"]
    snoop.publish(old[0][0], old[0][1])
    wait_until(lambda: b.agent.stats["ignored_old"] > ignored, 10, "replay ignored")
    assert b.store.get("alice") is None
    # ...and says so (a replay was silent).
    assert any("ignored voiceprint of alice" in r.getMessage() for r in caplog.records)
    snoop.close()


def test_forged_and_damaged_messages_are_refused_and_logged(
    fleet: dict, embedder: Any, alice_takes: list[np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = fleet["a"], fleet["b"]
    caplog.set_level(logging.WARNING, logger="voxgate.fleet")
    b.start(embedder.model_id)
    snoop = Snoop(fleet["broker"], "door-a")
    tag = b.agent.codec.user_tag("alice")
    # C's key is not in fleet.signers: a message it signs is refused, as is garbage.
    c_codec = type(b.agent.codec)(
        type(b.agent.keys)(b.agent.keys.fleet_key, os.urandom(32), {}), "acme", "door-a"
    )
    forged = c_codec.encode(
        "voiceprint", "lobby", "alice", 1, model_id=embedder.model_id, embeddings=np.ones((1, 256))
    )
    snoop.publish(f"{ROOT}/lobby/{tag}", forged)
    snoop.publish(f"{ROOT}/lobby/{b.agent.codec.user_tag('bob')}", b"\x00not json")
    wait_until(lambda: b.agent.stats["refused"] >= 2, 10, "two refusals")
    assert b.store.users() == []
    assert any("bad signature" in r.getMessage() for r in caplog.records)
    assert any("not JSON" in r.getMessage() for r in caplog.records)
    # The agent keeps working: a real enrollment still arrives.
    a.start(embedder.model_id)
    a.admin(embedder).enroll("alice", alice_takes)
    wait_until(lambda: b.store.get("alice") is not None, 10, "alice on door B")
    snoop.close()


def test_revoke_and_config_change_remove_access(
    fleet: dict, embedder: Any, alice_takes: list[np.ndarray]
) -> None:
    a, b = fleet["a"], fleet["b"]
    a.start(embedder.model_id)
    b.start(embedder.model_id)
    admin_a = a.admin(embedder)
    admin_a.enroll("alice", alice_takes)
    admin_a.enroll("dave", [say(t, "en-us") for t in DIGITS[:3]])
    wait_until(lambda: b.store.get("dave") is not None, 10, "dave on door B")
    wait_until(lambda: b.store.get("alice") is not None, 10, "alice on door B")

    a.agent.publish_revoke("dave", ["lobby"])
    wait_until(lambda: b.store.get("dave") is None, 10, "dave revoked on door B")

    # The access map shrinks (an Ansible run): at its next start door B drops alice itself.
    b.stop()
    b.fleet["access"] = {"lobby": ["bob"], "lab": ["carol"]}
    b.start(embedder.model_id)
    assert b.store.get("alice") is None


def test_changes_made_while_the_broker_is_down_are_sent_later(
    fleet: dict, embedder: Any, alice_takes: list[np.ndarray]
) -> None:
    a, b = fleet["a"], fleet["b"]
    a.start(embedder.model_id)
    b.start(embedder.model_id)
    fleet["broker"].stop()
    wait_until(lambda: not a.agent.connected.is_set(), 10, "A notices the broker is gone")
    a.admin(embedder).enroll("alice", alice_takes)
    assert len(a.agent.state.outbox()) == 1  # kept, not lost
    fleet["broker"].start()
    wait_until(lambda: b.store.get("alice") is not None, 15, "alice on door B")
    wait_until(lambda: a.agent.state.outbox() == [], 10, "A's outbox drained")


def test_an_erase_made_offline_is_not_undone_by_the_unacknowledged_enrollment(
    fleet: dict,
) -> None:
    """The broker stalls before acknowledging alice's voiceprint, the link drops, alice is
    erased on door A while it is offline. On reconnect paho used to re-send its held copy of
    the voiceprint after the outbox's erase, so the voiceprint became the retained message and
    a door that syncs later enrolled the erased user."""
    import signal

    a, b, broker = fleet["a"], fleet["b"], fleet["broker"]
    emb = np.random.default_rng(0).normal(size=(3, 256)).astype(np.float32)
    a.store.add_user("alice", emb / np.linalg.norm(emb, axis=1, keepdims=True), "test-model")
    a.start("test-model")
    assert broker.proc is not None
    os.kill(broker.proc.pid, signal.SIGSTOP)  # no PUBACK for what comes next
    a.agent.publish_enrollment("alice")
    wait_until(lambda: len(a.agent.state.outbox()) == 1, 5, "the voiceprint queued")
    broker.kill()
    wait_until(lambda: not a.agent.connected.is_set(), 10, "A notices the broker is gone")
    assert a.store.erase("alice")
    a.agent.on_local_change("erased", "alice")
    broker.start()
    wait_until(a.agent.connected.is_set, 10, "A reconnected")
    wait_until(lambda: a.agent.state.outbox() == [], 10, "A's outbox drained")
    b.start("test-model")  # a door that was offline all along (or a new one)
    wait_until(lambda: b.agent.stats["applied"] >= 1, 10, "door B synced")
    assert b.store.get("alice") is None


def test_an_update_the_broker_refuses_stays_in_the_outbox(fleet: dict) -> None:
    """Door C may not write to the fleet topics (broker ACL). mosquitto answers such a publish
    with a 'not authorized' PUBACK, which used to count as sent: the outbox row was deleted
    and the update silently lost."""
    c = fleet["c"]
    emb = np.random.default_rng(1).normal(size=(3, 256)).astype(np.float32)
    c.store.add_user("carol", emb / np.linalg.norm(emb, axis=1, keepdims=True), "test-model")
    c.start("test-model")
    c.agent.publish_enrollment("carol")
    wait_until(lambda: c.agent.stats["refused_by_broker"] >= 1, 10, "the broker's refusal")
    assert len(c.agent.state.outbox()) == 1
    assert c.agent.stats["sent"] == 0


def test_deeply_nested_json_is_refused_with_a_log_line_not_a_traceback(
    fleet: dict, embedder: Any, alice_takes: list[np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = fleet["a"], fleet["b"]
    caplog.set_level(logging.WARNING, logger="voxgate.fleet")
    b.start(embedder.model_id)
    snoop = Snoop(fleet["broker"], "door-a")
    # 200 kB, well under the size limit, but deeper than json.loads can recurse.
    nested = b"[" * 100_000 + b"]" * 100_000
    snoop.publish(f"{ROOT}/lobby/{b.agent.codec.user_tag('alice')}", nested)
    wait_until(lambda: b.agent.stats["refused"] >= 1, 10, "the nested message refused")
    assert any("nested too deeply" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert b.store.users() == []
    a.start(embedder.model_id)
    a.admin(embedder).enroll("alice", alice_takes)
    wait_until(lambda: b.store.get("alice") is not None, 10, "alice on door B")
    snoop.close()


def test_an_older_erase_from_another_group_does_not_remove_a_newer_enrollment(
    fleet: dict, tmp_path: Path
) -> None:
    """Door D is in lobby and lab. alice (lobby only) is enrolled, erased (the erase goes to
    every group), enrolled again (lobby only). D, offline meanwhile, finds both retained: the
    new voiceprint on lobby and the older erase on lab. The erase used to be applied because
    D had no lab grant for alice: a valid, older message removed a newer user."""
    a = fleet["a"]
    d = Door(tmp_path, "door-d", fleet["broker"], ["lobby", "lab"])
    (d.dir / "signing-key").write_text(os.urandom(32).hex() + "\n")
    (d.dir / "signing-key").chmod(0o600)
    try:
        emb = np.random.default_rng(2).normal(size=(3, 256)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        a.store.add_user("alice", emb, "test-model")
        a.start("test-model")
        d.start("test-model")
        a.agent.publish_enrollment("alice")
        wait_until(lambda: d.store.get("alice") is not None, 10, "alice on door D")
        d.stop()
        assert a.store.erase("alice")
        a.agent.on_local_change("erased", "alice")
        a.store.add_user("alice", emb, "test-model")
        version = a.agent.state.user(a.agent.codec.user_tag("alice"))[0]  # the erase's
        a.agent.publish_enrollment("alice")
        wait_until(lambda: a.agent.state.outbox() == [], 10, "A's outbox drained")
        d.start("test-model")
        tag = d.agent.codec.user_tag("alice")

        def synced() -> bool:
            lobby = d.agent.state.grant(tag, "lobby")
            lab_seen = d.agent.state.grant(tag, "lab") is not None
            return bool(lobby and lobby[0] > version) and (
                lab_seen or d.agent.stats["ignored_old"] >= 1
            )

        wait_until(synced, 10, "door D synced both groups")
        assert d.store.get("alice") is not None
        assert d.agent.state.user(tag)[2]  # held
    finally:
        d.stop()
        d.store.close()


def test_an_older_outbox_entry_does_not_replace_another_doors_newer_erase(
    fleet: dict, tmp_path: Path
) -> None:
    """Door A, offline, re-enrolls alice (queued in its outbox); meanwhile door B erases her.
    A reconnects and sends its outbox right after subscribing, so its older voiceprint became
    the retained message over B's erase: the online doors ignored it (older), but a door
    syncing later stored the erased user."""
    import json

    a, b, broker = fleet["a"], fleet["b"], fleet["broker"]
    emb = np.random.default_rng(3).normal(size=(3, 256)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    a.store.add_user("alice", emb, "test-model")
    b.start("test-model")
    cfg = a.config()
    offline_a = FleetSync(  # A's agent, not connected: the change waits in its outbox
        cfg.fleet, cfg.mqtt, cfg.device_id, a.store, a.dir / "fleet.db", model_id="test-model"
    )
    offline_a.publish_enrollment("alice")
    assert len(offline_a.state.outbox()) == 1
    b.agent.publish_erase("alice")  # a newer version: B's clock has moved on
    assert b.agent.wait_sent(10)

    snoop = Snoop(broker, "door-a")
    topic = b.agent.topic("lobby", "alice")
    a.agent = offline_a
    offline_a.start()
    wait_until(lambda: offline_a.state.outbox() == [], 10, "A's outbox drained")

    def retained_kind() -> str:
        seen = [p for t, p in snoop.messages if t == topic]
        return str(json.loads(seen[-1])["kind"]) if seen else ""  # the header is in the clear

    wait_until(lambda: retained_kind() == "erase", 10, "B's erase retained again")
    snoop.close()
    d = Door(tmp_path, "door-d", broker, ["lobby"])  # a door that syncs later
    (d.dir / "signing-key").write_text(os.urandom(32).hex() + "\n")
    (d.dir / "signing-key").chmod(0o600)
    try:
        d.start("test-model")
        wait_until(lambda: d.agent.stats["applied"] >= 1, 10, "door D synced")
        assert d.store.get("alice") is None
    finally:
        d.stop()
        d.store.close()


def test_a_later_change_by_another_door_is_not_sent_again(fleet: dict) -> None:
    """The counterpart of the test above: when A's own message has come back from the broker
    first, B's later erase is an ordinary newer change, and A does not send it again."""
    a, b = fleet["a"], fleet["b"]
    emb = np.random.default_rng(4).normal(size=(3, 256)).astype(np.float32)
    a.store.add_user("alice", emb / np.linalg.norm(emb, axis=1, keepdims=True), "test-model")
    a.start("test-model")
    b.start("test-model")
    a.agent.publish_enrollment("alice")
    wait_until(lambda: b.store.get("alice") is not None, 10, "alice on door B")
    tag = a.agent.codec.user_tag("alice")
    wait_until(lambda: a.agent.state.grant(tag, "lobby") is not None, 10, "A's own echo")
    wait_until(lambda: a.agent.stats["ignored_old"] >= 1, 10, "A's own echo")
    b.agent.publish_erase("alice")
    wait_until(lambda: a.store.get("alice") is None, 10, "alice erased on door A")
    assert a.agent.stats["restored"] == 0


def test_after_an_erase_a_new_subscriber_with_the_fleet_key_finds_no_name(
    fleet: dict, tmp_path: Path
) -> None:
    """The erase is retained on every group's topic for good. It used to hold the name sealed
    with the fleet key, which every door has: any door, or anyone with a door's key and broker
    account, could read who had been erased, for ever."""
    from tests.fleet_wire import open_body

    a, b = fleet["a"], fleet["b"]
    emb = np.random.default_rng(5).normal(size=(3, 256)).astype(np.float32)
    a.store.add_user("alice", emb / np.linalg.norm(emb, axis=1, keepdims=True), "test-model")
    a.start("test-model")
    b.start("test-model")
    a.agent.publish_enrollment("alice")
    wait_until(lambda: b.store.get("alice") is not None, 10, "alice on door B")
    assert a.store.erase("alice")
    a.agent.on_local_change("erased", "alice")
    wait_until(lambda: b.store.get("alice") is None, 10, "alice erased on door B")
    wait_until(lambda: len(b.audit) >= 2, 10, "B's audit events")
    assert ("fleet_erased", "alice") in [(e, f.get("user")) for e, f in b.audit]

    snoop = Snoop(fleet["broker"], "door-d")  # reads lobby and lab, where the erase went
    fleet_key = bytes.fromhex((tmp_path / "fleet-key").read_text())
    tag = a.agent.codec.user_tag("alice")
    wait_until(lambda: len(snoop.messages) >= 2, 10, "the retained tombstones")
    seen = dict(snoop.messages)
    assert set(seen) == {f"{ROOT}/lobby/{tag}", f"{ROOT}/lab/{tag}"}
    for payload in seen.values():
        assert json.loads(payload)["kind"] == "erase"
        assert b"alice" not in payload.lower()
        assert b"alice" not in open_body(fleet_key, payload).lower()
    snoop.close()


def test_two_doors_enrolling_a_user_in_the_same_clock_tick_end_with_one_voiceprint_everywhere(
    fleet: dict, tmp_path: Path
) -> None:
    """Doors A and B enroll alice with the same version (same millisecond, or clocks skewed
    just so). Door D, online, kept the first to arrive and ignored the other (same version);
    door E, syncing later, got the retained one, i.e. the last: the doors disagreed on who
    alice is, for ever. Now every door keeps the same one (here B's: the tie-break orders
    equal versions by kind, then signer, then a digest)."""
    a, b, broker = fleet["a"], fleet["b"], fleet["broker"]
    tick = 1_790_000_000.0

    def clock() -> float:
        return tick

    rng = np.random.default_rng(6)
    x, y = (rng.normal(size=(3, 256)).astype(np.float32) for _ in range(2))
    a.store.add_user("alice", x / np.linalg.norm(x, axis=1, keepdims=True), "test-model")
    b.store.add_user("alice", y / np.linalg.norm(y, axis=1, keepdims=True), "test-model")
    d = Door(tmp_path, "door-d", broker, ["lobby", "lab"])
    e = Door(tmp_path, "door-e", broker, ["lobby"])
    for door in (d, e):
        (door.dir / "signing-key").write_text(os.urandom(32).hex() + "\n")
        (door.dir / "signing-key").chmod(0o600)
    try:
        d.start("test-model")
        a.start("test-model", clock=clock)
        b.agent_for("test-model", clock=clock).publish_enrollment("alice")  # offline: queued
        a.agent.publish_enrollment("alice")
        wait_until(lambda: d.store.get("alice") is not None, 10, "A's alice on door D")
        b.start()  # B's queued enrollment goes out now, with the same version
        wait_until(lambda: b.agent.state.outbox() == [], 10, "B's outbox drained")
        wait_until(lambda: d.agent.stats["applied"] + d.agent.stats["ignored_old"] >= 2, 10, "D")
        e.start("test-model")  # a door that syncs later: gets what the broker retained
        wait_until(lambda: e.store.get("alice") is not None, 10, "alice on door E")
        want = b.store.get("alice").embeddings
        for door in (a, d, e):
            wait_until(
                lambda door=door: np.array_equal(door.store.get("alice").embeddings, want),
                5,
                f"{door.name} holding B's alice",
            )
    finally:
        for door in (d, e):
            door.stop()
            door.store.close()


def test_an_erase_and_an_enrollment_in_the_same_clock_tick_end_erased_everywhere(
    fleet: dict, tmp_path: Path
) -> None:
    """B erases alice while A, offline, holds an enrollment of her with the same version.
    A's enrollment reached the broker last, so it became the retained message: A kept alice,
    B did not, and door E syncing later stored her. At equal versions the erase now wins,
    and A makes it the retained message again (it gets the erase before its own echo)."""
    a, b, broker = fleet["a"], fleet["b"], fleet["broker"]
    tick = 1_790_000_000.0

    def clock() -> float:
        return tick

    emb = np.random.default_rng(7).normal(size=(3, 256)).astype(np.float32)
    a.store.add_user("alice", emb / np.linalg.norm(emb, axis=1, keepdims=True), "test-model")
    e = Door(tmp_path, "door-e", broker, ["lobby"])
    (e.dir / "signing-key").write_text(os.urandom(32).hex() + "\n")
    (e.dir / "signing-key").chmod(0o600)
    try:
        a.agent_for("test-model", clock=clock).publish_enrollment("alice")  # offline: queued
        b.start("test-model", clock=clock)
        b.agent.publish_erase("alice")
        assert b.agent.wait_sent(10)
        a.start()
        wait_until(lambda: a.agent.state.outbox() == [], 10, "A's outbox drained")
        wait_until(lambda: a.store.get("alice") is None, 5, "alice erased on door A too")
        e.start("test-model")
        wait_until(lambda: e.agent.stats["applied"] >= 1, 10, "door E synced")
        assert e.store.get("alice") is None
        assert e.agent.state.user(e.agent.codec.user_tag("alice"))[1] == "erase"
    finally:
        e.stop()
        e.store.close()


def test_a_long_topic_is_not_written_whole_into_the_log_and_the_audit_log(
    fleet: dict, embedder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The user-tag level of a fleet topic can be 60 kB: each refused message on such a
    topic wrote it whole into a log line and into the audit log (append-only, fsynced)."""
    b = fleet["b"]
    caplog.set_level(logging.WARNING, logger="voxgate.fleet")
    b.start(embedder.model_id)
    snoop = Snoop(fleet["broker"], "door-a")
    snoop.publish(f"{ROOT}/lobby/{'t' * 60_000}", b"\x00not json")
    wait_until(lambda: b.agent.stats["refused"] >= 1, 10, "the message refused")
    lines = [r.getMessage() for r in caplog.records if "refused message" in r.getMessage()]
    assert lines and all(len(line) < 600 for line in lines), [len(x) for x in lines]
    refused = [f for event, f in b.audit if event == "fleet_refused"]
    assert refused and all(len(f["topic"]) < 400 for f in refused)
    assert "60" in refused[0]["topic"]  # its length is told
    snoop.client.publish(f"{ROOT}/lobby/{'t' * 60_000}", b"", retain=True).wait_for_publish(5)
    snoop.close()


def _file_bytes(db: Path) -> bytes:
    """A SQLite file with its -wal and -shm, as a stolen SD card would give them."""
    return b"".join(
        Path(f"{db}{suffix}").read_bytes()
        for suffix in ("", "-wal", "-shm")
        if Path(f"{db}{suffix}").exists()
    )


def test_a_door_offline_during_an_erase_applies_audits_and_scrubs_it_at_reconnect(
    fleet: dict, embedder: Any, alice_takes: list[np.ndarray]
) -> None:
    """The compliance path for a door that was off when a person was erased: at reconnect it
    erases them from the store, its voiceprints.db, -wal and -shm no longer hold the row's
    bytes, and its audit log says so (`fleet_erased`, naming the person and the erasing door)."""
    import sqlite3

    a, b = fleet["a"], fleet["b"]
    a.start(embedder.model_id)
    b.start(embedder.model_id)
    admin_a = a.admin(embedder)
    admin_a.enroll("alice", alice_takes)
    wait_until(lambda: b.store.get("alice") is not None, 10, "alice on door B")
    db = b.dir / "voiceprints.db"
    uid = b.store._user_id("alice")
    con = sqlite3.connect(db)
    sealed = con.execute("SELECT sealed FROM voiceprints WHERE id = ?", (uid,)).fetchone()[0]
    con.close()
    assert uid in _file_bytes(db) and sealed[40:72] in _file_bytes(db)

    b.stop()  # door B is off while alice is erased at door A
    b.audit.clear()
    admin_a.erase("alice")
    assert a.agent is not None and a.agent.wait_sent(10)
    b.start(embedder.model_id)
    wait_until(lambda: b.store.get("alice") is None, 10, "alice erased on door B")
    wait_until(lambda: b.audit, 10, "B's audit event")
    assert [(e, f["user"], f["signer"]) for e, f in b.audit] == [
        ("fleet_erased", "alice", "door-a")
    ]
    raw = _file_bytes(db)
    assert uid not in raw and sealed[40:72] not in raw


def _alice_sent_to_b_then_b_stopped(
    fleet: dict, embedder: Any, alice_takes: list[np.ndarray]
) -> Door:
    """Door A enrolls alice for the fleet; door B receives her voiceprint, then stops."""
    a, b = fleet["a"], fleet["b"]
    a.start(embedder.model_id)
    b.start(embedder.model_id)
    a.admin(embedder).enroll("alice", alice_takes)
    wait_until(lambda: b.store.get("alice") is not None, 10, "alice on door B")
    b.stop()
    return b


@pytest.mark.parametrize("what", ["sync state deleted", "fleet key rotated"])
def test_a_shrunk_access_map_drops_a_fleet_voiceprint_the_sync_state_does_not_know(
    fleet: dict, embedder: Any, alice_takes: list[np.ndarray], what: str
) -> None:
    """At start a door erases the fleet-received voiceprints its config no longer allows, but
    it only looked at users its sync state recorded as held, by user tag. After `fleet.db`
    was deleted (the recovery docs/fleet.md gives for a cut file) or the fleet key replaced
    (every user tag changes with it), no tag matched: alice stayed enrolled, and recognised,
    at a door whose access map no longer lets her in. The voiceprint itself says it came
    from the fleet (`fleet_version`); that is what counts now."""
    b = _alice_sent_to_b_then_b_stopped(fleet, embedder, alice_takes)
    if what == "sync state deleted":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{b.dir / 'fleet.db'}{suffix}").unlink(missing_ok=True)
    else:
        new_key = b.dir / "fleet-key-2"
        new_key.write_text(os.urandom(32).hex() + "\n")
        new_key.chmod(0o600)
        b.fleet["key_file"] = str(new_key)
    b.fleet["access"] = {"lobby": ["bob"], "lab": ["carol"]}
    b.audit.clear()
    b.agent_for(embedder.model_id)
    assert b.agent is not None
    assert b.agent.enforce_access() == ["alice"]
    assert b.store.get("alice") is None


def test_a_voiceprint_the_config_no_longer_allows_is_erased_on_the_record(
    fleet: dict, embedder: Any, alice_takes: list[np.ndarray]
) -> None:
    """Every voiceprint change the agent makes goes to the door's audit log, but the erase a
    shrunk access map makes at start had only an INFO line: a data-protection officer
    reading the door's audit log saw alice stored and never erased."""
    b = _alice_sent_to_b_then_b_stopped(fleet, embedder, alice_takes)
    b.fleet["access"] = {"lobby": ["bob"], "lab": ["carol"]}
    b.audit.clear()
    b.agent_for(embedder.model_id)
    assert b.agent is not None
    assert b.agent.enforce_access() == ["alice"]
    assert b.audit == [("fleet_dropped_by_config", {"user": "alice", "groups": ["lobby"]})]


def test_after_the_fleet_key_is_replaced_a_resend_reaches_a_new_door(
    fleet: dict, embedder: Any, alice_takes: list[np.ndarray]
) -> None:
    """The fleet key rotation docs/fleet.md describes ("Rotating keys"): every door gets the
    new key; the retained messages sealed with the old one are refused (and audited) by
    every door from then on; an enrollment reaches a door added later only once it is sent
    again (`voxgate fleet resend NAME`: publish_enrollment), under the new user tag."""
    a, b = fleet["a"], fleet["b"]
    a.start(embedder.model_id)
    b.start(embedder.model_id)
    a.admin(embedder).enroll("alice", alice_takes)
    wait_until(lambda: b.store.get("alice") is not None, 10, "alice on door B")
    old_tag = a.agent.codec.user_tag("alice")
    a.stop()
    b.stop()
    key = b.dir.parent / "fleet-key"  # every door's key_file
    key.write_text(os.urandom(32).hex() + "\n")

    d = Door(b.dir.parent, "door-d", fleet["broker"], ["lobby"])
    try:
        d.start(embedder.model_id)
        # The old retained voiceprint reaches D, which cannot open it: refused, audited.
        wait_until(lambda: d.audit, 10, "D's refusal")
        assert d.audit[0][0] == "fleet_refused"
        assert old_tag in d.audit[0][1]["topic"]
        assert "cannot decrypt" in d.audit[0][1]["reason"]
        assert d.store.get("alice") is None
        a.start(embedder.model_id)
        new_tag = a.agent.codec.user_tag("alice")
        assert new_tag != old_tag
        assert a.agent.publish_enrollment("alice") == ["lobby"]
        wait_until(lambda: d.store.get("alice") is not None, 10, "alice on door D")
        stored = ("fleet_stored", "alice")
        wait_until(lambda: stored in [(e, f.get("user")) for e, f in d.audit], 10, "audited")
    finally:
        d.stop()
        d.store.close()
