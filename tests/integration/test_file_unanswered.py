"""`voxgate run --file` on a recording with the challenge on: the file can only open the
challenge, never answer it; the daemon says so instead of ending without a word."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from service_standins import (
    MelEmbedder,
    RecordingLink,
    espeak,
    silence,
    standin_stages,
    write_wav,
)

from voxgate.audio.file import FileSource
from voxgate.config import VoxgateConfig
from voxgate.service.loop import Daemon
from voxgate.service.notify import Notifier

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="needs espeak-ng for test speech"
)


def test_a_file_that_ends_during_a_challenge_says_nothing_was_decided(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # docs/service.md: `voxgate run -c dev.yaml --file attempt.flac  # one recording, then
    # exit`. With dev.yaml's challenge on, the recording's speech opened a challenge, the file
    # ended, and the only line was 'state challenge -> idle (shutdown (source ended))'.
    speech = espeak("three, eight, two, five, six", voice="en+m3")
    path = write_wav(tmp_path / "attempt.wav", np.concatenate([silence(0.5), speech, silence(1)]))
    link = RecordingLink()
    stages = standin_stages(FileSource(path), {"me": MelEmbedder().embed(speech)}, link)
    cfg = VoxgateConfig.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "audio": {"source": "file", "path": str(path)},
            "metrics": {"enabled": False},
        }
    )
    caplog.set_level(logging.INFO)
    d = Daemon(cfg, stage_factory=lambda c: stages, notifier=Notifier({}))  # type: ignore[arg-type]
    assert d.run() == 0
    assert "challenge" in link.of("state") and not link.of("decision")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "ended while the challenge waited for its answer" in w and "challenge.mode: off" in w
        for w in warnings
    ), warnings
