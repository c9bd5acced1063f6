"""The score-normalization cohort and the threshold calibration that travels with it.

A cohort is a set of impostor embeddings (one per speaker, none of them users) made by one
speaker model. Scores are normalized against it (AS-norm, see scoring.py), and the threshold
for a target false-match rate is read from a calibration table measured on impostor trials
among the cohort speakers themselves (leave-two-out: neither side of a trial is in the cohort
used to normalize it, as with a real impostor). Both are built by one command:

    voxgate eval ../shared/data/resemblyzer_ls --build-cohort models/cohort
    voxgate eval ../shared/data/resemblyzer_ls --build-cohort models/cohort \
        --model models/shipped/ge2e-float.yaml
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voxgate.voiceprints import l2_normalize

log = logging.getLogger(__name__)

COHORT_FORMAT = "voxgate-cohort/1"
CHUNK_S = 3.0  # cohort speech is cut into door-attempt-sized pieces
CALIBRATION_FMRS = (0.1, 0.03, 0.01, 0.003, 0.001, 0.0003, 0.0001)


class CohortError(Exception):
    """A cohort file that cannot be used; str() is meant for the user."""


@dataclass(frozen=True)
class Cohort:
    model_id: str
    embeddings: np.ndarray  # (n, dim) float32, L2-normalized, one per cohort speaker
    top_k: int = 100
    # [(fmr, normalized-score threshold)], fmr descending; measured at build time.
    calibration: tuple[tuple[float, float], ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    def threshold_for(self, fmr: float) -> float:
        """The normalized-score threshold giving `fmr` on the calibration trials
        (log-linear interpolation between table rows; clamped at the ends)."""
        if not self.calibration:
            raise CohortError(f"cohort for {self.model_id} has no calibration table")
        table = sorted(self.calibration, reverse=True)
        if fmr >= table[0][0]:
            return table[0][1]
        for (f_hi, t_hi), (f_lo, t_lo) in itertools.pairwise(table):
            if f_lo <= fmr <= f_hi:
                w = (math.log(f_hi) - math.log(fmr)) / (math.log(f_hi) - math.log(f_lo))
                return t_hi + w * (t_lo - t_hi)
        return table[-1][1]


def slug(model_id: str) -> str:
    return model_id.replace("/", "--").replace(" ", "_")


def default_dir() -> Path:
    """The shipped cohorts: package data in voxgate/cohorts (models/cohort in a checkout)."""
    return Path(__file__).resolve().parent / "cohorts"


def save(cohort: Cohort, directory: Path) -> Path:
    """Write <slug>.npz (embeddings) and <slug>.json (calibration, provenance)."""
    directory.mkdir(parents=True, exist_ok=True)
    npz = directory / (slug(cohort.model_id) + ".npz")
    np.savez_compressed(npz, embeddings=cohort.embeddings.astype(np.float32))
    doc = {
        "format": COHORT_FORMAT,
        "model_id": cohort.model_id,
        "speakers": len(cohort.embeddings),
        "dim": int(cohort.embeddings.shape[1]),
        "top_k": cohort.top_k,
        "calibration": [{"fmr": f, "threshold": t} for f, t in cohort.calibration],
        **cohort.info,
    }
    _meta_path(npz).write_text(json.dumps(doc, indent=2) + "\n")
    return npz


def _meta_path(npz: Path) -> Path:
    return npz.parent / (npz.name.removesuffix(".npz") + ".json")


def load(path: Path) -> Cohort:
    """A cohort from its .npz (the .json beside it holds model id and calibration)."""
    path = Path(path)
    meta_path = _meta_path(path)
    try:
        doc = json.loads(meta_path.read_text())
        with np.load(path) as data:
            emb = np.asarray(data["embeddings"], dtype=np.float32)
    except FileNotFoundError as exc:
        raise CohortError(f"cohort file missing: {exc.filename}") from None
    except (OSError, ValueError, KeyError) as exc:
        raise CohortError(f"{path}: unreadable cohort ({exc})") from None
    if doc.get("format") != COHORT_FORMAT:
        raise CohortError(f"{meta_path}: not a {COHORT_FORMAT} file")
    if emb.ndim != 2 or emb.shape[0] < 10 or not np.all(np.isfinite(emb)):
        raise CohortError(f"{path}: cohort embeddings must be a finite (n>=10, dim) array")
    calibration = tuple((float(r["fmr"]), float(r["threshold"])) for r in doc["calibration"])
    info = {
        k: v
        for k, v in doc.items()
        if k not in ("format", "model_id", "speakers", "dim", "top_k", "calibration")
    }
    return Cohort(
        model_id=str(doc["model_id"]),
        embeddings=l2_normalize(emb),
        top_k=int(doc.get("top_k", 100)),
        calibration=calibration,
        info=info,
    )


def model_sha256(embedder: Any) -> str | None:
    """The sha256 of the embedder's model file (from its card), when known."""
    card = getattr(embedder, "card", None)
    return getattr(getattr(card, "model", None), "sha256", None)


def for_model(model_id: str, path: Path | None = None, sha256: str | None = None) -> Cohort:
    """The cohort for a model: `path` if given, else the shipped one for model_id. With sha256,
    a cohort built from another build of the model file is refused too."""
    if path is None:
        path = default_dir() / (slug(model_id) + ".npz")
        if not path.exists():
            raise CohortError(
                f"no cohort shipped for model {model_id} (looked for {path}); build one with "
                "'voxgate eval SET_DIR --build-cohort DIR' or set speaker.threshold"
            )
    cohort = load(path)
    if cohort.model_id != model_id:
        raise CohortError(
            f"{path}: cohort made with model {cohort.model_id}, but {model_id} is loaded"
        )
    built_with = cohort.info.get("model_sha256")
    if sha256 and built_with and built_with != sha256:
        raise CohortError(
            f"{path}: cohort built from another file of model {model_id} (sha256 "
            f"{built_with[:12]}, loaded {sha256[:12]}); rebuild it: {cohort.info.get('command')}"
        )
    return cohort


# --- building -----------------------------------------------------------------------------------


def chunk(pcm: np.ndarray, chunk_s: float = CHUNK_S, rate: int = 16000) -> list[np.ndarray]:
    """Cut a recording into chunk_s pieces; a short tail is merged into the last piece."""
    n = int(chunk_s * rate)
    if len(pcm) < 2 * n:
        return [pcm]
    pieces = [pcm[i : i + n] for i in range(0, len(pcm) - n + 1, n)]
    tail = len(pcm) - len(pieces) * n
    if tail:
        pieces[-1] = pcm[(len(pieces) - 1) * n :]
    return pieces


def build(
    model_id: str,
    speakers: dict[str, list[np.ndarray]],
    top_k: int = 100,
    info: dict[str, Any] | None = None,
) -> Cohort:
    """A calibrated cohort from chunk embeddings per speaker (>= 2 chunks to be used in trials).

    Each speaker's cohort entry is the mean of all its chunks. For calibration, a speaker's
    even chunks make its model and its odd chunks are test attempts.
    """
    from voxgate.scoring import asnorm_stats

    names = sorted(speakers)
    entries = l2_normalize(np.stack([l2_normalize(np.stack(speakers[s]).mean(0)) for s in names]))
    models, tests, test_owner = [], [], []
    for idx, s in enumerate(names):
        chunks = speakers[s]
        if len(chunks) < 2:
            continue
        models.append((idx, l2_normalize(np.stack(chunks[0::2]).mean(0))))
        for t in chunks[1::2]:
            tests.append(t)
            test_owner.append(idx)
    if len(models) < 10:
        raise CohortError("need at least 10 cohort speakers with two or more chunks")
    t_mat = l2_normalize(np.stack(tests))
    owner = np.array(test_owner)
    t_coh = t_mat @ entries.T  # (tests, speakers)
    scores: list[np.ndarray] = []
    raw: list[np.ndarray] = []
    for i, m in models:
        imp = owner != i
        s = t_mat[imp] @ m
        # Leave-two-out: neither the claimed speaker i nor the impostor's own entry
        # takes part in normalizing a trial (a real impostor is not in the cohort).
        n = len(names)
        per_j = np.tile(entries @ m, (n, 1))
        per_j[:, i] = -np.inf
        per_j[np.arange(n), np.arange(n)] = -np.inf
        m_mu, m_sd = asnorm_stats(per_j, top_k)  # row j: model stats without i and j
        tc = t_coh[imp].copy()
        tc[:, i] = -np.inf
        tc[np.arange(len(tc)), owner[imp]] = -np.inf
        t_mu, t_sd = asnorm_stats(tc, top_k)
        j = owner[imp]
        scores.append(0.5 * ((s - m_mu[j]) / m_sd[j] + (s - t_mu) / t_sd))
        raw.append(s)
    norm = np.concatenate(scores)
    cos = np.concatenate(raw)
    calibration = tuple((f, float(np.quantile(norm, 1 - f))) for f in CALIBRATION_FMRS)
    info = dict(info or {})
    info.update(
        {
            "calibration_trials": len(norm),
            "raw_cosine_calibration": [
                {"fmr": f, "threshold": float(np.quantile(cos, 1 - f))} for f in CALIBRATION_FMRS
            ],
        }
    )
    log.info("cohort: %d speakers, %d impostor calibration trials", len(names), len(norm))
    return Cohort(model_id, entries, top_k, calibration, info)


def embed_chunks(
    recordings: Sequence[tuple[str, np.ndarray]],
    embed: Callable[[np.ndarray], np.ndarray],
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, list[np.ndarray]]:
    """Chunk each (speaker, pcm) and embed the chunks; returns speaker -> chunk embeddings."""
    out: dict[str, list[np.ndarray]] = {}
    for n, (spk, pcm) in enumerate(recordings, 1):
        for piece in chunk(pcm):
            try:
                out.setdefault(spk, []).append(embed(piece))
            except Exception as exc:  # a too-short piece: skip it, keep building
                log.warning("cohort: %s: piece skipped (%s)", spk, exc)
        if progress:
            progress(n, len(recordings))
    return out
