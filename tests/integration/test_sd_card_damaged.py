"""`voxgate run` on a data folder whose files an SD card fault damaged: the daemon process
refuses to start with exit 78 (systemd does not restart: the same file would fail every 2 s,
docs/service.md), names the file and says what to do, and leaves the damaged file as it was
(an admin may still recover it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from mqtt_helpers import REPO

from voxgate.cli import main
from voxgate.voiceprints import VoiceprintStore, parse_key

RATE = 16000


def _door(tmp_path: Path, challenge: str) -> tuple[Path, Path]:
    """(config, data folder) of a door with alice enrolled and a decision counter."""
    data = tmp_path / "data"
    wav = tmp_path / "quiet.wav"
    sf.write(wav, np.zeros(RATE, np.int16), RATE, subtype="PCM_16")
    key = tmp_path / "voiceprint.key"
    assert main(["users", "init-key", str(key)]) == 0
    (tmp_path / "decision.key").write_text("d" * 64)
    (tmp_path / "decision.key").chmod(0o600)
    cfg = tmp_path / "voxgate.yaml"
    cfg.write_text(
        f"data_dir: {data}\naudio: {{source: file, path: {wav}}}\n"
        f"metrics: {{enabled: false}}\nchallenge: {{mode: '{challenge}'}}\n"
        f"mqtt: {{host: 127.0.0.1, port: 1, hmac_key_file: {tmp_path / 'decision.key'}}}\n"
        f"speaker: {{key_file: {key}}}\n"
    )
    with VoiceprintStore(data / "voiceprints.db", parse_key(key.read_bytes())) as store:
        emb = np.random.default_rng(1).standard_normal((3, 256))
        store.add_user("alice", emb, "test-model/1", {"takes": 3})
    (data / "decision-seq.json").write_text('{"seq": 1795000000000}')
    return cfg, data


def _run(cfg: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env.pop("CREDENTIALS_DIRECTORY", None)
    env["PYTHONPATH"] = str(REPO / "daemon")
    return subprocess.run(
        [sys.executable, "-m", "voxgate", "run", "-c", str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def _damage(path: Path, how: str) -> None:
    if how == "garbage":
        path.write_bytes(os.urandom(4096))
    elif how == "half":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "folder":
        path.unlink(missing_ok=True)
        path.mkdir()


def _snapshot(path: Path) -> bytes | str:
    return path.read_bytes() if path.is_file() else "a folder"


@pytest.mark.parametrize(
    ("name", "how", "challenge", "advice"),
    [
        ("voiceprints.db", "garbage", "off", "Restore the file from a backup"),
        ("voiceprints.db", "half", "off", "Restore the file from a backup"),
        ("voiceprints.db", "folder", "off", "Restore the file from a backup"),
        ("decision-seq.json", "garbage", "off", "delete the file"),
        ("decision-seq.json", "folder", "off", "delete the file"),
        ("replay.db", "garbage", "digits", "Move it aside"),
        ("replay.db", "folder", "digits", "Move it aside"),
        ("audit.jsonl", "folder", "off", "Move it aside"),
        ("audit.jsonl.anchor", "folder", "off", "Move it aside"),
    ],
)
def test_a_damaged_data_file_stops_the_start_with_78_and_is_left_alone(
    tmp_path: Path, name: str, how: str, challenge: str, advice: str
) -> None:
    """Seen: each of these exited 69, which the unit restarts every 2 s for ever (the file
    is just as damaged the next time), although a damaged voiceprint key already gave 78.
    A folder in the audit log's place was worse: the door ran and audited nothing."""
    cfg, data = _door(tmp_path, challenge)
    _damage(data / name, how)
    before = _snapshot(data / name)
    done = _run(cfg)
    assert done.returncode == 78, done.stderr[-2000:]
    assert str(data / name) in done.stderr and advice in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert _snapshot(data / name) == before
