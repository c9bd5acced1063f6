"""`voxgate verify` / `voxgate identify` text output when there is nothing to compare with."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voxgate.cli import main

RATE = 16000


@pytest.fixture
def door(tmp_path: Path) -> tuple[Path, Path]:
    key = tmp_path / "voiceprint.key"
    assert main(["users", "init-key", str(key)]) == 0
    cfg = tmp_path / "voxgate.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\nspeaker: {{key_file: {key}}}\n")
    wav = tmp_path / "voice.wav"
    rng = np.random.default_rng(7)
    t = np.arange(3 * RATE) / RATE
    tone = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    sf.write(wav, tone + 0.01 * rng.standard_normal(t.size), RATE, subtype="PCM_16")
    return cfg, wav


def _short(wav: Path) -> Path:
    """The first 0.4 s: under the model's 0.5 s, no speech the gate can use."""
    audio, _ = sf.read(wav, dtype="int16")
    short = wav.with_name("short.wav")
    sf.write(short, audio[: int(0.4 * RATE)], RATE, subtype="PCM_16")
    return short


@pytest.mark.usefixtures("no_secret_env")
@pytest.mark.parametrize("argv", [["verify", "carol"], ["identify"]])
def test_no_voiceprint_prints_no_score_not_minus_infinity(
    door: tuple[Path, Path], argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # `voxgate verify carol x.wav` (nobody called carol) and `voxgate identify` on a door
    # with nobody enrolled printed "score -inf (threshold 0.556), cosine -inf".
    cfg, wav = door
    assert main([*argv, str(wav), "-c", str(cfg)]) != 0
    out = capsys.readouterr().out
    assert "inf" not in out
    assert "no score: no voiceprint to compare with (threshold" in out


@pytest.mark.usefixtures("no_secret_env")
@pytest.mark.parametrize("argv", [["verify", "carol"], ["identify"]])
def test_audio_too_short_to_embed_is_a_retry_not_an_error(
    door: tuple[Path, Path], argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # A recording under the model's 0.5 s (one quick digit) ended with "error: ... cannot
    # embed" and exit 1, which the help reserves for "no match or error"; it is too little
    # speech, which the help and the daemon (policy: retry, no_speech) answer with a retry.
    cfg, wav = door
    short = _short(wav)
    assert main([*argv, str(short), "-c", str(cfg)]) == 4
    out = capsys.readouterr().out
    assert out.startswith("RETRY: ") and "too_little_speech" in out, out
    assert "no score: " in out and "inf" not in out, out
    assert main([*argv, str(short), "-c", str(cfg), "--json"]) == 4
    doc = json.loads(capsys.readouterr().out)
    assert doc["score"] is None and doc["quality_ok"] is False and not doc["accepted"]
    assert doc["reasons"][0] == "too_little_speech"


@pytest.mark.usefixtures("no_secret_env")
def test_identify_retry_does_not_say_unknown_speaker(
    door: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # A noisy or too short attempt at `voxgate identify` printed "RETRY: unknown speaker":
    # "unknown speaker" is the open-set verdict (nobody enrolled clears the threshold), and
    # a retry is no verdict on the voice at all (a noisy genuine attempt read as a stranger).
    cfg, wav = door
    short = _short(wav)
    assert main(["identify", str(short), "-c", str(cfg)]) == 4
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "RETRY: speaker not judged", first


@pytest.mark.usefixtures("no_secret_env")
@pytest.mark.parametrize("argv", [["verify", "carol"], ["identify"]])
def test_json_gives_no_snr_where_the_text_says_not_measured(
    door: tuple[Path, Path], argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # With no speech found the gate measures no SNR (quality.too_noisy) and the text says
    # "SNR not measured (no speech)", but --json gave a number: 14.3 dB for 0.3 s cut from
    # an FSDD digit string, which a script would report as the recording's SNR.
    cfg, wav = door
    short = _short(wav)
    assert main([*argv, str(short), "-c", str(cfg)]) == 4
    assert "SNR not measured (no speech)" in capsys.readouterr().out
    assert main([*argv, str(short), "-c", str(cfg), "--json"]) == 4
    doc = json.loads(capsys.readouterr().out)
    assert doc["speech_s"] == 0 and doc["snr_db"] is None, doc
