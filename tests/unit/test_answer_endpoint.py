"""The answer's endpoint: challenge.answer_pause_ms while a challenge waits for its answer
(and while an enrollment at the door takes its takes), vad.hangover_ms for the wake."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from tests.audio_helpers import espeak, silence
from voxgate.config import VoxgateConfig
from voxgate.config.audio import VadConfig
from voxgate.config.stt import ChallengeConfig
from voxgate.service.loop import Daemon
from voxgate.service.states import State
from voxgate.service.users import UserServices
from voxgate.vad import Endpointer, segment
from voxgate.voiceprints import VoiceprintStore


@pytest.fixture(scope="module")
def digit(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    pcm = espeak("seven", tmp_path_factory.mktemp("d") / "d.wav")
    active = np.flatnonzero(np.abs(pcm) > 500)
    return pcm[active[0] : active[-1]]


def utterances(ep: Endpointer, pcm: np.ndarray) -> int:
    n = ep.frame_len
    frames = np.concatenate([pcm, np.zeros(-len(pcm) % n, np.int16)]).reshape(-1, n)
    return sum(
        1
        for f in frames
        for ev in ep.feed(f)
        if type(ev).__name__ == "SpeechEnded" and ev.utterance is not None
    ) + sum(1 for ev in ep.flush() if ev.utterance is not None)


def test_a_longer_hangover_keeps_paused_digits_in_one_utterance(digit: np.ndarray) -> None:
    answer = np.concatenate([silence(0.5), digit, silence(0.8), digit, silence(0.8), digit])
    pcm = np.concatenate([answer, silence(2)])
    assert utterances(Endpointer(VadConfig(), 30), pcm) == 3  # the wake's 500 ms
    ep = Endpointer(VadConfig(), 30)
    ep.set_hangover_ms(1200)
    assert ep.hangover_ms == 1200
    assert utterances(ep, pcm) == 1
    # Set while the first digit is being spoken: applies to the utterance in progress.
    ep = Endpointer(VadConfig(), 30)
    n = ep.frame_len
    head = len(silence(0.5)) + len(digit) // 2
    head -= head % n
    for f in pcm[:head].reshape(-1, n):
        ep.feed(f)
    assert ep.in_speech
    ep.set_hangover_ms(1200)
    assert utterances(ep, pcm[head:]) == 1


def test_the_final_pause_does_not_count_towards_max_utterance_ms(digit: np.ndarray) -> None:
    """The utterance holds the pause that ends it; with a 1.2 s answer endpoint a short
    answer hit vad.max_utterance_ms in its final pause and was judged too long."""
    speech = np.concatenate([digit, silence(0.2), digit, silence(0.2), digit])
    cfg = VadConfig(max_utterance_ms=int(len(speech) / 16 + 300 + 400))  # pre-roll + 0.4 s
    ep = Endpointer(cfg, 30)
    ep.set_hangover_ms(1200)
    n = ep.frame_len
    pcm = np.concatenate([silence(0.5), speech, silence(2)])
    pcm = np.concatenate([pcm, np.zeros(-len(pcm) % n, np.int16)])
    ended = [
        ev.utterance
        for f in pcm.reshape(-1, n)
        for ev in ep.feed(f)
        if type(ev).__name__ == "SpeechEnded"
    ]
    assert len(ended) == 1 and ended[0] is not None and not ended[0].split
    # Speech that goes on is still cut at the limit.
    long = np.concatenate([silence(0.5)] + [digit, silence(0.1)] * 12 + [silence(2)])
    assert any(u.split for u in segment(long, VadConfig(max_utterance_ms=1500)))


def test_answer_pause_ms_bounds() -> None:
    assert ChallengeConfig().answer_pause_ms == 1200
    for bad in (299, 3001, "long"):
        with pytest.raises(ValidationError, match="answer_pause_ms"):
            VoxgateConfig.model_validate({"challenge": {"answer_pause_ms": bad}})


def test_the_daemon_uses_the_answer_endpoint_only_while_an_answer_is_due(
    tmp_path: Path,
) -> None:
    cfg = VoxgateConfig(data_dir=tmp_path)
    d = Daemon(cfg)
    d.endpointer = Endpointer(cfg.vad, cfg.audio.frame_ms)
    wake = d.endpointer.hangover_ms
    d._set_endpoint()
    assert d.endpointer.hangover_ms == wake  # idle: the wake phrase's endpoint
    d.sm.move(State.LISTENING)
    d._set_endpoint()
    assert d.endpointer.hangover_ms == wake
    d.sm.move(State.CHALLENGE)
    d._set_endpoint()
    assert d.endpointer.hangover_ms == 1200
    d.sm.move(State.VERIFYING)
    d._set_endpoint()
    assert d.endpointer.hangover_ms == wake
    d.sm.move(State.IDLE)

    # A VAD hang-over above answer_pause_ms is kept: the larger applies.
    d.endpointer = Endpointer(VadConfig(hangover_ms=1500), cfg.audio.frame_ms)
    d.sm.move(State.CHALLENGE)
    d._set_endpoint()
    assert d.endpointer.hangover_ms == 1500
    d.sm.move(State.IDLE)

    # Enrollment at the door: its takes are digit strings too.
    d.endpointer = Endpointer(cfg.vad, cfg.audio.frame_ms)
    store = VoiceprintStore(tmp_path / "voiceprints.db", os.urandom(32))
    try:
        d.users = UserServices(cfg, store, None, lambda e, **f: None)  # no take is embedded here
        d._set_endpoint()
        assert d.endpointer.hangover_ms == wake
        d.users.command_enroll_start({"user": "bob", "prompted": "yes"})
        d._set_endpoint()
        assert d.endpointer.hangover_ms == 1200
    finally:
        store.close()


def test_a_late_answer_counts_towards_the_lockout_only_when_something_else_failed(
    tmp_path: Path,
) -> None:
    """challenge_expired (the answer began after the challenge expired) grants nothing. It
    counted as a failure on its own, so a slow but right person was pushed towards a
    lockout. Alone (or with a retry reason) it no longer counts; a wrong voice, a wrong
    answer or a replay given late counts as it does on time, so a late answer probes
    nothing for free. Checked on a real lockout file."""
    from voxgate.config.service import LockoutConfig
    from voxgate.lockout import LockoutBook
    from voxgate.policy import NOT_LOCKED, decide
    from voxgate.scoring import SpeakerResult
    from voxgate.stt.base import LivenessResult

    right = SpeakerResult("alice", 0.8, 0.8, 0.5, True, True)
    wrong_voice = SpeakerResult("alice", 0.1, 0.1, 0.5, False, True)
    live = LivenessResult(True, 0.0, -1.4, "4 7 1 9 2", None, "phonemes")
    dead = LivenessResult(False, -3.0, -1.4, "1 2", "prompt_mismatch", "phonemes")
    short = LivenessResult(False, 0.0, 0.0, None, "too_short", "checks")
    cases = [
        (right, live, False),
        (right, short, False),
        (right, dead, True),
        (wrong_voice, live, True),
    ]
    book = LockoutBook(tmp_path / "lockout.db", LockoutConfig(max_failures=2))
    try:
        for speaker, liveness, counts in cases:
            v = decide(speaker, liveness, None, NOT_LOCKED, challenge_expired=True)
            assert v.outcome == "denied" and "challenge_expired" in v.reasons
            assert v.counts_as_failure is counts, (speaker, liveness, v)
        slow = decide(right, live, None, NOT_LOCKED, challenge_expired=True)
        for i in range(5):
            if slow.counts_as_failure:
                book.record("alice", False, 1000.0 + i)
        assert not book.state("alice", 1010.0).locked
    finally:
        book.close()
