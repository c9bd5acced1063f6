"""The quality gate at the door for an utterance without pauses: the door's endpointer
always leaves pre-roll and hangover around the speech, so an utterance with no pauses to
measure the noise in is room noise the VAD took for speech, and a retry (too noisy). The
same audio from a file (`voxgate verify FILE`) keeps speaker.min_snr_db_no_pauses: a file
cut to its speech has no pauses either. Real stages (shipped model, cohort, encrypted
store, `voxgate enroll --from`), espeak-ng speech and seeded white noise; no shared data."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.audio_helpers import espeak
from voxgate.audio.file import read_audio
from voxgate.cli import main
from voxgate.config import VoxgateConfig, load_config
from voxgate.quality import assess
from voxgate.service.loop import Daemon
from voxgate.vad import segment

pytest.importorskip("voxgate.embedding")

RATE = 16000
VOICE = "en+m3"
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# Ten takes of eight digits: over the 20 s of net speech enrollment needs. Random orders, as
# prompts are: takes that shared a run of digits in order (espeak says it with the same
# samples) were the same recording to enrollment's duplicate check.
TAKES = [", ".join(random.Random(t).sample(DIGITS, 8)) for t in range(10)]
ATTEMPT = "three nine one four, seven two eight five"


def _cut(text: str, path: Path) -> np.ndarray:
    pcm = espeak(text, path, VOICE)
    loud = np.flatnonzero(np.abs(pcm) > 300)
    return pcm[loud[0] : loud[-1] + 1]


def _in_room(speech: np.ndarray, snr_db: float) -> np.ndarray:
    """1 s of room either side of `speech`, white noise throughout at `snr_db` over it."""
    placed = np.concatenate([np.zeros(RATE), speech.astype(np.float64), np.zeros(RATE)])
    noise = np.random.default_rng(0).normal(0, 1, len(placed))
    gain = np.sqrt(np.mean(speech.astype(np.float64) ** 2) / 10 ** (snr_db / 10))
    return np.round(placed + gain * noise).clip(-32768, 32767).astype(np.int16)


def _door(tmp_path: Path, name: str, audio: np.ndarray) -> tuple[Path, list[dict]]:
    """`voxgate run` (challenge off, MQTT off) on `audio`: its config and decision lines."""
    wav = tmp_path / f"{name}.wav"
    sf.write(wav, audio, RATE, subtype="PCM_16")
    cfg_path = tmp_path / f"{name}.yaml"
    cfg_path.write_text(
        f"data_dir: {tmp_path / name}\n"
        f"audio: {{source: file, path: {wav}}}\n"
        "metrics: {enabled: false}\n"
        "challenge: {mode: 'off'}\n"
        "mqtt: {enabled: false}\n"
        f"speaker: {{key_file: {tmp_path / 'key'}, database: {tmp_path / 'voiceprints.db'}}}\n"
    )
    assert Daemon(load_config(cfg_path), config_path=cfg_path).run() == 0
    lines = (tmp_path / name / "audit.jsonl").read_text().splitlines()
    return cfg_path, [d for d in map(json.loads, lines) if d["event"] == "decision"]


def test_an_utterance_without_pauses_is_a_retry_at_the_door_but_not_from_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["users", "init-key", str(tmp_path / "key")]) == 0
    takes = []
    for i, text in enumerate(TAKES):
        takes.append(tmp_path / f"take{i}.wav")
        sf.write(takes[-1], espeak(text, tmp_path / "tmp.wav", VOICE), RATE, subtype="PCM_16")
    cfg_path, _ = _door(tmp_path, "quiet", np.zeros(RATE, np.int16))
    assert main(["enroll", "alice", "--from", *map(str, takes), "-c", str(cfg_path)]) == 0

    speech = _cut(ATTEMPT, tmp_path / "attempt.wav")
    # In a quiet room the voice opens the door: the gate is not what refuses below.
    _, quiet = _door(tmp_path, "quiet-room", _in_room(speech, 40.0))
    assert [(d["outcome"], d["user"]) for d in quiet] == [("granted", "alice")]

    # At 8 dB the VAD calls every frame speech: one utterance, the whole recording, with no
    # pauses; its SNR read from the quietest frames (5.6 dB) is above the 5 dB no-pauses level.
    # (At 9 dB it finds 0.24 to 0.81 s of non-speech, by the noise's seed: test_quality_gate.)
    # Measured on the audio as the door's file source delivers it (DC removed).
    noisy = _in_room(speech, 8.0)
    sf.write(tmp_path / "noisy.wav", noisy, RATE, subtype="PCM_16")
    heard = read_audio(tmp_path / "noisy.wav")
    (utt,) = segment(heard, VoxgateConfig().vad)
    q = assess(utt.pcm, live=True)
    assert len(utt.pcm) >= len(heard) - 480 and q.nonspeech_s == 0.0
    assert not q.snr_from_pauses and 5.0 < q.snr_db < 26.0
    # At the door: a retry, not a score (the lockout does not count it).
    _, got = _door(tmp_path, "noisy-room", noisy)
    assert [(d["outcome"], d["reasons"]) for d in got] == [("retry", ["low_quality"])]
    # The same audio as a file keeps the no-pauses level: scored, not retried for noise.
    wav = tmp_path / "noisy-utterance.wav"
    sf.write(wav, utt.pcm, RATE, subtype="PCM_16")
    capsys.readouterr()
    main(["verify", "alice", str(wav), "-c", str(cfg_path), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["quality_ok"] and "too_noisy" not in result["reasons"]
