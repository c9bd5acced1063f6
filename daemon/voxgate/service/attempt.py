"""One attempt: what the loop keeps while it runs, and how it is concluded.

conclude() finishes the streams (only the last embedding window and the decoder's end are
left, because the audio was pushed while it was spoken), scores behind the quality gate,
checks replay and lockout, asks policy.decide and counts the result in the lockout book.
Publishing, auditing and metrics stay in the loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from voxgate.config import VoxgateConfig
from voxgate.lockout import LockoutBook, RecordResult
from voxgate.policy import LivenessLike, ReplayLike, SpeakerLike, decide
from voxgate.quality import assess
from voxgate.service.stages import AttemptResult, Challenge, Stages
from voxgate.vad import Utterance
from voxgate.voiceprints import StoreError

log = logging.getLogger(__name__)


@dataclass
class Attempt:
    claimed_user: str | None
    challenge: Challenge | None = None
    emb_stream: Any = None  # open while the answer is being spoken
    prompt_stream: Any = None  # the speaker-independent engine check, when needed
    user_streams: dict[str, Any] = field(default_factory=dict)  # checks on own digits
    # On the never-stepped clock (clocks.elapsed): a clock step while the person answers
    # neither cuts nor stretches the time to answer. The challenge's own issued_at and
    # expires_at (wall clock) are what a display shows.
    answer_started: float | None = None  # when the answer's first speech began
    deadline: float | None = None  # when the challenge expires
    ended_at: float = 0.0  # monotonic, end of speech

    @property
    def answering(self) -> bool:
        return self.emb_stream is not None


@dataclass(frozen=True)
class Unscored:
    """The speaker result when the voiceprint store could not be read (policy: denied,
    store_unreadable, not counted by the lockout; the decision carries no score)."""

    user: str | None
    accepted: bool = False
    quality_ok: bool = True
    reasons: tuple[str, ...] = ("store_unreadable",)
    score: float | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class Conclusion:
    result: AttemptResult
    lock_user: str | None  # whose lockout counter the attempt touched (besides the door's)
    record: RecordResult | None  # None when the attempt did not count (retry, locked out)


def conclude(
    a: Attempt,
    utt: Utterance,
    stages: Stages,
    lockout: LockoutBook,
    cfg: VoxgateConfig,
    now: float,
    clock: Callable[[], float],
) -> Conclusion:
    """`now`: the wall clock when the attempt ended; `clock`: read again for the lockout."""
    speaker: SpeakerLike | None = None
    try:
        emb = a.emb_stream.finish()
    except stages.no_speech_errors as exc:
        log.info("no embedding: %s", exc)
        emb = None
    # Without templates of anyone's (every passphrase) the check does not depend on who
    # spoke: finished first, it can tell the quality gate that a short phrase was complete.
    early = None if a.user_streams else _liveness(a, None, cut=utt.split)
    if emb is not None:
        # The quality gate: too little net speech or too much noise is a retry, not a guess.
        # Live: an utterance without pauses, despite its pre-roll and hangover, is room noise
        # the VAD took for speech. A piece cut at vad.max_utterance_ms (utt.split) has no
        # hangover, but speech that long (15 s by default) has pauses enough, and noise the
        # VAD takes for speech runs to that limit: judged the same way. So is an utterance
        # cut off by the end of a file or pipe source: nobody is left to answer anyway.
        # (Not with a vad.hangover_ms under 0.45 s, which leaves no such pauses.)
        quality = assess(utt.pcm, cfg.vad, live=True)
        need = _min_speech_s(a, early, cfg)
        try:
            if a.claimed_user:
                speaker = stages.scorer.verify(emb, a.claimed_user, quality, need)
            else:
                speaker = stages.scorer.identify(emb, quality, need)
        except StoreError as exc:
            # A damaged, unreadable or replaced voiceprint file: nothing to compare with.
            # The lock still gets an answer (denied, store_unreadable, no score); the next
            # attempt reads the store again.
            log.error("cannot read the voiceprints, attempt denied: %s", exc)
            speaker = Unscored(a.claimed_user)
    identified = speaker.user if speaker is not None and speaker.accepted else None
    liveness = early if early is not None else _liveness(a, a.claimed_user or identified, utt.split)
    # Everyone who might have answered has templates (no engine ran) and the voice matched
    # nobody: no check was owed, as nobody can be granted. Reported as liveness_missing it
    # turned the quality gate's retry into a counted denial and blamed an impostor's
    # answer on a missing check.
    unchecked = liveness is None and identified is None and bool(a.user_streams)
    # Kept for later comparison only when the voice matched someone enrolled (replay.py),
    # under that person, so that erasing them drops it.
    matched = speaker is not None and speaker.accepted
    replay: ReplayLike | None = (
        stages.replay.check_and_add(
            utt.pcm, now, keep=matched, user=speaker.user if speaker is not None else None
        )
        if stages.replay is not None
        else None
    )
    lock_user = a.claimed_user or identified
    expired = (
        a.deadline is not None and a.answer_started is not None and a.answer_started > a.deadline
    )
    # The lockout gets the time of its own call, not `now`: the embedding, the speech check
    # and the replay check ran since (seconds on a Pi), and the book follows clock steps at
    # its call. With a step back in between, a running lock looked ended for this attempt;
    # with a step forward, a lock this attempt started ended at once.
    verdict = decide(
        speaker,
        liveness,
        replay,
        lockout.state(lock_user, clock()),
        expired,
        require_liveness=cfg.challenge.mode != "off" and not unchecked,
    )
    record = None
    if verdict.outcome == "granted" or verdict.counts_as_failure:
        record = lockout.record(lock_user, verdict.outcome == "granted", clock())
    result = AttemptResult(
        device_id=cfg.device_id,
        verdict=verdict,
        claimed_user=a.claimed_user,
        speaker=speaker,
        liveness=liveness,
        replay=replay,
        challenge=a.challenge,
        issued_at=now,
        ttl_s=cfg.mqtt.decision_ttl_s,
        speech_s=utt.speech_s,
    )
    return Conclusion(result, lock_user, record)


def _min_speech_s(a: Attempt, liveness: LivenessLike | None, cfg: VoxgateConfig) -> float | None:
    """The quality gate's net-speech minimum for this attempt; None: speaker.min_speech_s.

    A short passphrase ("open the gate": 0.96 s through the endpointer) was always under
    speaker.min_speech_s (1 s), so every attempt was a retry and the door never opened.
    When the prompt check heard the whole phrase, challenge.passphrase_min_speech_s
    applies instead (when lower). An answer it did not accept (cut off, another phrase,
    nothing said) keeps the usual minimum, and digit challenges always do."""
    if getattr(a.challenge, "mode", None) == "passphrase" and liveness is not None and liveness.ok:
        return min(cfg.speaker.min_speech_s, cfg.challenge.passphrase_min_speech_s)
    return None


def _liveness(a: Attempt, user: str | None, cut: bool = False) -> LivenessLike | None:
    """The prompt check for whoever the speaker turned out to be: their own digits when
    they have templates, else the engine; only that stream is finished.

    `cut`: the VAD split the answer at vad.max_utterance_ms and more speech follows. The
    effective answer limit is then the VAD's (15 s by default, under stt.max_answer_s), so
    the answer is too long: a retry, and nothing is decoded. Judged on its first piece, a
    monologue was a wrong answer counted by the lockout, after seconds of decoding.
    """
    if cut and (a.user_streams or a.prompt_stream is not None):
        from voxgate.stt.base import TOO_LONG, LivenessResult

        log.info("the answer ran past vad.max_utterance_ms: too long")
        return LivenessResult(False, 0.0, 0.0, None, TOO_LONG, "checks")
    own = a.user_streams.get(user) if user is not None else None
    if own is not None:
        return own.finish()
    return a.prompt_stream.finish() if a.prompt_stream is not None else None
