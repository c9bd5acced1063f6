"""What DcBlocker says about the offset it removes (the microphone's log line, the metrics
gauge and guided enrollment read it); the filtering itself is tests/unit/test_audio_convert.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voxgate.audio.convert import DcBlocker, remove_dc
from voxgate.audio.file import FileSource


def hum(seconds: float, offset: int, seed: int = 1) -> np.ndarray:
    """A low voice's worth of 120 Hz (the tracker's state ripples with it) over room noise,
    `offset` LSB off zero."""
    t = np.arange(int(16000 * seconds)) / 16000
    noise = np.random.default_rng(seed).normal(0, 30, len(t))
    return np.rint(3000 * np.sin(2 * np.pi * 120 * t) + noise + offset).astype(np.int16)


def test_nothing_is_said_before_sound() -> None:
    b = DcBlocker()
    assert b.offset is None and b.mean_offset is None and b.sound_samples == 0
    b.process(np.zeros(16000, np.int16))  # a muted input is no sound: it says nothing
    assert b.offset is None and b.mean_offset is None and b.sound_samples == 0


def test_the_offset_is_read_only() -> None:
    b = DcBlocker()
    with pytest.raises(AttributeError):
        b.offset = 5.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        b.mean_offset = 5.0  # type: ignore[misc]


def test_the_mean_offset_is_steady_where_the_state_ripples() -> None:
    pcm = hum(1.0, 66)
    b = DcBlocker()
    states: list[float] = []
    for i in range(0, len(pcm), 480):
        b.process(pcm[i : i + 480])
        assert b.offset is not None
        states.append(b.offset)
    assert b.sound_samples == 16000
    assert b.mean_offset is not None and abs(b.mean_offset - 66) < 3
    # The state itself swings tens of LSB with the 120 Hz: not a figure to tell anyone.
    assert max(states) - min(states) > 40


def test_silent_blocks_do_not_count_as_sound() -> None:
    pcm = np.concatenate([hum(0.5, -40), np.zeros(8000, np.int16), hum(0.5, -40, seed=2)])
    b = DcBlocker()
    b.process(pcm)
    assert b.sound_samples == 16000
    assert b.mean_offset is not None and abs(b.mean_offset + 40) < 3


def test_reading_it_changes_no_sample_and_chunking_changes_no_figure() -> None:
    pcm = hum(0.77, 230)  # not a whole number of blocks: flush() filters a partial one
    a, b = DcBlocker(), DcBlocker()
    out = []
    for i in range(0, len(pcm), 333):
        out.append(b.process(pcm[i : i + 333]))
        _ = b.offset, b.mean_offset, b.sound_samples
    out.append(b.flush())
    assert np.array_equal(np.concatenate(out), remove_dc(pcm))
    a.process(pcm)
    a.flush()
    assert a.sound_samples == b.sound_samples == len(pcm)
    assert a.mean_offset == pytest.approx(b.mean_offset, abs=1e-9)


def test_a_source_says_the_offset_of_its_stream(tmp_path: Path) -> None:
    import soundfile as sf

    path = tmp_path / "hum.wav"
    sf.write(path, hum(1.5, -120), 16000)
    source = FileSource(path)
    assert source.dc_offset is None  # no stream yet
    for _ in source.frames(30):
        pass
    assert source.dc_offset is not None and abs(source.dc_offset + 120) < 3
