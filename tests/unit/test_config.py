"""Config: one schema, errors that name the file, the line and the key path."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from voxgate.cli import main
from voxgate.config import ConfigError, VoxgateConfig, load_config, parse_config, read_secret
from voxgate.config.secrets import SecretError, override_source

REPO = Path(__file__).resolve().parents[2]


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "door.yaml")
    assert str(info.value).startswith("door.yaml: invalid config")
    return info.value.problems


def test_empty_file_gives_defaults() -> None:
    assert parse_config("") == VoxgateConfig()
    assert parse_config("# only a comment\n").vad.aggressiveness == 2


def test_unknown_key_names_path_line_and_allowed_keys() -> None:
    (msg,) = problems("vad:\n  aggressiveness: 1\n  hangover: 300\n")
    assert msg.startswith("line 3: vad.hangover: unknown key")
    assert "hangover_ms" in msg and "pre_roll_ms" in msg


def test_unknown_top_level_section() -> None:
    (msg,) = problems("audo:\n  source: mic\n")
    assert "line 1: audo: unknown key" in msg and "audio" in msg


def test_a_misspelled_key_names_the_one_it_resembles() -> None:
    # Found checking a config with typical typos (`speeker:`, `treshold:`): the message listed
    # every allowed key (16 under speaker) and left the reader to spot the right one.
    (msg,) = problems("speeker:\n  threads: 2\n")
    assert msg.startswith("line 1: speeker: unknown key (did you mean 'speaker'?")
    (msg,) = problems("speaker:\n  treshold: 0.5\n")
    assert "speaker.treshold: unknown key (did you mean 'threshold'?" in msg
    (msg,) = problems("vad:\n  hangover: 300\n")  # a key with its unit missing
    assert "did you mean 'hangover_ms'?" in msg
    (msg,) = problems("colour: blue\n")  # nothing close: no guess
    assert "did you mean" not in msg and "allowed here:" in msg


def test_out_of_range_reports_bound_and_value() -> None:
    (msg,) = problems("vad:\n  aggressiveness: 7\n")
    assert msg.startswith("line 2: vad.aggressiveness:")
    assert "less than or equal to 3" in msg and "7" in msg


def test_wrong_type_and_choice() -> None:
    msgs = problems("mqtt:\n  port: eighty\naudio:\n  frame_ms: 25\n")
    assert any(m.startswith("line 2: mqtt.port:") and "integer" in m for m in msgs)
    assert any(m.startswith("line 4: audio.frame_ms:") and "10, 20 or 30" in m for m in msgs)


def test_cross_field_rule() -> None:
    (msg,) = problems("audio:\n  source: file\n")
    assert "audio.path is not set" in msg
    (msg,) = problems("vad:\n  min_utterance_ms: 5000\n  max_utterance_ms: 4000\n")
    assert "min_utterance_ms must be below" in msg


def test_max_clipped_is_a_fraction_of_the_samples() -> None:
    """speaker.max_clipped (the quality gate's clipping level) is a fraction, 0 to 1: a
    percentage typed as 10 would retry nothing and must be refused, as a negative level
    that would retry every attempt."""
    assert VoxgateConfig().speaker.max_clipped == 0.0003
    assert parse_config("speaker:\n  max_clipped: 0.01\n").speaker.max_clipped == 0.01
    (msg,) = problems("speaker:\n  max_clipped: 10\n")
    assert msg.startswith("line 2: speaker.max_clipped:") and "less than or equal to 1" in msg
    (msg,) = problems("speaker:\n  max_clipped: -0.1\n")
    assert msg.startswith("line 2: speaker.max_clipped:") and "greater than or equal to 0" in msg


def test_every_problem_is_reported_at_once() -> None:
    assert len(problems("device_id: Bad Name\nvad:\n  aggressiveness: -1\nx: 1\n")) == 3


def test_broken_yaml_and_wrong_shape() -> None:
    (msg,) = problems("vad:\n  aggressiveness: [1\n")
    assert "not valid YAML" in msg and msg.startswith("line ")
    (msg,) = problems("- just\n- a list\n")
    assert "top level must be a mapping" in msg


def test_a_yaml_mistake_is_named_at_the_line_to_fix() -> None:
    """Found breaking a copy of pi4.yaml: `  length 5` (no colon) was reported at the next
    line, which was right, and a tab or an open bracket gave PyYAML's words only."""
    text = "challenge:\n  mode: digits\n  length 5\n  timeout_s: 10\n"
    (msg,) = problems(text)
    assert msg.startswith("line 3: not valid YAML: no ':' after the key"), msg
    (msg,) = problems("mqtt:\n  host: localhost\n\tport: 1883\n")
    assert msg.startswith("line 3:") and "spaces, not tabs" in msg, msg
    (msg,) = problems("fleet:\n  groups: [a, b\n  enabled: true\n")
    assert msg.startswith("line 3:") and "flow sequence on line 2" in msg, msg
    (msg,) = problems("vad:\n\naggressiveness: 2\n  pre_roll_ms: 300\n")
    assert msg.startswith("line 4:") and "indentation" in msg, msg


def test_an_empty_or_scalar_section_says_so_in_the_files_words() -> None:
    """`speaker:` with nothing under it gave "Input should be a valid dictionary or instance
    of SpeakerConfig": a class name the file never shows, and no word of it being empty."""
    (msg,) = problems("speaker:\nchallenge:\n  mode: digits\n")
    assert msg == (
        "line 1: speaker: the section is empty: put its settings under it, indented "
        "(key: value), or delete the line"
    )
    (msg,) = problems("vad: 3\n")
    assert msg.startswith("line 1: vad: should be a section of settings") and "(got 3)" in msg
    assert "Config" not in msg


def test_a_value_of_the_wrong_form_is_described_in_words_not_a_regex() -> None:
    """`device_id: front door/1` gave "String should match pattern
    '^[a-z0-9][a-z0-9_-]{0,62}$'": what to type, for an administrator, is the words."""
    (msg,) = problems("device_id: front door/1\n")
    assert msg.startswith("line 1: device_id: should be 1-63 lowercase letters"), msg
    assert "pattern" not in msg and "(got 'front door/1')" in msg
    (msg,) = problems("mqtt:\n  topic_prefix: site1/doors\n")
    assert "without '/', '#' or '+'" in msg, msg
    (msg,) = problems("stt:\n  deepspeech_sha256: ABC\n")
    assert "64 hex digits" in msg, msg
    (msg,) = problems("fleet:\n  site: my site\n")
    assert "no spaces" in msg, msg


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(binary)


def test_a_config_path_that_is_no_regular_file_is_refused_not_read(tmp_path: Path) -> None:
    # A link to /dev/zero was read without end at a SIGHUP (GBs a second, and SIGTERM no
    # longer stopped the door). /dev/null stands for it.
    link = tmp_path / "voxgate.yaml"
    link.symlink_to("/dev/null")
    with pytest.raises(ConfigError, match=r"not a regular file \(a device\?\)"):
        load_config(link)
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    with pytest.raises(ConfigError, match="cannot read: a folder"):
        load_config(folder)


def test_a_config_through_a_pipe_or_a_link_to_the_file_is_read(tmp_path: Path) -> None:
    # `-c <(...)` and a config piped to /dev/stdin are pipes (they worked before the size
    # limit came); an Ansible template or /etc alternative is often a link to the file.
    r, w = os.pipe()
    os.write(w, b"device_id: piped\n")
    os.close(w)
    try:
        assert load_config(f"/dev/fd/{r}").device_id == "piped"
    finally:
        os.close(r)
    real = tmp_path / "voxgate.yaml.real"
    real.write_text("device_id: linked\n")
    (tmp_path / "voxgate.yaml").symlink_to(real)
    assert load_config(tmp_path / "voxgate.yaml").device_id == "linked"


def test_a_pipe_without_end_or_without_writer_is_refused_not_waited_on(tmp_path: Path) -> None:
    import subprocess

    endless = subprocess.Popen(["cat", "/dev/zero"], stdout=subprocess.PIPE)
    try:
        assert endless.stdout is not None
        with pytest.raises(ConfigError, match="larger than 4 MB: not a voxgate config"):
            load_config(f"/dev/fd/{endless.stdout.fileno()}")
    finally:
        endless.kill()
        endless.wait()
        assert endless.stdout is not None
        endless.stdout.close()
    fifo = tmp_path / "voxgate.yaml"
    os.mkfifo(fifo)  # no one writes to it: open() without O_NONBLOCK waited for ever
    with pytest.raises(ConfigError, match=r"the file is empty \(0 bytes\)"):
        load_config(fifo)


def test_a_config_file_far_larger_than_a_config_is_refused(tmp_path: Path) -> None:
    # All comments: read whole, it passed as a config of defaults (another data_dir, no keys).
    big = tmp_path / "voxgate.yaml"
    big.write_bytes(b"#" * (5 * 2**20))
    with pytest.raises(ConfigError, match="larger than 4 MB: not a voxgate config"):
        load_config(big)


def test_shipped_device_configs_are_valid() -> None:
    files = sorted((REPO / "firmware_config").glob("*.yaml"))
    names = {f.name for f in files}
    assert {"pi4.yaml", "pi-zero-2w.yaml", "jetson-orin-nano.yaml", "dev.yaml"} <= names
    for f in files:
        cfg = load_config(f)
        assert cfg.device_id


def test_config_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("device_id: front-door\nvad:\n  aggressiveness: 3\n")
    assert main(["config", "check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "device_id: front-door" in out and "aggressiveness: 3" in out
    assert "hangover_ms: 500" in out  # defaults are filled in

    bad = tmp_path / "bad.yaml"
    bad.write_text("vad:\n  aggressivenes: 3\n")
    assert main(["config", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "line 2: vad.aggressivenes: unknown key" in err


def test_secret_order_env_credential_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_secret_env: None
) -> None:
    f = tmp_path / "mqtt.pw"
    f.write_text("from-file\n")
    os.chmod(f, 0o600)
    assert read_secret("mqtt-password", f) == b"from-file"

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("from-credential")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_secret("mqtt-password", f) == b"from-credential"

    monkeypatch.setenv("VOXGATE_MQTT_PASSWORD", "from-env")
    assert read_secret("mqtt-password", f) == b"from-env"


def test_missing_secret_says_where_it_looked(
    tmp_path: Path, no_secret_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(SecretError, match=r"VOXGATE_DECISION_KEY.*key\.bin"):
        read_secret("decision-key", tmp_path / "key.bin")
    assert read_secret("decision-key", tmp_path / "key.bin", required=False) is None

    loose = tmp_path / "loose"
    loose.write_text("k")
    os.chmod(loose, 0o644)
    assert read_secret("decision-key", loose) == b"k"
    assert "readable by others" in caplog.text
    assert stat.S_IMODE(loose.stat().st_mode) == 0o644  # reported, not changed behind the back


def test_secret_path_that_is_a_directory_is_an_error_not_a_traceback(
    tmp_path: Path, no_secret_env: None
) -> None:
    folder = tmp_path / "decision.key"
    folder.mkdir()
    with pytest.raises(SecretError, match=rf"cannot read {folder} \(Is a directory\)"):
        read_secret("decision-key", folder)


def test_a_secret_file_far_larger_than_a_key_is_refused_not_read_whole(
    tmp_path: Path, no_secret_env: None
) -> None:
    # key_file: /dev/urandom (meant for `head -c 32 /dev/urandom > FILE`) was read without
    # end at the start; a regular file over the limit stands for it.
    big = tmp_path / "decision.key"
    big.write_bytes(b"k" * (65 * 1024))
    os.chmod(big, 0o600)
    with pytest.raises(SecretError, match=r"holds more than 64 kB: not a key or password"):
        read_secret("decision-key", big)


def test_where_a_secret_comes_from_reads_a_credential_no_further_than_the_secret(
    tmp_path: Path, no_secret_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # override_source() read the credential whole (the actuator asks it before read_secret):
    # a credential linked to /dev/zero was read without end; a 50 MB sparse file stands for it.
    import tracemalloc

    big = tmp_path / "decision-key"
    with open(big, "wb") as f:
        f.truncate(50 * 1024 * 1024)
    with open(big, "r+b") as f:
        f.write(b"k")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    tracemalloc.start()
    try:
        assert override_source("decision-key") == f"the credential decision-key ({big})"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, peak


def test_a_device_as_secret_file_is_refused_without_chmod_advice(
    no_secret_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    # "secret file /dev/zero is readable by others (mode 666); chmod 600 it" came first:
    # advice that, followed, breaks every program on the machine.
    with pytest.raises(SecretError, match=r"/dev/zero holds more than 64 kB"):
        read_secret("decision-key", Path("/dev/zero"))
    assert "chmod" not in caplog.text


def test_a_secret_through_a_pipe_is_read(tmp_path: Path, no_secret_env: None) -> None:
    # The size limit is no regular-file rule: `--key-file <(pass show audit-key)` is a pipe.
    r, w = os.pipe()
    os.write(w, b"from-a-pipe\n")
    os.close(w)
    try:
        assert read_secret("audit-key", Path(f"/dev/fd/{r}")) == b"from-a-pipe"
    finally:
        os.close(r)


def test_secret_path_that_cannot_be_looked_up_is_an_error_not_a_traceback(
    tmp_path: Path, no_secret_env: None
) -> None:
    # Only "no such file" means "not set": a path the lookup itself fails on (here a link to
    # itself; for a normal user, a credentials folder they may not enter) is an error.
    loop = tmp_path / "decision.key"
    loop.symlink_to(loop)
    with pytest.raises(SecretError, match=rf"cannot read {loop} \(Too many levels"):
        read_secret("decision-key", loop)


def test_empty_credential_is_a_placeholder_not_a_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unit loads every credential a door may use; unused ones are empty files."""
    monkeypatch.delenv("VOXGATE_FLEET_KEY", raising=False)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "fleet-key").write_text("\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_secret("fleet-key", required=False) is None
    with pytest.raises(SecretError, match=r"empty: .*creds/fleet-key"):
        read_secret("fleet-key")
    f = tmp_path / "fleet.key"
    f.write_text("from-file")
    os.chmod(f, 0o600)
    assert read_secret("fleet-key", f) == b"from-file"  # the next place still counts


def test_a_scalar_yaml_cannot_build_names_its_line() -> None:
    # PyYAML raises ValueError (not a YAMLError) for an impossible date or a huge integer.
    (msg,) = problems("device_id: door-1\nlogging:\n  level: 2024-13-01\n")
    assert msg.startswith("line 3: not valid YAML:") and "month" in msg, msg
    (msg,) = problems("api:\n  port: " + "1" * 5000 + "\n")
    assert msg.startswith("line 2: not valid YAML:"), msg


def test_a_lone_surrogate_escape_is_named_at_its_line_not_a_traceback_later() -> None:
    # "\ud800" passed the schema; `voxgate run` then died building a path from it.
    (msg,) = problems('device_id: door-1\ndata_dir: "/var/lib/x\\ud800y"\n')
    assert msg.startswith("line 2: not valid YAML:") and "surrogate" in msg, msg
    (msg,) = problems('mqtt:\n  "\\udfff": 1\n')  # a key is checked too
    assert msg.startswith("line 2: not valid YAML:"), msg
    # A character outside the BMP written as its \U escape is fine.
    assert (
        parse_config('mqtt:\n  topic_prefix: "door\\U0001F6AA"\n').mqtt.topic_prefix
        == "door\U0001f6aa"
    )


def test_challenge_mode_off_written_as_the_docs_show_it_is_off() -> None:
    """README and docs/service.md say `challenge.mode: off`. YAML 1.1 reads a bare `off` as
    false, and the config was refused with "Input should be 'digits', 'passphrase' or 'off'
    (got False)", which reads as nonsense to whoever wrote exactly `off`."""
    assert parse_config("challenge:\n  mode: off\n").challenge.mode == "off"
    assert parse_config("challenge: {mode: off}\n").challenge.mode == "off"
    assert parse_config("challenge:\n  mode: 'off'\n").challenge.mode == "off"
    # A true value is still not a mode.
    (msg,) = problems("challenge:\n  mode: on\n")
    assert msg.startswith("line 2: challenge.mode:")


def test_protocol_5_written_without_quotes_is_mqtt_5() -> None:
    """YAML reads `protocol: 5` as an integer: it was refused with "Input should be '5' or
    '3.1.1' (got 5)"; True (YAML's `yes`) is still refused."""
    assert parse_config("mqtt:\n  protocol: 5\n").mqtt.protocol == "5"
    assert parse_config("mqtt:\n  protocol: '3.1.1'\n").mqtt.protocol == "3.1.1"
    with pytest.raises(ConfigError):
        parse_config("mqtt:\n  protocol: yes\n")
