"""Enrollment: check each take (speech, clipping, noise), embed it, drop an inconsistent take.

Takes must be the same kind of speech as a door attempt (prompted digit strings through the
same microphone): enrolling from other speech costs a lot of accuracy (see
docs/speaker-verification.md). A rejected take is named with its reason, never averaged in.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from voxgate.config.audio import VadConfig
from voxgate.quality import Quality, assess, too_noisy
from voxgate.voiceprints import l2_normalize

log = logging.getLogger(__name__)

MIN_TAKE_SPEECH_S = 1.0  # a take with less net speech says little about the voice
MAX_CLIPPED = 0.001  # fraction of samples in clipped runs
OUTLIER_Z = 3.5  # robust z-score below which a take is inconsistent with the others
OUTLIER_MIN_GAP = 0.08  # ... and at least this far (cosine) below the median take


@dataclass(frozen=True)
class TakeReport:
    index: int  # 1-based take number, as shown to the person enrolling
    quality: Quality
    accepted: bool
    reason: str | None = None  # too_short / clipped / too_noisy / outlier / no_embedding
    consistency: float | None = None  # cosine to the mean of the other accepted takes


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
    if q.clipped > MAX_CLIPPED:
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


def seconds_text(seconds: float) -> str:
    """Speech seconds as every enroll line shows them: rounded DOWN to 0.1 s (5.96 of a 6 s
    minimum is not "have 6.0 s"). One rule for the summary, the takes and the error: the
    summary rounded and said 4.0 s where the error said "have 3.9 s" for the same takes."""
    return f"{math.floor(seconds * 10 + 1e-9) / 10:.1f}"


def check_takes(
    takes: list[np.ndarray],
    embedder: Any,
    cfg: Any,
    vad_cfg: VadConfig | None = None,
    live: bool = False,
) -> EnrollResult:
    """Check and embed enrollment takes (int16 16 kHz each); cfg is the speaker section.
    `live`: takes the daemon's endpointer cut at the door (quality.Quality.live)."""
    reports: dict[int, TakeReport] = {}
    good: list[tuple[int, Quality, np.ndarray]] = []
    for i, pcm in enumerate(takes, 1):
        q = assess(pcm, vad_cfg, live)
        problem = take_problem(q, cfg)
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
    if good:
        outliers, loo = find_outliers(np.stack([g[2] for g in good]))
        for j, (i, q, _) in enumerate(good):
            bad = j in outliers
            if bad:
                log.info("enroll take %d rejected: outlier (cosine %.3f)", i, loo[j])
            reports[i] = TakeReport(i, q, not bad, "outlier" if bad else None, float(loo[j]))
        good = [g for j, g in enumerate(good) if j not in outliers]
    ordered = tuple(reports[i] for i in sorted(reports))
    speech = float(sum(g[1].speech_s for g in good))
    problems = []
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
) -> list[int]:
    """Cut the accepted, prompted takes into per-digit templates and keep them in `meta`.

    Templates are biometric data like the embeddings: they live inside the sealed voiceprint.
    Without them the spoken challenge falls back to the speaker-independent engine check.
    Takes that do not say their prompt (leave-one-out check at the challenge's
    `threshold`, stt.template_threshold by default) give no templates; their numbers
    (1-based, as in the take report) are returned.
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
        log.warning("takes %s do not say their prompts: no digit templates from them", dropped)
    if tm is None:
        if len(numbered) > len(dropped):
            log.warning("no digit templates from the enrollment takes: no usable enrollment take")
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
