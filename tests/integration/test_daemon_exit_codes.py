"""`voxgate run` exit codes for a door that is not set up yet (docs/service.md, run --help):
78, which systemd does not restart, for a missing secret or a setting that names nothing usable;
69 for a stage that cannot load."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voxgate.cli import main
from voxgate.config import load_config
from voxgate.service.loop import Daemon

RATE = 16000


def _door(tmp_path: Path, *, voiceprint_key: bool, decision_key: bool) -> Path:
    wav = tmp_path / "quiet.wav"
    sf.write(wav, np.zeros(RATE, np.int16), RATE, subtype="PCM_16")
    lines = [
        f"data_dir: {tmp_path / 'data'}",
        f"audio: {{source: file, path: {wav}}}",
        "metrics: {enabled: false}",
        "challenge: {mode: 'off'}",
        # The broker is never reached: the link only connects after the keys are read.
        "mqtt: {host: 127.0.0.1, port: 1, "
        + (f"hmac_key_file: {tmp_path / 'decision.key'}}}" if decision_key else "}"),
    ]
    if voiceprint_key:
        key = tmp_path / "voiceprint.key"
        assert main(["users", "init-key", str(key)]) == 0
        lines.append(f"speaker: {{key_file: {key}}}")
    if decision_key:
        (tmp_path / "decision.key").write_text("d" * 64)
    cfg = tmp_path / "voxgate.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


@pytest.mark.usefixtures("no_secret_env")
def test_a_missing_decision_key_is_exit_78(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Found following the README: a door config without mqtt.hmac_key_file stopped with 69,
    # which systemd restarts every few seconds, although run --help and docs/service.md say
    # a missing secret is 78 (RestartPreventExitStatus=78).
    cfg = _door(tmp_path, voiceprint_key=True, decision_key=False)
    assert Daemon(load_config(cfg), config_path=cfg).run() == 78
    assert "secret 'decision-key' not found" in caplog.text


@pytest.mark.usefixtures("no_secret_env")
def test_a_missing_voiceprint_key_is_exit_78(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _door(tmp_path, voiceprint_key=False, decision_key=True)
    assert Daemon(load_config(cfg), config_path=cfg).run() == 78
    assert "secret 'voiceprint-key' not found" in caplog.text


@pytest.mark.usefixtures("no_secret_env")
def test_a_model_file_that_cannot_load_is_still_exit_69(tmp_path: Path) -> None:
    # A card that is there, naming a model file that is not the one it describes (a damaged
    # install): a stage that cannot load. A speaker.model naming no card at all is a setting,
    # exit 78 (test_a_mistyped_speaker_model_is_a_config_error_not_a_restart).
    from voxgate.embedding.card import default_card_path

    card = tmp_path / "model" / "ge2e-int8.yaml"
    card.parent.mkdir()
    card.write_text(default_card_path().read_text())
    (card.parent / "ge2e-resemblyzer-int8.onnx").write_bytes(b"not the model")
    cfg = _door(tmp_path, voiceprint_key=True, decision_key=True)
    cfg.write_text(cfg.read_text().replace("speaker: {", f"speaker: {{model: {card}, "))
    assert Daemon(load_config(cfg), config_path=cfg).run() == 69


@pytest.mark.usefixtures("no_secret_env")
def test_a_wrong_voiceprint_key_is_exit_78(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The store was sealed with another key (init-key run again into another file, a
    # credential from another door): restarting cannot fix that, but 69 had systemd retry.
    cfg = _door(tmp_path, voiceprint_key=True, decision_key=True)
    assert main(["users", "list", "-c", str(cfg)]) == 0  # creates the store with this key
    (tmp_path / "voiceprint.key").unlink()
    assert main(["users", "init-key", str(tmp_path / "voiceprint.key")]) == 0
    assert Daemon(load_config(cfg), config_path=cfg).run() == 78
    assert "wrong voiceprint key" in caplog.text
    assert "read as 32 raw bytes" not in caplog.text  # a 64-hex-digit key: no hex hint
    # Which key: the file here (a credential or variable would be named instead).
    assert f"the key in {tmp_path / 'voiceprint.key'}" in caplog.text, caplog.text


@pytest.mark.usefixtures("no_secret_env")
def test_a_key_of_32_hex_digits_is_read_raw_and_a_wrong_key_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    # A key file cut to the first 32 of init-key's 64 hex digits (no newline) is read as
    # 32 raw bytes, which was only "wrong voiceprint key": the hint says why and what the
    # reader decodes. Not refused: a door may use 32 bytes that happen to be hex text.
    cfg = _door(tmp_path, voiceprint_key=True, decision_key=True)
    key = tmp_path / "voiceprint.key"
    assert main(["users", "list", "-c", str(cfg)]) == 0  # creates the store with this key
    key.write_bytes(key.read_bytes()[:32])
    capsys.readouterr()
    assert main(["users", "list", "-c", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "wrong voiceprint key" in err and "read as 32 raw bytes" in err, err
    assert "64 hex digits" in err, err
    assert Daemon(load_config(cfg), config_path=cfg).run() == 78
    assert "read as 32 raw bytes" in caplog.text and "64 hex digits" in caplog.text
    # Such a key opens the store it sealed: nothing refuses it.
    (tmp_path / "data" / "voiceprints.db").unlink()
    assert main(["users", "list", "-c", str(cfg)]) == 0
    assert main(["users", "list", "-c", str(cfg)]) == 0


@pytest.mark.usefixtures("no_secret_env")
def test_a_second_daemon_on_the_same_data_dir_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A `voxgate run` started by hand beside the service (dsnoop lets both read the
    microphone) ran: both answered every attempt (two signed decisions per utterance), counted
    each failure twice and took the MQTT connection from each other. Now the second stops at
    once (69: systemd tries again, and gets in once the other has stopped) and touches nothing."""
    cfg = _door(tmp_path, voiceprint_key=True, decision_key=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "daemon")
    first = subprocess.Popen(
        [sys.executable, "-m", "voxgate", "run", "-c", str(cfg), "--realtime", "--loop"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stderr is not None
        deadline = time.monotonic() + 60
        while "ready" not in first.stderr.readline():
            assert first.poll() is None and time.monotonic() < deadline, "first daemon not ready"
        audit = tmp_path / "data" / "audit.jsonl"
        before = audit.read_bytes()
        assert Daemon(load_config(cfg), config_path=cfg).run() == 69
        assert f"another voxgate daemon is running on data_dir {tmp_path / 'data'}" in caplog.text
        assert audit.read_bytes() == before  # no start or stop line from the refused one
    finally:
        first.terminate()
        assert first.wait(30) == 0
    # Once the first has stopped, a daemon starts there (the lock went with its process).
    assert Daemon(load_config(cfg), config_path=cfg).run() == 0


@pytest.mark.usefixtures("no_secret_env")
@pytest.mark.parametrize("lost", ["deleted", "emptied"])
def test_a_lost_key_beside_enrolled_voiceprints_says_restore_it_not_make_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, lost: str
) -> None:
    # Seen running the daemon with its key file deleted, then emptied (a card fault, a full
    # disk cutting it to 0 bytes) beside a store of five users: "create it with: voxgate
    # users init-key FILE". init-key writes into an empty file (credential placeholders are
    # empty), and the new key opens none of the voiceprints: the next start said "wrong
    # voiceprint key", and with the old key gone for good everyone had to enroll again.
    from voxgate.voiceprints import VoiceprintStore, parse_key

    cfg = _door(tmp_path, voiceprint_key=True, decision_key=True)
    key = tmp_path / "voiceprint.key"
    store = VoiceprintStore(tmp_path / "data" / "voiceprints.db", parse_key(key.read_bytes()))
    store.add_user("alice", np.ones((1, 256), np.float32), "some-model")
    store.close()
    if lost == "deleted":
        key.unlink()
    else:
        key.write_bytes(b"")
    assert Daemon(load_config(cfg), config_path=cfg).run() == 78
    assert "holds 1 voiceprint(s)" in caplog.text, caplog.text
    assert "restore the key from its backup" in caplog.text
    assert f"create it with: voxgate users init-key {key}" not in caplog.text

    # With no voiceprints stored, making a key is the answer, as before.
    caplog.clear()
    (tmp_path / "data" / "voiceprints.db").unlink()
    assert Daemon(load_config(cfg), config_path=cfg).run() == 78
    assert f"create it with: voxgate users init-key {key}" in caplog.text
