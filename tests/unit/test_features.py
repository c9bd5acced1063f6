"""Front ends: mel scales, filterbanks, framing, and streaming == batch."""

from __future__ import annotations

import math

import numpy as np
import pytest

from voxgate.features import (
    KaldiFbank,
    KaldiFbankConfig,
    MelPower,
    MelPowerConfig,
    kaldi_filterbank,
    level_gain,
    slaney_filterbank,
    slaney_hz_to_mel,
    slaney_mel_to_hz,
)

SR = 16000


def tone(freq: float, seconds: float, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return np.round(amp * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def test_slaney_scale_is_linear_below_1k_and_log_above() -> None:
    assert slaney_hz_to_mel(np.array(1000.0)) == pytest.approx(15.0)
    assert slaney_hz_to_mel(np.array(500.0)) == pytest.approx(7.5)
    # 27 mels per factor 6.4 above 1 kHz
    assert slaney_hz_to_mel(np.array(6400.0)) == pytest.approx(15.0 + 27.0)
    f = np.linspace(0, 8000, 101)
    np.testing.assert_allclose(slaney_mel_to_hz(slaney_hz_to_mel(f)), f, atol=1e-6)


def test_slaney_filters_have_unit_area_in_hz() -> None:
    bank = slaney_filterbank(SR, 4096, 40, 0.0, 8000.0)  # fine bins approximate the integral
    area = bank.sum(axis=1) * (SR / 4096)
    np.testing.assert_allclose(area, 1.0, rtol=0.02)
    peaks = bank.argmax(axis=1)
    assert np.all(np.diff(peaks) > 0)


def test_kaldi_filters_peak_at_one_and_skip_nyquist() -> None:
    bank = kaldi_filterbank(SR, 512, 80, 20.0, 0.0)
    assert bank.shape == (80, 257)
    assert np.all(bank[:, -1] == 0)
    assert np.all(bank <= 1.0)
    assert np.all(bank.sum(axis=1) > 0)  # narrow low bands still catch at least one bin
    assert np.all(np.diff(bank.argmax(axis=1)) >= 0)


def test_mel_power_frame_count_and_tone_band() -> None:
    fe = MelPower(MelPowerConfig())
    x = tone(1000.0, 1.0)
    frames = fe.frames(x)
    assert frames.shape == (1 + x.size // 160, 40)
    centre = 1000.0
    bank = slaney_filterbank(SR, 400, 40, 0.0, 8000.0)
    expected_band = int(bank[:, round(centre / (SR / 400))].argmax())
    assert int(frames[50].argmax()) == expected_band
    # Power, not log: doubling the amplitude multiplies the features by four.
    np.testing.assert_allclose(fe.frames(tone(1000.0, 1.0, 0.6))[50], 4 * frames[50], rtol=1e-2)


@pytest.mark.parametrize("chunk", [1, 160, 333, 4000])
def test_mel_power_stream_equals_batch(chunk: int) -> None:
    fe = MelPower(MelPowerConfig())
    rng = np.random.default_rng(chunk)
    x = (rng.standard_normal(12345) * 3000).astype(np.int16)
    n_frames = 1 + x.size // 160 + 7  # past the end: zero padded
    batch = fe.frames(x, n_frames=n_frames)
    s = fe.stream()
    parts = [s.push(x[i : i + chunk]) for i in range(0, x.size, chunk)]
    parts.append(s.finish(n_frames=n_frames))
    streamed = np.concatenate(parts)
    assert streamed.shape == batch.shape
    np.testing.assert_allclose(streamed, batch, rtol=1e-5, atol=1e-6)


def test_kaldi_fbank_matches_kaldi_native_fbank() -> None:
    knf = pytest.importorskip("kaldi_native_fbank")
    rng = np.random.default_rng(1)
    x = np.concatenate([tone(440.0, 0.6), (rng.standard_normal(8000) * 2000).astype(np.int16)])
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = 80
    ref_fb = knf.OnlineFbank(opts)
    ref_fb.accept_waveform(SR, x.astype(np.float32).tolist())
    ref_fb.input_finished()
    ref = np.stack([ref_fb.get_frame(i) for i in range(ref_fb.num_frames_ready)])
    mine = KaldiFbank(KaldiFbankConfig()).frames(x)
    assert mine.shape == ref.shape
    np.testing.assert_allclose(mine, ref, atol=1e-2)


def test_kaldi_fbank_snip_edges_stream_and_mean_norm() -> None:
    fe = KaldiFbank(KaldiFbankConfig())
    x = tone(300.0, 1.0)
    batch = fe.frames(x)
    assert batch.shape == (1 + (x.size - 400) // 160, 80)
    s = fe.stream()
    streamed = np.concatenate([s.push(x[i : i + 777]) for i in range(0, x.size, 777)])
    np.testing.assert_allclose(streamed, batch, rtol=1e-5, atol=1e-5)
    normed = fe.post(batch)
    np.testing.assert_allclose(normed.mean(axis=0), 0.0, atol=1e-4)
    assert fe.frames(x[:399]).shape == (0, 80)


def test_silence_gives_finite_features() -> None:
    zeros = np.zeros(16000, np.int16)
    assert np.all(MelPower(MelPowerConfig()).frames(zeros) == 0)
    fb = KaldiFbank(KaldiFbankConfig()).frames(zeros)
    assert np.all(np.isfinite(fb))


def test_level_gain_raises_quiet_audio_only() -> None:
    quiet = 0.001  # -60 dBFS RMS
    g = level_gain(quiet**2 * 100, 100, -30.0)
    assert 20 * math.log10(quiet * g) == pytest.approx(-30.0)
    assert level_gain(0.5**2 * 100, 100, -30.0) == 1.0
    assert level_gain(0.0, 100, -30.0) == 1.0
    assert level_gain(quiet**2 * 100, 100, None) == 1.0


def test_mel_power_matches_librosa() -> None:
    """librosa is what Resemblyzer trained with; an optional cross-check (skips without it)."""
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng(3)
    x = np.concatenate([tone(220.0, 0.5), (rng.standard_normal(9000) * 3000).astype(np.int16)])
    ref = librosa.feature.melspectrogram(
        y=x.astype(np.float32) / 32768, sr=SR, n_fft=400, hop_length=160, n_mels=40
    ).T
    mine = MelPower(MelPowerConfig()).frames(x)
    assert mine.shape == ref.shape
    np.testing.assert_allclose(mine, ref, rtol=1e-4, atol=1e-6 * float(ref.max()))
