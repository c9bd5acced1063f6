"""Endpointing on speech, silence, noise, clipping and endless speech."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.audio_helpers import espeak, silence
from voxgate.config.audio import VadConfig
from voxgate.vad import Endpointer, SpeechAudio, SpeechEnded, SpeechStarted, segment


@pytest.fixture(scope="module")
def phrase(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    pcm = espeak("three seven one nine four", tmp_path_factory.mktemp("v") / "p.wav")
    active = np.flatnonzero(np.abs(pcm) > 500)
    return pcm[active[0] : active[-1]]  # the speech itself, without espeak's own padding


def test_one_phrase_between_silences(phrase: np.ndarray) -> None:
    pcm = np.concatenate([silence(1.5), phrase, silence(1.5)])
    (utt,) = segment(pcm)
    true_start, true_end = 1.5, 1.5 + len(phrase) / 16000
    assert abs(utt.start_s - (true_start - 0.3)) < 0.15  # 300 ms pre-roll before onset
    assert true_end <= utt.end_s <= true_end + 0.6  # hang-over of 500 ms
    assert utt.speech_s > 0.6 * len(phrase) / 16000
    assert utt.pcm.dtype == np.int16 and len(utt.pcm) == round(utt.duration_s * 16000)
    assert not utt.split


def test_two_phrases_are_two_utterances(phrase: np.ndarray) -> None:
    pcm = np.concatenate([silence(1), phrase, silence(1.5), phrase, silence(1)])
    utts = segment(pcm)
    assert len(utts) == 2
    assert utts[0].end_s < utts[1].start_s


def test_events_stream_while_speaking(phrase: np.ndarray) -> None:
    ep = Endpointer(VadConfig(), 30)
    pcm = np.concatenate([silence(1), phrase, silence(1)])
    pcm = pcm[: len(pcm) // 480 * 480]
    kinds: list[str] = []
    streamed: list[np.ndarray] = []
    for frame in pcm.reshape(-1, 480):
        for ev in ep.feed(frame):
            kinds.append(type(ev).__name__)
            if isinstance(ev, SpeechStarted):
                streamed.append(ev.pre_roll)
            elif isinstance(ev, SpeechAudio):
                streamed.append(ev.pcm)
            elif isinstance(ev, SpeechEnded):
                assert ev.utterance is not None
                # Everything later stages saw while listening is exactly the utterance.
                assert np.array_equal(np.concatenate(streamed), ev.utterance.pcm)
    assert kinds[0] == "SpeechStarted" and kinds[-1] == "SpeechEnded"
    assert kinds.count("SpeechEnded") == 1


def test_silence_gives_nothing() -> None:
    assert segment(silence(60)) == []


def test_white_noise_does_not_crash_and_stays_bounded() -> None:
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(16000 * 30) * 3000).astype(np.int16)
    for u in segment(noise):
        assert u.duration_s <= 15.0 + 0.03


def test_clipped_speech_is_still_found(phrase: np.ndarray) -> None:
    loud = np.clip(phrase.astype(np.int32) * 20, -32768, 32767).astype(np.int16)
    assert (np.abs(loud) >= 32767).mean() > 0.1  # really clipped
    utts = segment(np.concatenate([silence(1), loud, silence(1)]))
    assert len(utts) == 1


def test_too_short_blip_is_dropped() -> None:
    t = np.arange(int(0.12 * 16000)) / 16000
    blip = (8000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    assert segment(np.concatenate([silence(1), blip, silence(1)])) == []


def test_ten_minutes_of_speech_is_split_and_memory_bounded(phrase: np.ndarray) -> None:
    cfg = VadConfig(max_utterance_ms=10000)
    frames_per_loop = len(phrase) // 480
    loop = phrase[: frames_per_loop * 480].reshape(-1, 480)
    total = int(600 / 0.03)

    def stream() -> Iterator[np.ndarray]:  # generated on the fly: no 10-minute array in memory
        for i in range(total):
            yield loop[i % frames_per_loop]

    ep = Endpointer(cfg, 30)
    longest, n_split, speech = 0.0, 0, 0.0
    tracemalloc.start()
    for frame in stream():
        for ev in ep.feed(frame):
            if isinstance(ev, SpeechEnded) and ev.utterance is not None:
                longest = max(longest, ev.utterance.duration_s)
                n_split += ev.utterance.split
                speech += ev.utterance.duration_s
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert longest <= 10.0 + 0.03
    assert n_split >= 50  # continuous speech was cut at the cap, again and again
    assert speech > 500  # and it was kept, not thrown away
    assert peak < 4 * 1024 * 1024  # ~10 s of audio at most, not 10 minutes


def test_wrong_frame_is_refused_clearly() -> None:
    ep = Endpointer(VadConfig(), 30)
    with pytest.raises(ValueError, match="expected 480 int16 samples"):
        ep.feed(np.zeros(320, dtype=np.int16))
    with pytest.raises(ValueError, match="int16"):
        ep.feed(np.zeros(480, dtype=np.float32))


def test_flush_closes_an_open_utterance(phrase: np.ndarray, tmp_path: Path) -> None:
    utts = segment(np.concatenate([silence(1), phrase]))  # the stream ends mid-speech
    assert len(utts) == 1


def _room(seconds: float, dbfs: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 32767 * 10 ** (dbfs / 20), int(seconds * 16000))
    return np.clip(noise, -32768, 32767).astype(np.int16)


def _starts(ep: Endpointer, pcm: np.ndarray) -> int:
    n = ep.frame_len
    return sum(
        isinstance(e, SpeechStarted)
        for i in range(0, len(pcm) - n + 1, n)
        for e in ep.feed(pcm[i : i + n])
    )


def test_a_restarted_endpointer_does_not_take_the_room_for_speech() -> None:
    """After the door's spoken prompt the daemon starts a new endpointer. A new webrtcvad
    calls its first ~0.5 s of room noise (here -50 dBFS) speech, so an answer nobody gave
    began there; restart() keeps the webrtcvad that has learnt the room."""
    ep = Endpointer(VadConfig())
    assert _starts(ep, _room(3.0, -50, 0)) == 1  # the first ~0.5 s of a new webrtcvad
    assert _starts(ep, _room(2.0, -50, 1)) == 0  # adapted
    assert _starts(ep.restart(), _room(2.0, -50, 2)) == 0
    assert _starts(ep.restart(VadConfig(aggressiveness=3)), _room(2.0, -50, 3)) == 0
    assert _starts(Endpointer(VadConfig()), _room(2.0, -50, 2)) == 1  # what the loop did
