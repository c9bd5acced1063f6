"""Speech trim before embedding (embedding/trim.py): pauses dropped, streaming == batch,
the latency bound, the too-little-speech fallback, bad card values."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.audio_helpers import speak
from voxgate.embedding import ModelError, load_embedder
from voxgate.embedding.card import read_card
from voxgate.embedding.trim import SpeechTrim, TrimSpec, trim_speech

if TYPE_CHECKING:
    from voxgate.embedding import SpeakerEmbedder

SHIPPED = Path(__file__).resolve().parents[2] / "daemon" / "voxgate" / "models"
RATE = 16000


SPEC = TrimSpec()


def noise(seconds: float, dbfs: float = -60.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(int(seconds * RATE)) * 32768 * 10 ** (dbfs / 20)
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


@pytest.fixture(scope="module")
def embedder() -> SpeakerEmbedder:
    return load_embedder()


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> SpeakerEmbedder:
    """The shipped int8 model without its trim block."""
    d = tmp_path_factory.mktemp("card")
    text = (SHIPPED / "ge2e-int8.yaml").read_text()
    head, _, rest = text.partition("\ntrim:\n")
    tail = rest[rest.index("\nevaluation:") :]
    card = d / "plain.yaml"
    card.write_text(head + tail)
    (d / "ge2e-resemblyzer-int8.onnx").symlink_to(SHIPPED / "ge2e-resemblyzer-int8.onnx")
    e = load_embedder(card)
    assert e.card.trim is None
    return e


def words() -> tuple[np.ndarray, np.ndarray]:
    return speak("Seven four one nine."), speak("Please open the door, it is me again.")


def test_shipped_cards_trim() -> None:
    for name in ("ge2e-int8.yaml", "ge2e-float.yaml", "ge2e-fp16-litert.yaml"):
        assert read_card(SHIPPED / name).trim == SPEC


def test_pauses_are_dropped(embedder: SpeakerEmbedder, plain: SpeakerEmbedder) -> None:
    a, b = words()
    padded = np.concatenate([noise(0.5), a, noise(2.0, seed=1), b, noise(1.5, seed=2)])
    speech_only = np.concatenate([a, b])
    kept = trim_speech(padded, SPEC)
    # Most of the 4 s of noise goes; the words stay (with a little context at their edges).
    assert kept.size < speech_only.size + 1.2 * RATE
    assert kept.size > 0.8 * trim_speech(speech_only, SPEC).size
    trimmed = float(embedder.embed(padded) @ embedder.embed(speech_only))
    untrimmed = float(plain.embed(padded) @ plain.embed(speech_only))
    assert trimmed > 0.97
    assert trimmed > untrimmed


@pytest.mark.parametrize("chunk", [1, 480, 1000, 4801])
def test_trim_stream_equals_batch(chunk: int) -> None:
    a, b = words()
    pcm = np.concatenate([noise(0.3), a, noise(1.0, seed=3), b, noise(0.6, seed=4)])
    if chunk == 1:
        pcm = pcm[: 2 * RATE]  # one sample at a time is slow: a shorter piece
    t = SpeechTrim(SPEC)
    parts = [t.push(pcm[i : i + chunk]) for i in range(0, pcm.size, chunk)]
    parts.append(t.finish())
    assert np.array_equal(np.concatenate(parts), trim_speech(pcm, SPEC))


def pink(seconds: float, dbfs: float, seed: int) -> np.ndarray:
    """Pink noise (power falling 3 dB an octave), like a room's hum and rumble."""
    n = int(seconds * RATE)
    spec = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    spec[1:] /= np.sqrt(np.arange(1, spec.size))
    spec[0] = 0
    x = np.fft.irfft(spec, n)
    x *= 32768 * 10 ** (dbfs / 20) / np.sqrt(np.mean(x**2))
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def test_seconds_of_quiet_room_before_the_speech_are_not_kept(
    embedder: SpeakerEmbedder,
) -> None:
    """A file that starts with 2 s of -60 dBFS room noise (a phone recording, `enroll
    --from`): the first second shared one gain, raised 30 dB to -30 dBFS, and the VAD called
    the noise speech: 1.3 s of it was kept and embedded with the voice."""
    a, b = words()
    speech = np.concatenate([a, noise(0.3, seed=5), b])
    lead = np.concatenate([pink(2.0, -60.0, seed=6), speech])
    own = trim_speech(speech, SPEC).size
    assert trim_speech(lead, SPEC).size - own < 0.15 * RATE
    assert float(embedder.embed(lead) @ embedder.embed(speech)) > 0.99
    for chunk in (480, 4801):  # streaming keeps the same, in any chunks
        t = SpeechTrim(SPEC)
        parts = [t.push(lead[i : i + chunk]) for i in range(0, lead.size, chunk)]
        parts.append(t.finish())
        assert np.array_equal(np.concatenate(parts), trim_speech(lead, SPEC))


def test_a_recording_quiet_throughout_is_trimmed_at_its_own_level() -> None:
    """Speech 35 dB down, in its room noise: the first stretch never gets loud, so it runs
    to the end and every frame is heard at the whole recording's gain (upstream's); the
    stream holds its frames until finish() and then gives what trim_speech does."""
    a, b = words()
    speech = np.concatenate([noise(1.5, seed=7), a, noise(0.5, seed=8), b])
    quiet = np.round(speech * 10 ** (-35 / 20)).astype(np.int16)
    t = SpeechTrim(SPEC)
    assert t.push(quiet).size == 0  # nothing decided before the end
    kept = t.finish()
    assert np.array_equal(kept, trim_speech(quiet, SPEC))
    loud = trim_speech(speech, SPEC)
    assert abs(kept.size - loud.size) < 0.1 * RATE  # the same speech found at either level


def test_embedding_stream_equals_batch_and_leaves_one_window(embedder: SpeakerEmbedder) -> None:
    a, b = words()
    # As the daemon pushes an utterance: pre-roll, speech with a pause, 0.5 s hangover.
    pcm = np.concatenate([noise(0.3), a, noise(0.8, seed=5), b, noise(0.5, seed=6)])
    stream = embedder.stream()
    for i in range(0, pcm.size, 480):
        stream.push(pcm[i : i + 480])
    speech = embedder.speech_of(pcm)
    assert speech.size < pcm.size
    # At the end of speech only the last window is left for finish().
    assert stream.windows_done >= len(embedder.window_starts(speech.size)) - 1
    assert 1.0 - float(stream.finish() @ embedder.embed(pcm)) < 1e-5
    assert 1.0 - float(embedder.embed(pcm) @ embedder._embed_plain(speech)) < 1e-6


def test_too_little_speech_falls_back_to_the_audio(
    embedder: SpeakerEmbedder, plain: SpeakerEmbedder
) -> None:
    pcm = noise(2.0, dbfs=-70)  # nothing the VAD calls speech
    assert trim_speech(pcm, SPEC).size < embedder._min_samples
    v = embedder.embed(pcm)
    assert np.isfinite(v).all()
    assert 1.0 - float(v @ plain.embed(pcm)) < 1e-6
    s = embedder.stream()
    s.push(pcm)
    assert 1.0 - float(s.finish() @ v) < 1e-5


def test_bad_trim_block_is_refused(tmp_path: Path) -> None:
    text = (SHIPPED / "ge2e-int8.yaml").read_text().replace("frame_ms: 30", "frame_ms: 25")
    (tmp_path / "c.yaml").write_text(text)
    (tmp_path / "ge2e-resemblyzer-int8.onnx").symlink_to(SHIPPED / "ge2e-resemblyzer-int8.onnx")
    with pytest.raises(ModelError, match="trim"):
        load_embedder(tmp_path / "c.yaml")
    t = SpeechTrim(SPEC)
    t.finish()
    with pytest.raises(ValueError):
        t.push(np.zeros(480, np.int16))


@pytest.mark.parametrize("seconds", [0.9, 1.3, 2.1, 2.9])
def test_short_and_end_windows_stream_equals_batch(
    embedder: SpeakerEmbedder, seconds: float
) -> None:
    a, _ = words()
    pcm = np.concatenate([a, a, a])[: int(seconds * RATE)]
    s = embedder.stream()
    for i in range(0, pcm.size, 480):
        s.push(pcm[i : i + 480])
    assert 1.0 - float(s.finish() @ embedder.embed(pcm)) < 1e-5


def test_short_audio_is_repeated_not_padded(embedder: SpeakerEmbedder) -> None:
    a, _ = words()
    speech = embedder.speech_of(a[: int(1.0 * RATE)])
    frames = embedder.frontend.frames(speech, n_frames=160)
    filled = embedder._fill_short(frames, speech.size)
    own = embedder.frontend.default_frames(speech.size)
    assert 80 <= own < 160 and filled.shape == (160, frames.shape[1])
    np.testing.assert_array_equal(filled[:own], frames[:own])
    np.testing.assert_array_equal(filled[own:], frames[: 160 - own])  # again, not zeros
    assert (filled.sum(axis=1) > 0).all()
