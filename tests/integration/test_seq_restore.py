"""A door whose data folder is restored from an older backup must still open its lock.

The whole path as separate processes, as in test_daemon_e2e: a real mosquitto (TLS, ACL),
`voxgate enroll --from`, `voxgate run` on stdin audio (the shipped speaker model) publishing
signed decisions, and `voxgate actuator` acting by running a command. The door's sequence
numbers used to live only in data_dir/decision-seq.json: restoring an older copy rewound
them, and the lock refused every later decision as a replay (the door never opened again).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import test_daemon_e2e as door
from broker import STANDARD_USERS, Broker
from mqtt_helpers import ActuatorProcess, Recorder, wait_until, write_key

pytest.importorskip("voxgate.embedding")
pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")

DEV = door.DEV
TOPIC = f"voxgate/{DEV}/decision"


def _door(tmp_path: Path, broker: Broker) -> dict[str, Any]:
    """The door of test_daemon_e2e, with the longest decision validity: the replayed grant
    below is then still fresh when it comes back, so only the lock's sequence check can
    refuse it."""
    return door.door_setup(tmp_path, broker, decision_ttl_s=60)


def _grant_once(config: Path, rec: Recorder, actuator: ActuatorProcess, acts: int) -> None:
    """One `voxgate run`: bob speaks once, the daemon publishes its decision and exits."""
    before = len(rec.on(TOPIC))
    daemon = door.DaemonProcess(config)
    try:
        speech = door.speech(door.ATTEMPT, "en+m3")
        daemon.feed(np.concatenate([door.pause(0.5), speech, door.pause(1.2)]))
        wait_until(lambda: len(rec.on(TOPIC)) > before, 30, "the daemon's decision")
        assert daemon.close() == 0, daemon.log()
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    body = json.loads(json.loads(rec.on(TOPIC)[-1].payload)["body"])
    assert (body["outcome"], body["user"]) == ("granted", "bob"), daemon.log()
    try:
        wait_until(lambda: len(actuator.actions()) == acts, 10, f"the lock to act ({acts})")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the lock said:\n" + "\n".join(actuator.lines)) from None


def test_a_restored_data_folder_still_opens_the_lock_and_replays_stay_refused(
    tmp_path: Path, broker: Broker
) -> None:
    device = _door(tmp_path, broker)
    config, data = device["config"], Path(device["doc"]["data_dir"])
    done = door.enroll(device, "bob", "en+m3")
    assert done.returncode == 0, done.stdout + done.stderr

    lock_dir = tmp_path / "lock"
    lock_dir.mkdir()
    actuator = ActuatorProcess(lock_dir, broker, {DEV: write_key(lock_dir / "k", door.DKEY)})
    actuator.start()
    rec = Recorder(broker, "lock", [TOPIC])
    try:
        _grant_once(config, rec, actuator, acts=1)
        backup = tmp_path / "backup"
        shutil.copytree(data, backup)  # the administrator's nightly copy
        _grant_once(config, rec, actuator, acts=2)
        old_grant = rec.on(TOPIC)[-1].payload

        # The SD card fails; the data folder comes back from the backup.
        shutil.rmtree(data)
        shutil.copytree(backup, data)
        _grant_once(config, rec, actuator, acts=3)
        assert actuator.log_count(r"REJECTED") == 0, "\n".join(actuator.lines)
        seqs = [int(a["VOXGATE_SEQ"]) for a in actuator.actions()]
        assert seqs == sorted(seqs) and len(set(seqs)) == 3

        # The grant made between the backup and the restore, replayed byte for byte while
        # still valid: the lock's record was not rewound, so it is refused.
        raw = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        raw.username_pw_set("device", STANDARD_USERS["device"])
        raw.tls_set(ca_certs=str(broker.ca_file))
        raw.connect(broker.host, broker.port)
        raw.loop_start()
        try:
            raw.publish(TOPIC, old_grant, qos=1).wait_for_publish(5)
            actuator.wait_log(rf"REJECTED on {TOPIC}: replayed", 10)
        finally:
            raw.disconnect()
            raw.loop_stop()
        assert len(actuator.actions()) == 3
        # A replay is not a rewound door: no advice to reset the lock's record.
        assert actuator.log_count(r"(?i)went backwards") == 0
    finally:
        rec.close()
        actuator.stop()
