"""The daemon loop keeps a matched answer's replay fingerprint under the matched user, so
that erasing them drops it: the real loop on espeak-ng speech, a real replay.db."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from service_standins import MelEmbedder, RecordingLink, attempt_recording, espeak, standin_stages

from voxgate.audio.file import FileSource
from voxgate.config import VoxgateConfig
from voxgate.replay import ReplayDetector, fingerprint, forget_user_in_file, user_key
from voxgate.service.loop import Daemon
from voxgate.service.notify import Notifier
from voxgate.voiceprints import VoiceprintStore

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="needs espeak-ng for test speech"
)


def test_a_granted_answer_is_kept_under_the_user_and_erase_drops_it(tmp_path: Path) -> None:
    rec = attempt_recording(tmp_path)
    me = MelEmbedder().embed(espeak("three, eight, two, five, six", voice="en+m3"))
    link = RecordingLink()
    path = tmp_path / "data" / "replay.db"
    stages = dataclasses.replace(
        standin_stages(FileSource(rec), {"me": me}, link),
        replay=ReplayDetector(path, window_s=3600),
    )
    cfg = VoxgateConfig.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "audio": {"source": "file", "path": str(rec)},
            "metrics": {"enabled": False},
        }
    )
    daemon = Daemon(cfg, stage_factory=lambda c: stages, notifier=Notifier({}))  # type: ignore[arg-type]
    assert daemon.run() == 0
    (decision,) = link.of("decision")
    assert decision["outcome"] == "granted" and decision["user"] == "me"
    with sqlite3.connect(path) as db:
        (salt,) = db.execute("SELECT value FROM meta WHERE name = 'user_salt'").fetchone()
        rows = db.execute("SELECT user_key FROM fingerprints").fetchall()
    db.close()
    assert rows == [(user_key(salt, "me"),)]
    assert forget_user_in_file(path, " ME ") == 1


def answer(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    env = np.abs(np.sin(np.linspace(0, 9 + seed, 24000)))
    return (rng.normal(0, 3000, 24000) * env).astype(np.int16)


def test_voxgate_users_erase_drops_the_fingerprints_from_the_file(tmp_path: Path) -> None:
    """`voxgate users erase` in its own process, beside a detector holding the file open."""
    import yaml

    data = tmp_path / "data"
    key = os.urandom(32)
    (tmp_path / "vp.key").write_text(key.hex() + "\n")
    (tmp_path / "vp.key").chmod(0o600)
    cfg = {"data_dir": str(data), "speaker": {"key_file": str(tmp_path / "vp.key")}}
    conf = tmp_path / "voxgate.yaml"
    conf.write_text(yaml.safe_dump(cfg))
    store = VoiceprintStore(data / "voiceprints.db", key)
    store.add_user("Erin", np.eye(3, 8, dtype=np.float32), "test/int8")
    store.close()
    det = ReplayDetector(data / "replay.db", window_s=3600)
    det.check_and_add(answer(1), now=1.0, user="Erin")
    det.check_and_add(answer(2), now=2.0, user="gus")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env["PYTHONPATH"] = str(REPO / "daemon")
    run = subprocess.run(
        [sys.executable, "-m", "voxgate", "users", "erase", "ERIN", "-c", str(conf)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "also dropped: 1 replay fingerprint(s)" in run.stdout
    on_disk = b"".join(p.read_bytes() for p in data.glob("replay.db*"))
    probes = [fingerprint(answer(s))[0].astype("<u4").tobytes()[:48] for s in (1, 2)]
    assert probes[0] not in on_disk and probes[1] in on_disk
    det.close()
