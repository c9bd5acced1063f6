"""A door whose audit log was lost, then started again: `voxgate run` (real stages, a file
source) and `voxgate audit verify` as processes, on real files. The daemon began a new log
that verified as intact, so the loss could no longer be seen once the door had restarted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import yaml
from mqtt_helpers import child_env
from test_daemon_e2e import pause
from test_source_end import quiet_door_config

pytest.importorskip("voxgate.embedding")


def _voxgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voxgate", *args],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_daemon_started_after_its_audit_log_was_lost_begins_by_saying_so(
    tmp_path: Path,
) -> None:
    wav = tmp_path / "hallway.wav"
    sf.write(wav, pause(1.0), 16000, subtype="PCM_16")
    config = quiet_door_config(tmp_path, {"source": "file", "path": str(wav)})
    data = Path(yaml.safe_load(config.read_text())["data_dir"])
    log, anchor = data / "audit.jsonl", data / "audit.jsonl.anchor"

    # A fresh door: its first start is the first line, and nothing was lost.
    first = _voxgate("run", "-c", str(config))
    assert first.returncode == 0, first.stderr
    events = [json.loads(x)["event"] for x in log.read_text().splitlines()]
    assert events[0] == "service_start", events
    assert "audit_log_lost" not in events and "ERROR" not in first.stderr, first.stderr
    assert _voxgate("audit", "verify", "-c", str(config)).returncode == 0

    # The log and its anchor are deleted; lockout.db (made at the first start) stays.
    log.unlink()
    anchor.unlink()
    again = _voxgate("run", "-c", str(config))
    assert again.returncode == 0, again.stderr
    assert "ERROR" in again.stderr and "history is lost" in again.stderr, again.stderr
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    assert recs[0]["seq"] == 1 and recs[0]["event"] == "audit_log_lost", recs[0]
    assert any(str(data / "lockout.db") in f for f in recs[0]["found"]), recs[0]
    assert recs[1]["event"] == "service_start"

    checked = _voxgate("audit", "verify", "-c", str(config))
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "NOT intact" in checked.stderr and "history before this line is lost" in checked.stderr
    assert "intact" not in checked.stdout


def test_a_daemon_started_after_its_audit_log_was_emptied_by_hand_begins_by_saying_so(
    tmp_path: Path,
) -> None:
    """Emptying the log in place and deleting its anchor (the old advice for starting a new
    log) read as a fresh log: the daemon's new log verified as intact, even with a key. It is
    a lost log now; `voxgate audit rotate` is the way to begin again, and the daemon's next
    line follows the rotation line."""
    wav = tmp_path / "hallway.wav"
    sf.write(wav, pause(1.0), 16000, subtype="PCM_16")
    config = quiet_door_config(tmp_path, {"source": "file", "path": str(wav)})
    data = Path(yaml.safe_load(config.read_text())["data_dir"])
    log, anchor = data / "audit.jsonl", data / "audit.jsonl.anchor"
    assert _voxgate("run", "-c", str(config)).returncode == 0

    log.write_bytes(b"")
    anchor.unlink()
    checked = _voxgate("audit", "verify", "-c", str(config))
    assert checked.returncode == 1 and "empty" in checked.stderr, checked.stderr
    again = _voxgate("run", "-c", str(config))
    assert again.returncode == 0, again.stderr
    assert "history is lost" in again.stderr, again.stderr
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["event"] for r in recs[:2]] == ["audit_log_lost", "service_start"], recs

    rotated = _voxgate("audit", "rotate", "-c", str(config))
    assert rotated.returncode == 1, rotated.stderr  # rotated, but the log was not intact
    assert _voxgate("run", "-c", str(config)).returncode == 0
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["event"] for r in recs[:2]] == ["audit_log_rotated", "service_start"], recs
    assert recs[0]["previous_verified"] is False
    checked = _voxgate("audit", "verify", "-c", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _keyed_door(tmp_path: Path, shared_data: Path) -> tuple[Path, Path, list[str]]:
    """A door config with a voiceprint key; returns it, its audit log's path and six
    LibriSpeech takes of one person (20 s of speech or more)."""
    from voxgate.cli import main

    key = tmp_path / "voiceprint.key"
    assert main(["users", "init-key", str(key)]) == 0
    config = tmp_path / "voxgate.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nspeaker:\n  key_file: {key}\n")
    ls = shared_data / "resemblyzer_ls"
    rows = [r.split(",") for r in (ls / "manifest.csv").read_text().splitlines()[1:]]
    takes = [str(ls / r[0]) for r in rows if r[1] == "LS1688"][:6]
    return config, tmp_path / "data" / "audit.jsonl", takes


def test_commands_after_a_lost_log_record_the_loss_and_an_enrollment_on_a_fresh_door_does_not(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each writer's first line created a new log: `voxgate users erase` run after the loss
    began one from seq 1 that verified as intact, and the daemon's next start found a log and
    said nothing. An enrollment makes its voiceprint before its first line, so on a fresh
    door it must not take that voiceprint for a trace of a lost log."""
    from voxgate.cli import main

    config, log, takes = _keyed_door(tmp_path, shared_data)

    assert main(["enroll", "alice", "-c", str(config), "--from", *takes]) == 0
    assert [json.loads(x)["event"] for x in log.read_text().splitlines()] == ["enrollment"]

    from voxgate.config.service import LockoutConfig
    from voxgate.lockout import LockoutBook

    LockoutBook(tmp_path / "data" / "lockout.db", LockoutConfig()).close()  # the door ran
    log.unlink()
    (tmp_path / "data" / "audit.jsonl.anchor").unlink()
    capsys.readouterr()
    assert main(["users", "erase", "alice", "-c", str(config)]) == 0
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["event"] for r in recs] == ["audit_log_lost", "erase"], recs
    assert any("lockout.db exists" in f for f in recs[0]["found"]), recs[0]
    assert main(["audit", "verify", "-c", str(config)]) == 1


def test_an_enrollment_or_erase_after_a_lost_log_records_it_from_what_was_there_before(
    tmp_path: Path, shared_data: Path
) -> None:
    """Commands that change voiceprints looked for traces of use after their change: an
    enrollment after the loss was never flagged (its own voiceprint ruled it out), and an
    erase of the last voiceprint on a door whose daemon never ran found nothing left."""
    from voxgate.cli import main

    config, log, takes = _keyed_door(tmp_path, shared_data)

    def lose_the_log() -> None:
        log.unlink()
        (tmp_path / "data" / "audit.jsonl.anchor").unlink()

    def events() -> list[str]:
        return [json.loads(x)["event"] for x in log.read_text().splitlines()]

    assert main(["enroll", "alice", "-c", str(config), "--from", *takes]) == 0
    lose_the_log()
    # Her voiceprint was there before the new one replaced it.
    assert main(["enroll", "alice", "--replace", "-c", str(config), "--from", *takes]) == 0
    assert events() == ["audit_log_lost", "enrollment"]

    lose_the_log()  # her voiceprint is the only trace, and the erase removes it
    assert main(["users", "erase", "alice", "-c", str(config)]) == 0
    assert events() == ["audit_log_lost", "erase"]
