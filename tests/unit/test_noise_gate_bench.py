"""benchmarks/noise_gate.py's mixing: the SNR it reports as true is the one it made."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.noise_gate import frame_power_spread, lowpass, mix, speech_power
from voxgate.audio.file import read_audio

REPO = Path(__file__).resolve().parents[2]


def _bursts(level: float) -> np.ndarray:
    """Three 0.4 s tone bursts between 0.3 s of digital silence, as a joined recording."""
    t = np.arange(int(0.4 * 16000)) / 16000
    burst = level * np.sin(2 * np.pi * 220 * t)
    gap = np.zeros(int(0.3 * 16000))
    return np.round(np.concatenate([gap, burst, gap, burst, gap, burst, gap])).astype(np.int16)


def test_the_noise_is_scaled_to_the_snr_over_the_speech_not_over_the_silence() -> None:
    clean = _bursts(3000)
    noise = np.random.default_rng(0).normal(0, 1, len(clean))
    for snr in (20.0, 5.0, -5.0):
        added = mix(clean, noise, snr).astype(np.float64) - clean
        got = 10 * np.log10(speech_power(clean) / np.mean(added**2))
        assert abs(got - snr) < 0.1
    # The bursts' power, not the recording's (which the silence halves): a tone of amplitude
    # A has power A^2 / 2.
    assert abs(10 * np.log10(speech_power(clean) / (3000**2 / 2))) < 0.5
    assert mix(clean, noise, None) is clean


def test_a_mix_that_would_clip_is_scaled_down_whole() -> None:
    clean = _bursts(30000)
    noise = np.random.default_rng(1).normal(0, 1, len(clean))
    y = mix(clean, noise, -5.0).astype(np.float64)
    assert np.abs(y).max() <= 32767
    # Speech and noise scaled together: the speech's share of the mix is unchanged.
    share = np.dot(y, clean) / np.dot(clean, clean.astype(np.float64))
    added = y - share * clean
    got = 10 * np.log10(share**2 * speech_power(clean) / np.mean(added**2))
    assert share < 1 and abs(got + 5.0) < 0.3


@pytest.mark.parametrize("script", ["noise_gate.py", "pause_noise.py", "clip_gate.py"])
def test_without_the_data_it_skips_cleanly(tmp_path: Path, script: str) -> None:
    """A clone without ../shared: a message and exit 0 (a named set missing from data that is
    there is an error instead: tests/integration/test_speaker_benchmarks.py)."""
    data = tmp_path / "shared" / "data"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--data", str(data)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO / "daemon")},
    )
    assert proc.returncode == 0, proc.stderr
    assert "skipped" in proc.stdout


def test_frame_power_spread_tells_a_steady_noise_from_an_uneven_one() -> None:
    rng = np.random.default_rng(2)
    steady = rng.normal(0, 1000, 3 * 16000)
    uneven = steady * np.repeat(rng.choice([0.1, 1.0], size=3 * 16000 // 480 + 1), 480)[: 3 * 16000]
    assert frame_power_spread(steady) < 0.5
    assert frame_power_spread(uneven) > 5.0


def test_frame_power_spread_on_the_real_noises() -> None:
    """White noise is the steadiest of the benchmark's noises; the dishes' clatter and the
    miaowing are not steady."""
    noise = REPO.parent / "shared" / "data" / "noise"
    if not (noise / "white_noise.flac").is_file():
        pytest.skip("no ../shared/data/noise")
    spread = {
        k: frame_power_spread(read_audio(noise / f"{k}.flac").astype(np.float64))
        for k in ("white_noise", "doing_the_dishes", "dude_miaowing")
    }
    assert spread["white_noise"] < 0.5
    assert spread["doing_the_dishes"] > 2 * spread["white_noise"]
    assert spread["dude_miaowing"] > 2.0


def test_lowpass_leaves_a_rumble() -> None:
    """--lowpass 150: a 1 kHz tone is gone, a 60 Hz hum stays; None leaves the noise as it is."""
    t = np.arange(16000) / 16000
    hum, tone = np.sin(2 * np.pi * 60 * t), np.sin(2 * np.pi * 1000 * t)
    out = lowpass(hum + tone, 150.0)[4000:]
    assert abs(np.mean(out**2) - 0.5) < 0.05  # the hum's power alone
    x = np.ones(10)
    assert lowpass(x, None) is x
