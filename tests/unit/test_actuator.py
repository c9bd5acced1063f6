"""Actuator policy without a broker: what runs, with which environment, and what is refused."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from voxgate.actuator import Actuator, ActuatorSetupError, decision_env, load_actuator_config
from voxgate.config.mqtt import ActuatorConfig
from voxgate.decision import Issuer, SequenceCounter, sign

KEY = b"unit-test-decision-key"
TOPIC = "voxgate/front-door/decision"


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _actuator(tmp_path: Path, argv: list[str], clock: Clock, timeout: float = 5) -> Actuator:
    cfg = ActuatorConfig.model_validate(
        {
            "devices": [{"id": "front-door"}],
            "state_file": str(tmp_path / "state.json"),
            "command": {"argv": argv, "timeout_s": timeout},
        }
    )
    return Actuator(cfg, keys={"front-door": KEY}, clock=clock)


def _issuer(tmp_path: Path) -> Issuer:
    return Issuer("front-door", SequenceCounter(tmp_path / "seq.json"), ttl_s=5)


def test_grant_runs_command_with_env(tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    script = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"
    clock = Clock(1000.0)
    a = _actuator(tmp_path, [sys.executable, "-c", script, str(out)], clock)
    d = _issuer(tmp_path).issue("granted", "alice", 1000.0, reasons=["speaker-match"])
    assert a.handle(TOPIC, sign(d, KEY)) == d
    a.act(a._jobs.get_nowait())
    env = json.loads(out.read_text())
    assert {k: env[k] for k in decision_env(d)} == decision_env(d)
    assert env["VOXGATE_REASONS"] == "speaker-match" and a.acted == 1


def test_denied_and_unknown_topic_do_not_act(tmp_path: Path) -> None:
    a = _actuator(tmp_path, ["/bin/true"], Clock(1000.0))
    issuer = _issuer(tmp_path)
    assert a.handle(TOPIC, sign(issuer.issue("denied", None, 1000.0), KEY)) is not None
    assert a._jobs.empty()
    granted = sign(issuer.issue("granted", "a", 1000.0), KEY)
    assert a.handle("voxgate/other-door/decision", granted) is None
    assert a.handle("voxgate/front-door/event", granted) is None
    assert a.rejected["unknown-device"] == 2 and a._jobs.empty()


def test_grant_expiring_in_queue_is_not_acted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "opened"
    clock = Clock(1000.0)
    a = _actuator(tmp_path, ["/usr/bin/touch", str(marker)], clock)
    a.handle(TOPIC, sign(_issuer(tmp_path).issue("granted", "a", 1000.0), KEY))
    clock.t = 1006.0  # an earlier action held the queue past this grant's expiry
    with caplog.at_level(logging.WARNING):
        a.act(a._jobs.get_nowait())
    assert not marker.exists() and a.rejected["expired"] == 1
    assert "expired while queued" in caplog.text


def test_failing_and_hanging_commands_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    issuer = _issuer(tmp_path)
    for argv, expect, timeout in (
        ([sys.executable, "-c", "import sys; sys.exit('relay jammed')"], "relay jammed", 5),
        (["/bin/sleep", "30"], "timed out", 0.3),
        ([str(tmp_path / "missing-program")], "No such file", 5),
    ):
        a = _actuator(tmp_path, argv, Clock(1000.0), timeout)
        a.handle(TOPIC, sign(issuer.issue("granted", "a", 1000.0), KEY))
        with caplog.at_level(logging.ERROR):
            a.act(a._jobs.get_nowait())
        assert expect in caplog.text and a.acted == 0


def test_a_command_leaving_a_background_child_is_done_when_it_exits(tmp_path: Path) -> None:
    """An action script that turns the relay off later from a background child ('sleep 5;
    relay off' &) exits at once; reading its output through pipes waited for the child too,
    so the grant was logged as timed out, not counted, and held up the ones behind it."""
    pid_file = tmp_path / "child.pid"
    script = f"sleep 20 & echo $! > {pid_file}; echo relay on"
    a = _actuator(tmp_path, ["/bin/sh", "-c", script], Clock(1000.0), timeout=4)
    a.handle(TOPIC, sign(_issuer(tmp_path).issue("granted", "a", 1000.0), KEY))
    t0 = time.monotonic()
    try:
        a.act(a._jobs.get_nowait())
        assert time.monotonic() - t0 < 3 and a.acted == 1
    finally:
        os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_the_door_opens_when_no_temporary_file_can_be_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The program's stderr goes to a temporary file; a full or missing temp folder must not
    keep the door shut (the action runs, only its last words are not kept)."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-folder"))
    marker = tmp_path / "opened"
    a = _actuator(
        tmp_path, ["/bin/sh", "-c", f"touch {marker}; echo oops >&2; exit 3"], Clock(1000.0)
    )
    a.handle(TOPIC, sign(_issuer(tmp_path).issue("granted", "a", 1000.0), KEY))
    a.act(a._jobs.get_nowait())
    assert marker.exists() and "action command exited 3" in caplog.text


def test_load_config_errors(tmp_path: Path) -> None:
    p = tmp_path / "a.yaml"
    p.write_text("devices: [{id: Front Door}]\ncommand: {argv: [x]}\n")
    with pytest.raises(ActuatorSetupError, match=r"devices\.0\.id"):
        load_actuator_config(p)
    p.write_text("devices: [\n")
    with pytest.raises(ActuatorSetupError, match="line 2: not valid YAML") as bad_yaml:
        load_actuator_config(p)
    assert "\n" not in str(bad_yaml.value)  # one line, like voxgate config check
    with pytest.raises(ActuatorSetupError, match="not found"):
        load_actuator_config(tmp_path / "none.yaml")
    # Scalars PyYAML cannot build, a lone surrogate and deep nesting were tracebacks here.
    for text, line in (
        ("devices: [{id: d}]\ncommand: {argv: [x]}\nexpires: 2024-13-01\n", 3),
        ('devices: [{id: d}]\nstate_file: "/tmp/x\\ud800"\n', 2),
        ("devices: " + "[" * 5000 + "\n", None),
    ):
        p.write_text(text)
        with pytest.raises(ActuatorSetupError, match="not valid YAML") as bad:
            load_actuator_config(p)
        assert line is None or f"line {line}:" in str(bad.value), bad.value
    # A link to /dev/zero was read without end; /dev/null stands for it.
    (tmp_path / "zero.yaml").symlink_to("/dev/null")
    with pytest.raises(ActuatorSetupError, match="not a regular file"):
        load_actuator_config(tmp_path / "zero.yaml")
    cfg = ActuatorConfig.model_validate({"devices": [{"id": "d"}], "command": {"argv": ["x"]}})
    with pytest.raises(ActuatorSetupError, match="empty decision key"):
        Actuator(cfg, keys={"d": b""})


def test_unwritable_state_refuses_grant(tmp_path: Path) -> None:
    clock = Clock(1000.0)
    a = _actuator(tmp_path / "sub", ["/bin/true"], clock)
    (tmp_path / "sub").write_text("not a directory")  # so the state file cannot be written
    assert a.handle(TOPIC, sign(_issuer(tmp_path).issue("granted", "a", 1000.0), KEY)) is None
    assert a.rejected["state-write-failed"] == 1 and a._jobs.empty()


def _bare_cfg(tmp_path: Path, protocol: str = "5") -> ActuatorConfig:
    return ActuatorConfig.model_validate(
        {
            "broker": {"protocol": protocol},
            "devices": [{"id": "front-door"}],
            "state_file": str(tmp_path / "state.json"),
            "command": {"argv": ["true"]},
        }
    )


def test_the_client_id_is_kept_across_restarts_and_unique_per_installation(
    tmp_path: Path,
) -> None:
    """Same installation (state folder): the same id, so the broker resumes the session.
    Another installation with the same host name and door: another id (a shared id makes
    two locks take the connection from each other)."""
    from voxgate.actuator import default_client_id

    first = default_client_id(_bare_cfg(tmp_path / "a"))
    assert first == default_client_id(_bare_cfg(tmp_path / "a"))
    assert first != default_client_id(_bare_cfg(tmp_path / "b"))
    assert first.startswith("voxgate-actuator-") and len(first) <= 64


def test_the_session_is_kept_only_on_mqtt_5(tmp_path: Path) -> None:
    """A 3.1.1 session never expires and its messages carry no expiry: the broker would hand
    back grants of any age, with only the lock's clock to refuse them."""
    from voxgate.mqtt.client import session_seconds

    assert session_seconds(_bare_cfg(tmp_path, "5").broker) > 0
    assert session_seconds(_bare_cfg(tmp_path, "3.1.1").broker) == 0


def test_a_damaged_client_id_file_is_replaced_and_an_unwritable_one_is_survived(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from voxgate.actuator import default_client_id

    cfg = _bare_cfg(tmp_path / "a")
    kept = tmp_path / "a" / "state.json.client-id"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"\xff\xfe garbage")
    fresh = default_client_id(cfg)
    assert fresh.startswith("voxgate-actuator-")
    assert kept.read_text().strip() == fresh
    # A state folder that is a file: no id can be kept; a per-start id, no exception.
    blocked = tmp_path / "blocked"
    blocked.write_text("")
    cfg = _bare_cfg(blocked)
    with caplog.at_level(logging.WARNING, logger="voxgate.actuator"):
        assert default_client_id(cfg).startswith("voxgate-actuator-")
    assert "cannot keep the MQTT client id" in caplog.text


def test_one_key_from_the_environment_is_not_every_doors_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$VOXGATE_DECISION_KEY (or the credential decision-key) overrides a door's key_file.
    With two doors configured it silently became the key of both: door A's key then
    verified grants signed for door B, so one leaked or compromised door opened the other
    (docs/mqtt.md: a different decision key per door). Found reading how the actuator loads
    its keys; it now refuses to start."""
    files = {}
    for dev in ("front-door", "back-door"):
        files[dev] = tmp_path / f"{dev}.key"
        files[dev].write_text(f"{dev}-decision-key-0123456789")
        files[dev].chmod(0o600)
    cfg = ActuatorConfig.model_validate(
        {
            "devices": [{"id": d, "key_file": str(f)} for d, f in files.items()],
            "state_file": str(tmp_path / "state.json"),
            "command": {"argv": ["/bin/true"]},
        }
    )
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    a = Actuator(cfg, clock=Clock(1000.0))  # each door its own file
    assert a.keys["front-door"] != a.keys["back-door"]
    monkeypatch.setenv("VOXGATE_DECISION_KEY", "front-door-decision-key-0123456789")
    with pytest.raises(ActuatorSetupError, match=r"VOXGATE_DECISION_KEY.*every door"):
        Actuator(cfg, clock=Clock(1000.0))
    monkeypatch.delenv("VOXGATE_DECISION_KEY")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "decision-key").write_text("front-door-decision-key-0123456789")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    with pytest.raises(ActuatorSetupError, match=r"decision-key.*every door"):
        Actuator(cfg, clock=Clock(1000.0))
    # One door: the override is that door's key, as documented.
    one = cfg.model_copy(update={"devices": cfg.devices[:1]})
    assert Actuator(one, clock=Clock(1000.0)).keys["front-door"].startswith(b"front-door")
    # An empty credential (the unit's placeholder) or variable is not set, as for
    # read_secret: each door keeps its own file, and the start is not refused.
    (creds / "decision-key").write_text("")
    monkeypatch.setenv("VOXGATE_DECISION_KEY", "")
    a = Actuator(cfg, clock=Clock(1000.0))
    assert a.keys["front-door"].startswith(b"front-door")
    assert a.keys["back-door"].startswith(b"back-door")
