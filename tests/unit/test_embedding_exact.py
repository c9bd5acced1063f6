"""The embedder's front end gives the numbers of a plain, step-by-step reference: speech trim
frame by frame, mel power with np.add.reduceat per band, level gains from a float64 running
sum. The int8 model turns a one-bit change of its input into a cosine change of ~1e-4, and the
shipped cohorts (embedding/cohorts) and every enrolled voiceprint were made with these
numbers: a faster front end must keep them."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from voxgate.embedding import TooShort, load_embedder
from voxgate.embedding.embedder import _MAX_BATCH, _energy_to
from voxgate.embedding.trim import QUIET_DB, SpeechTrim, TrimSpec, trim_speech
from voxgate.evaluation import load_recording
from voxgate.features import (
    SparseBank,
    hann_periodic,
    kaldi_filterbank,
    level_gain,
    slaney_filterbank,
    to_float,
)

if TYPE_CHECKING:
    from voxgate.embedding import SpeakerEmbedder

RATE = 16000


# --- the plain reference ----------------------------------------------------------------------


def ref_trim(pcm: np.ndarray, spec: TrimSpec) -> np.ndarray:
    """embedding/trim.py's rule, one frame at a time over the whole utterance."""
    import webrtcvad

    vad = webrtcvad.Vad(spec.vad_mode)
    n = RATE * spec.frame_ms // 1000
    frames = pcm[: pcm.size // n * n].reshape(-1, n)
    if not len(frames):
        return np.zeros(0, np.int16)
    f = frames.astype(np.float64) / 32768.0
    energy = np.cumsum(np.sum(f * f, axis=1))
    onset = max(1, round(spec.onset_s * 1000 / spec.frame_ms))
    # The first stretch: at least onset frames, and on while the audio so far is QUIET_DB
    # below the level (the last frame if it never gets that loud).
    quiet = 10.0 ** ((spec.level_dbfs - QUIET_DB) / 10.0)
    loud_enough = [j for j in range(onset - 1, len(frames)) if energy[j] >= (j + 1) * n * quiet]
    end = loud_enough[0] if loud_enough else len(frames) - 1
    flags = []
    for k, frame in enumerate(frames):
        j = min(max(k, end), len(frames) - 1)
        gain = level_gain(float(energy[j]), (j + 1) * n, spec.level_dbfs)
        if gain != 1.0:
            frame = np.clip(np.round(frame * gain), -32768, 32767).astype(np.int16)
        flags.append(vad.is_speech(frame.tobytes(), RATE))
    w = spec.smooth_frames
    before, after = (w - 1) // 2, w // 2
    smooth = [2 * sum(flags[max(0, k - before) : k + after + 1]) > w for k in range(len(flags))]
    pad = spec.pad_frames
    keep = [any(smooth[max(0, k - pad) : k + pad + 1]) for k in range(len(smooth))]
    return frames[np.array(keep, bool)].reshape(-1)


def ref_bank(bank: np.ndarray, power: np.ndarray) -> np.ndarray:
    cols = [np.flatnonzero(row) if row.any() else np.array([0]) for row in bank]
    weights = np.concatenate([row[c] for row, c in zip(bank, cols, strict=True)])
    starts = np.cumsum([0] + [c.size for c in cols[:-1]])
    gathered = power[:, np.concatenate(cols)] * weights.astype(np.float32)
    return np.add.reduceat(gathered, starts, axis=1)


def ref_mel(audio: np.ndarray, n_frames: int) -> np.ndarray:
    """Centred frames, periodic Hann, numpy's FFT, Slaney bank: the card's mel_power."""
    x = np.concatenate([np.zeros(200, np.float32), audio])
    need = (n_frames - 1) * 160 + 400
    x = np.concatenate([x, np.zeros(max(0, need - x.size), np.float32)])
    spec = np.fft.rfft(sliding_window_view(x[:need], 400)[::160] * hann_periodic(400), axis=1)
    power = (spec.real**2 + spec.imag**2).astype(np.float32)
    return ref_bank(slaney_filterbank(RATE, 400, 40, 0.0, 8000.0), power)


def ref_embed(e: SpeakerEmbedder, pcm: np.ndarray) -> np.ndarray:
    assert e.card.trim is not None and e.card.frontend.level_dbfs is not None
    speech = ref_trim(pcm, e.card.trim)
    if speech.size < round(e.card.windowing.min_audio_s * RATE):
        speech = pcm
    starts = e.window_starts(speech.size)  # raises TooShort like embed()
    audio = speech.astype(np.float32) / 32768.0
    frames = e._fill_short(ref_mel(audio, starts[-1] + 160), speech.size)
    energy = np.cumsum(np.square(audio, dtype=np.float64))
    gains = []
    for s in starts:
        end = min((s + 160) * 160, audio.size)
        gains.append(level_gain(float(energy[end - 1]), end, e.card.frontend.level_dbfs) ** 2)
    windows = np.stack(
        [frames[s : s + 160] * np.float32(g) for s, g in zip(starts, gains, strict=True)]
    )
    out = np.concatenate(
        [e.runtime.run(windows[i : i + _MAX_BATCH]) for i in range(0, len(windows), _MAX_BATCH)]
    )
    out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    mean = out.mean(axis=0).astype(np.float64)
    return (mean / np.linalg.norm(mean)).astype(np.float32)


# --- real speech -------------------------------------------------------------------------------


def recordings(data: Path) -> list[np.ndarray]:
    """70 recordings from four sets: sentences, long reads (first 6 s), single words and
    four-digit strings (the digit set's enrollment takes: four files, 0.2 s gaps)."""
    picks = [("vcc2018_eval", 20, "manifest"), ("resemblyzer_ls", 20, "manifest")]
    picks += [("speechcommands_v001_sample", 15, "manifest"), ("fsdd", 15, "enroll")]
    out = []
    for name, count, table in picks:
        with open(data / name / f"{table}.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        for row in rows[:: max(1, len(rows) // count)][:count]:
            out.append(load_recording(data / name, row["path"])[: 6 * RATE])
    return out


@pytest.fixture(scope="module")
def speech(shared_data: Path) -> list[np.ndarray]:
    return recordings(shared_data)


@pytest.fixture(scope="module")
def embedder() -> SpeakerEmbedder:
    return load_embedder()


def test_embeddings_equal_the_reference_on_real_speech(
    embedder: SpeakerEmbedder, speech: list[np.ndarray]
) -> None:
    compared = 0
    worst = 1.0
    for pcm in speech:
        try:
            want = ref_embed(embedder, pcm)
        except TooShort:
            with pytest.raises(TooShort):
                embedder.embed(pcm)
            continue
        worst = min(worst, float(embedder.embed(pcm) @ want))
        compared += 1
    assert compared >= 60
    assert worst >= 0.99999


def test_trim_equals_the_reference_on_real_and_quiet_speech(speech: list[np.ndarray]) -> None:
    specs = [TrimSpec(), TrimSpec(level_dbfs=-12, onset_s=0.3, smooth_frames=3, frame_ms=20)]
    rng = np.random.default_rng(0)
    for i, pcm in enumerate(speech[::3]):
        quiet = (pcm // 40).astype(np.int16)  # raised by the trim's own level gain
        for spec in specs:
            for x in (pcm, quiet):
                want = ref_trim(x, spec)
                assert np.array_equal(trim_speech(x, spec), want), (i, spec)
                t = SpeechTrim(spec)
                parts, at = [], 0
                while at < x.size:
                    step = int(rng.integers(1, 4000))
                    parts.append(t.push(x[at : at + step]))
                    at += step
                parts.append(t.finish())
                assert np.array_equal(np.concatenate(parts), want), (i, spec, "stream")


def test_stream_gives_the_batch_embedding_on_real_speech(
    embedder: SpeakerEmbedder, speech: list[np.ndarray]
) -> None:
    for pcm in speech[::7]:
        stream = embedder.stream()
        for at in range(0, pcm.size, 480):
            stream.push(pcm[at : at + 480])
        assert np.array_equal(stream.finish(), embedder.embed(pcm))


# --- pieces, on synthetic input ---------------------------------------------------------------


@pytest.mark.parametrize(
    "bank",
    [
        slaney_filterbank(RATE, 400, 40, 0.0, 8000.0),  # the shipped cards
        slaney_filterbank(RATE, 400, 128, 0.0, 8000.0),  # empty and one-bin bands
        kaldi_filterbank(RATE, 512, 80, 20.0, 0.0),
        kaldi_filterbank(RATE, 512, 23, 20.0, 0.0),  # up to six blocks of 8
        slaney_filterbank(RATE, 4096, 8, 0.0, 8000.0),  # bands wider than numpy's block
    ],
    ids=["slaney40", "slaney128", "kaldi80", "kaldi23", "wide"],
)
def test_filterbank_sums_equal_reduceat(bank: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    fast = SparseBank(bank)
    for frames in (1, 2, 9, 99, 100, 301):  # reduceat itself below 100 frames
        scale = 10.0 ** rng.integers(-9, 4)
        power = (rng.random((frames, bank.shape[1])) ** 3 * scale).astype(np.float32)
        got = fast.apply(power)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        assert np.array_equal(got, ref_bank(bank, power))


def test_running_energy_equals_float64_cumsum() -> None:
    rng = np.random.default_rng(2)
    pcm = rng.integers(-32768, 32768, 48_123).astype(np.int16)
    pcm[:50] = -32768  # full scale: squares of exactly 1.0
    audio = to_float(pcm)
    ends = [0, 1, 159, 160, 25_600, 38_400, 48_000, 48_123]
    want = np.cumsum(np.square(audio, dtype=np.float64))
    expect = [0.0] + [float(want[end - 1]) for end in ends[1:]]
    assert _energy_to(audio, ends, 160, exact=True) == expect
    # Float input (not k / 32768) goes the plain way.
    odd = (rng.standard_normal(30_000) * 0.1).astype(np.float32)
    want = np.cumsum(np.square(odd, dtype=np.float64))
    assert _energy_to(odd, [16_000, 30_000], 160, exact=False) == [want[15_999], want[-1]]


def test_to_float_scales_int16_and_cleans_floats() -> None:
    pcm = np.array([-32768, -1, 0, 1, 32767], np.int16)
    assert np.array_equal(to_float(pcm), pcm.astype(np.float32) / 32768.0)
    assert to_float(pcm).dtype == np.float32
    dirty = np.array([0.5, np.nan, np.inf, -np.inf], np.float64)
    assert to_float(dirty).tolist() == [0.5, 0.0, 1.0, -1.0]
    clean = np.array([0.25, -0.5], np.float32)
    out = to_float(clean)
    out[0] = 9.0  # a copy: the caller's buffer is not touched
    assert clean[0] == 0.25
