"""Conversion at the boundary: resampling (whole and streamed), clipping, framing."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

from voxgate.audio.convert import Framer, StreamResampler, float_to_int16, resample


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
    assert out.tolist() == [-32768, -32767, 0, 16384, 32767, 32767]


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
