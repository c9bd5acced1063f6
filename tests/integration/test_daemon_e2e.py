"""The whole door, end to end, as separate processes: a real mosquitto (TLS, passwords, ACL),
`voxgate enroll --from` (the real CLI), `voxgate run` on a stdin audio source with the real
stages (shipped speaker model, scorer, signed decisions over MQTT), and `voxgate actuator`
running a command that writes a file. espeak-ng voices play the people.

Most run with `challenge.mode: off` (the speaker path alone); the enrollment-at-the-door
test runs the spoken challenge too (prompted takes, then a challenge answered by voice).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import yaml
from broker import STANDARD_USERS, Broker
from mqtt_helpers import (
    ActuatorProcess,
    DaemonProcess,
    Recorder,
    child_env,
    wait_until,
    write_key,
)

from voxgate.decision import verify
from voxgate.embedding import default_card_path, load_card
from voxgate.mqtt.commands import REPLY_DOMAIN, make_command

pytest.importorskip("voxgate.embedding")
pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")

DEV = "front-door"
DKEY = b"front-door-decision-key-0123456789ab"
CKEY = b"front-door-command-key-0123456789abc"
RATE = 16000
TAKES = [
    "three nine one four, seven two eight five",
    "six zero two eight, one one five nine",
    "four four seven one, two six three zero",
    "eight five zero two, nine three one seven",
]
ATTEMPT = "five one nine two, zero eight"
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def speech(text: str, voice: str) -> np.ndarray:
    """espeak-ng at 16 kHz int16 with a faint noise floor, like a microphone."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "--stdout", text], check=True, capture_output=True
    ).stdout
    import io

    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
    if rate != RATE:
        from scipy.signal import resample_poly

        audio = resample_poly(audio, RATE, rate).astype(np.float32)
    audio = audio + np.random.default_rng(len(text)).normal(0, 3e-4, len(audio))
    return (np.clip(audio, -1, 1) * 32767).astype(np.int16)


def pause(seconds: float) -> np.ndarray:
    return (
        np.random.default_rng(int(seconds * 1000))
        .normal(0, 10, int(seconds * RATE))
        .astype(np.int16)
    )


def voxgate(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voxgate", *args],
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def door_setup(tmp_path: Path, broker: Broker, **mqtt_extra: Any) -> dict[str, Any]:
    """The door these tests run: a voiceprint key, the broker's `device` account, decision
    and command keys; `mqtt_extra` overrides MQTT settings. Returns dir, doc and config path."""
    key = tmp_path / "voiceprint.key"
    assert voxgate("users", "init-key", str(key)).returncode == 0
    mqtt = broker.mqtt_settings("device")
    mqtt.update(
        {
            "hmac_key_file": str(write_key(tmp_path / "decision.key", DKEY)),
            "command_key_file": str(write_key(tmp_path / "command.key", CKEY)),
            **mqtt_extra,
        }
    )
    doc: dict[str, Any] = {
        "device_id": DEV,
        "data_dir": str(tmp_path / "data"),
        "logging": {"level": "info"},
        "audio": {"source": "stdin"},
        "speaker": {"key_file": str(key), "enroll_min_speech_s": 6, "enroll_min_takes": 3},
        "challenge": {"mode": "off"},
        "mqtt": mqtt,
        "metrics": {"enabled": False},
        "service": {"decided_hold_s": 0.5},
    }
    return {"dir": tmp_path, "doc": doc, "config": write_config(tmp_path, doc)}


@pytest.fixture
def device(tmp_path: Path, broker: Broker) -> dict[str, Any]:
    return door_setup(tmp_path, broker, reconnect_min_s=0.2, reconnect_max_s=1.0)


def write_config(tmp: Path, doc: dict[str, Any]) -> Path:
    path = tmp / "voxgate.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def lock_side(tmp_path: Path, broker: Broker) -> Iterator[tuple[ActuatorProcess, Recorder]]:
    lock_dir = tmp_path / "lock"
    lock_dir.mkdir()
    actuator = ActuatorProcess(lock_dir, broker, {DEV: write_key(lock_dir / "front.key", DKEY)})
    actuator.start()
    rec = Recorder(broker, "lock", [f"voxgate/{DEV}/#"])
    yield actuator, rec
    rec.close()
    actuator.stop()


def decisions(rec: Recorder) -> list[Any]:
    return [verify(m.payload, DKEY, m.at, None) for m in rec.on(f"voxgate/{DEV}/decision")]


def audit_lines(device: dict[str, Any]) -> list[dict[str, Any]]:
    path = Path(device["doc"]["data_dir"]) / "audit.jsonl"
    text = path.read_text()  # the daemon may be mid-append: whole lines only
    return [json.loads(x) for x in text[: text.rfind("\n") + 1].splitlines() if x.strip()]


def enroll(device: dict[str, Any], name: str, voice: str) -> subprocess.CompletedProcess[str]:
    files = []
    for i, text in enumerate(TAKES):
        f = device["dir"] / f"{name}{i}.wav"
        sf.write(f, np.concatenate([pause(0.5), speech(text, voice), pause(0.5)]), RATE)
        files.append(str(f))
    return voxgate("enroll", name, "--from", *files, "-c", str(device["config"]))


def test_enrolled_voice_opens_the_door_and_another_voice_does_not(
    device: dict[str, Any], lock_side: tuple[ActuatorProcess, Recorder]
) -> None:
    actuator, rec = lock_side
    done = enroll(device, "bob", "en+m3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "enrolled bob" in done.stdout

    daemon = DaemonProcess(device["config"])
    try:
        daemon.feed(pause(0.3))
        rec.wait_for(f"voxgate/{DEV}/status", lambda m: m.payload == b"online", timeout=30)
        daemon.feed(np.concatenate([pause(0.5), speech(ATTEMPT, "en+m3"), pause(1.2)]))
        wait_until(lambda: len(decisions(rec)) >= 1, 20, "the first decision")
        daemon.feed(np.concatenate([pause(0.5), speech(ATTEMPT, "en+f2"), pause(1.2)]))
        wait_until(lambda: len(decisions(rec)) >= 2, 20, "the second decision")
        actuator.wait_log(r"decision accepted: .*outcome=denied", 10)
        code = daemon.close()
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    assert code == 0, daemon.log()

    first, second = decisions(rec)
    assert (first.outcome, first.user) == ("granted", "bob"), daemon.log()
    assert first.speaker_score is not None and first.speaker_score >= first.speaker_threshold
    assert (second.outcome, second.user, second.reasons) == ("denied", None, ("no_match",))
    assert second.seq > first.seq
    # The lock acted on the grant, once, and not on the denial.
    wait_until(lambda: len(actuator.actions()) == 1, 10, "the actuator to act")
    time.sleep(0.3)
    acts = actuator.actions()
    assert len(acts) == 1 and acts[0]["VOXGATE_USER"] == "bob"
    assert acts[0]["VOXGATE_SEQ"] == str(first.seq)

    lines = audit_lines(device)
    assert [(x["event"], x.get("via")) for x in lines if x["event"] == "enrollment"] == [
        ("enrollment", "cli")
    ]
    made = [x for x in lines if x["event"] == "decision"]
    assert [(x["outcome"], x["published"]) for x in made] == [("granted", True), ("denied", True)]
    erased = voxgate("users", "erase", "bob", "-c", str(device["config"]))
    assert erased.returncode == 0, erased.stderr
    assert ("erase", "bob", "cli") in [
        (x["event"], x.get("user"), x.get("via")) for x in audit_lines(device)
    ]
    assert voxgate("audit", "verify", "-c", str(device["config"])).returncode == 0


def test_nobody_enrolled_still_gets_a_signed_denial(
    device: dict[str, Any], lock_side: tuple[ActuatorProcess, Recorder]
) -> None:
    """An empty store scores -inf inside; the lock must still get a signed `denied` (score
    null), not silence."""
    actuator, rec = lock_side
    daemon = DaemonProcess(device["config"])
    try:
        daemon.feed(pause(0.3))
        rec.wait_for(f"voxgate/{DEV}/status", lambda m: m.payload == b"online", timeout=30)
        daemon.feed(np.concatenate([pause(0.5), speech(ATTEMPT, "en+m3"), pause(1.2)]))
        wait_until(lambda: len(decisions(rec)) >= 1, 20, "a decision")
        actuator.wait_log(r"decision accepted: .*outcome=denied", 10)
        assert daemon.close() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    (d,) = decisions(rec)
    assert (d.outcome, d.user, d.reasons) == ("denied", None, ("no_match",))
    assert d.speaker_score is None and d.speaker_threshold is not None
    body = json.loads(json.loads(rec.on(f"voxgate/{DEV}/decision")[0].payload)["body"])
    assert body["scores"]["speaker"] is None
    made = [x for x in audit_lines(device) if x["event"] == "decision"]
    assert [(x["outcome"], x["published"], x["score"]) for x in made] == [("denied", True, None)]
    assert actuator.actions() == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_admin_api_fleet_and_erase_command_run_inside_the_daemon(
    device: dict[str, Any], broker: Broker
) -> None:
    """api.enabled and fleet.enabled: the daemon serves the API, its fleet agent passes a CLI
    enrollment (via the outbox or directly) and an MQTT erase-user on to the fleet, and both
    land in the audit log."""
    import urllib.request

    from voxgate.fleet import public_key_hex

    tmp = device["dir"]
    signing = os.urandom(32)
    port = _free_port()
    doc = device["doc"]
    doc["api"] = {"enabled": True, "port": port}
    doc["fleet"] = {
        "enabled": True,
        "site": "acme",
        "key_file": str(write_key(tmp / "fleet.key", os.urandom(32).hex().encode())),
        "signing_key_file": str(write_key(tmp / "fleet-signing.key", signing.hex().encode())),
        "signers": {DEV: public_key_hex(signing)},
        "groups": ["lobby"],
        "access": {"lobby": ["*"]},
    }
    config = write_config(tmp, doc)
    token = "t" * 40
    rec = Recorder(broker, "lock", ["voxgate/_fleet/#", f"voxgate/{DEV}/cmd/+/result"])
    daemon = DaemonProcess(config, VOXGATE_API_TOKEN=token)
    try:
        daemon.feed(pause(0.3))
        daemon.wait_log("ready:", 30)
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/users", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert json.load(resp)["users"] == []

        done = enroll(device, "bob", "en+m3")  # a second process, while the daemon runs
        assert done.returncode == 0, done.stdout + done.stderr
        assert "fleet: bob (enrolled) sent to the broker" in done.stdout
        wait_until(lambda: len(rec.on_prefix("voxgate/_fleet/acme/lobby/")) >= 1, 10, "fleet")
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert [u["name"] for u in json.load(resp)["users"]] == ["bob"]

        admin = mqtt_admin(broker)
        cmd = make_command(CKEY, DEV, "erase-user", {"user": "bob"}, now=time.time())
        admin.publish(f"voxgate/{DEV}/cmd/erase-user", cmd, qos=1).wait_for_publish(5)
        reply = rec.wait_for(f"voxgate/{DEV}/cmd/erase-user/result", lambda m: True, 10)
        admin.disconnect()
        from voxgate.decision import open_sealed

        body = open_sealed(reply.payload, DKEY, REPLY_DOMAIN)
        assert body["ok"] is True, body
        # The tombstone replaces the retained voiceprint on the group's topic.
        wait_until(
            lambda: len(rec.on_prefix("voxgate/_fleet/acme/lobby/")) >= 2, 10, "erase to fleet"
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert json.load(resp)["users"] == []
        assert daemon.close() == 0
    finally:
        rec.close()
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    events = [(x["event"], x.get("user"), x.get("via")) for x in audit_lines(device)]
    assert ("enrollment", "bob", "cli") in events
    assert ("erase", "bob", "mqtt") in events
    assert "admin API stopped" in daemon.log()


def mqtt_admin(broker: Broker) -> Any:
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.username_pw_set("admin", STANDARD_USERS["admin"])
    c.tls_set(ca_certs=str(broker.ca_file))
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def test_admin_api_that_cannot_start_stops_the_daemon(device: dict[str, Any]) -> None:
    """No token: exit 78 (config; systemd does not restart). Port taken: exit 69."""
    doc = device["doc"]
    doc["mqtt"] = {"enabled": False}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        doc["api"] = {"enabled": True, "port": taken.getsockname()[1]}
        config = write_config(device["dir"], doc)
        run = subprocess.run(
            [sys.executable, "-m", "voxgate", "run", "-c", str(config), "--source", "stdin"],
            input=pause(0.5).tobytes(),
            env=child_env(),
            capture_output=True,
            timeout=60,
        )
        assert run.returncode == 78, run.stderr.decode()
        assert b"api-token" in run.stderr
        run = subprocess.run(
            [sys.executable, "-m", "voxgate", "run", "-c", str(config), "--source", "stdin"],
            input=pause(0.5).tobytes(),
            env=child_env(VOXGATE_API_TOKEN="t" * 40),
            capture_output=True,
            timeout=60,
        )
    assert run.returncode == 69, run.stderr.decode()
    assert b"cannot listen on 127.0.0.1" in run.stderr


def test_sigterm_while_stdin_is_idle_exits_cleanly(device: dict[str, Any]) -> None:
    """The capture thread waits on a quiet pipe; SIGTERM must still give exit 0, not Python's
    "could not acquire lock for <stdin> at interpreter shutdown" abort."""
    doc = device["doc"]
    doc["mqtt"] = {"enabled": False}
    daemon = DaemonProcess(write_config(device["dir"], doc))
    try:
        daemon.feed(pause(0.3))
        daemon.wait_log("ready:", 30)
        daemon.proc.terminate()
        code = daemon.proc.wait(15)
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    time.sleep(0.1)
    assert code == 0, daemon.log()
    assert "Fatal Python error" not in daemon.log()


def test_enrollment_at_the_door_over_mqtt(
    device: dict[str, Any], broker: Broker, lock_side: tuple[ActuatorProcess, Recorder]
) -> None:
    """enroll-start: the next utterances are takes (no attempts), each prompted with a digit
    string on the `challenge` topic; enroll-finish checks and stores them with the person's
    digit templates, audits and answers with the take report. Then the door runs with the
    spoken challenge on: the voice answers a fresh challenge and the door opens."""
    from voxgate.decision import open_sealed

    actuator, rec = lock_side
    results = Recorder(broker, "lock", [f"voxgate/{DEV}/cmd/+/result"])
    admin = mqtt_admin(broker)
    doc = device["doc"]
    doc["challenge"] = {"mode": "digits", "length": 4}
    config = write_config(device["dir"], doc)
    topic = f"voxgate/{DEV}/challenge"

    def command(name: str, user: str, **more: str) -> dict[str, Any]:
        before = len(results.on(f"voxgate/{DEV}/cmd/{name}/result"))
        cmd = make_command(CKEY, DEV, name, {"user": user, **more}, now=time.time())
        admin.publish(f"voxgate/{DEV}/cmd/{name}", cmd, qos=1).wait_for_publish(5)
        reply = f"voxgate/{DEV}/cmd/{name}/result"
        wait_until(lambda: len(results.on(reply)) > before, 15, f"{name} reply")
        return open_sealed(results.on(reply)[-1].payload, DKEY, REPLY_DOMAIN)

    def shown(mode: str, take: int | None = None) -> dict[str, Any]:
        def match(m: Any) -> bool:
            body = json.loads(m.payload)
            return body["mode"] == mode and body.get("take") == take

        return json.loads(rec.wait_for(topic, match, timeout=20).payload)

    def say(digits: str) -> np.ndarray:
        return speech(", ".join(NAMES[int(d)] for d in digits), "en+m3")

    daemon = DaemonProcess(config)
    try:
        daemon.feed(pause(0.3))
        rec.wait_for(f"voxgate/{DEV}/status", lambda m: m.payload == b"online", timeout=30)
        refused = command("enroll-finish", "bob")
        assert refused["ok"] is False and "no enrollment of 'bob'" in refused["detail"]
        daemon.feed(pause(1.5))  # a microphone never stops: let the start-up noise settle
        started = command("enroll-start", "bob", prompted="yes")
        assert started["ok"] is True
        prompts = started["result"]["prompts"]
        assert all(len(p) == 4 and p.isdigit() for p in prompts)
        for take, digits in enumerate(prompts[:8], start=1):  # each digit at least twice
            assert shown("enroll", take)["text"] == digits  # the display shows each in turn
            # A take ends after challenge.answer_pause_ms (1.2 s) of quiet, as an answer does.
            daemon.feed(np.concatenate([pause(0.5), say(digits), pause(1.5)]))
            daemon.wait_log(f"enrollment of bob: take {take} ", 20)
        done = command("enroll-finish", "bob")
        assert done["ok"] is True, done
        assert done["result"]["used"] >= 3 and done["result"]["user"] == "bob"
        assert done["result"]["digit_templates"] is True
        assert decisions(rec) == []  # the takes were not attempts

        daemon.feed(np.concatenate([pause(0.5), speech(ATTEMPT, "en+m3"), pause(1.2)]))
        challenge = shown("digits")
        daemon.feed(np.concatenate([pause(0.3), say(challenge["text"]), pause(1.5)]))
        wait_until(lambda: len(decisions(rec)) >= 1, 20, "a decision")
        assert daemon.close() == 0
    finally:
        admin.disconnect()
        results.close()
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    (d,) = decisions(rec)
    assert (d.outcome, d.user, d.liveness_ok) == ("granted", "bob", True), daemon.log()
    checks = [x for x in daemon.log().splitlines() if "prompt check" in x or "templates" in x]
    assert any("prompt check (templates): ok=True" in x for x in checks), checks
    wait_until(lambda: len(actuator.actions()) == 1, 10, "the actuator to act")
    events = [(x["event"], x.get("user"), x.get("via")) for x in audit_lines(device)]
    assert ("enrollment_started", "bob", "mqtt") in events
    assert ("enrollment", "bob", "mqtt") in events
    exported = voxgate("users", "export", "bob", "-c", str(config))
    card = load_card(default_card_path())  # the config's speaker.model: the default
    assert json.loads(exported.stdout)["model_sha256"] == card.model.sha256  # its file


def _flip_one_voiceprint(db: Path) -> None:
    """Damage one row's sealed blob in place, as a bad SD card sector would."""
    import sqlite3

    con = sqlite3.connect(db)
    uid, sealed = con.execute("SELECT id, sealed FROM voiceprints").fetchone()
    bad = bytearray(sealed)
    bad[40] ^= 0xFF
    con.execute("UPDATE voiceprints SET sealed = ? WHERE id = ?", (bytes(bad), uid))
    con.commit()
    con.close()


def test_a_damaged_or_replaced_voiceprint_file_still_gets_signed_answers(
    device: dict[str, Any], broker: Broker
) -> None:
    """A voiceprint that fails authentication while the daemon runs: the lock gets a signed
    `denied` (store_unreadable, no score) and one clear log line, not silence and a traceback, and
    it does not count towards the lockout. A good copy renamed over the file is used from
    the next attempt (the daemon does not go on reading the file it had open)."""
    done = enroll(device, "bob", "en+m3")
    assert done.returncode == 0, done.stdout + done.stderr
    db = Path(device["doc"]["data_dir"]) / "voiceprints.db"
    good = device["dir"] / "voiceprints-backup.db"
    shutil.copy(db, good)
    rec = Recorder(broker, "lock", [f"voxgate/{DEV}/#"])
    daemon = DaemonProcess(device["config"])
    try:
        daemon.feed(pause(0.3))
        rec.wait_for(f"voxgate/{DEV}/status", lambda m: m.payload == b"online", timeout=30)
        attempt = np.concatenate([pause(0.5), speech(ATTEMPT, "en+m3"), pause(1.2)])
        daemon.feed(attempt)
        wait_until(lambda: len(decisions(rec)) >= 1, 20, "the first decision")
        _flip_one_voiceprint(db)
        daemon.feed(attempt)
        wait_until(lambda: len(decisions(rec)) >= 2, 20, "a decision from the damaged store")
        shutil.copy(good, device["dir"] / "restore.db")
        os.replace(device["dir"] / "restore.db", db)
        daemon.feed(attempt)
        wait_until(lambda: len(decisions(rec)) >= 3, 20, "a decision from the restored store")
        assert daemon.close() == 0
    finally:
        rec.close()
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    first, damaged, restored = decisions(rec)
    assert (first.outcome, first.user) == ("granted", "bob"), daemon.log()
    assert (damaged.outcome, damaged.user, damaged.reasons) == (
        "denied",
        None,
        ("store_unreadable",),
    )
    assert damaged.speaker_score is None
    assert (restored.outcome, restored.user) == ("granted", "bob"), daemon.log()
    assert "cannot read the voiceprints, attempt denied" in daemon.log()
    assert "fails authentication" in daemon.log() and "Traceback" not in daemon.log()
    assert "lockout" not in [x["event"] for x in audit_lines(device)]


def test_enrollment_over_mqtt_when_the_store_is_deleted_or_cannot_be_written(
    device: dict[str, Any], broker: Broker
) -> None:
    """The voiceprint file deleted while the daemon runs: the next attempt still gets a
    decision, and a voice enrolled over MQTT lands in a new file on disk, not in the deleted
    one (lost at the next start). A store that cannot be written (file size limit, like a
    full disk) fails enroll-finish with the cause and keeps the takes, so that a second
    enroll-finish stores them once it can."""
    import resource

    from voxgate.decision import open_sealed

    done = enroll(device, "bob", "en+m3")
    assert done.returncode == 0, done.stdout + done.stderr
    db = Path(device["doc"]["data_dir"]) / "voiceprints.db"
    rec = Recorder(broker, "lock", [f"voxgate/{DEV}/#"])
    admin = mqtt_admin(broker)

    def command(name: str, **args: str) -> dict[str, Any]:
        reply = f"voxgate/{DEV}/cmd/{name}/result"
        before = len(rec.on(reply))
        cmd = make_command(CKEY, DEV, name, args, now=time.time())
        admin.publish(f"voxgate/{DEV}/cmd/{name}", cmd, qos=1).wait_for_publish(5)
        wait_until(lambda: len(rec.on(reply)) > before, 30, f"{name} reply")
        return open_sealed(rec.on(reply)[-1].payload, DKEY, REPLY_DOMAIN)

    daemon = DaemonProcess(device["config"])
    try:
        daemon.feed(pause(0.3))
        rec.wait_for(f"voxgate/{DEV}/status", lambda m: m.payload == b"online", timeout=30)
        db.unlink()
        daemon.feed(np.concatenate([pause(0.5), speech(ATTEMPT, "en+m3"), pause(1.2)]))
        wait_until(lambda: len(decisions(rec)) >= 1, 20, "a decision after the deletion")
        daemon.feed(pause(1.5))
        assert command("enroll-start", user="carol")["ok"] is True
        for take, text in enumerate(TAKES, start=1):
            # A take ends after challenge.answer_pause_ms (1.2 s) of quiet.
            daemon.feed(np.concatenate([pause(0.5), speech(text, "en+f3"), pause(1.5)]))
            daemon.wait_log(f"enrollment of carol: take {take} ", 20)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE, (1024, hard))
        try:
            refused = command("enroll-finish", user="carol")
        finally:
            resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE, (soft, hard))
        stored = command("enroll-finish", user="carol")
        assert daemon.close() == 0
    finally:
        admin.disconnect()
        rec.close()
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    (after_delete,) = decisions(rec)
    assert (after_delete.outcome, after_delete.reasons) == ("denied", ("no_match",))
    assert (refused["ok"], refused["error"]) == (False, "failed"), refused
    assert str(db) in refused["detail"] and "takes are kept" in refused["detail"], refused
    assert stored["ok"] is True and stored["result"]["used"] >= 3, stored
    assert "deleted or replaced while open" in daemon.log()
    listed = voxgate("users", "list", "-c", str(device["config"]))
    assert listed.returncode == 0, listed.stderr
    assert "carol" in listed.stdout and "bob" not in listed.stdout
