"""Scoring: cosine against the enrolled voiceprint, normalized with an impostor cohort (the
cohort file says how: "center" = cosine after subtracting the cohort's mean direction, the
shipped method; "asnorm" = AS-norm, below), and a threshold set from a target false-match
rate (speaker.target_fmr), not a magic constant.

AS-norm (adaptive symmetric normalization): a raw cosine s between enrollment e and test t is
turned into 0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t), where mu/sd are the mean and spread
of the top_k highest cosines of e (resp. t) against the cohort. It says how far s stands out
above what each side scores against strangers, which makes one threshold hold across voices,
microphones and utterance lengths much better than a raw cosine does.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from voxgate.cohort import Cohort, centered_cosine
from voxgate.quality import Quality, gate_reasons
from voxgate.voiceprints import ModelMismatch, Voiceprint, l2_normalize, model_mismatch

if TYPE_CHECKING:
    from voxgate.config.speaker import SpeakerConfig
    from voxgate.voiceprints import VoiceprintStore

log = logging.getLogger(__name__)


class ScoringError(Exception):
    """No usable threshold or cohort; str() is meant for the user."""


@dataclass(frozen=True)
class SpeakerResult:
    user: str | None  # the claimed user (verify) or the best match (identify); None = unknown
    # normalized score (raw cosine when no cohort is used); -inf when there was no voiceprint
    # to compare with (no_users, unknown_user, model_mismatch). Outputs that cannot carry
    # infinity map it to null (decision.Issuer, the audit log, verify --json).
    score: float
    raw_cosine: float
    threshold: float
    accepted: bool
    quality_ok: bool
    reasons: tuple[str, ...] = ()


def asnorm_stats(cohort_scores: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the top_k highest finite values of each row (-inf marks excluded)."""
    s = np.atleast_2d(np.asarray(cohort_scores, dtype=np.float64))
    finite = np.isfinite(s).sum(axis=1).min()
    k = int(max(2, min(top_k, finite)))
    top = -np.partition(-s, k - 1, axis=1)[:, :k]
    return top.mean(axis=1), top.std(axis=1) + 1e-6


def asnorm(
    raw: np.ndarray | float,
    enroll: np.ndarray,
    test: np.ndarray,
    cohort: np.ndarray,
    top_k: int,
) -> np.ndarray:
    """AS-norm scores for raw cosines between enroll[i] and test[i] (rows, or one each)."""
    e = np.atleast_2d(enroll)
    t = np.atleast_2d(test)
    e_mu, e_sd = asnorm_stats(e @ cohort.T, top_k)
    t_mu, t_sd = asnorm_stats(t @ cohort.T, top_k)
    raw = np.asarray(raw, dtype=np.float64)
    return 0.5 * ((raw - e_mu) / e_sd + (raw - t_mu) / t_sd)


class Scorer:
    """1:1 verify and 1:N open-set identify against the store, for one embedder's model."""

    def __init__(
        self,
        store: VoiceprintStore,
        embedder: Any,
        cfg: SpeakerConfig,
        cohort: Cohort | None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.cfg = cfg
        self.model_id: str = embedder.model_id
        self.model_sha256: str | None = getattr(embedder, "model_sha256", None)
        self.cohort = cohort
        if cohort is not None and cohort.model_id != self.model_id:
            raise ScoringError(
                f"cohort made with model {cohort.model_id}, but {self.model_id} is loaded"
            )
        if cfg.threshold is None and (cohort is None or not cohort.calibration):
            raise ScoringError(
                f"no calibrated cohort for model {self.model_id} and no speaker.threshold set; "
                "build one with 'voxgate eval SET_DIR --build-cohort DIR'"
            )
        self.top_k = cohort.top_k if cohort is not None else 0
        self._beyond_table: set[int] = set()  # user counts already warned about
        self.threshold(1)  # a target beyond the calibration is said at start

    def threshold(self, n_users: int = 1) -> float:
        """The decision threshold. For 1:N the per-comparison FMR is target_fmr / N, so the
        chance that any of N voiceprints falsely matches stays near target_fmr."""
        if self.cfg.threshold is not None:
            return self.cfg.threshold
        assert self.cohort is not None
        n = max(1, n_users)
        fmr = self.cfg.target_fmr / n
        lowest = min(f for f, _ in self.cohort.calibration)
        if fmr < lowest and n not in self._beyond_table:
            # The table is clamped there (nothing was measured beyond it), so the door is
            # looser than configured: say so once, with the way out.
            self._beyond_table.add(n)
            log.warning(
                "speaker.target_fmr %g%s asks for a false-match rate of %.2g per comparison, "
                "below the %g the cohort was calibrated for: using that rate's threshold "
                "%.3f; set speaker.threshold for a stricter one",
                self.cfg.target_fmr,
                f" over {n} users" if n > 1 else "",
                fmr,
                lowest,
                self.cohort.threshold_for(lowest),
            )
        return self.cohort.threshold_for(fmr)

    def score(self, emb: np.ndarray, vp: Voiceprint) -> tuple[float, float]:
        """(normalized score, raw cosine) of a test embedding against a voiceprint."""
        t = l2_normalize(emb)
        raw = float(vp.mean @ t)
        if self.cohort is None:
            return raw, raw
        if self.cohort.method == "center":
            assert self.cohort.center is not None  # cohort.load checks it
            return float(centered_cosine(vp.mean, t, self.cohort.center)[0]), raw
        norm = asnorm(raw, vp.mean, t, self.cohort.embeddings, self.top_k)
        return float(norm[0]), raw

    def _quality(
        self, quality: Quality | None, min_speech_s: float | None
    ) -> tuple[bool, tuple[str, ...]]:
        if quality is None:
            return True, ()
        need = self.cfg.min_speech_s if min_speech_s is None else min_speech_s
        c = self.cfg
        reasons = gate_reasons(
            quality, need, c.min_snr_db, c.min_snr_db_no_pauses, max_clipped=c.max_clipped
        )
        return not reasons, reasons

    def _claimed(self, claimed_user: str) -> tuple[Voiceprint | None, str | None]:
        """The claimed user's voiceprint, or None and why not (unknown_user, model_mismatch)."""
        try:
            vp = self.store.get(claimed_user, self.model_id, self.model_sha256)
        except ModelMismatch as exc:
            log.error("%s", exc)
            return None, "model_mismatch"
        return (vp, None) if vp is not None else (None, "unknown_user")

    def _candidates(self) -> tuple[list[Voiceprint], int, int]:
        """The voiceprints 1:N compares with (this model's, readable), how many rows could
        not be read, and how many were made by another model."""
        prints = []
        other_model = 0
        readable, damaged = self.store.readable()
        if damaged:
            # One bad row must not lock every user out: the others are still compared. The
            # row's owner cannot be named (names are sealed inside the rows).
            log.error(
                "identify: %d voiceprint(s) in %s cannot be read (damaged, or sealed with "
                "another key) and were skipped; `voxgate users list` counts them; re-enroll "
                "the user it no longer lists",
                damaged,
                self.store.path,
            )
        for vp in readable:
            made_by = (vp.model_id, vp.model_sha256)
            if (why := model_mismatch(made_by, self.model_id, self.model_sha256)) is not None:
                # As verify says it (voiceprints.ModelMismatch): what to do, not only what.
                log.warning(
                    "identify: %s skipped: %s; re-enroll: voxgate enroll %s --replace",
                    vp.name,
                    why,
                    shlex.quote(vp.name),
                )
                other_model += 1
                continue
            prints.append(vp)
        return prints, damaged, other_model

    @staticmethod
    def _nobody(other_model: int) -> str:
        """Why 1:N has no voiceprint to compare with: users enrolled with another model only
        (model_mismatch) or no users (no_users)."""
        return "model_mismatch" if other_model else "no_users"

    def verify(
        self,
        emb: np.ndarray,
        claimed_user: str,
        quality: Quality | None = None,
        min_speech_s: float | None = None,
    ) -> SpeakerResult:
        """Is this the claimed user? A bad-quality attempt is scored but never accepted.
        `min_speech_s`: the gate's net-speech minimum for this attempt (default
        speaker.min_speech_s; a passphrase heard in full needs less: service.attempt)."""
        q_ok, reasons = self._quality(quality, min_speech_s)
        threshold = self.threshold(1)
        vp, missing = self._claimed(claimed_user)
        if vp is None:
            return SpeakerResult(
                claimed_user, float("-inf"), float("-inf"), threshold, False, q_ok,
                (*reasons, str(missing)),
            )  # fmt: skip
        score, raw = self.score(emb, vp)
        accepted = q_ok and score >= threshold
        if not accepted and q_ok:
            reasons = (*reasons, "score_below_threshold")
        return SpeakerResult(vp.name, score, raw, threshold, accepted, q_ok, reasons)

    def identify(
        self, emb: np.ndarray, quality: Quality | None = None, min_speech_s: float | None = None
    ) -> SpeakerResult:
        """Who is this, among all users? user=None when nobody clears the threshold (open set)."""
        q_ok, reasons = self._quality(quality, min_speech_s)
        prints, damaged, other_model = self._candidates()
        # Damaged rows still count: the 1:N threshold keeps the false-match bound of the
        # enrolled set rather than loosening with every row lost.
        threshold = self.threshold(len(prints) + damaged)
        if not prints:
            nobody = self._nobody(other_model)
            return SpeakerResult(
                None, float("-inf"), float("-inf"), threshold, False, q_ok, (*reasons, nobody)
            )
        scored = [(*self.score(emb, vp), vp.name) for vp in prints]
        score, raw, name = max(scored)
        accepted = q_ok and score >= threshold
        if accepted:
            return SpeakerResult(name, score, raw, threshold, True, q_ok, reasons)
        if q_ok:
            reasons = (*reasons, "unknown_speaker")
        return SpeakerResult(None, score, raw, threshold, False, q_ok, reasons)

    def unscored(
        self,
        claimed_user: str | None,
        quality: Quality | None = None,
        min_speech_s: float | None = None,
    ) -> SpeakerResult:
        """The result for audio too short to embed (claimed_user None: 1:N): a retry with no
        score, reasons too_little_speech first, then the gate's others and what does not
        depend on the voice: the threshold verify or identify would use and who is enrolled
        (unknown_user, model_mismatch, no_users). `verify` once ran the scorer on a
        placeholder vector for these facts and dropped its score."""
        _, reasons = self._quality(quality, min_speech_s)
        if "too_little_speech" not in reasons:
            reasons = ("too_little_speech", *reasons)
        user = claimed_user
        if claimed_user is not None:
            threshold = self.threshold(1)
            vp, missing = self._claimed(claimed_user)
            user = vp.name if vp is not None else claimed_user  # the name as enrolled
        else:
            prints, damaged, other_model = self._candidates()
            threshold = self.threshold(len(prints) + damaged)
            missing = None if prints else self._nobody(other_model)
        if missing is not None:
            reasons = (*reasons, missing)
        return SpeakerResult(user, float("-inf"), float("-inf"), threshold, False, False, reasons)


def cohort_for(cfg: Any, embedder: Any) -> Cohort | None:
    """The cohort to score with (cfg: the whole VoxgateConfig): speaker.cohort, else the one
    shipped for the loaded model. None only for a model that has neither, with a fixed
    speaker.threshold (which then applies to the raw cosine). A cohort that is configured
    or shipped but unusable (missing, damaged, another model or preprocessing) is a
    ScoringError even with a fixed threshold: falling back to the raw cosine changed the
    threshold's scale, and strangers' raw cosines cleared a threshold meant for the
    normalized score."""
    from voxgate.cohort import CohortError, default_dir, for_model, model_sha256, slug

    try:
        return for_model(embedder.model_id, cfg.speaker.cohort, model_sha256(embedder))
    except CohortError as exc:
        shipped = (default_dir() / (slug(embedder.model_id) + ".npz")).exists()
        if cfg.speaker.threshold is None or cfg.speaker.cohort is not None or shipped:
            raise ScoringError(str(exc)) from None
        # Not exc's text: it ends "or ... set speaker.threshold", which is set here.
        log.warning(
            "no cohort for model %s (none shipped, speaker.cohort not set): scoring the raw "
            "cosine against speaker.threshold %g; for a normalized score build one with "
            "'voxgate eval SET_DIR --build-cohort DIR' and set speaker.cohort to its .npz",
            embedder.model_id,
            cfg.speaker.threshold,
        )
        return None


def load_scorer(cfg: Any, store: VoiceprintStore, embedder: Any) -> Scorer:
    """A Scorer for the device config (the whole VoxgateConfig) with cohort_for's cohort.
    ScoringError with a message when that cohort cannot be used."""
    return Scorer(store, embedder, cfg.speaker, cohort_for(cfg, embedder))
