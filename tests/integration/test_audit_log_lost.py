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
