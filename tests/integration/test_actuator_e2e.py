"""End to end: MqttLink publishes signed decisions -> `voxgate actuator` (a real child process)
acts by running a command, and refuses tampered, replayed, expired and wrongly signed ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from broker import STANDARD_USERS, Broker
from mqtt_helpers import REPO, ActuatorProcess, Recorder, link_config, wait_until, write_key

from voxgate.decision import Issuer, SequenceCounter, sign
from voxgate.mqtt.client import MqttLink

DEV = "front-door"
OTHER = "back-door"
DKEY = b"front-door-decision-key-0123456789"
OKEY = b"back-door-decision-key-9876543210"


@pytest.fixture
def link(broker: Broker) -> Iterator[MqttLink]:
    link = MqttLink(link_config(broker), DEV, decision_key=DKEY)
    link.start()
    wait_until(lambda: link.connected, 10, "link connected")
    yield link
    link.stop()


@pytest.fixture
def raw(broker: Broker) -> Iterator[mqtt.Client]:
    """The device account publishing hand-made payloads (what a compromised network could send
    is modelled by the payloads; the ACL already keeps other accounts out)."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.username_pw_set("device", STANDARD_USERS["device"])
    c.tls_set(ca_certs=str(broker.ca_file))
    c.connect(broker.host, broker.port)
    c.loop_start()
    yield c
    c.disconnect()
    c.loop_stop()


@pytest.fixture
def actuator(tmp_path: Path, broker: Broker) -> Iterator[ActuatorProcess]:
    keys = {
        DEV: write_key(tmp_path / "front.key", DKEY),
        OTHER: write_key(tmp_path / "back.key", OKEY),
    }
    a = ActuatorProcess(tmp_path, broker, keys).start()
    yield a
    a.stop()


def _send(raw: mqtt.Client, payload: bytes, device: str = DEV) -> None:
    raw.publish(f"voxgate/{device}/decision", payload, qos=1).wait_for_publish(5)


def test_grant_acts_and_bad_decisions_are_refused(
    tmp_path: Path,
    broker: Broker,
    link: MqttLink,
    raw: mqtt.Client,
    actuator: ActuatorProcess,
) -> None:
    issuer = Issuer(DEV, SequenceCounter(tmp_path / "seq.json"), ttl_s=30)
    now = time.time()
    grant = issuer.issue("granted", "alice", now, reasons=["speaker-match"])
    assert link.publish_decision(grant)
    wait_until(lambda: len(actuator.actions()) == 1, 10, "the grant to be acted on")
    act = actuator.actions()[0]
    assert (act["VOXGATE_USER"], act["VOXGATE_SEQ"], act["VOXGATE_OUTCOME"]) == (
        "alice",
        str(grant.seq),
        "granted",
    )
    assert act["acted_at"] < grant.expires_at

    # Denied: accepted (advances seq) but nothing happens.
    denied = issuer.issue("denied", "bob", time.time(), reasons=["low-score"])
    link.publish_decision(denied)
    actuator.wait_log(rf"accepted: device=front-door seq={denied.seq} outcome=denied")

    # Replayed: the exact bytes of the accepted grant, still within its validity.
    _send(raw, sign(grant, DKEY))
    actuator.wait_log(r"REJECTED on voxgate/front-door/decision: replayed")

    # Tampered: a denial turned into a grant after signing.
    denial = issuer.issue("denied", "mallory", time.time())
    env = json.loads(sign(denial, DKEY))
    env["body"] = env["body"].replace('"denied"', '"granted"')
    _send(raw, json.dumps(env).encode())
    actuator.wait_log(r"REJECTED on voxgate/front-door/decision: bad-signature")

    # Wrongly signed: right shape, wrong key.
    _send(raw, sign(issuer.issue("granted", "eve", time.time()), b"not-the-device-key"))
    actuator.wait_log(r"REJECTED .*: bad-signature", count=2)

    # Expired: correctly signed, but its validity ended before it arrived.
    old = issuer.issue("granted", "alice", time.time() - 40)
    _send(raw, sign(old, DKEY))
    actuator.wait_log(r"REJECTED on voxgate/front-door/decision: expired")

    # Signed for front-door, replayed onto back-door's topic (other key): refused.
    _send(raw, sign(issuer.issue("granted", "alice", time.time()), DKEY), device=OTHER)
    actuator.wait_log(r"REJECTED on voxgate/back-door/decision: bad-signature")

    # Same key on both doors would still not help: the body names the device.
    _send(raw, sign(issuer.issue("granted", "x", time.time()), OKEY), device=OTHER)
    actuator.wait_log(r"REJECTED on voxgate/back-door/decision: wrong-device")

    # Garbage and oversized payloads.
    _send(raw, b"\x00\x01 not json")
    _send(raw, b"[" * 20_000)
    # Not a decision at all: named so, with what arrived (it was "malformed", which the door
    # read as another voxgate version).
    actuator.wait_log(r"REJECTED .*: not-a-decision \(not JSON .*received 11 bytes: b'\\x00")
    actuator.wait_log(r"REJECTED .*: oversized")

    # A user name full of shell syntax reaches the program as plain data.
    marker = tmp_path / "pwned"
    evil = issuer.issue("granted", f"x; touch {marker}; $(touch {marker})", time.time())
    assert link.publish_decision(evil)
    wait_until(lambda: len(actuator.actions()) == 2, 10, "the second grant")
    assert actuator.actions()[1]["VOXGATE_USER"] == evil.user
    assert not marker.exists()

    assert actuator.alive
    assert len(actuator.actions()) == 2


def test_restart_does_not_reopen_replay_window(
    tmp_path: Path, broker: Broker, link: MqttLink, raw: mqtt.Client
) -> None:
    keys = {DEV: write_key(tmp_path / "front.key", DKEY)}
    a = ActuatorProcess(tmp_path, broker, keys).start()
    issuer = Issuer(DEV, SequenceCounter(tmp_path / "seq.json"), ttl_s=30)
    grant = issuer.issue("granted", "alice", time.time())
    try:
        link.publish_decision(grant)
        wait_until(lambda: len(a.actions()) == 1, 10, "the grant")
    finally:
        assert a.stop() == 0
    state = json.loads((tmp_path / "actuator-state.json").read_text())
    assert state == {"last_seq": {DEV: grant.seq}, "last_issued_at": {DEV: grant.issued_at}}
    b = ActuatorProcess(tmp_path, broker, keys).start()
    try:
        _send(raw, sign(grant, DKEY))  # still fresh: only the stored seq stops it
        b.wait_log(r"REJECTED .*: replayed")
        assert len(b.actions()) == 1
    finally:
        b.stop()


def test_a_grant_sent_while_the_lock_is_away_is_acted_on_when_it_is_back(
    tmp_path: Path, broker: Broker, link: MqttLink
) -> None:
    """The broker keeps the lock's session: a grant published while the actuator is down
    (killed here; a network blip or both reconnecting after a broker restart look the same
    to the broker) is delivered when it comes back. With a fresh session per connect the
    broker dropped it and the door stayed shut."""
    keys = {DEV: write_key(tmp_path / "front.key", DKEY)}
    a = ActuatorProcess(tmp_path, broker, keys).start()
    assert a.proc is not None
    a.proc.kill()
    a.proc.wait()
    grant = Issuer(DEV, SequenceCounter(tmp_path / "seq.json"), ttl_s=30).issue(
        "granted", "alice", time.time()
    )
    link.publish_decision(grant)
    wait_until(lambda: link.pending_decisions() == 0, 10, "the broker has the grant")
    b = ActuatorProcess(tmp_path, broker, keys).start()
    try:
        wait_until(lambda: len(b.actions()) == 1, 10, "the held grant acted on")
        assert int(b.actions()[0]["VOXGATE_SEQ"]) == grant.seq
    finally:
        b.stop()


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
    return subprocess.run(
        [sys.executable, "-m", "voxgate", "actuator", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


def test_cli_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("devices: []\nbogus: 1\n")
    r = _run_cli("-c", str(bad), "--check")
    assert r.returncode == 2
    assert "bogus: unknown key" in r.stderr and "devices" in r.stderr
    nokey = tmp_path / "nokey.yaml"
    nokey.write_text(
        f"devices: [{{id: door, key_file: {tmp_path}/missing.key}}]\n"
        f"state_file: {tmp_path}/s.json\ncommand: {{argv: [/bin/true]}}\n"
    )
    r = _run_cli("-c", str(nokey), "--check")
    assert r.returncode == 2 and "decision-key" in r.stderr
    write_key(tmp_path / "missing.key", b"k")
    r = _run_cli("-c", str(nokey), "--check")
    assert r.returncode == 0, r.stderr
    (tmp_path / "s.json").write_text("garbage")
    r = _run_cli("-c", str(nokey), "--check")
    assert r.returncode == 2 and "state file" in r.stderr
    gpio = tmp_path / "gpio.yaml"
    gpio.write_text(
        f"devices: [{{id: door, key_file: {tmp_path}/missing.key}}]\n"
        f"state_file: {tmp_path}/s2.json\ngpio: {{pin: GPIO17}}\n"
    )
    r = _run_cli("-c", str(gpio), "--check")
    try:
        import gpiozero  # noqa: F401
    except ImportError:
        assert r.returncode == 2 and "pip install 'voxgate[gpio]'" in r.stderr


def test_cli_refuses_a_damaged_state_file_and_a_command_that_cannot_run(tmp_path: Path) -> None:
    """A state file whose 'last_seq' held a string or null was a traceback, and one that was
    not a map was silently forgotten (the replay window reopened); a missing or
    non-executable action program passed --check and left the door shut at the first grant."""
    write_key(tmp_path / "door.key", b"k")
    cfg = tmp_path / "a.yaml"
    state = tmp_path / "s.json"

    def write_cfg(program: str) -> None:
        cfg.write_text(
            f"devices: [{{id: door, key_file: {tmp_path}/door.key}}]\n"
            f"state_file: {state}\ncommand: {{argv: ['{program}']}}\n"
        )

    write_cfg("/bin/true")
    for damaged in ('{"door": "abc"}', '{"door": null}', "[5]", '"x"', '{"door": 1.5}'):
        state.write_text(f'{{"last_seq": {damaged}}}')
        r = _run_cli("-c", str(cfg), "--check")
        assert r.returncode == 2, (damaged, r.stdout, r.stderr)
        assert "state file" in r.stderr and "last_seq" in r.stderr and "Traceback" not in r.stderr
    state.write_text('{"last_seq": {"door": 7}}')
    assert _run_cli("-c", str(cfg), "--check").returncode == 0
    not_executable = tmp_path / "open-door"
    not_executable.write_text("#!/bin/sh\n")
    for program in (str(tmp_path / "missing"), str(not_executable), "no-such-program-on-path"):
        write_cfg(program)
        r = _run_cli("-c", str(cfg), "--check")
        assert r.returncode == 2, (program, r.stdout)
        assert f"command.argv[0]: '{program}' is not an executable program" in r.stderr


def test_cli_refuses_broker_settings_it_cannot_use(tmp_path: Path) -> None:
    """A missing CA file or an unreadable password file passed --check, and the actuator
    then stopped with a MqttSetupError / SecretUnreadable traceback when it built its client."""
    write_key(tmp_path / "door.key", b"k")
    cfg = tmp_path / "a.yaml"
    (tmp_path / "pw-dir").mkdir()
    for broker, said in (
        (
            f"{{tls: {{ca_file: {tmp_path}/missing-ca.crt}}}}",
            f"broker.tls.ca_file: {tmp_path}/missing-ca.crt does not exist",
        ),
        (f"{{username: lock, password_file: {tmp_path}/pw-dir}}", "cannot read"),
        (f"{{username: lock, password_file: {tmp_path}/typo}}", "'mqtt-password' not found"),
    ):
        cfg.write_text(
            f"broker: {broker}\ndevices: [{{id: door, key_file: {tmp_path}/door.key}}]\n"
            f"state_file: {tmp_path}/s.json\ncommand: {{argv: [/bin/true]}}\n"
        )
        for args in (("--check",), ()):
            r = _run_cli("-c", str(cfg), *args)
            assert r.returncode == 2 and said in r.stderr, r.stderr
            assert "Traceback" not in r.stderr


def test_two_locks_cloned_from_one_sd_card_are_named_and_back_off(
    tmp_path: Path, broker: Broker
) -> None:
    """A cloned card carries <state_file>.client-id: both locks connected with one id and
    took the connection (and the session with its held decisions) from each other every
    reconnect_min_s, forever, logging only 'disconnected from the broker'."""
    locks = []
    for n, (dev, key) in enumerate(((DEV, DKEY), (OTHER, OKEY))):
        d = tmp_path / f"lock{n}"
        d.mkdir()
        (d / "actuator-state.json.client-id").write_text("voxgate-actuator-00c10ed0c10ed000\n")
        locks.append(ActuatorProcess(d, broker, {dev: write_key(d / "door.key", key)}))
    try:
        locks[0].start()
        locks[1].start()
        time.sleep(5)
        said = "is another client connecting as 'voxgate-actuator-00c10ed0c10ed000'"
        assert any(a.log_count(said) for a in locks), locks[0].lines[-5:]
        drops = sum(a.log_count("disconnected from the broker") for a in locks)
        assert drops < 14, drops  # about 30 in 5 s without the back-off (0.1 .. 0.5 s)
    finally:
        for a in locks:
            a.stop()


def test_a_flood_of_bad_messages_is_logged_within_a_limit_and_a_grant_still_opens(
    tmp_path: Path, broker: Broker, link: MqttLink, raw: mqtt.Client, actuator: ActuatorProcess
) -> None:
    """Each message the lock refused was a WARNING line: whoever can publish on a decision
    topic wrote one line each into the lock's log, as fast as they came, and journald's limit
    then dropped its GRANTED lines too. Now the first 10 refusals a minute are logged, then
    one notice; every one is still counted and reported to the door."""
    refused = f"voxgate/{DEV}/decision/refused"
    reports = Recorder(broker, "admin", [refused])
    flood = 500
    try:
        for _ in range(flood):
            raw.publish(f"voxgate/{DEV}/decision", b"not a decision", qos=1)
        wait_until(lambda: len(reports.on(refused)) == flood, 20, "a report for each")
        issuer = Issuer(DEV, SequenceCounter(tmp_path / "seq.json"), ttl_s=30)
        assert link.publish_decision(issuer.issue("granted", "alice", time.time()))
        wait_until(lambda: len(actuator.actions()) == 1, 15, "the grant after the flood")
        actuator.wait_log(r"GRANTED user='alice'")
    finally:
        reports.close()
    assert actuator.log_count(r"decision REJECTED") == 10
    assert actuator.log_count(r"held back") == 1
    assert actuator.stop() == 0
    stopped = rf"actuator stopped: 1 action\(s\), rejections \{{'not-a-decision': {flood}\}}"
    wait_until(lambda: actuator.log_count(stopped) == 1, 5, "the count of refusals")


def test_two_doors_given_one_key_are_refused_so_one_door_cannot_open_the_other(
    tmp_path: Path, broker: Broker
) -> None:
    """Two key_files with the same key (a copied file): whoever holds the front door's key
    (its SD card) signed a grant naming the back door, and the actuator opened the back door.
    The same reason as for $VOXGATE_DECISION_KEY with several doors, which was refused."""
    keys = {
        DEV: write_key(tmp_path / "front.key", DKEY),
        OTHER: write_key(tmp_path / "back.key", DKEY),
    }
    a = ActuatorProcess(tmp_path, broker, keys)
    check = _run_cli("-c", str(a.config), "--check")
    assert check.returncode == 2, check.stdout + check.stderr
    assert f"{DEV}, {OTHER}" in check.stderr and "same decision key" in check.stderr
    try:
        with pytest.raises(AssertionError, match="actuator exited"):
            a.start()
        assert a.proc is not None and a.proc.wait(30) == 2
    finally:
        a.stop()
    assert any("same decision key" in line for line in a.lines)


ENV_DUMP = (
    "import json, os, sys\n"
    "keys = ('OPENBLAS_NUM_THREADS', 'GOTO_NUM_THREADS', 'OMP_NUM_THREADS', 'VOXGATE_USER')\n"
    "with open(sys.argv[1], 'a') as f:\n"
    "    f.write(json.dumps({k: os.environ.get(k) for k in keys}) + '\\n')\n"
)


@pytest.mark.parametrize("users_own", [None, "3"], ids=["unset", "set-by-the-user"])
def test_the_action_gets_the_users_thread_settings_not_voxgates(
    tmp_path: Path, broker: Broker, link: MqttLink, users_own: str | None
) -> None:
    """`voxgate actuator` sets OPENBLAS_NUM_THREADS=1 for itself (voxgate.blas, before numpy
    loads) and its action inherited it: an unlock program using numpy ran its matrix
    products on one thread, without anybody having asked for that. It gets the environment
    the actuator was started with (a thread count the user set is theirs, and kept)."""
    out = tmp_path / "env.jsonl"
    script = tmp_path / "env_dump.py"
    script.write_text(ENV_DUMP)
    lock = ActuatorProcess(
        tmp_path,
        broker,
        {DEV: write_key(tmp_path / "front.key", DKEY)},
        argv=[sys.executable, str(script), str(out)],
    )
    saved = {k: os.environ.pop(k, None) for k in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS")}
    saved["OMP_NUM_THREADS"] = os.environ.pop("OMP_NUM_THREADS", None)
    try:
        if users_own is not None:
            os.environ["OMP_NUM_THREADS"] = users_own
        lock.start()
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v
    try:
        issuer = Issuer(DEV, SequenceCounter(tmp_path / "seq.json"), ttl_s=30)
        assert link.publish_decision(issuer.issue("granted", "alice", time.time()))
        wait_until(lambda: out.exists() and out.read_text().strip(), 10, "the action ran")
    finally:
        lock.stop()
    seen = json.loads(out.read_text().splitlines()[0])
    assert seen == {
        "OPENBLAS_NUM_THREADS": None,
        "GOTO_NUM_THREADS": None,
        "OMP_NUM_THREADS": users_own,
        "VOXGATE_USER": "alice",
    }, seen
