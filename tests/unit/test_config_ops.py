"""Config mistakes a fleet administrator makes, caught by `voxgate config check` (and at
start and SIGHUP, which use the same loader) instead of by the running door."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from voxgate.config import ConfigError, parse_config
from voxgate.config.secrets import SecretError


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "door.yaml")
    return info.value.problems


def test_passphrase_mode_needs_a_passphrase() -> None:
    # Accepted before: the daemon started, reported READY, then aborted every attempt with
    # "challenge.mode is passphrase but challenge.passphrase is empty".
    for text in (
        "challenge:\n  mode: passphrase\n",
        "challenge:\n  mode: passphrase\n  passphrase: '  '\n",
    ):
        (msg,) = problems(text)
        assert msg.startswith("line 1: challenge:") and "challenge.passphrase" in msg, msg
    cfg = parse_config("challenge:\n  mode: passphrase\n  passphrase: open sesame\n")
    assert cfg.challenge.passphrase == "open sesame"
    assert parse_config("challenge:\n  mode: digits\n").challenge.passphrase is None


def test_a_key_given_twice_is_an_error_not_a_silent_override() -> None:
    # PyYAML keeps the last one: a second `mqtt:` section appended to a device file replaced
    # the whole first one (host and port back to defaults) and config check said "valid".
    text = (
        "device_id: door-1\nmqtt:\n  host: broker.lan\n  port: 8883\n"
        "vad:\n  aggressiveness: 3\nmqtt:\n  username: door-1\n"
    )
    (msg,) = problems(text)
    assert msg == "line 7: mqtt: given twice (first on line 2); the second would replace the first"
    (msg,) = problems("vad:\n  aggressiveness: 1\n  aggressiveness: 3\n")
    assert msg.startswith("line 3: vad.aggressiveness: given twice (first on line 2)")
    # The same name in different sections is fine.
    assert parse_config("api:\n  port: 9722\nmqtt:\n  port: 1883\n").mqtt.port == 1883


def test_an_empty_secret_variable_is_not_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`VOXGATE_COMMAND_KEY=` (e.g. `Environment=VOXGATE_COMMAND_KEY=` in a drop-in, or
    `$(cat missing-file)` in a shell) became the key b'': the MQTT link then accepted any
    command sealed with the empty key, erase-user included, from anyone on the broker, and
    an empty VOXGATE_AUDIT_KEY signed the audit anchor with a key everyone knows. Empty
    credential files already counted as not set (found trying env overrides)."""
    from voxgate.config.secrets import read_secret
    from voxgate.mqtt.commands import CommandError, CommandGate, make_command

    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("VOXGATE_COMMAND_KEY", "")
    assert read_secret("command-key", None, required=False) is None
    gate = CommandGate("door-1", read_secret("command-key", None, required=False), 0.0)
    with pytest.raises(CommandError, match="no command key"):
        gate.check(
            "erase-user", make_command(b"", "door-1", "erase-user", {"user": "a"}, now=1.0), 1.0
        )
    # The next place is still looked at, and a required one says the variable was empty.
    key_file = tmp_path / "command.key"
    key_file.write_text("ab" * 32)
    key_file.chmod(0o600)
    monkeypatch.setenv("VOXGATE_COMMAND_KEY", "  \n")
    assert read_secret("command-key", key_file) == b"ab" * 32
    with pytest.raises(SecretError, match=r"empty: \$VOXGATE_COMMAND_KEY"):
        read_secret("command-key", tmp_path / "absent.key")


def test_keygen_fills_the_empty_credential_placeholder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/fleet.md: make a signing key with `voxgate fleet keygen
    /etc/voxgate/credentials/fleet-signing-key`. The install steps (and the Ansible role) put
    an empty placeholder there, since the unit loads it, so the command always failed with
    'File exists (not overwritten)' (found running the documented command on an installed
    layout). An empty file holds no key to lose; a key is still never overwritten."""
    from voxgate.cli import main

    placeholder = tmp_path / "fleet-signing-key"
    placeholder.write_bytes(b"")
    placeholder.chmod(0o600)
    assert main(["fleet", "keygen", str(placeholder)]) == 0
    key = placeholder.read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert stat.S_IMODE(placeholder.stat().st_mode) == 0o600
    printed = capsys.readouterr().out.strip()
    assert main(["fleet", "pubkey", str(placeholder)]) == 0
    assert capsys.readouterr().out.strip() == printed
    assert main(["fleet", "keygen", str(placeholder)]) == 1  # a real key stays
    assert placeholder.read_text().strip() == key
    assert "not overwritten" in capsys.readouterr().err
    voiceprint = tmp_path / "voiceprint-key"
    voiceprint.write_bytes(b"")
    assert main(["users", "init-key", str(voiceprint)]) == 0
    assert len(voiceprint.read_text().strip()) == 64


def test_a_named_audit_key_file_that_is_missing_stops_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """audit.key_file names the key that signs the audit anchor. A path with a typo (or a
    key not copied yet) was skipped without a word: the door ran with a plain-hash anchor
    that anyone able to write the log can rebuild, while the config said it was signed
    (found starting the daemon with each referenced file missing)."""
    from voxgate.audit import open_log
    from voxgate.config import VoxgateConfig
    from voxgate.service.loop import Daemon
    from voxgate.service.notify import Notifier

    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("VOXGATE_AUDIT_KEY", raising=False)
    cfg = VoxgateConfig.model_validate(
        {"data_dir": str(tmp_path / "data"), "audit": {"key_file": str(tmp_path / "audit.kye")}}
    )
    with pytest.raises(SecretError, match=r"audit\.kye"):
        open_log(cfg)

    def no_stages(_cfg: VoxgateConfig) -> None:
        raise AssertionError("the start must stop before the stages are built")

    d = Daemon(cfg, stage_factory=no_stages, notifier=Notifier({}))  # type: ignore[arg-type]
    assert d.run() == 78  # invalid config: systemd does not restart
    # Without a key_file the anchor is a plain hash, as documented.
    assert open_log(
        cfg.model_copy(update={"audit": cfg.audit.model_copy(update={"key_file": None})})
    )


def _alias_bomb(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join([*lines, f"fleet: {{groups: *a{levels - 1}}}"]) + "\n"


def test_yaml_aliases_that_expand_without_bound_are_refused() -> None:
    """Eight short lines of nested YAML aliases stand for 9**6 values: the line map and the
    schema check walked each one, and the error quoted the whole expansion (0.9 s here, ten
    times more per extra line, with memory to match). POST /api/v1/config/check runs this
    loader inside the daemon, so one request could stall it or get it killed at MemoryMax
    (found feeding config check an alias bomb). Normal anchors still work."""
    (msg,) = problems(_alias_bomb(6))
    assert msg.startswith("the config expands to more than") and "alias" in msg, msg
    cfg = parse_config("fleet:\n  access:\n    hq_lobby: &staff [alice, bob]\n    hq_lab: *staff\n")
    assert cfg.fleet.access["hq_lab"] == ["alice", "bob"]


@pytest.mark.parametrize(
    "text",
    [
        "a: &a [*a]\n",  # an alias inside its own anchor
        "fleet: &f\n  x: *f\n",
        "a: " + "[" * 500 + "]" * 500 + "\n",  # nesting deeper than Python's recursion limit
    ],
)
def test_self_referencing_or_deeply_nested_yaml_is_an_error_not_a_traceback(text: str) -> None:
    # Each ended in a RecursionError traceback from config check (and from the admin API's
    # config check); found feeding config check recursive anchors.
    (msg,) = problems(text)
    assert "nested too deeply" in msg, msg
