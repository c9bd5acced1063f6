"""Speech shorter than one window, embedded at several circular shifts of its repeated frames
(card `windowing.short_shifts`): one-shot == streaming, less dependence on where the loop
starts, bad card values."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.audio_helpers import speak
from voxgate.cohort import model_sha256
from voxgate.embedding import ModelError, load_embedder

if TYPE_CHECKING:
    from voxgate.embedding import SpeakerEmbedder

SHIPPED = Path(__file__).resolve().parents[2] / "daemon" / "voxgate" / "models"
RATE = 16000


def card_with(folder: Path, name: str, short: str = "repeat", extra: str = "") -> Path:
    """A copy of the shipped int8 card with `short:` set and `extra` lines after it."""
    text = (SHIPPED / "ge2e-int8.yaml").read_text()
    assert "  short: repeat\n" in text
    text = text.replace("  short: repeat\n", f"  short: {short}\n{extra}")
    model = folder / "ge2e-resemblyzer-int8.onnx"
    if not model.exists():
        model.symlink_to(SHIPPED / "ge2e-resemblyzer-int8.onnx")
    (folder / name).write_text(text)
    return folder / name


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[SpeakerEmbedder, SpeakerEmbedder]:
    """(one shift, as shipped; four shifts), same model and trim."""
    d = tmp_path_factory.mktemp("cards")
    one = load_embedder(card_with(d, "one.yaml"))
    four = load_embedder(card_with(d, "four.yaml", extra="  short_shifts: 4\n"))
    assert one.card.windowing.short_shifts == 1 and four.card.windowing.short_shifts == 4
    return one, four


def short_word() -> np.ndarray:
    """About 1.1 s of speech: shorter than one 1.6 s window after the trim."""
    return speak("Seven four one nine.")[: int(1.1 * RATE)]


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b)


@pytest.mark.parametrize("chunk", [480, 1600, 7777])
@pytest.mark.parametrize("seconds", [0.7, 1.1, 1.5])
def test_shifted_stream_equals_embed(
    pair: tuple[SpeakerEmbedder, SpeakerEmbedder], chunk: int, seconds: float
) -> None:
    one, four = pair
    pcm = speak("Seven four one nine.")[: int(seconds * RATE)]
    assert four.speech_of(pcm).size < 160 * 160  # the short path
    s = four.stream()
    for i in range(0, pcm.size, chunk):
        s.push(pcm[i : i + chunk])
    streamed, batch = s.finish(), four.embed(pcm)
    assert 1.0 - cos(streamed, batch) < 1e-5
    # ...and the shifts were used: not the one-shift embedding.
    assert 1.0 - cos(batch, one.embed(pcm)) > 1e-4


def test_shifts_make_short_speech_less_dependent_on_where_the_loop_starts(
    pair: tuple[SpeakerEmbedder, SpeakerEmbedder],
) -> None:
    # The same short speech, started at other points of itself (rotated audio): the
    # repeated loop then starts elsewhere. Four shifts average that out; one does not.
    one, four = pair
    speech = one.speech_of(short_word())
    assert 0.5 * RATE < speech.size < 160 * 160
    far_one, far_four = [], []
    for part in (0.2, 0.4, 0.6, 0.8):
        rotated = np.roll(speech, -int(part * speech.size))
        far_one.append(1.0 - cos(one.embed(rotated), one.embed(speech)))
        far_four.append(1.0 - cos(four.embed(rotated), four.embed(speech)))
    assert max(far_four) < min(far_one) and np.mean(far_four) < 0.5 * np.mean(far_one)


def test_long_speech_is_unchanged_by_shifts(pair: tuple[SpeakerEmbedder, SpeakerEmbedder]) -> None:
    one, four = pair
    pcm = speak("Please open the front door for me, I live here and I have lost my key.")
    assert four.speech_of(pcm).size >= 160 * 160
    np.testing.assert_array_equal(one.embed(pcm), four.embed(pcm))


def test_one_shift_keeps_the_cohort_tie(tmp_path: Path) -> None:
    # The default embeds as before the setting existed: shipped cohorts still fit it; more
    # shifts change short embeddings, so they need a cohort of their own.
    shipped = load_embedder(SHIPPED / "ge2e-int8.yaml")
    one = load_embedder(card_with(tmp_path, "one.yaml", extra="  short_shifts: 1\n"))
    four = load_embedder(card_with(tmp_path, "four.yaml", extra="  short_shifts: 4\n"))
    assert model_sha256(one) == model_sha256(shipped) != model_sha256(four)


@pytest.mark.parametrize(
    ("short", "extra", "match"),
    [
        ("pad", "  short_shifts: 2\n", "short: repeat"),
        ("repeat", "  short_shifts: 0\n", "short_shifts"),
        ("repeat", "  short_shifts: 100\n", "short_shifts"),
    ],
)
def test_bad_short_shifts_is_refused(tmp_path: Path, short: str, extra: str, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        load_embedder(card_with(tmp_path, "bad.yaml", short, extra))


def test_network_runs_count_the_shifts(pair: tuple[SpeakerEmbedder, SpeakerEmbedder]) -> None:
    # voxgate bench prints this as "windows": the network's runs, which the shifts multiply.
    one, four = pair
    assert one.network_runs(16000) == 1 and four.network_runs(16000) == 4
    assert four.network_runs(16000 * 3) == len(four.window_starts(16000 * 3)) == 2
