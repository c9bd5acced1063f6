"""Conversion at the boundary: resampling (whole and streamed), clipping, framing."""

from __future__ import annotations

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


def test_framer_carries_remainder_and_pads_the_tail() -> None:
    f = Framer(480)
    assert [len(x) for x in f.push(np.arange(1000, dtype=np.int16))] == [480, 480]
    (frame,) = f.push(np.arange(500, dtype=np.int16))
    assert frame[0] == 960 and frame[40] == 0  # continues where the last push left off
    (tail,) = f.flush()
    assert len(tail) == 480 and tail[0] == 440 and tail[59] == 499 and not tail[60:].any()
    assert f.flush() == []
