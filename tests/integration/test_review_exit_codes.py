"""`voxgate run` exit code for a passphrase the speech engine cannot score: a setting, so 78
(systemd does not restart), like a missing key (docs/service.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voxgate.cli import main
from voxgate.config import load_config
from voxgate.service.loop import Daemon

pytest.importorskip("pocketsphinx")


def test_a_passphrase_the_engine_cannot_score_is_exit_78(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # It was 69: systemd restarted the door every 2 s, loading the models each time, for a
    # phrase no restart can make scorable.
    wav = tmp_path / "quiet.wav"
    sf.write(wav, np.zeros(16000, np.int16), 16000, subtype="PCM_16")
    key = tmp_path / "voiceprint.key"
    assert main(["users", "init-key", str(key)]) == 0
    cfg = tmp_path / "voxgate.yaml"
    cfg.write_text(
        f"data_dir: {tmp_path / 'data'}\naudio: {{source: file, path: {wav}}}\n"
        "metrics: {enabled: false}\nmqtt: {enabled: false}\n"
        f"speaker: {{key_file: {key}}}\nstt: {{backend: pocketsphinx}}\n"
        "challenge: {mode: passphrase, passphrase: open voxgate}\n"
    )
    assert Daemon(load_config(cfg), config_path=cfg).run() == 78
    assert "'voxgate' is not in the pocketsphinx dictionary" in caplog.text
