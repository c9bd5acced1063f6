"""How `voxgate run` says that its file or stdin source ended: the real daemon as a process,
real stages, real audio. Found feeding it a file of room tone and a stream cut off in the
middle of a sentence: each exited 0 with 'MQTT: disconnected' (or nothing) as its last line,
so the log did not tell a recording with nobody in it, or a writer that died mid-word, from
a check that passed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import yaml
from mqtt_helpers import DaemonProcess, child_env
from test_daemon_e2e import pause, speech

pytest.importorskip("voxgate.embedding")


def quiet_door_config(tmp_path: Path, audio: dict[str, Any]) -> Path:
    """A door with a new voiceprint key, no challenge, no MQTT: the audio path alone."""
    key = tmp_path / "voiceprint.key"
    done = subprocess.run(
        [sys.executable, "-m", "voxgate", "users", "init-key", str(key)],
        env=child_env(),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    doc = {
        "data_dir": str(tmp_path / "data"),
        "logging": {"level": "info"},
        "audio": audio,
        "speaker": {"key_file": str(key)},
        "challenge": {"mode": "off"},
        "mqtt": {"enabled": False},
        "metrics": {"enabled": False},
    }
    config = tmp_path / "voxgate.yaml"
    config.write_text(yaml.safe_dump(doc))
    return config


def _run_on_file(tmp_path: Path, wav: Path) -> subprocess.CompletedProcess[str]:
    """`voxgate run` on a quiet door reading `wav`, to the file's end; it must exit 0."""
    config = quiet_door_config(tmp_path, {"source": "file", "path": str(wav)})
    done = subprocess.run(
        [sys.executable, "-m", "voxgate", "run", "-c", str(config)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done


def test_a_file_without_speech_says_nothing_was_checked_and_why_it_stops(tmp_path: Path) -> None:
    wav = tmp_path / "hallway.wav"
    sf.write(wav, pause(6.0), 16000, subtype="PCM_16")
    done = _run_on_file(tmp_path, wav)
    assert f"the file source ended after 6.0 s of audio without speech ({wav})" in done.stderr
    assert "nothing was checked" in done.stderr
    assert done.stderr.rstrip().splitlines()[-1].endswith("stopping: source ended"), done.stderr


def test_a_stream_cut_off_mid_sentence_says_what_was_judged(tmp_path: Path) -> None:
    config = quiet_door_config(tmp_path, {"source": "stdin"})
    daemon = DaemonProcess(config)
    try:
        said = speech("three nine one four, seven two eight five, six zero", "en+m3")
        daemon.feed(np.concatenate([pause(0.5), said[: len(said) // 2]]))
        assert daemon.close() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    log = daemon.log()
    assert "the stdin source ended during speech" in log, log
    assert "judged as far as it went" in log
    ended = log.index("ended during speech")
    assert ended < log.index("decision "), log  # said before the verdict on the cut piece


def test_a_recording_cut_at_its_last_word_says_why_it_is_a_retry_and_what_to_do(
    tmp_path: Path,
) -> None:
    # Found running `voxgate run --file` (README: "any WAV/FLAC") on a recording cut to its
    # speech that `voxgate verify` called a MATCH: the door said only `retry
    # reasons=low_quality`; which gate rule, and that the file wanted silence after the
    # speech, was in the audit log's quality_reasons alone.
    said = speech("seven three nine one four", "en+m3")
    said = said[: np.nonzero(np.abs(said) > 300)[0][-1] + 1]  # ends on the last word
    wav = tmp_path / "cut.wav"
    sf.write(wav, np.concatenate([pause(1.0), said]), 16000, subtype="PCM_16")
    done = _run_on_file(tmp_path, wav)
    log = done.stderr
    assert "the file source ended during speech" in log, log
    assert "end a recording with 0.5 s of silence" in log, log
    assert "decision retry user=None reasons=low_quality quality=too_noisy (" in log, log
