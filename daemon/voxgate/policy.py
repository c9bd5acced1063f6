"""The access policy: a pure function from stage results to an outcome and its reasons.

No I/O, no clock, no state: the loop gathers the speaker score, the liveness check, the
replay check and the lockout state, and `decide` turns them into granted / denied / retry.
The stage results are typed structurally (Protocols), so this module imports no stage.

Reason codes (stable strings; they go into decisions, the audit log and metrics):
  locked_out          the claimed user or the door is in back-off
  challenge_expired   the answer came after the challenge expired (denied; counted by the
                      lockout only together with a failed check, see counts_as_failure)
  replay              the audio matches an earlier attempt
  liveness_missing    a challenge was required but no liveness result exists
  liveness_failed     the spoken answer did not match the challenge
  liveness_retry      the answer could not be judged (nothing said, too short, longer than
                      stt.max_answer_s): try again; not counted by the lockout
  no_speech           no speaker embedding could be made (too little speech)
  low_quality         the audio was usable for nothing trustworthy: too little speech, too
                      noisy, or clipped (more than speaker.max_clipped of its samples in
                      full-scale runs: a hot microphone); the speaker's reasons, and the
                      audit line's quality_reasons, say which; not counted by the lockout
  no_match            the voice did not match (verify) or matched nobody (identify)
  store_unreadable    the door could not read its voiceprints (damaged file): nothing compared
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Outcome = Literal["granted", "denied", "retry"]


class SpeakerLike(Protocol):
    """What policy reads of scoring.SpeakerResult."""

    @property
    def user(self) -> str | None: ...
    @property
    def accepted(self) -> bool: ...
    @property
    def quality_ok(self) -> bool: ...
    @property
    def reasons(self) -> tuple[str, ...]: ...


class LivenessLike(Protocol):
    """What policy reads of stt.LivenessResult."""

    @property
    def ok(self) -> bool: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def retry(self) -> bool: ...


class ReplayLike(Protocol):
    """What policy reads of replay.ReplayResult."""

    @property
    def is_replay(self) -> bool: ...


@dataclass(frozen=True)
class LockoutState:
    """Back-off state for one attempt: the claimed user's and the door's, combined."""

    locked: bool = False
    until: float | None = None  # wall-clock time the back-off ends
    user_failures: int = 0
    device_failures: int = 0  # consecutive (anyone's success starts it over)
    device_window_failures: int = 0  # within lockout.device_window_s (no success clears them)
    scope: Literal["user", "device", "both"] | None = None  # who is locked

    def remaining_s(self, now: float) -> float:
        return 0.0 if self.until is None else max(0.0, self.until - now)


NOT_LOCKED = LockoutState()


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    user: str | None
    reasons: tuple[str, ...]

    @property
    def counts_as_failure(self) -> bool:
        """Whether lockout counts this attempt. Attempts refused by a lockout do not extend
        it (so a locked door cannot be kept locked forever by one passer-by); 'retry' (no
        usable speech) and a door that cannot read its voiceprints are not a guess at
        anyone's voice. A late answer (challenge_expired) counts only when something else
        failed too: the voice and the answer are still checked, so a wrong voice or a wrong
        answer given late counts as it would on time (answering late probes nothing for
        free), while a right person who was slow is not pushed towards a lockout."""
        reasons = set(self.reasons)
        if self.outcome != "denied" or {"locked_out", "store_unreadable"} & reasons:
            return False
        return bool(reasons - _NOT_A_FAILURE)


# Reasons that, alone or together, are no failed guess: lateness and the retry reasons.
_NOT_A_FAILURE = frozenset({"challenge_expired", "liveness_retry", "no_speech", "low_quality"})

# The most severe outcome among the failed checks wins; every failing reason is kept.
_RANK: dict[Outcome, int] = {"granted": 0, "retry": 1, "denied": 2}


def decide(
    speaker: SpeakerLike | None,
    liveness: LivenessLike | None,
    replay: ReplayLike | None,
    lockout: LockoutState,
    challenge_expired: bool,
    *,
    require_liveness: bool = True,
) -> Verdict:
    """Combine the stage results into a verdict.

    speaker None means no embedding could be made; liveness None means no challenge was
    checked (an error when require_liveness); replay None means the replay check is off.
    Only a voice match with every other check passing grants. The verdict names a user
    only when granted: a denial must not tell a stranger whom their voice came closest to.
    """
    found: list[tuple[Outcome, str]] = []
    if lockout.locked:
        found.append(("denied", "locked_out"))
    if challenge_expired:
        found.append(("denied", "challenge_expired"))
    if replay is not None and replay.is_replay:
        found.append(("denied", "replay"))
    if liveness is None:
        if require_liveness:
            found.append(("denied", "liveness_missing"))
    elif not liveness.ok:
        # An answer that could not be judged grants nothing, so retrying gains an attacker
        # nothing; counting it would lock out a person who hesitated or said nothing.
        found.append(
            ("retry", "liveness_retry") if liveness.retry else ("denied", "liveness_failed")
        )
    if speaker is None:
        found.append(("retry", "no_speech"))
    elif not speaker.quality_ok:
        found.append(("retry", "low_quality"))
    elif "store_unreadable" in speaker.reasons:
        found.append(("denied", "store_unreadable"))
    elif not speaker.accepted or speaker.user is None:
        found.append(("denied", "no_match"))

    if not found:
        assert speaker is not None and speaker.user is not None  # implied by the checks
        return Verdict("granted", speaker.user, ())
    outcome = max((o for o, _ in found), key=_RANK.__getitem__)
    return Verdict(outcome, None, tuple(r for _, r in found))
