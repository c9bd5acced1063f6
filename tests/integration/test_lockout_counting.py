"""What the lockout counts, through service.attempt.conclude: the real scorer (a real
encrypted voiceprint store), the real quality gate on espeak-ng speech, the real policy and
a real lockout file. Only the embedding and the speech check's result are given (their
streams): which voice and which answer is what each case is about."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from service_standins import espeak, silence

from voxgate.config import VoxgateConfig
from voxgate.lockout import LockoutBook
from voxgate.scoring import Scorer
from voxgate.service.attempt import Attempt, conclude
from voxgate.service.stages import Stages
from voxgate.stt.base import LivenessResult
from voxgate.vad import Utterance
from voxgate.voiceprints import VoiceprintStore

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="needs espeak-ng for test speech"
)

MODEL = "test-model"
ALICE = np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32)
STRANGER = np.array([0.0, 1.0, 0.0, 0.0], dtype=np.float32)
RIGHT = LivenessResult(True, 1.0, 0.5, "4 7 1 9 2", None, "templates")
TOO_SHORT = LivenessResult(False, 0.0, 0.5, None, "too_short", "templates")


@dataclass
class Given:
    """A stream whose finish() gives a fixed result (the embedding, the speech check)."""

    value: Any

    def finish(self) -> Any:
        return self.value


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return np.concatenate([silence(0.3), espeak("four, seven, one, nine, two"), silence(0.3)])


@pytest.fixture
def door(tmp_path: Path) -> tuple[Stages, VoxgateConfig, LockoutBook]:
    cfg = VoxgateConfig.model_validate(
        {
            "data_dir": str(tmp_path),
            "speaker": {"threshold": 0.8},
            "lockout": {"max_failures": 5, "device_max_failures": 3, "initial_s": 60},
        }
    )
    store = VoiceprintStore(tmp_path / "voiceprints.db", b"k" * 32)
    store.add_user("alice", np.stack([ALICE, ALICE]), MODEL)
    embedder = type("Embedder", (), {"model_id": MODEL})()
    stages = Stages(
        source=None,
        embedder=embedder,  # type: ignore[arg-type]
        scorer=Scorer(store, embedder, cfg.speaker, None),
        link=None,  # type: ignore[arg-type]
        make_decision=lambda r: r,
    )
    return stages, cfg, LockoutBook(tmp_path / "lockout.db", cfg.lockout)


def attempt(
    door: tuple[Stages, VoxgateConfig, LockoutBook],
    pcm: np.ndarray,
    claimed: str | None,
    voice: np.ndarray,
    answer: LivenessResult,
) -> tuple[str, tuple[str, ...], bool]:
    stages, cfg, book = door
    a = Attempt(claimed, emb_stream=Given(voice), prompt_stream=Given(answer))
    utt = Utterance(pcm, 0.0, len(pcm) / 16000, len(pcm) / 16000)
    c = conclude(a, utt, stages, book, cfg, 1000.0, lambda: 1000.0)
    return c.result.verdict.outcome, c.result.verdict.reasons, c.record is not None


def test_names_that_do_not_exist_and_identify_mode_count_against_the_door(
    door: tuple[Stages, VoxgateConfig, LockoutBook], speech: np.ndarray
) -> None:
    book = door[2]
    assert attempt(door, speech, "nobody", STRANGER, RIGHT) == ("denied", ("no_match",), True)
    assert attempt(door, speech, "NoBody2", ALICE, RIGHT) == ("denied", ("no_match",), True)
    st = book.state("nobody", 1000.0)
    assert (st.device_failures, st.device_window_failures, st.user_failures) == (2, 2, 1)
    # Identify mode: nobody matched, no name to count against but the door's.
    assert attempt(door, speech, None, STRANGER, RIGHT) == ("denied", ("no_match",), True)
    st = book.state(None, 1000.0)
    assert st.locked and st.scope == "device" and st.until == 1060.0


def test_retries_do_not_count_and_a_locked_out_attempt_neither_counts_nor_extends(
    door: tuple[Stages, VoxgateConfig, LockoutBook], speech: np.ndarray
) -> None:
    book = door[2]
    short = speech[: int(0.5 * 16000) + 4800]  # the gate's retry: under 1 s of speech
    for voice in (ALICE, STRANGER):
        assert attempt(door, short, "alice", voice, RIGHT) == ("retry", ("low_quality",), False)
    # The voice matched, the answer could not be judged: a retry. (A voice that does not
    # match is a counted denial whatever the answer was.)
    assert attempt(door, speech, "alice", ALICE, TOO_SHORT) == (
        "retry",
        ("liveness_retry",),
        False,
    )
    st = book.state("alice", 1000.0)
    assert (st.device_failures, st.device_window_failures, st.user_failures) == (0, 0, 0)
    assert attempt(door, speech, "alice", STRANGER, TOO_SHORT)[2]
    assert attempt(door, speech, "x", STRANGER, RIGHT)[2]
    assert attempt(door, speech, "y", STRANGER, RIGHT)[2]
    locked = book.state(None, 1000.0)
    assert locked.locked and locked.until == 1060.0
    # While locked: refused without counting; the lock keeps its end, the counts stay.
    for claimed, voice in (("alice", ALICE), ("z", STRANGER), (None, STRANGER)):
        outcome, reasons, counted = attempt(door, speech, claimed, voice, RIGHT)
        assert outcome == "denied" and "locked_out" in reasons and not counted
    st = book.state("alice", 1000.0)
    assert (st.until, st.device_failures, st.device_window_failures) == (1060.0, 3, 3)
    assert st.user_failures == 1


def test_an_attempt_the_lockout_does_not_count_tells_nothing_about_the_voice(
    door: tuple[Stages, VoxgateConfig, LockoutBook], speech: np.ndarray, tmp_path: Path
) -> None:
    """A retry (too little speech for the quality gate) is not counted by the lockout, but
    the scorer still scores it and its decision carried the speaker score: a stranger who
    keeps every attempt just short of the gate (or noisy) read how close their voice came,
    as often as they liked, without a single counted failure, and could tune a voice against
    it. Found sending short answers with a stranger's voice and reading the decisions."""
    from voxgate.decision import Issuer, SequenceCounter

    stages, cfg, book = door
    issuer = Issuer("door", SequenceCounter(tmp_path / "seq.json"), ttl_s=5)

    def decision(pcm: np.ndarray, voice: np.ndarray, answer: LivenessResult) -> Any:
        a = Attempt("alice", emb_stream=Given(voice), prompt_stream=Given(answer))
        utt = Utterance(pcm, 0.0, len(pcm) / 16000, len(pcm) / 16000)
        done = conclude(a, utt, stages, book, cfg, 1000.0, lambda: 1000.0)
        return issuer.from_attempt(done.result)

    short = speech[: int(0.5 * 16000) + 4800]
    near = np.array([0.7, 0.7, 0.0, 0.0], dtype=np.float32)  # a voice half-way to alice's
    for d in (decision(short, near, RIGHT), decision(speech, ALICE, TOO_SHORT)):
        assert d.outcome == "retry" and d.reasons in (("low_quality",), ("liveness_retry",))
        assert (d.speaker_score, d.speaker_threshold, d.liveness_score) == (None, None, None)
        assert d.liveness_ok is None and d.liveness_threshold is None
    assert book.state("alice", 1000.0).user_failures == 0
    # A counted denial still says how it failed (it costs a failure).
    d = decision(speech, near, RIGHT)
    assert d.reasons == ("no_match",) and d.speaker_score == pytest.approx(0.7071, abs=1e-3)
