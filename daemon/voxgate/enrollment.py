"""Enrollment: check each take (speech, clipping, noise), embed it, drop an inconsistent take.

Takes must be the same kind of speech as a door attempt (prompted digit strings through the
same microphone): enrolling from other speech costs a lot of accuracy (see
docs/speaker-verification.md). A rejected take is named with its reason, never averaged in.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from voxgate.cohort import centered_cosine
from voxgate.config.audio import VadConfig
from voxgate.logs import FACT
from voxgate.quality import Quality, assess, too_noisy
from voxgate.replay import SUB_HOP, Fingerprint, best_similarity, fingerprint
from voxgate.voiceprints import l2_normalize

log = logging.getLogger(__name__)

MIN_TAKE_SPEECH_S = 1.0  # a take with less net speech says little about the voice
OUTLIER_Z = 3.5  # robust z-score below which a take is inconsistent with the others
OUTLIER_MIN_GAP = 0.08  # ... and at least this far (cosine) below the median take
TWO_VOICES_MIN_GROUP = 2  # first pass: a lone odd take is the outlier rule's to judge
# Replay-fingerprint similarity (replay.best_similarity) at or above which a take is the
# same recording as an earlier one, altered (resampled, re-encoded, gain, trimmed, a little
# noise): two genuine takes of one speaker scored at most 0.555, altered copies at least
# 0.759 on all four sets; level from fsdd + vcc2018_eval (benchmarks/near_duplicate_takes.py).
NEAR_DUPLICATE = 0.65
# What the log lines below also hand back to the caller (logs.FACT): `voxgate enroll` reports
# these itself, so its command line leaves the log lines out.
TWO_VOICES_FACT = "enroll.two_voices"  # EnrollResult.problems
PROMPT_MISMATCH_FACT = "enroll.prompt_mismatch"  # attach_templates' return
NO_TEMPLATES_FACT = "enroll.no_templates"  # no TEMPLATES_META in the meta


@dataclass(frozen=True)
class TakeReport:
    index: int  # 1-based take number, as shown to the person enrolling
    quality: Quality
    accepted: bool
    # too_short / clipped / too_noisy / outlier / no_embedding / other_voice (the smaller of
    # two groups of takes that sound like two people; the enrollment is then refused) /
    # duplicate (the same recording as take `same_as`: the same samples, or them altered)
    reason: str | None = None
    consistency: float | None = None  # cosine to the mean of the other accepted takes
    same_as: int | None = None  # for a duplicate: the earlier take it repeats


@dataclass(frozen=True)
class EnrollResult:
    embeddings: np.ndarray  # (accepted takes, dim)
    takes: tuple[TakeReport, ...]
    speech_s: float  # net speech over accepted takes
    problems: tuple[str, ...]  # why enrollment cannot be stored yet (empty when ok)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def accepted(self) -> tuple[TakeReport, ...]:
        return tuple(t for t in self.takes if t.accepted)

    @property
    def rejected(self) -> tuple[TakeReport, ...]:
        return tuple(t for t in self.takes if not t.accepted)


def take_problem(q: Quality, cfg: Any) -> str | None:
    """Why a take's audio is unusable, or None."""
    if q.speech_s < MIN_TAKE_SPEECH_S:
        return "too_short"
    if q.clipped > cfg.max_clipped:  # a take at least as clean as an attempt the door scores
        return "clipped"
    if too_noisy(q, cfg.enroll_min_snr_db, cfg.enroll_min_snr_db_no_pauses):
        return "too_noisy"
    return None


def find_outliers(embeddings: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Indexes of takes inconsistent with the rest, and each take's leave-one-out cosine.

    A take is an outlier when its cosine to the mean of the others is far below the median
    (robust z-score), e.g. another person spoke or the take was mostly noise. At most a third
    of the takes can be dropped, worst first, so a noisy but consistent set is not emptied.
    """
    e = l2_normalize(embeddings)
    n = len(e)
    if n < 3:
        return [], np.ones(n)
    total = e.sum(axis=0)
    loo = np.array([float(l2_normalize(total - e[i]) @ e[i]) for i in range(n)])
    med = np.median(loo)
    mad = 1.4826 * np.median(np.abs(loo - med)) + 0.01
    z = (loo - med) / mad
    order = np.argsort(z)
    out = [int(i) for i in order if z[i] < -OUTLIER_Z and med - loo[i] > OUTLIER_MIN_GAP]
    return out[: n // 3], loo


@dataclass(frozen=True)
class Split:
    first: tuple[int, ...]  # indexes (0-based, into the embeddings given) of the larger group
    second: tuple[int, ...]
    cosine: float  # centred cosine between the two groups' voiceprints


EXHAUSTIVE_MAX = 12  # up to this many takes every bipartition is tried (2048; 16 took 0.9 s)


def split_two(embeddings: np.ndarray, center: np.ndarray, min_group: int = 2) -> Split | None:
    """The two groups of takes that sound farthest apart, and how alike they still sound.

    Groups: the bipartition (each group >= min_group takes) with the largest between-group
    sum of squares of the centred unit embeddings (the 2-means objective), tried exhaustively
    for up to EXHAUSTIVE_MAX takes, else 2-means (with single-take moves). The cosine is the
    scorer's: centred cosine of the two groups' voiceprint means. None when too few takes.
    """
    e = l2_normalize(np.asarray(embeddings, np.float64))
    n = len(e)
    if n < 2 * min_group:
        return None
    c = l2_normalize(e - center)
    if n <= EXHAUSTIVE_MAX:
        # Every mask with take 0 in the first group; rows are group memberships.
        codes = np.arange(2 ** (n - 1))
        member = ((codes[:, None] >> np.arange(n - 1)) & 1).astype(bool)
        member = np.hstack([np.ones((len(codes), 1), bool), member])
        size = member.sum(axis=1)
        ok = (size >= min_group) & (n - size >= min_group)
        member, size = member[ok], size[ok]
        total = c.sum(axis=0)
        sum_a = member.astype(np.float64) @ c
        mean_a = sum_a / size[:, None]
        mean_b = (total - sum_a) / (n - size)[:, None]
        between = size * (n - size) / n * np.sum((mean_a - mean_b) ** 2, axis=1)
        best = member[int(np.argmax(between))]
    else:
        found = _two_means(c, min_group)
        if found is None:
            return None
        best = found
    a = tuple(int(i) for i in np.flatnonzero(best))
    b = tuple(int(i) for i in np.flatnonzero(~best))
    if len(b) > len(a):
        a, b = b, a
    mean_a = l2_normalize(e[list(a)].mean(axis=0))
    mean_b = l2_normalize(e[list(b)].mean(axis=0))
    cosine = float(centered_cosine(mean_a, mean_b, center)[0])
    return Split(a, b, cosine)


def _between(c: np.ndarray, member: np.ndarray) -> float:
    """The 2-means objective: between-group sum of squares of the rows of c."""
    n, na = len(c), int(member.sum())
    diff = c[member].mean(axis=0) - c[~member].mean(axis=0)
    return na * (n - na) / n * float(diff @ diff)


def _two_means(c: np.ndarray, min_group: int) -> np.ndarray | None:
    """2-means on rows of c, seeded from each row and the row farthest from it, each result
    improved by moving single rows across while that helps (Lloyd's steps alone stopped at
    worse splits than the exhaustive search). None when no split has min_group rows a side."""
    n = len(c)
    best: np.ndarray | None = None
    best_between = -1.0
    for seed in range(n):
        member = np.zeros(n, bool)
        member[seed] = True
        centres = np.stack([c[seed], c[int(np.argmin(c @ c[seed]))]])
        for _ in range(50):
            new = np.sum((c - centres[0]) ** 2, axis=1) <= np.sum((c - centres[1]) ** 2, axis=1)
            if not 0 < new.sum() < n or np.all(new == member):
                break
            member = new
            centres = np.stack([c[member].mean(axis=0), c[~member].mean(axis=0)])
        if not min_group <= member.sum() <= n - min_group:
            continue
        between = _between(c, member)
        improved = True
        while improved:
            improved = False
            for i in range(n):
                trial = member.copy()
                trial[i] = not trial[i]
                if min_group <= trial.sum() <= n - min_group:
                    value = _between(c, trial)
                    if value > between + 1e-12:
                        member, between, improved = trial, value, True
        if between > best_between:
            best, best_between = member, between
    return best


def two_voices(
    embeddings: np.ndarray, outliers: list[int], center: np.ndarray, min_cosine: float
) -> Split | None:
    """The split of the kept takes into two voices, or None when they sound like one person.

    Two passes. First all the good takes are split (2+ takes a group): the outlier rule
    drops at most a third of the takes by design, so it cannot remove a second voice that
    said half of them, and once it has dropped part of a second voice the rest can be too
    few to stand out. When that split sounds like two voices, the takes the outlier rule
    keeps are split again (1+ take a group): if they still sound like two voices, that split
    is returned (its indexes are into `embeddings`); if not, the outlier rule already
    dropped the other voice (a single odd take, the case it is for) and None is returned.
    """
    first = split_two(embeddings, center, TWO_VOICES_MIN_GROUP)
    if first is None or first.cosine >= min_cosine:
        return None
    kept = [i for i in range(len(embeddings)) if i not in set(outliers)]
    second = split_two(embeddings[kept], center, 1)
    if second is None or second.cosine >= min_cosine:
        return None
    return Split(
        tuple(kept[i] for i in second.first), tuple(kept[i] for i in second.second), second.cosine
    )


def cohort_center(embedder: Any, cfg: Any) -> np.ndarray | None:
    """The centre direction the scorer uses for this model (speaker.cohort or the shipped
    cohort), or None when there is no cohort to take it from. A speaker.cohort that is set
    but cannot be used raises CohortError: skipping the check then stored two people's
    takes as one voiceprint (the standalone API), where verify and the daemon refuse it."""
    from voxgate.cohort import CohortError, center_of, for_model, model_sha256

    configured = getattr(cfg, "cohort", None)
    try:
        cohort = for_model(str(embedder.model_id), configured, model_sha256(embedder))
    except (CohortError, OSError, ValueError, AttributeError) as exc:
        if configured is not None:
            raise CohortError(str(exc)) from None
        log.warning("enrollment: no cohort, takes not checked for two voices: %s", exc)
        return None
    if cohort.center is not None:
        return cohort.center
    return center_of(cohort.embeddings)  # an AS-norm cohort: its mean direction


def speech_seconds(seconds: float) -> float:
    """Speech seconds as every enroll line shows them and the CLI stores them: rounded DOWN
    to 0.1 s (5.96 of a 6 s minimum is not "have 6.0 s"). The stored value was rounded to
    nearest: the summary said 11.1 s where `users export` said 11.2 for the same takes."""
    return math.floor(seconds * 10 + 1e-9) / 10


def seconds_text(seconds: float) -> str:
    """speech_seconds() as text. One rule for the summary, the takes and the error: the
    summary rounded and said 4.0 s where the error said "have 3.9 s" for the same takes."""
    return f"{speech_seconds(seconds):.1f}"


def progress_text(takes: int, speech_s: float, min_takes: int, min_speech_s: float) -> str:
    """Guided enrollment's progress, true past either minimum: each count is shown against
    its minimum only while short of it ("4 takes, 14.4 of 20 s of speech"; "4/3 takes"
    read as an error once the takes were in and speech was still short)."""
    have = seconds_text(speech_s)
    count = f"{takes} of {min_takes} takes" if takes < min_takes else f"{takes} takes"
    speech = f"{have} of {min_speech_s:g} s" if speech_s < min_speech_s else f"{have} s"
    return f"{count}, {speech} of speech"


def two_voices_text(split: Split, numbers: list[int], level: float) -> str:
    """The refusal, naming both groups by take number (1-based, as the take report)."""
    second = ", ".join(str(numbers[j]) for j in split.second)
    first = ", ".join(str(numbers[j]) for j in split.first)
    return (
        f"takes {second} sound like a different voice from takes {first} (cosine "
        f"{split.cosine:.2f} < speaker.enroll_two_voices_cosine {level:g}): every take must "
        "be the same person; enroll again"
    )


def altered_copy_of(
    pcm: np.ndarray, prints: list[tuple[int, Fingerprint]], level: float = NEAR_DUPLICATE
) -> tuple[int, Fingerprint]:
    """The number of the first earlier take in `prints` (number, fingerprint) that this
    take is an altered copy of (similarity >= `level`; 0: none), and this take's fingerprint.

    The same recording resampled, re-encoded or trimmed has other samples, and its
    embedding is no closer to the original than a second genuine take is
    (benchmarks/near_duplicate_takes.py); its fingerprint is. Cost:
    benchmarks/near_duplicate_cost.py."""
    # The sub-hop views serve only comparisons: none for the first usable take.
    views = [fingerprint(pcm[k:]) for k in (SUB_HOP if prints else SUB_HOP[:1])]
    near = next((j for j, fp in prints if best_similarity(views, fp) >= level), 0)
    return near, views[0]


def check_takes(
    takes: list[np.ndarray],
    embedder: Any,
    cfg: Any,
    vad_cfg: VadConfig | None = None,
    live: bool = False,
    numbers: list[int] | None = None,
) -> EnrollResult:
    """Check and embed enrollment takes (int16 16 kHz each); cfg is the speaker section.
    `live`: takes the daemon's endpointer cut at the door (quality.Quality.live).
    `numbers`: what the problems call each take (guided enrollment: the number of the
    prompt it answered); default 1, 2, ..."""
    reports: dict[int, TakeReport] = {}
    good: list[tuple[int, Quality, np.ndarray]] = []
    first_of: dict[bytes, int] = {}  # the audio's hash -> the first take with it
    prints: list[tuple[int, Fingerprint]] = []  # usable takes so far: number, fingerprint
    for i, pcm in enumerate(takes, 1):
        q = assess(pcm, vad_cfg, live)
        # One recording given twice (`--from a.wav a.wav`, a copy) is one take: counted
        # again it met the minimums (takes, seconds of speech) with a single recording.
        digest = hashlib.sha256(np.ascontiguousarray(pcm, dtype=np.int16).tobytes()).digest()
        first = first_of.setdefault(digest, i)
        if first != i:
            log.info("enroll take %d rejected: the same recording as take %d", i, first)
            reports[i] = TakeReport(i, q, False, "duplicate", same_as=first)
            continue
        problem = take_problem(q, cfg)
        if problem is None:
            near, fp = altered_copy_of(pcm, prints)
            if near:
                log.info("enroll take %d rejected: an altered copy of take %d", i, near)
                reports[i] = TakeReport(i, q, False, "duplicate", same_as=near)
                continue
            prints.append((i, fp))
        emb = None
        if problem is None:
            try:
                emb = embedder.embed(np.asarray(pcm, dtype=np.int16))
            except Exception as exc:  # TooShort or a model failure on odd audio
                log.warning("enroll take %d: no embedding: %s", i, exc)
                problem = "no_embedding"
        if problem is not None:
            log.info("enroll take %d rejected: %s", i, problem)
            reports[i] = TakeReport(i, q, False, problem)
        else:
            assert emb is not None
            good.append((i, q, emb))
    problems: list[str] = []
    if good:
        embs = np.stack([g[2] for g in good])
        outliers, loo = find_outliers(embs)
        level: float | None = getattr(cfg, "enroll_two_voices_cosine", None)
        split = None
        if level is not None and len(good) >= 2 * TWO_VOICES_MIN_GROUP:
            center = cohort_center(embedder, cfg)
            split = two_voices(embs, outliers, center, level) if center is not None else None
            if split is not None:
                called = [numbers[g[0] - 1] if numbers else g[0] for g in good]
                problems.append(two_voices_text(split, called, level))
                log.warning("enrollment refused: %s", problems[-1], extra={FACT: TWO_VOICES_FACT})
        other = set(split.second) if split is not None else set()
        for j, (i, q, _) in enumerate(good):
            bad = j in outliers or j in other
            reason = ("other_voice" if j in other else "outlier") if bad else None
            if bad:
                log.info("enroll take %d rejected: %s (cosine %.3f)", i, reason, loo[j])
            reports[i] = TakeReport(i, q, not bad, reason, float(loo[j]))
        good = [g for j, g in enumerate(good) if j not in outliers and j not in other]
    ordered = tuple(reports[i] for i in sorted(reports))
    speech = float(sum(g[1].speech_s for g in good))
    if len(good) < cfg.enroll_min_takes:
        problems.append(f"need {cfg.enroll_min_takes} good takes, have {len(good)}")
    if speech < cfg.enroll_min_speech_s:
        have = seconds_text(speech)
        problems.append(f"need {cfg.enroll_min_speech_s:g} s of net speech, have {have} s")
    dim = int(getattr(embedder, "dim", 0) or (good[0][2].shape[0] if good else 0))
    emb = np.stack([g[2] for g in good]) if good else np.zeros((0, dim), np.float32)
    return EnrollResult(l2_normalize(emb) if good else emb, ordered, speech, tuple(problems))


TEMPLATES_META = "digit_templates"  # key in the sealed voiceprint meta (base64 npz)


def prompt_plan(takes: int, length: int = 5) -> list[str]:
    """Prompts for `takes` takes that say every digit about equally often (so the spoken
    challenge can use the person's own digit templates), as digit strings."""
    from voxgate.challenge import enrollment_prompts

    plan: list[str] = []
    while len(plan) < takes:
        plan += enrollment_prompts(takes=4, length=length)
    return plan[:takes]


def attach_templates(
    meta: dict[str, Any],
    result: EnrollResult,
    takes: list[np.ndarray],
    prompts: list[str],
    threshold: float | None = None,
    numbers: list[int] | None = None,
) -> list[int]:
    """Cut the accepted, prompted takes into per-digit templates and keep them in `meta`.

    Templates are biometric data like the embeddings: they live inside the sealed voiceprint.
    Without them the spoken challenge falls back to the speaker-independent engine check.
    Takes that do not say their prompt (leave-one-out check at the challenge's
    `threshold`, stt.template_threshold by default) give no templates; their numbers
    (1-based, as in the take report) are returned. `numbers`: what each take is called in
    the log line (a guided enrollment's prompt numbers, which skip takes not used).
    """
    from base64 import b64encode

    from voxgate.config.stt import SttConfig
    from voxgate.stt.templates import checked_templates

    if threshold is None:
        threshold = SttConfig().template_threshold
    numbered = [
        (t.index, takes[t.index - 1], prompts[t.index - 1].replace(" ", ""))
        for t in result.accepted
        if t.index - 1 < len(prompts) and prompts[t.index - 1]
    ]
    bad, tm = checked_templates([(pcm, p) for _, pcm, p in numbered], threshold)
    dropped = [numbered[k][0] for k in bad]
    if dropped:
        named = [numbers[n - 1] for n in dropped] if numbers else dropped
        log.warning(
            "takes %s do not say their prompts: no digit templates from them",
            named,
            extra={FACT: PROMPT_MISMATCH_FACT},
        )
    if tm is None:
        if len(numbered) > len(dropped):
            log.warning(
                "no digit templates from the enrollment takes: no usable enrollment take",
                extra={FACT: NO_TEMPLATES_FACT},
            )
        return dropped
    meta[TEMPLATES_META] = b64encode(tm.to_bytes()).decode()
    meta["template_digits"] = "".join(sorted(tm.digits()))
    return dropped


def templates_of(meta: dict[str, Any]) -> Any:
    """The DigitTemplates kept in a voiceprint's meta, or None."""
    blob = meta.get(TEMPLATES_META)
    if not blob:
        return None
    from base64 import b64decode

    from voxgate.stt import DigitTemplates, TemplateError

    try:
        return DigitTemplates.from_bytes(b64decode(blob))
    except (TemplateError, ValueError) as exc:
        log.error("stored digit templates are unreadable (%s); re-enroll to restore them", exc)
        return None


@dataclass(frozen=True)
class SameVoice:
    """Other enrolled users whose voiceprint the new one matches (the 1:N de-duplication
    search of the new voiceprint): the same person under two names, or a close relative."""

    matches: tuple[tuple[str, float], ...]  # (user as enrolled, score), best first
    threshold: float  # the door's 1:1 threshold the scores were held to

    def audit(self) -> list[dict[str, Any]]:
        """The audit line's and the API reply's `same_voice_as`."""
        return [
            {"user": user, "score": round(score, 3), "threshold": round(self.threshold, 3)}
            for user, score in self.matches
        ]

    def text(self) -> str:
        """The warning, in the words the person enrolling needs."""
        if len(self.matches) == 1:
            user, score = self.matches[0]
            heard = f"enrolled user '{user}' (score {score:.2f}, threshold {self.threshold:.2f})"
        else:
            each = ", ".join(f"'{u}' (score {s:.2f})" for u, s in self.matches)
            heard = f"enrolled users {each} (threshold {self.threshold:.2f})"
        return (
            f"the takes sound like {heard}: the same person under two names? "
            "`voxgate identify` names whichever scores higher; erase one of them if so"
        )


def same_voice(
    embeddings: np.ndarray, name: str, store: Any, embedder: Any, cfg: Any
) -> SameVoice | None:
    """Score the voiceprint these accepted takes make (their mean, as stored) against every
    other enrolled user's with the door's scorer (cfg: the speaker section; its cohort and
    1:1 threshold) and return those at or above the threshold; None when none is (or it
    cannot be told: no cohort, an unreadable store). `name`'s own voiceprint, which a
    re-enrollment replaces, is not another user. A warning, never a refusal: relatives can
    sound alike. Cost: one dot product per enrolled user."""
    from voxgate.cohort import CohortError, for_model, model_sha256
    from voxgate.names import fold
    from voxgate.scoring import Scorer, ScoringError
    from voxgate.voiceprints import StoreError, mean_embedding, model_mismatch

    if len(embeddings) == 0:
        return None
    try:
        cohort = for_model(
            str(embedder.model_id), getattr(cfg, "cohort", None), model_sha256(embedder)
        )
        scorer = Scorer(store, embedder, cfg, cohort)
        others, _ = store.readable()
    except (CohortError, ScoringError, StoreError, OSError, ValueError, AttributeError) as exc:
        # Without the door's scorer there is no level to call two voiceprints one voice.
        log.debug("enrollment of %s: not compared with the enrolled users: %s", name, exc)
        return None
    threshold = scorer.threshold(1)
    new = mean_embedding(embeddings)
    matches = []
    for vp in others:
        if fold(vp.name) == fold(name):
            continue
        if model_mismatch((vp.model_id, vp.model_sha256), scorer.model_id, scorer.model_sha256):
            continue  # another model's embeddings: not comparable (identify skips it too)
        score, _ = scorer.score(new, vp)
        if score >= threshold:
            matches.append((vp.name, score))
    if not matches:
        return None
    matches.sort(key=lambda m: -m[1])
    return SameVoice(tuple(matches), threshold)
