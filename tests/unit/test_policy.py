"""policy.decide from a table: every check alone, combinations, and precedence."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from voxgate.policy import NOT_LOCKED, LockoutState, Verdict, decide


# The contract's result types (scoring.SpeakerResult, stt.LivenessResult, replay.ReplayResult)
# with the same fields; policy reads them structurally.
@dataclass(frozen=True)
class Speaker:
    user: str | None
    score: float = 0.0
    raw_cosine: float = 0.0
    threshold: float = 0.5
    accepted: bool = True
    quality_ok: bool = True
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Liveness:
    ok: bool
    score: float = 0.0
    threshold: float = 0.5
    transcript: str | None = None
    reason: str | None = None

    @property
    def retry(self) -> bool:
        return self.reason in ("no_speech", "too_short", "too_long")


@dataclass(frozen=True)
class Replay:
    is_replay: bool
    similarity: float = 0.0
    matched_at: float | None = None


ALICE = Speaker("alice", score=0.8, accepted=True)
STRANGER = Speaker("alice", score=0.1, accepted=False)
NOBODY = Speaker(None, score=0.1, accepted=False)
NOISY = Speaker("alice", accepted=False, quality_ok=False, reasons=("clipped",))
UNREAD = Speaker("alice", accepted=False, reasons=("store_unreadable",))  # damaged voiceprints
LIVE = Liveness(True, transcript="4 7 1 9 2")
DEAD = Liveness(False, transcript="4 7", reason="wrong_digits")
FRESH = Replay(False)
REPLAYED = Replay(True, similarity=0.99, matched_at=1.0)
LOCKED = LockoutState(locked=True, until=100.0, user_failures=5, scope="user")

CASES = [
    # name, speaker, liveness, replay, lockout, expired, expected verdict
    (
        "voiceprints unreadable",
        UNREAD,
        LIVE,
        FRESH,
        NOT_LOCKED,
        False,
        Verdict("denied", None, ("store_unreadable",)),
    ),
    ("all pass", ALICE, LIVE, FRESH, NOT_LOCKED, False, Verdict("granted", "alice", ())),
    ("replay check off", ALICE, LIVE, None, NOT_LOCKED, False, Verdict("granted", "alice", ())),
    (
        "voice mismatch",
        STRANGER,
        LIVE,
        FRESH,
        NOT_LOCKED,
        False,
        Verdict("denied", None, ("no_match",)),
    ),
    (
        "identify finds nobody",
        NOBODY,
        LIVE,
        FRESH,
        NOT_LOCKED,
        False,
        Verdict("denied", None, ("no_match",)),
    ),
    (
        "wrong answer",
        ALICE,
        DEAD,
        FRESH,
        NOT_LOCKED,
        False,
        Verdict("denied", None, ("liveness_failed",)),
    ),
    (
        "no liveness result",
        ALICE,
        None,
        FRESH,
        NOT_LOCKED,
        False,
        Verdict("denied", None, ("liveness_missing",)),
    ),
    (
        "replayed audio",
        ALICE,
        LIVE,
        REPLAYED,
        NOT_LOCKED,
        False,
        Verdict("denied", None, ("replay",)),
    ),
    ("locked out", ALICE, LIVE, FRESH, LOCKED, False, Verdict("denied", None, ("locked_out",))),
    (
        "too late",
        ALICE,
        LIVE,
        FRESH,
        NOT_LOCKED,
        True,
        Verdict("denied", None, ("challenge_expired",)),
    ),
    ("no speech", None, LIVE, FRESH, NOT_LOCKED, False, Verdict("retry", None, ("no_speech",))),
    ("poor audio", NOISY, LIVE, FRESH, NOT_LOCKED, False, Verdict("retry", None, ("low_quality",))),
    # A denial outranks a retry, and every failing reason is reported in check order.
    (
        "no speech + wrong answer",
        None,
        DEAD,
        FRESH,
        NOT_LOCKED,
        False,
        Verdict("denied", None, ("liveness_failed", "no_speech")),
    ),
    (
        "everything wrong",
        STRANGER,
        DEAD,
        REPLAYED,
        LOCKED,
        True,
        Verdict(
            "denied",
            None,
            ("locked_out", "challenge_expired", "replay", "liveness_failed", "no_match"),
        ),
    ),
]


@pytest.mark.parametrize(
    ("speaker", "liveness", "replay", "lockout", "expired", "want"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_decide(
    speaker: Speaker | None,
    liveness: Liveness | None,
    replay: Replay | None,
    lockout: LockoutState,
    expired: bool,
    want: Verdict,
) -> None:
    assert decide(speaker, liveness, replay, lockout, expired) == want


def test_liveness_optional_when_challenge_is_off() -> None:
    assert decide(ALICE, None, None, NOT_LOCKED, False, require_liveness=False) == Verdict(
        "granted", "alice", ()
    )
    # ...but a failed liveness check still denies.
    got = decide(ALICE, DEAD, None, NOT_LOCKED, False, require_liveness=False)
    assert got.outcome == "denied"


@pytest.mark.parametrize(
    ("verdict", "counts"),
    [
        (Verdict("denied", None, ("no_match",)), True),
        (Verdict("denied", None, ("liveness_failed", "no_match")), True),
        (Verdict("denied", None, ("locked_out", "no_match")), False),
        (Verdict("denied", None, ("liveness_failed", "store_unreadable")), False),
        (Verdict("retry", None, ("no_speech",)), False),
        (Verdict("granted", "alice", ()), False),
    ],
)
def test_which_verdicts_count_toward_lockout(verdict: Verdict, counts: bool) -> None:
    assert verdict.counts_as_failure is counts


def test_remaining_time() -> None:
    assert LOCKED.remaining_s(40.0) == 60.0
    assert LOCKED.remaining_s(140.0) == 0.0
    assert NOT_LOCKED.remaining_s(0.0) == 0.0


@pytest.mark.parametrize("reason", ["no_speech", "too_short", "too_long"])
def test_unusable_answer_is_a_retry_that_does_not_count(reason: str) -> None:
    """An answer the speech check cannot judge (nothing said, a cough, a monologue past
    stt.max_answer_s) is 'try again', like the quality gate: it grants nothing, so an
    attacker gains nothing, and a person who said nothing is not pushed towards a lockout."""
    from voxgate.stt.base import LivenessResult

    unusable = LivenessResult(False, 0.0, 0.0, None, reason, "checks")
    got = decide(ALICE, unusable, FRESH, NOT_LOCKED, False)
    assert got == Verdict("retry", None, ("liveness_retry",))
    assert not got.counts_as_failure
    # Still never a grant, and a voice that does not match is still a counted denial.
    wrong_voice = decide(STRANGER, unusable, FRESH, NOT_LOCKED, False)
    assert wrong_voice == Verdict("denied", None, ("liveness_retry", "no_match"))
    assert wrong_voice.counts_as_failure
    assert decide(ALICE, unusable, REPLAYED, NOT_LOCKED, False).outcome == "denied"
    # A wrong answer stays a counted denial.
    wrong = LivenessResult(False, -3.0, -1.4, "1 2", "prompt_mismatch", "phonemes")
    assert decide(ALICE, wrong, FRESH, NOT_LOCKED, False).counts_as_failure
