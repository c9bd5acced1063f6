"""Conversion at the boundary: resampling (whole and streamed), clipping, framing."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voxgate.audio.convert import (
    DC_BLOCK,
    DcBlocker,
    Framer,
    StreamResampler,
    float_to_int16,
    int16_to_float,
    remove_dc,
    resample,
)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_streamed_resampling_equals_whole_file(rate: int) -> None:
    rng = np.random.default_rng(rate)
    x = (rng.standard_normal(rate * 2) * 0.1).astype(np.float32)
    whole = resample(x, rate)
    r = StreamResampler(rate)
    parts, i = [], 0
    while i < len(x):  # ragged blocks, as a device or a file reader would hand them out
        n = int(rng.integers(1, 2500))
        parts.append(r.process(x[i : i + n]))
        i += n
    parts.append(r.flush())
    streamed = np.concatenate(parts)
    assert len(streamed) == len(whole) == 32000
    np.testing.assert_allclose(streamed, whole, atol=1e-6)


def test_resampling_keeps_a_tone_and_removes_aliases() -> None:
    t = np.arange(48000) / 48000
    tone = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.5 * np.sin(2 * np.pi * 12000 * t)
    y = resample(tone.astype(np.float32), 48000)
    spectrum = np.abs(np.fft.rfft(y)) / len(y)
    freqs = np.fft.rfftfreq(len(y), 1 / 16000)
    assert spectrum[np.argmin(abs(freqs - 440))] > 0.2  # kept
    # 12 kHz is above the new Nyquist; it must not fold back to 4 kHz.
    assert spectrum[np.argmin(abs(freqs - 4000))] < 0.01


def test_clipping_saturates_instead_of_wrapping() -> None:
    out = float_to_int16(np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 3.0], dtype=np.float32))
    assert out.tolist() == [-32768, -32768, 0, 16384, 32767, 32767]


def test_int16_survives_the_float_path_sample_for_sample() -> None:
    """Files are read as float (soundfile: int16 / 32768) and resampled microphones go
    through float: scaled back by 32767, every sample above half scale lost 1 LSB and a
    clipped top read 32766 instead of 32767 (found with the DC removal's clip rails)."""
    every = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
    assert np.array_equal(float_to_int16(int16_to_float(every)), every)


def test_huge_float_samples_saturate_without_an_overflow_warning() -> None:
    # A float WAV may hold any float32; scaling 3e38 by 32767 went to inf with a warning.
    x = np.array([-3e38, -1e30, 1e30, 3e38], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = float_to_int16(x)
    assert out.tolist() == [-32768, -32768, 32767, 32767]


def test_framer_carries_remainder_and_pads_the_tail() -> None:
    f = Framer(480)
    assert [len(x) for x in f.push(np.arange(1000, dtype=np.int16))] == [480, 480]
    (frame,) = f.push(np.arange(500, dtype=np.int16))
    assert frame[0] == 960 and frame[40] == 0  # continues where the last push left off
    (tail,) = f.flush()
    assert len(tail) == 480 and tail[0] == 440 and tail[59] == 499 and not tail[60:].any()
    assert f.flush() == []


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 32000, 44100, 48000, 96000, 12345])
@pytest.mark.parametrize("n", [1, 7, 441, 20011])
def test_resampling_equals_scipys_resample_poly(rate: int, n: int) -> None:
    # The resampler is scipy's algorithm in numpy (the same filter, alignment and length),
    # so audio reads as it did when scipy did it; scipy is the reference here.
    from scipy.signal import resample_poly

    x = (np.random.default_rng(n).standard_normal(n) * 0.3).astype(np.float32)
    g = math.gcd(rate, 16000)
    want = resample_poly(x, 16000 // g, rate // g)
    got = resample(x, rate)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_resampling_does_not_load_scipy() -> None:
    # Importing scipy.signal for a 44.1/48 kHz input raised the daemon's peak RSS by 60-70 MB
    # (174 MB against 109 MB at 16 kHz, `voxgate run` on a file) and took 1-2 s on a Pi.
    code = (
        "import sys, numpy as np\n"
        "from voxgate.audio.convert import StreamResampler, resample\n"
        "resample(np.ones(4410, np.float32), 44100)\n"
        "r = StreamResampler(48000); r.process(np.ones(4800, np.float32)); r.flush()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# --- DC removal at the boundary -----------------------------------------------------------


def _streamed(x: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    b = DcBlocker()
    parts, i = [], 0
    while i < len(x):  # ragged chunks, as a resampler or a device hands them out
        n = int(rng.integers(1, 2500))
        parts.append(b.process(x[i : i + n]))
        i += n
    parts.append(b.flush())
    return np.concatenate(parts)


@pytest.mark.parametrize("n", [0, 1, 159, 160, 161, 48_000, 48_037])
def test_dc_removal_is_the_same_streamed_in_any_chunks_as_whole(n: int) -> None:
    rng = np.random.default_rng(n)
    x = np.clip(rng.standard_normal(n) * 4000 + 230, -32768, 32767).astype(np.int16)
    whole = remove_dc(x)
    assert whole.dtype == np.int16 and len(whole) == n
    for seed in range(3):
        assert np.array_equal(_streamed(x, seed), whole)


def test_dc_removal_matches_the_per_sample_recursion() -> None:
    rng = np.random.default_rng(1)
    x = np.clip(rng.standard_normal(4000) * 3000 - 500, -32768, 32767).astype(np.int16)
    b = DcBlocker()
    m = float(np.mean(x[:DC_BLOCK].astype(np.float64)))
    ref = np.empty(len(x))
    for i, v in enumerate(x.astype(np.float64)):
        m += b.alpha * (v - m)
        ref[i] = v - m
    got = remove_dc(x).astype(np.float64)
    assert np.max(np.abs(got - ref)) <= 0.5 + 1e-6  # the same filter, rounded to int16


@pytest.mark.parametrize("lsb", [16, 66, 230, -700])
def test_a_constant_offset_is_gone_from_the_start(lsb: int) -> None:
    rng = np.random.default_rng(abs(lsb))
    noise = rng.standard_normal(16000) * 20  # a quiet room
    x = np.rint(noise + lsb).astype(np.int16)
    y = remove_dc(x).astype(np.float64)
    # The tracker starts at the first 10 ms's mean: no fade-out of the offset to wait for.
    assert abs(y[:160].mean()) < 3
    assert abs(y[:1600].mean()) < 1.5  # first 100 ms
    assert abs(y[8000:].mean()) < 1.5
    # A step in the offset (a gain change, a replugged microphone) is gone within 200 ms.
    step = np.concatenate([x, x + np.int16(300)])
    z = remove_dc(step).astype(np.float64)
    assert abs(z[16000 + 3200 : 16000 + 4800].mean()) < 3


@pytest.mark.parametrize("hz", [60, 100, 1000])
def test_voice_frequencies_pass(hz: int) -> None:
    t = np.arange(32000) / 16000
    x = np.rint(8000 * np.sin(2 * np.pi * hz * t) + 230).astype(np.int16)
    y = remove_dc(x).astype(np.float64)
    steady = slice(8000, None)  # after 5 time constants
    gain_db = 20 * math.log10(np.std(y[steady]) / np.std(x[steady].astype(np.float64)))
    assert abs(gain_db) < 0.03
    assert abs(y[steady].mean()) < 2


def test_digital_silence_stays_exactly_zero() -> None:
    assert not remove_dc(np.zeros(16000, dtype=np.int16)).any()
    # Padding before a recording with an offset stays zero; after it, back to exact zeros.
    rng = np.random.default_rng(2)
    talk = np.rint(rng.standard_normal(16000) * 1000 + 230).astype(np.int16)
    x = np.concatenate([np.zeros(3200, np.int16), talk, np.zeros(16000, np.int16)])
    y = remove_dc(x)
    assert not y[:3200].any() and not y[3200 + 16000 :].any()
    # The tracker starts at the first sound, not at the padding's zero: no offset fades out.
    assert abs(float(y[3200:4800].astype(np.float64).mean())) < 80  # 100 ms, noise 1000 rms
    assert abs(float(y[3200 : 3200 + 16000].astype(np.float64).mean())) < 10
    # A gap of digital silence (a TTS pause, a muted input) stays zero whatever its
    # alignment; only the 10 ms blocks it shares with sound are filtered.
    gap = np.concatenate([talk[:8000], np.zeros(4000, np.int16), talk[8000:]])
    z = remove_dc(gap)
    assert not z[8160:11840].any()
    assert abs(float(z[12000:].astype(np.float64).mean())) < 10  # the offset was held


def test_dc_removal_saturates_instead_of_wrapping() -> None:
    # Below full scale: samples at the rails are kept as they are, so a jump between the
    # rails themselves would never reach the saturation.
    x = np.full(3200, -32000, dtype=np.int16)
    x[1600:] = 32000  # a jump the tracker lags behind: y would be about 64000
    y = remove_dc(x)
    assert not ((x == 32767) | (x == -32768)).any()  # the premise
    assert y.max() == 32767 and y.min() >= -32768
    assert (y[1600:1700] == 32767).all()  # saturated, not wrapped to negative


def test_clipped_samples_stay_at_full_scale() -> None:
    """A hot microphone clips one side harder than the other, which moves the tracked mean
    by hundreds of LSB; subtracted from a clipped top it fell below the gate's clipping level,
    and a clipped take read about 40 % less clipped (fsdd at x8: median 3.2 -> 1.8 %)."""
    from voxgate.quality import assess

    t = np.arange(32000) / 16000
    hot = 50000 * np.sin(2 * np.pi * 180 * t) + 9000 * np.sin(2 * np.pi * 90 * t) + 4000
    x = np.clip(np.rint(hot), -32768, 32767).astype(np.int16)
    y = remove_dc(x)
    rails = (x == 32767) | (x == -32768)
    assert rails.mean() > 0.2  # the premise: a heavily, unevenly clipped recording
    assert np.array_equal(y[rails], x[rails])
    assert assess(y).clipped >= assess(x).clipped  # the gate sees at least what came in
    assert not np.array_equal(y[~rails], x[~rails])  # the rest is filtered as ever


# --- clipping through a 44.1/48 kHz input --------------------------------------------------

# Real speech (fsdd digits, a vcc2018 sentence) that a microphone 4 times too hot with a
# 1000 LSB offset clips: at 16 kHz they read 0.58-6.5 % clipped; at 44.1/48 kHz they read
# 0.05, 0.3-0.4, 2.3-2.8, 3.9-4.0 and ~1.4 % before their clipped tops were kept
# (benchmarks/clip_rates.py has whole sets).
CLIPPED_TAKES = [
    "fsdd/audio/theo/recordings_7_theo_27.flac",
    "fsdd/audio/george/recordings_9_george_20.flac",
    "fsdd/audio/lucas/recordings_8_lucas_46.flac",
    "fsdd/audio/jackson/recordings_0_jackson_3.flac",
    "vcc2018_eval/audio/VCC2SF1/30014.flac",
]


def _hot_take(pcm16k: np.ndarray, rate: int, gain: float, offset: float) -> np.ndarray:
    """The take as a microphone at `rate` with a DC offset, `gain` times too hot, delivers it:
    the speech sampled at that rate (scipy's resampler, not the one under test), the offset
    added, then clipped at int16 full scale."""
    from scipy.signal import resample_poly

    g = math.gcd(rate, 16000)
    x = pcm16k.astype(np.float64)
    if rate != 16000:
        x = resample_poly(x, rate // g, 16000 // g)
    return np.clip(np.rint(x * gain + offset), -32768, 32767).astype(np.int16)


@pytest.mark.parametrize("rate", [44100, 48000])
def test_a_hot_take_at_44k_or_48k_reads_as_clipped_as_at_16k(
    rate: int, shared_data: Path, tmp_path: Path
) -> None:
    """Resampled, a clipped top ripples below the gate's clipping level and the DC removal
    moves it by the offset: 44.1/48 kHz takes read a third less clipped than the same takes
    at 16 kHz, and takes the gate retries at 16 kHz (> 0.1 %) went through (theo: 0.05 %)."""
    from voxgate.audio.file import read_audio
    from voxgate.config import VoxgateConfig
    from voxgate.quality import assess

    level = VoxgateConfig().speaker.max_clipped
    for rel in CLIPPED_TAKES:
        clean = read_audio(shared_data / rel)
        read = {}
        for r in (16000, rate):
            wav = tmp_path / f"{r}.wav"
            sf.write(wav, _hot_take(clean, r, 4.0, 1000.0), r, subtype="PCM_16")
            read[r] = assess(read_audio(wav)).clipped
        assert read[16000] > level, rel  # the premise: the gate retries it at 16 kHz
        assert read[rate] > level, (rel, read)
        assert read[rate] >= 0.85 * read[16000], (rel, read)


@pytest.mark.parametrize("rate", [44100, 48000])
def test_a_clipped_take_resampled_is_the_same_in_any_chunks(rate: int, shared_data: Path) -> None:
    from voxgate.audio.file import read_audio

    clean = read_audio(shared_data / CLIPPED_TAKES[-1])
    x = int16_to_float(_hot_take(clean, rate, 4.0, 1000.0))
    one = StreamResampler(rate)
    whole = np.concatenate([one.process(x), one.flush()])
    assert (float_to_int16(whole) == 32767).mean() > 0.01  # the premise: clipped tops
    for seed in range(3):
        rng = np.random.default_rng(seed)
        r = StreamResampler(rate)
        parts, i = [], 0
        while i < len(x):
            n = int(rng.integers(1, 2500))
            parts.append(r.process(x[i : i + n]))
            i += n
        parts.append(r.flush())
        assert np.array_equal(np.concatenate(parts), whole)


@pytest.mark.parametrize("rate", [44100, 48000])
def test_speech_below_full_scale_is_resampled_untouched(rate: int, shared_data: Path) -> None:
    """Only source samples at a rail are kept at full scale: loud speech that never reaches
    it comes out as the filter alone makes it, and does not read as clipped."""
    from voxgate.audio.file import read_audio
    from voxgate.quality import assess

    clean = read_audio(shared_data / CLIPPED_TAKES[-1]).astype(np.float64)
    src = _hot_take(clean * (32000 / np.abs(clean).max()), rate, 1.0, 300.0)
    assert np.abs(src.astype(np.int32)).max() < 32767  # the premise
    x = int16_to_float(src)
    r = StreamResampler(rate)
    got = np.concatenate([r.process(x), r.flush()])
    np.testing.assert_allclose(got, resample(x, rate), atol=1e-6)
    assert assess(remove_dc(float_to_int16(got))).clipped == 0.0
