"""A fleet erase or revoke reaching a door whose SD card has filled up while it runs: the
store cannot write the erase ("database or disk is full"). The person must stop being
recognised at once, not after the next MQTT connect, and the erase must reach the file by
itself once there is room. Real mosquitto, real SQLite on a real full tmpfs, speech from
espeak-ng embedded by the shipped speaker model, scored by the real Scorer.

The daemon test runs `voxgate run` with fleet sync on, its data folder on the full tmpfs, and
a tombstone signed by another door published on the broker.

A door rebooted on the full disk (fleet.db made by an earlier run) is tested with `voxgate
run` too: docs/fleet.md."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from broker import STANDARD_USERS
from fleet_tts import DIGITS, say
from mqtt_helpers import DaemonProcess, wait_until
from small_fs import fill, free, small_fs
from test_daemon_e2e import (
    ATTEMPT,
    DEV,
    audit_lines,
    decisions,
    device,  # noqa: F401 (the fixture, through request)
    enroll,
    pause,
    speech,
    write_config,
)
from test_fleet_sync import (  # noqa: F401 (fixtures: alice_takes, embedder, fleet)
    ALICE,
    Door,
    _scorer,
    alice_takes,
    embedder,
    fleet,
)

from voxgate.voiceprints import VoiceprintStore

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")


def _full_door(doors: dict, base: Path, key: bytes) -> Door:
    """Door E (group lobby, receives only), its data folder on a small tmpfs."""
    door = Door(base, "door-e", doors["broker"], ["lobby"])
    door.store.close()  # made with a key of its own: start again with `key`
    for made in door.dir.glob("voiceprints.db*"):
        made.unlink()
    door.store = VoiceprintStore(door.dir / "voiceprints.db", key)
    shutil.copy(doors["a"].dir.parent / "fleet-key", base / "fleet-key")
    (door.dir / "signing-key").write_text(os.urandom(32).hex() + "\n")
    return door


@pytest.mark.parametrize("kind", ["erase", "revoke"])
def test_a_fleet_erase_the_full_disk_cannot_store_stops_the_user_at_once_and_lands_later(
    request: pytest.FixtureRequest, tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """Seen: the erase failed with StoreError, was logged and counted, and alice was still
    accepted at this door until the next MQTT connect re-applied the retained tombstone."""
    doors: dict = request.getfixturevalue("fleet")
    model: Any = request.getfixturevalue("embedder")
    takes: list[np.ndarray] = request.getfixturevalue("alice_takes")
    a = doors["a"]
    key = os.urandom(32)
    base = tmp_path / "full"
    base.mkdir()
    with small_fs(base / "door-e", "4m") as data:
        e = _full_door(doors, base, key)
        try:
            a.start(model.model_id)
            e.start(model.model_id, withheld_retry_s=0.2)
            a.admin(model).enroll("alice", takes)
            wait_until(lambda: e.store.get("alice") is not None, 15, "alice on door E")
            attempt = model.embed(say(DIGITS[3], ALICE))
            assert _scorer(e, model).verify(attempt, "alice").accepted

            # The SD card fills up while the door runs: it still lets alice in.
            fill(data)
            scorer = _scorer(e, model)
            assert scorer.verify(attempt, "alice").accepted

            caplog.set_level(logging.INFO, logger="voxgate")
            if kind == "erase":
                a.admin(model).erase("alice")
            else:
                a.agent.publish_revoke("alice", ["lobby"])
            agent = e.agent
            assert agent is not None
            # "store_failed": how the door answered before (the erase lost until a reconnect).
            tried = ("withheld", "store_failed")
            wait_until(lambda: any(agent.stats.get(k) for k in tried), 15, f"the {kind} on E")
            # The agent counts the withhold before it writes the audit line: wait for both.
            withheld = f"fleet_{kind}_withheld"
            wait_until(lambda: any(ev == withheld for ev, _ in e.audit), 15, "audited")
            refused = scorer.verify(attempt, "alice")
            assert not refused.accepted and "unknown_user" in refused.reasons, refused
            assert scorer.identify(attempt).user != "alice"
            assert e.store.get("alice") is None
            assert "alice" not in [v.name for v in e.store.all()]  # the admin API's list
            fields = dict(e.audit)[withheld]
            assert fields["user"] == "alice" and fields["signer"] == "door-a"
            said = [r for r in caplog.records if r.levelno == logging.ERROR]
            assert any("no longer recognised" in r.getMessage() for r in said), said
            # The row is still in the file: another reader (a restart) would still find it.
            with VoiceprintStore(e.dir / "voiceprints.db", key, read_only=True) as other:
                assert other.has("alice")

            # Space comes back: the door writes the erase by itself (no reconnect).
            free(data)
            wait_until(lambda: any(ev == f"fleet_{kind}d" for ev, _ in e.audit), 15, "stored")
            assert agent.withheld() == []
            with VoiceprintStore(e.dir / "voiceprints.db", key, read_only=True) as other:
                assert not other.has("alice")
            assert not scorer.verify(attempt, "alice").accepted
        finally:
            e.stop()
            e.store.close()


def test_the_daemon_refuses_at_once_a_user_the_fleet_erased_while_its_disk_was_full(
    request: pytest.FixtureRequest, broker: Any
) -> None:
    """`voxgate run` with fleet sync: bob enrolled here (and sent to the fleet), granted; the
    data folder fills up; another door's signed erase of bob arrives. bob must be refused at
    the next attempt, and the erase must reach voiceprints.db by itself once space is back."""
    from test_sd_card_full import online_door

    door = request.getfixturevalue("device")
    data = Path(door["doc"]["data_dir"])
    other_door = _other_door(*_fleet_on(door))
    attempt = np.concatenate([pause(0.5), speech(ATTEMPT, "en+m3"), pause(1.2)])
    with small_fs(data):
        done = enroll(door, "bob", "en+m3")
        assert done.returncode == 0, done.stdout + done.stderr
        with online_door(door["config"], broker) as (daemon, rec):
            daemon.wait_log("fleet sync: site acme", 30)
            daemon.feed(attempt)
            wait_until(lambda: len(decisions(rec)) >= 1, 30, "bob's first decision")
            daemon.feed(pause(1.0))
            fill(data)
            _publish_erase(broker, other_door, "bob")
            daemon.wait_log("is no longer recognised at this door", 20)
            daemon.feed(attempt)
            wait_until(lambda: len(decisions(rec)) >= 2, 30, "bob's decision after the erase")
            daemon.feed(pause(1.0))
            free(data)
            wait_until(
                lambda: "the withheld erase of bob is done" in daemon.log(), 30, "erase written"
            )
            daemon.feed(pause(1.0))
            assert daemon.close() == 0
        first, after = decisions(rec)[:2]
        assert (first.outcome, first.user) == ("granted", "bob"), daemon.log()
        assert after.outcome != "granted", daemon.log()
        events = [x["event"] for x in audit_lines(door)]
        assert "fleet_erase_withheld" in events and "fleet_erased" in events, events
        with VoiceprintStore(data / "voiceprints.db", _door_key(door), read_only=True) as vp:
            assert not vp.has("bob")


def _fleet_on(door: dict[str, Any]) -> tuple[bytes, bytes]:
    """Fleet sync on for the `device` door (site acme, group lobby, everyone); returns the
    fleet key and the signing key of another door, door-z, it trusts."""
    from voxgate.fleet import public_key_hex

    tmp = door["dir"]
    fleet_key, mine, theirs = os.urandom(32), os.urandom(32), os.urandom(32)
    for name, raw in (("fleet.key", fleet_key), ("fleet-signing.key", mine)):
        (tmp / name).write_text(raw.hex() + "\n")
        (tmp / name).chmod(0o600)
    door["doc"]["fleet"] = {
        "enabled": True,
        "site": "acme",
        "key_file": str(tmp / "fleet.key"),
        "signing_key_file": str(tmp / "fleet-signing.key"),
        "signers": {DEV: public_key_hex(mine), "door-z": public_key_hex(theirs)},
        "groups": ["lobby"],
        "access": {"lobby": ["*"]},
    }
    door["config"] = write_config(tmp, door["doc"])
    return fleet_key, theirs


def _other_door(fleet_key: bytes, theirs: bytes) -> Any:
    """The codec of door-z, another door of site acme the `device` door trusts."""
    from voxgate.fleet import Codec, FleetKeys, public_key_hex

    signers = {"door-z": bytes.fromhex(public_key_hex(theirs))}
    return Codec(FleetKeys(fleet_key, theirs, signers), "acme", "door-z")


def _publish_erase(broker: Any, other_door: Any, name: str) -> int:
    """door-z's signed erase of `name` to group lobby, retained on the broker; its version."""
    import paho.mqtt.client as mqtt

    from voxgate.fleet import topic_root

    version = int(time.time() * 1000)
    erase = other_door.encode("erase", "lobby", name, version)
    topic = f"{topic_root('voxgate', 'acme')}/lobby/{other_door.user_tag(name)}"
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, "door-z", protocol=mqtt.MQTTv5)
    c.username_pw_set("device", STANDARD_USERS["device"])
    c.tls_set(ca_certs=str(broker.ca_file))
    c.connect(broker.host, broker.port)
    c.loop_start()
    c.publish(topic, erase, qos=1, retain=True).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()
    return version


def test_a_door_with_fleet_sync_rebooted_on_a_full_disk_comes_online_and_applies_the_fleet(
    request: pytest.FixtureRequest, broker: Any
) -> None:
    """Seen (`voxgate run` on a filled tmpfs): fleet.db, made by an earlier run, could not be
    opened ("disk I/O error": SQLite cannot size its -shm) and the daemon stopped with exit
    78, the config-error status systemd does not restart (RestartPreventExitStatus=78): the
    door stayed shut for everyone, also after space was freed. Now the daemon reads the
    file into memory and comes online; a fleet erase arriving meanwhile is applied (bob is
    refused), and once space is freed the state is written back: the file holds the erase."""
    import sqlite3

    from test_sd_card_full import online_door

    door = request.getfixturevalue("device")
    data = Path(door["doc"]["data_dir"])
    other_door = _other_door(*_fleet_on(door))
    attempt = np.concatenate([pause(0.5), speech(ATTEMPT, "en+m3"), pause(1.2)])
    with small_fs(data):
        done = enroll(door, "bob", "en+m3")
        assert done.returncode == 0, done.stdout + done.stderr
        with online_door(door["config"], broker) as (daemon, rec):  # a normal run
            daemon.wait_log("fleet sync: site acme", 30)
            daemon.feed(attempt)
            wait_until(lambda: len(decisions(rec)) >= 1, 30, "bob's first decision")
            daemon.feed(pause(1.0))
            assert daemon.close() == 0, daemon.log()
        assert (data / "fleet.db").stat().st_size > 0
        fill(data)
        with online_door(door["config"], broker) as (daemon, rec2):  # the reboot
            daemon.wait_log("running on a copy in memory", 30)
            version = _publish_erase(broker, other_door, "bob")
            daemon.wait_log("is no longer recognised at this door", 20)
            daemon.feed(attempt)
            wait_until(lambda: len(decisions(rec2)) >= 1, 30, "bob's decision after the erase")
            daemon.feed(pause(1.0))
            free(data)
            wait_until(
                lambda: "the withheld erase of bob is done" in daemon.log(), 30, "erase written"
            )
            daemon.feed(pause(1.0))
            assert daemon.close() == 0, daemon.log()
        log = daemon.log()
        assert "unusable fleet sync state" not in log, log
        assert f"the disk is full: free space on {data}" in log, log
        assert "is written back; using the file again" in log, log
        (granted,) = decisions(rec)
        assert (granted.outcome, granted.user) == ("granted", "bob"), log
        (after,) = decisions(rec2)
        assert after.outcome != "granted", log
        db = sqlite3.connect(f"{(data / 'fleet.db').as_uri()}?mode=ro", uri=True)
        try:
            row = db.execute(
                "SELECT version, kind FROM users WHERE tag = ?", (other_door.user_tag("bob"),)
            ).fetchone()
        finally:
            db.close()
        assert tuple(row) == (version, "erase"), row


def _pending_wal(path: Path) -> None:
    """Leave `path` (WAL) with changes in its -wal and no -shm, as a copy taken without it."""
    import sqlite3

    folder = path.parent
    writer = sqlite3.connect(str(path), isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("UPDATE users SET version = version")
    writer.execute("INSERT OR REPLACE INTO users VALUES ('t-pending', 9, 'erase', 0, 'x')")
    for name in (path.name, path.name + "-wal"):
        shutil.copy(folder / name, folder / f"copy-{name}")
    writer.close()
    for name in (path.name, path.name + "-wal"):
        (folder / f"copy-{name}").replace(folder / name)
    (folder / (path.name + "-shm")).unlink(missing_ok=True)
    assert (folder / (path.name + "-wal")).stat().st_size > 0


def test_a_fleet_sync_state_the_full_disk_cannot_read_stops_with_69_not_78(
    request: pytest.FixtureRequest, broker: Any
) -> None:
    """Where fleet.db cannot be read on the full disk either (its -wal holds changes and
    there is no room for a -shm), the daemon stops, but as for a resource (exit 69, which
    systemd restarts), saying the disk is full and where: before, exit 78 (a config error,
    RestartPreventExitStatus=78) left the door shut after space was freed. Once there is
    room, the next start comes online."""
    from test_sd_card_full import online_door

    door = request.getfixturevalue("device")
    data = Path(door["doc"]["data_dir"])
    _fleet_on(door)
    with small_fs(data):
        done = enroll(door, "bob", "en+m3")
        assert done.returncode == 0, done.stdout + done.stderr
        with online_door(door["config"], broker) as (daemon, _):  # a normal run
            daemon.wait_log("fleet sync: site acme", 30)
            daemon.feed(pause(0.5))
            assert daemon.close() == 0, daemon.log()
        _pending_wal(data / "fleet.db")
        fill(data)
        rebooted = DaemonProcess(door["config"])
        try:
            code = rebooted.proc.wait(90)
        finally:
            if rebooted.proc.poll() is None:
                rebooted.proc.kill()
        time.sleep(0.2)  # the stderr reader takes the last lines
        log = rebooted.log()
        assert code == 69, log
        assert f"the disk is full: free space on {data}" in log, log
        assert "-wal holds changes" in log and "unusable fleet sync state" not in log, log
        free(data)
        with online_door(door["config"], broker) as (daemon, _):
            daemon.wait_log("fleet sync: site acme", 30)
            assert daemon.close() == 0, daemon.log()


def test_the_fleet_sync_state_on_a_full_disk_is_read_into_memory_and_written_back(
    tmp_path: Path,
) -> None:
    """SyncState on a real full tmpfs: commands keep a temporary FleetError saying the disk
    is full (the daemon's start maps it to exit 69, restarted); the daemon's state
    (memory_when_full) reads the file, takes changes in memory, and writes them to the file
    once there is room. A -wal with changes that cannot be read stays the exit-69 error."""
    from voxgate.fleet import FleetError, SyncState

    with small_fs(tmp_path / "state", "1m") as folder:
        path = folder / "fleet.db"
        state = SyncState(path)
        state.set_user("t1", (5, "a"), "voiceprint", False)
        state.close()
        fill(folder)
        with pytest.raises(FleetError, match="the disk is full: free space on") as err:
            SyncState(path)
        assert err.value.temporary
        state = SyncState(path, memory_when_full=True)
        assert state.in_memory and state.user("t1") == (5, "voiceprint", False, "a")
        state.set_user("t1", (7, "b"), "erase", False)
        state.queue("topic/x", b"sealed", (7, "b"))
        assert not state.write_back()  # still full
        free(folder)
        assert state.write_back() and not state.in_memory
        state.set_grant("t1", "lobby", (7, "b"), "erase")  # on the file now
        state.close()
        again = SyncState(path)
        try:
            assert again.user("t1") == (7, "erase", False, "b")
            assert again.grant("t1", "lobby") == (7, "erase", "b")
            assert again.outbox() == [("topic/x", b"sealed", (7, "b"))]
        finally:
            again.close()
        # A -wal still holding changes (a copy without its -shm): not read from the file alone.
        _pending_wal(path)
        fill(folder)
        with pytest.raises(FleetError, match="-wal holds changes") as err:
            SyncState(path, memory_when_full=True)
        assert err.value.temporary


def _door_key(door: dict[str, Any]) -> bytes:
    from voxgate.voiceprints import parse_key

    return parse_key(Path(door["doc"]["speaker"]["key_file"]).read_bytes())


def test_a_write_by_another_process_before_the_write_back_is_kept(tmp_path: Path) -> None:
    """Space comes back, and before the daemon's next retry writes its in-memory state back,
    a command (`voxgate fleet erase`, `voxgate enroll`) writes the file: an erase queued for
    the fleet, another user applied. Copying the memory over the file lost both (the erase
    never reached the other doors). Now the newer change of each row is kept."""
    from voxgate.fleet import SyncState

    with small_fs(tmp_path / "state", "1m") as folder:
        path = folder / "fleet.db"
        state = SyncState(path)
        state.set_user("t1", (5, "a"), "voiceprint", False)
        state.set_user("t2", (3, "a"), "voiceprint", False)
        state.close()
        fill(folder)
        daemon = SyncState(path, memory_when_full=True)
        assert daemon.in_memory
        daemon.set_user("t1", (7, "b"), "erase", False)  # the fleet's erase, in memory
        daemon.set_user("t2", (4, "b"), "voiceprint", False)
        free(folder)
        command = SyncState(path)  # another process, now that there is room
        command.set_user("t2", (9, "c"), "erase", True)  # newer than the daemon's t2
        command.set_user("t3", (1, "c"), "voiceprint", True)
        command.queue("topic/t2", b"sealed erase", (9, "c"))
        command.close()
        assert daemon.write_back() and not daemon.in_memory
        daemon.close()
        again = SyncState(path)
        try:
            assert again.user("t1") == (7, "erase", False, "b")  # the daemon's, newer
            assert again.user("t2") == (9, "erase", True, "c")  # the command's, newer
            assert again.user("t3") == (1, "voiceprint", True, "c")  # only the command's
            assert again.outbox() == [("topic/t2", b"sealed erase", (9, "c"))]
        finally:
            again.close()
