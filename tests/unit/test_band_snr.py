"""The quality gate's SNR estimate above benchmarks/band_gate.SPLIT_HZ (the model's lowest
mel filter), and the band rule benchmarks/noise_gate.py --floors measures (not the shipped
gate): min_snr_db above the split and a lower floor over the whole band. A rumble reads far
cleaner above the split than over the full band; full-band noise reads about the same in
both. Real LibriSpeech speech (../shared/data) with seeded noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.signal import butter, sosfilt

from benchmarks.band_gate import band_reasons, snr_above_split, within_rule
from voxgate.audio.file import read_audio
from voxgate.config import VoxgateConfig
from voxgate.quality import assess

FLOOR_DB = 19.0  # the floor measured in docs/speaker-verification.md (chosen on vcc2018_eval)
LS = "resemblyzer_ls/audio/LS1688/1688_1688-142285-0001.flac"


def _speech_power(pcm: np.ndarray) -> float:
    """Mean power of the 30 ms frames within 30 dB of the loud ones (the active speech)."""
    x = pcm[: len(pcm) // 480 * 480].astype(np.float64).reshape(-1, 480)
    power = (x**2).mean(axis=1)
    return float(power[power >= np.percentile(power, 95) / 1000].mean())


def _door(shared_data: Path, snr_db: float, lowpass_hz: float | None) -> np.ndarray:
    """The LibriSpeech recording with 1 s of room either side and white noise throughout
    (low-passed at `lowpass_hz`: a rumble), at `snr_db` over the speech, full band."""
    clean = read_audio(shared_data / LS)
    noise = np.random.default_rng(0).normal(0, 1, len(clean) + 32000)
    if lowpass_hz is not None:
        noise = sosfilt(butter(4, lowpass_hz, "lowpass", fs=16000, output="sos"), noise)
    gain = np.sqrt(_speech_power(clean) / 10 ** (snr_db / 10) / np.mean(noise**2))
    y = np.pad(clean, 16000).astype(np.float64) + gain * noise
    return np.round(y).clip(-32768, 32767).astype(np.int16)


def _reasons(pcm: np.ndarray, floor_db: float | None) -> tuple[str, ...]:
    cfg = VoxgateConfig()
    q = assess(pcm, cfg.vad, live=True)
    return band_reasons(q, snr_above_split(pcm, cfg.vad), cfg.speaker, floor_db)


def test_a_rumble_reads_clean_above_the_split_full_band_noise_does_not(
    shared_data: Path,
) -> None:
    s = VoxgateConfig().speaker
    rumble, hiss = _door(shared_data, 22.0, 150.0), _door(shared_data, 22.0, None)
    q_rumble, q_hiss = assess(rumble), assess(hiss)
    vad = VoxgateConfig().vad
    # Both read about 22 dB over the full band, below min_snr_db (26) ...
    assert abs(q_rumble.snr_db - 22) < 2.5 and abs(q_hiss.snr_db - 22) < 2.5
    # ... but only the full-band noise is as loud above the split.
    assert abs(snr_above_split(hiss, vad) - q_hiss.snr_db) < 2
    assert snr_above_split(rumble, vad) >= s.min_snr_db + 3
    # The shipped gate (no floor) retries both; the band rule scores the rumble only.
    assert _reasons(rumble, None) == _reasons(hiss, None) == ("too_noisy",)
    assert _reasons(rumble, FLOOR_DB) == ()
    assert _reasons(hiss, FLOOR_DB) == ("too_noisy",)


def test_a_loud_rumble_is_retried_by_the_full_band_floor(shared_data: Path) -> None:
    s = VoxgateConfig().speaker
    hum = _door(shared_data, 12.0, 100.0)  # steep and low: little of it above the split
    q = assess(hum)
    assert snr_above_split(hum, VoxgateConfig().vad) >= s.min_snr_db
    assert q.snr_db < FLOOR_DB
    assert _reasons(hum, FLOOR_DB) == ("too_noisy",)


def test_the_acceptance_rule_allows_one_trial_beyond_14_percent_and_the_shipped_rate() -> None:
    # At most 14 % of the attempts let through denied, give or take one trial ...
    assert within_rule(15, 100, 0, 0) and not within_rule(16, 100, 0, 0)
    assert within_rule(1, 2, 0, 0) and not within_rule(2, 2, 0, 0)
    # ... and no more often than the shipped gate where it lets any through (pink noise at
    # 25 dB on vcc2018_eval under the old band rule: 0 of 13 -> 3 of 74 denied).
    assert not within_rule(3, 74, 0, 13)
    assert within_rule(8, 100, 7, 100) and not within_rule(9, 100, 7, 100)
    # Fewer attempts let through at the shipped gate's rate keep it.
    assert within_rule(18, 244, 19, 272)
