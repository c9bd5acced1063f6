"""Command authentication, topics, discovery and MQTT config validation (no broker)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from voxgate.config.mqtt import ActuatorConfig, MqttConfig
from voxgate.config.secrets import SecretError
from voxgate.decision import DecisionError, seal
from voxgate.mqtt import discovery
from voxgate.mqtt.client import MqttLink
from voxgate.mqtt.commands import (
    COMMAND_DOMAIN,
    CommandError,
    CommandGate,
    make_command,
    make_reply,
    read_reply,
)
from voxgate.mqtt.topics import Topics, device_from_decision_topic

KEY = b"command-key-for-tests"
NOW = 1_767_225_600.0


def _gate(key: bytes | None = KEY) -> CommandGate:
    return CommandGate("front-door", key, started_at=NOW - 100, max_bytes=2048, max_skew_s=5)


def test_valid_command_accepted_once() -> None:
    gate = _gate()
    payload = make_command(KEY, "front-door", "erase-user", {"user": "alice"}, now=NOW)
    cmd = gate.check("erase-user", payload, NOW + 1)
    assert (cmd.name, cmd.args) == ("erase-user", {"user": "alice"})
    with pytest.raises(CommandError) as e:
        gate.check("erase-user", payload, NOW + 2)
    assert e.value.code == "replayed"


def _code(gate: CommandGate, name: str, payload: bytes, now: float = NOW + 1) -> str:
    with pytest.raises(CommandError) as e:
        gate.check(name, payload, now)
    return e.value.code


def _sealed_reload(**change: object) -> bytes:
    """A signed 'reload' command whose body fields are replaced by `change` (hand-made, so
    fields make_command would refuse can be sent)."""
    body = {
        "v": 1,
        "device": "front-door",
        "cmd": "reload",
        "args": {},
        "nonce": "ab" * 8,
        "issued_at": NOW,
        "expires_at": NOW + 5,
        **change,
    }
    return seal(body, KEY, COMMAND_DOMAIN)


def test_refusals() -> None:
    gate = _gate()
    ok = make_command(KEY, "front-door", "reload", now=NOW)
    assert _code(gate, "reload", make_command(b"wrong", "front-door", "reload", now=NOW)) == (
        "unauthorized"
    )
    assert _code(_gate(key=None), "reload", ok) == "unauthorized"
    assert _code(gate, "self-destruct", ok) == "unknown-command"
    assert _code(gate, "reload", b"x" * 3000) == "oversized"
    assert _code(gate, "reload", b"not json") == "malformed"
    assert _code(gate, "reload", b'{"alg":"HMAC-SHA256"}') == "malformed"
    assert _code(gate, "erase-user", ok) == "malformed"  # body says reload
    assert _code(gate, "reload", make_command(KEY, "back-door", "reload", now=NOW)) == (
        "wrong-device"
    )
    extra = make_command(KEY, "front-door", "reload", {"user": "x"}, now=NOW)
    assert _code(gate, "reload", extra) == "bad-args"
    missing = make_command(KEY, "front-door", "erase-user", {}, now=NOW)
    assert _code(gate, "erase-user", missing) == "bad-args"
    inject = make_command(KEY, "front-door", "erase-user", {"user": "../../etc"}, now=NOW)
    assert _code(gate, "erase-user", inject) == "bad-args"
    assert _code(gate, "reload", ok, now=NOW + 31) == "expired"
    assert _code(gate, "reload", ok, now=NOW - 60) == "not-yet-valid"
    long = make_command(KEY, "front-door", "reload", now=NOW, ttl_s=3600)
    assert _code(gate, "reload", long) == "bad-validity"
    old = make_command(KEY, "front-door", "reload", now=NOW - 200, ttl_s=30)
    assert _code(gate, "reload", old, now=NOW - 190) == "replayed"  # before daemon start
    bad_nonce = make_command(KEY, "front-door", "reload", now=NOW, nonce="XYZ")
    assert _code(gate, "reload", bad_nonce) == "malformed"
    assert _code(gate, "reload", _sealed_reload(issued_at="now")) == "malformed"
    # attempt: user is optional, but no other argument is accepted.
    assert (
        gate.check("attempt", make_command(KEY, "front-door", "attempt", now=NOW), NOW).args == {}
    )
    claimed = make_command(KEY, "front-door", "attempt", {"user": "bob"}, now=NOW)
    assert gate.check("attempt", claimed, NOW).args == {"user": "bob"}
    odd = make_command(KEY, "front-door", "attempt", {"door": "open"}, now=NOW)
    assert _code(gate, "attempt", odd) == "bad-args"
    # None of the refusals used up the nonce of the good one.
    assert gate.check("reload", ok, NOW + 1).name == "reload"


def test_reply_is_signed() -> None:
    payload = make_reply(
        KEY,
        "front-door",
        "reload",
        nonce="ab" * 8,
        ok=False,
        now=NOW,
        error="failed",
        detail="no such user",
    )
    body = read_reply(payload, KEY)
    assert (body["ok"], body["error"], body["nonce"]) == (False, "failed", "ab" * 8)
    with pytest.raises(DecisionError):
        read_reply(payload, b"other")


def test_topics() -> None:
    t = Topics("voxgate", "front-door", "homeassistant")
    assert t.decision == "voxgate/front-door/decision"
    assert t.command_result("reload") == "voxgate/front-door/cmd/reload/result"
    assert t.command_name("voxgate/front-door/cmd/reload") == "reload"
    assert t.command_name("voxgate/front-door/cmd/reload/result") is None
    assert t.command_name("voxgate/back-door/cmd/reload") is None
    assert device_from_decision_topic("voxgate", "voxgate/front-door/decision") == "front-door"
    assert device_from_decision_topic("voxgate", "voxgate/front-door/event") is None
    with pytest.raises(ValueError):
        Topics("voxgate", "a/b")
    with pytest.raises(ValueError):
        Topics("vox#", "a")


def test_discovery_payloads() -> None:
    t = Topics("voxgate", "front-door", "homeassistant")
    msgs = dict(discovery.messages(t, "0.1.0"))
    event = json.loads(msgs["homeassistant/event/front-door/decision/config"])
    assert event["event_types"] == ["granted", "denied", "retry"]
    assert event["state_topic"] == "voxgate/front-door/event"
    assert event["availability_topic"] == "voxgate/front-door/status"
    assert event["default_entity_id"] == "event.voxgate_front_door_decision"
    user = json.loads(msgs["homeassistant/sensor/front-door/last_user/config"])
    assert user["state_topic"] == "voxgate/front-door/user"
    ids = {json.loads(p)["unique_id"] for p in msgs.values()}
    assert len(ids) == 3
    assert {json.dumps(json.loads(p)["device"]) for p in msgs.values()} == {
        json.dumps(event["device"])
    }


def test_mqtt_config_validation() -> None:
    MqttConfig(tls={"ca_file": "/x/ca.crt"}, protocol="3.1.1")
    with pytest.raises(ValidationError, match="go together"):
        MqttConfig(tls={"cert_file": "/x/c.crt"})
    with pytest.raises(ValidationError, match="reconnect_min_s"):
        MqttConfig(reconnect_min_s=50, reconnect_max_s=10)
    with pytest.raises(ValidationError):
        MqttConfig(protocol="4")
    with pytest.raises(ValidationError):
        MqttConfig(topic_prefix="a/b")
    with pytest.raises(ValidationError):
        MqttConfig(bogus=1)


def test_actuator_config_validation() -> None:
    ok = {"devices": [{"id": "front-door"}], "command": {"argv": ["/bin/true"]}}
    ActuatorConfig.model_validate(ok)
    with pytest.raises(ValidationError, match="exactly one"):
        ActuatorConfig.model_validate({"devices": [{"id": "front-door"}]})
    with pytest.raises(ValidationError, match="exactly one"):
        ActuatorConfig.model_validate({**ok, "gpio": {"pin": "GPIO17"}})
    with pytest.raises(ValidationError, match="unique"):
        ActuatorConfig.model_validate({**ok, "devices": [{"id": "a"}, {"id": "a"}]})
    with pytest.raises(ValidationError):
        ActuatorConfig.model_validate({**ok, "command": {"argv": []}})
    with pytest.raises(ValidationError):
        ActuatorConfig.model_validate({**ok, "devices": []})


def test_a_non_ascii_signature_is_unauthorized() -> None:
    env = json.loads(make_command(KEY, "front-door", "reload", now=NOW))
    env["sig"] = "\u00e9" * 64
    assert _code(_gate(), "reload", json.dumps(env).encode()) == "unauthorized"


def test_an_unknown_command_name_is_quoted_short() -> None:
    # The name comes from the topic: the log line (which cut the name to 64 characters)
    # carried all 5000 through the detail, and so did the reply.
    with pytest.raises(CommandError) as e:
        _gate().check("x" * 5000, b"{}", NOW)
    assert e.value.code == "unknown-command"
    assert len(str(e.value)) < 200


@pytest.mark.parametrize("user", ["José García", "O'Brien", "Zoë", "李小龍", "eve.o@example"])
def test_user_names_the_store_accepts_are_accepted(user: str) -> None:
    # The pattern was ASCII-only: users the CLI and the API enrolled under such names could
    # not be erased (nor enrolled or claimed) over MQTT: 'bad-args: invalid user'.
    payload = make_command(KEY, "front-door", "erase-user", {"user": user}, now=NOW)
    assert _gate().check("erase-user", payload, NOW + 1).args == {"user": user}


@pytest.mark.parametrize(
    ("user", "why"),
    [
        ("", "1-64 characters"),
        (" ", "1-64 characters"),
        ("x" * 65, "1-64 characters"),
        ("a\x07b", "control characters"),
        ("\u200b", "control characters"),
        ("../../etc", "/ or \\"),
        ("a\\b", "/ or \\"),
    ],
)
def test_user_names_the_store_refuses_are_bad_args_that_say_why(user: str, why: str) -> None:
    # The reply and the log line said only 'invalid user' (seen sending such names to a
    # running daemon): the operator's tool could not tell a name too long from a slash.
    payload = make_command(KEY, "front-door", "erase-user", {"user": user}, now=NOW)
    with pytest.raises(CommandError) as e:
        _gate().check("erase-user", payload, NOW + 1)
    assert e.value.code == "bad-args"
    assert e.value.detail.startswith("invalid user: ") and why in e.value.detail, e.value.detail
    assert user.strip() == "" or user not in e.value.detail  # the name is not echoed


def test_an_argument_that_is_not_a_string_is_named() -> None:
    payload = seal(
        {
            "v": 1,
            "device": "front-door",
            "cmd": "erase-user",
            "args": {"user": 5},
            "issued_at": NOW,
            "expires_at": NOW + 30,
            "nonce": "00" * 16,
        },
        KEY,
        COMMAND_DOMAIN,
    )
    with pytest.raises(CommandError) as e:
        _gate().check("erase-user", payload, NOW + 1)
    assert (e.value.code, e.value.detail) == ("bad-args", "user must be a string")


def test_a_named_password_file_that_is_missing_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It was skipped without a word: the door connected with no password and the broker's
    # 'Not authorized' was all the integrator saw of a typo in password_file.
    monkeypatch.delenv("VOXGATE_MQTT_PASSWORD", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    cfg = MqttConfig.model_validate({"username": "door", "password_file": str(tmp_path / "nope")})
    with pytest.raises(SecretError, match="'mqtt-password' not found"):
        MqttLink(cfg, "front-door", decision_key=b"k", command_key=b"c")
    # Without a password_file, a user name alone is still allowed (broker without passwords).
    MqttLink(cfg.model_copy(update={"password_file": None}), "front-door", decision_key=b"k")


def test_an_integer_too_big_for_a_float_is_malformed() -> None:
    # OverflowError from math.isfinite: no reply, a traceback
    assert _code(_gate(), "reload", _sealed_reload(expires_at=10**400)) == "malformed"


def test_a_named_command_key_file_that_is_missing_is_named_in_the_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The warning said 'no command key' while the config named one: it did not say that
    # the file was not there.
    monkeypatch.delenv("VOXGATE_COMMAND_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    missing = tmp_path / "command.key"
    cfg = MqttConfig.model_validate({"command_key_file": str(missing)})
    with caplog.at_level("WARNING"):
        MqttLink(cfg, "front-door", decision_key=b"k")
    assert f"mqtt.command_key_file {missing} is missing or empty" in caplog.text


def test_log_lines_quote_a_long_command_name_short(caplog: pytest.LogCaptureFixture) -> None:
    """The name is the topic level (up to 64 kB from anyone allowed to write cmd/#): the
    retained-command and queue-full warnings quoted all of it."""
    import paho.mqtt.client as paho

    link = MqttLink(MqttConfig(), "front-door", decision_key=b"k", command_key=b"c")
    name = "x" * 5000
    retained = paho.MQTTMessage(topic=f"voxgate/front-door/cmd/{name}".encode())
    retained.retain = True
    with caplog.at_level("WARNING"):
        link._on_message(link._client, None, retained)
        for _ in range(17):  # the worker is not started: the 17th finds the queue full
            msg = paho.MQTTMessage(topic=f"voxgate/front-door/cmd/{name}".encode())
            msg.payload = b"{}"
            link._on_message(link._client, None, msg)
    assert "retained command" in caplog.text and "command queue full" in caplog.text
    assert max(len(r.getMessage()) for r in caplog.records) < 300


def test_a_command_issued_before_the_start_is_refused_without_a_clock_allowance() -> None:
    """A new process has forgotten the nonces its predecessor saw: a command issued a
    moment before it started can only be a copy sent again."""
    gate = CommandGate("front-door", KEY, started_at=NOW, max_skew_s=5)
    before = make_command(KEY, "front-door", "reload", now=NOW - 2)
    assert _code(gate, "reload", before, now=NOW + 1) == "replayed"
    after = make_command(KEY, "front-door", "reload", now=NOW + 0.5)
    assert gate.check("reload", after, NOW + 1).name == "reload"


def test_a_password_file_without_a_user_name_is_named_in_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/mqtt.md: a named password_file that is missing stops the start. Without
    mqtt.username the file was never read (the password goes to the broker only with a user
    name): a missing, empty or right file gave the same anonymous connection and not a word.
    Not refused, so an upgrade does not stop a door that connects anonymously."""
    monkeypatch.delenv("VOXGATE_MQTT_PASSWORD", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    cfg = MqttConfig.model_validate({"password_file": str(tmp_path / "nope")})
    with caplog.at_level(logging.WARNING, logger="voxgate.mqtt.client"):
        MqttLink(cfg, "front-door", decision_key=b"k", command_key=b"c")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("password_file" in w and "username" in w for w in warned), warned
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="voxgate.mqtt.client"):
        MqttLink(cfg.model_copy(update={"password_file": None}), "front-door", decision_key=b"k")
    assert not [r for r in caplog.records if "password_file" in r.getMessage()]


def test_an_enroll_start_prompted_that_is_not_yes_or_no_is_bad_args() -> None:
    # Sent `prompted: "maybe"` to a running daemon while following docs/mqtt.md: the reply was
    # `failed` (a valid command the door could not do) and the nonce was spent, where the doc
    # lists an invalid argument as `bad-args`, refused before the command counts as used.
    gate = _gate()
    payload = make_command(
        KEY, "front-door", "enroll-start", {"user": "bob", "prompted": "maybe"}, now=NOW
    )
    with pytest.raises(CommandError) as e:
        gate.check("enroll-start", payload, NOW + 1)
    assert (e.value.code, e.value.detail) == ("bad-args", "prompted must be 'yes' or 'no'")
    for prompted in ("yes", "no"):
        ok = make_command(
            KEY, "front-door", "enroll-start", {"user": "bob", "prompted": prompted}, now=NOW
        )
        assert gate.check("enroll-start", ok, NOW + 1).args["prompted"] == prompted
