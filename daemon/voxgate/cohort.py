"""The score-normalization cohort and the threshold calibration that travels with it.

A cohort is a set of impostor embeddings (none of them users) made by one speaker model and
one preprocessing. Scores are normalized against it (scoring.py) by one of two methods:

- "center" (built by `build_centered`, shipped): the mean direction of the cohort's speech
  pieces is subtracted from both embeddings before the cosine. What every voice shares (the
  language, the channel, the network's bias) stops counting as similarity.
- "asnorm" (built by `build`; files without a method): AS-norm against per-speaker entries.

The threshold for a target false-match rate is read from a calibration table measured on
impostor trials among the cohort speakers themselves, never with the normalizing speakers on
either side of a trial, as with a real impostor. Both are built by one command:

    voxgate eval ../shared/data/resemblyzer_ls --build-cohort models/cohort --replace
    voxgate eval ../shared/data/resemblyzer_ls --build-cohort models/cohort --replace \
        --model models/shipped/ge2e-float.yaml
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voxgate.audio.convert import AUDIO_PATH_VERSION, DC_CUTOFF_HZ
from voxgate.voiceprints import l2_normalize

log = logging.getLogger(__name__)

COHORT_FORMAT = "voxgate-cohort/1"
CHUNK_S = 3.0  # cohort speech is cut into door-attempt-sized pieces
CALIBRATION_FMRS = (0.1, 0.03, 0.01, 0.003, 0.001, 0.0003, 0.0001)
METHODS = ("asnorm", "center")
PIECE_S = (1.5, 3.0)  # centered cohorts: pieces as long as a spoken 4-digit string
MODEL_PIECES = 3  # calibration: a model is the mean of this many pieces, like enrollment takes


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
    method: str = "asnorm"  # "asnorm" or "center" (see the module docstring)
    center: np.ndarray | None = None  # (dim,) unit vector, for method "center"

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
    arrays = {"embeddings": cohort.embeddings.astype(np.float32)}
    if cohort.center is not None:
        arrays["center"] = cohort.center.astype(np.float32)
    # ignore: numpy's stubs cannot rule out a ** key named allow_pickle (a bool).
    np.savez_compressed(npz, **arrays)  # type: ignore[arg-type]
    doc = {
        "format": COHORT_FORMAT,
        "model_id": cohort.model_id,
        "method": cohort.method,
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
            center = np.asarray(data["center"], np.float32) if "center" in data else None
    except FileNotFoundError as exc:
        raise CohortError(f"cohort file missing: {exc.filename}") from None
    except (OSError, ValueError, KeyError) as exc:
        raise CohortError(f"{path}: unreadable cohort ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != COHORT_FORMAT:
        raise CohortError(f"{meta_path}: not a {COHORT_FORMAT} file")
    if emb.ndim != 2 or emb.shape[0] < 10 or not np.all(np.isfinite(emb)):
        raise CohortError(f"{path}: cohort embeddings must be a finite (n>=10, dim) array")
    method = doc.get("method", "asnorm")
    if method not in METHODS:
        raise CohortError(f"{meta_path}: unknown method {method!r} (known: {', '.join(METHODS)})")
    if method == "center" and (
        center is None or center.shape != (emb.shape[1],) or not np.all(np.isfinite(center))
    ):
        raise CohortError(
            f"{path}: method 'center' needs a finite center vector of the cohort's size"
        )
    calibration = _calibration(doc.get("calibration"), meta_path)
    info = {
        k: v
        for k, v in doc.items()
        if k not in ("format", "model_id", "method", "speakers", "dim", "top_k", "calibration")
    }
    return Cohort(
        model_id=str(doc["model_id"]),
        embeddings=l2_normalize(emb),
        top_k=int(doc.get("top_k", 100)),
        calibration=calibration,
        info=info,
        method=method,
        center=center,
    )


def _calibration(rows: Any, meta_path: Path) -> tuple[tuple[float, float], ...]:
    """The calibration table, checked now so that a damaged file stops the start instead of
    failing (or denying everyone) at the first attempt: 0 < fmr < 1, finite thresholds, and
    a lower fmr never with a lower threshold (the rows are quantiles of one score list)."""
    bad = CohortError(
        f"{meta_path}: damaged calibration table (want a list of {{fmr, threshold}} with "
        "0 < fmr < 1, finite thresholds rising as fmr falls); rebuild the cohort"
    )
    try:
        table = tuple((float(r["fmr"]), float(r["threshold"])) for r in rows)
    except (KeyError, TypeError, ValueError):
        raise bad from None
    if any(not 0 < f < 1 or not math.isfinite(t) for f, t in table):
        raise bad
    ordered = sorted(table, reverse=True)
    if any(f_lo == f_hi or t_lo < t_hi for (f_hi, t_hi), (f_lo, t_lo) in
           itertools.pairwise(ordered)):  # fmt: skip
        raise bad
    return table


def preprocessing(embedder: Any) -> dict[str, Any] | None:
    """The card's settings that shape an embedding besides the weights (front end, windows,
    speech trim), or None without a card."""
    card = getattr(embedder, "card", None)
    if card is None:
        return None
    trim = getattr(card, "trim", None)
    windowing = card.windowing.model_dump()
    if windowing.get("short_shifts") == 1:
        # One shift embeds as cards did before the setting existed: their cohorts still fit.
        del windowing["short_shifts"]
    return {
        # Not the card's, but it shapes every embedding: the audio sources' DC removal.
        "audio": {"version": AUDIO_PATH_VERSION, "dc_cutoff_hz": DC_CUTOFF_HZ},
        "frontend": card.frontend.model_dump(),
        "windowing": windowing,
        "trim": trim.model_dump() if trim is not None else None,
    }


def model_sha256(embedder: Any) -> str | None:
    """What a cohort is tied to: a sha256 over the model file's sha256 (from its card) and the
    card's preprocessing, which changes the embeddings as much as the weights do; None
    without a card."""
    card = getattr(embedder, "card", None)
    sha = getattr(getattr(card, "model", None), "sha256", None)
    if sha is None:
        return None
    blob = json.dumps({"model_sha256": sha, **(preprocessing(embedder) or {})}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _rebuild_command(cohort: Cohort) -> str:
    """The command that built a cohort, to build it again over its files: --build-cohort
    refuses to replace them without --replace."""
    cmd = str(cohort.info.get("command"))
    if "--build-cohort" in cmd.split() and "--replace" not in cmd.split():
        cmd += " --replace"
    return cmd


def for_model(model_id: str, path: Path | None = None, sha256: str | None = None) -> Cohort:
    """The cohort for a model: `path` if given, else the shipped one for model_id. With sha256,
    a cohort built from another build of the model file is refused too."""
    if path is None:
        path = default_dir() / (slug(model_id) + ".npz")
        if not path.exists():
            raise CohortError(
                f"no cohort shipped for model {model_id} (looked for {path}); build one with "
                "'voxgate eval SET_DIR --build-cohort DIR' and set speaker.cohort to the .npz "
                "it writes (or, to score without a cohort, set speaker.threshold)"
            )
    elif Path(path).is_dir():  # the DIR of --build-cohort: was "cohort file missing: DIR.json"
        npz = Path(path) / (slug(model_id) + ".npz")
        raise CohortError(f"{path}: a folder; set speaker.cohort to the file {npz}")
    elif not Path(path).exists():  # load() reads the .json first and would name that one
        raise CohortError(f"cohort file missing: {path}")
    cohort = load(path)
    if cohort.model_id != model_id:
        raise CohortError(
            f"{path}: cohort made with model {cohort.model_id}, but {model_id} is loaded"
        )
    built_with = cohort.info.get("model_sha256")
    if sha256 and built_with and built_with != sha256:
        prep = cohort.info.get("preprocess")
        if not (isinstance(prep, dict) and "windowing" in prep):
            # Its front end and windows were not recorded: whether they match cannot be told.
            raise CohortError(
                f"{path}: cohort built by an earlier voxgate, whose tie covered the model file "
                f"and the speech trim only, not the card's front end and windows, which shape "
                f"the embeddings as much; rebuild it: {_rebuild_command(cohort)}"
            )
        if "audio" not in prep:
            raise CohortError(
                f"{path}: cohort built by an earlier voxgate, before the audio sources removed "
                f"a DC offset, which changes the embeddings; rebuild it: "
                f"{_rebuild_command(cohort)}"
            )
        raise CohortError(
            f"{path}: cohort built from another file or preprocessing of model {model_id} (tie "
            f"{built_with[:12]}, loaded {sha256[:12]}); rebuild it: {_rebuild_command(cohort)}"
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


def pieces(pcm: np.ndarray, seed: int, lengths_s: tuple[float, float] = PIECE_S,
           rate: int = 16000) -> list[np.ndarray]:  # fmt: skip
    """Cut a recording into consecutive pieces of random length in lengths_s (seeded, so a
    rebuild gives the same pieces); a tail shorter than the shortest length is dropped."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    start = 0
    while True:
        n = int(rng.uniform(*lengths_s) * rate)
        if start + n > len(pcm):
            return out
        out.append(pcm[start : start + n])
        start += n


def center_of(pieces_emb: np.ndarray) -> np.ndarray:
    """The centre direction: the normalized mean of the cohort's piece embeddings."""
    return l2_normalize(np.asarray(pieces_emb, np.float64).mean(axis=0)).astype(np.float32)


def centered_cosine(a: np.ndarray, b: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Cosine of a and b (rows, or one each) after subtracting the centre from both."""
    a = l2_normalize(np.atleast_2d(a) - center)
    b = l2_normalize(np.atleast_2d(b) - center)
    return np.sum(a * b, axis=1)


def voice_groups(means: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Split speakers (rows: unit speaker means) into two groups of like voices: 2-means on
    the centred means, started from the two ends of their first principal axis, so a rebuild
    gives the same split. With the shipped cohort's groups, every labelled speaker of
    vcc2018_eval and fsdd falls in the group of its gender (benchmarks/voice_groups.py)."""
    x = l2_normalize(np.asarray(means, np.float64) - center)
    axis = np.linalg.svd(x - x.mean(0), full_matrices=False)[2][0]
    proj = x @ axis
    group = np.argmax(x @ np.stack([x[np.argmin(proj)], x[np.argmax(proj)]]).T, axis=1)
    if min(np.bincount(group, minlength=2)) == 0:  # every speaker alike: one group
        return group
    for _ in range(100):
        cents = l2_normalize(np.stack([x[group == k].mean(0) for k in (0, 1)]))
        new = np.argmax(x @ cents.T, axis=1)
        if np.array_equal(new, group) or min(np.bincount(new, minlength=2)) == 0:
            break
        group = new
    return group


def build_centered(
    model_id: str,
    speakers: dict[str, list[np.ndarray]],
    top_k: int = 100,
    info: dict[str, Any] | None = None,
    model_pieces: int = MODEL_PIECES,
    within_voice_groups: bool = True,
) -> Cohort:
    """A "center" cohort from short-piece embeddings per speaker, calibrated like a door.

    Calibration, in two speaker folds: the speakers of one fold make the trials (a model is the
    mean of a speaker's first `model_pieces` pieces, as enrollment averages takes; each later
    piece is one attempt, against every model of the fold), while the centre is taken from the
    other fold only, so no trial speaker shapes its own normalization. A model's impostors
    come from its own voice group only (voice_groups), as same-gender non-target trials: the
    other group's are refused at any useful threshold and would pull it down, so strangers of
    the user's own gender would pass more often than the target FMR says
    (docs/speaker-verification.md). within_voice_groups=False counts every impostor (the
    calibration shipped before 2026-11-28).
    """
    names = sorted(s for s in speakers if len(speakers[s]) > 0)
    if len(names) < 10:
        raise CohortError("need at least 10 cohort speakers")
    entries = l2_normalize(np.stack([l2_normalize(np.stack(speakers[s]).mean(0)) for s in names]))
    all_pieces = np.stack([e for s in names for e in speakers[s]])
    split = voice_groups(entries, center_of(all_pieces)) if within_voice_groups else None
    one = np.zeros(len(names), dtype=int)  # without the split: every impostor counts
    group = dict(zip(names, (split if split is not None else one).tolist(), strict=True))
    folds = [names[0::2], names[1::2]]
    non: list[np.ndarray] = []
    tar: list[np.ndarray] = []
    raw_non: list[np.ndarray] = []
    for f in (0, 1):
        center = center_of(np.stack([e for s in folds[1 - f] for e in speakers[s]]))
        usable = [s for s in folds[f] if len(speakers[s]) > model_pieces]
        if len(usable) < 5:
            raise CohortError(f"need speakers with more than {model_pieces} pieces in each fold")
        models = l2_normalize(np.stack([np.mean(speakers[s][:model_pieces], 0) for s in usable]))
        tests = [(i, e) for i, s in enumerate(usable) for e in speakers[s][model_pieces:]]
        owner = np.array([i for i, _ in tests])
        t_mat = l2_normalize(np.stack([e for _, e in tests]))
        cm = l2_normalize(models - center)
        ct = l2_normalize(t_mat - center)
        scores = ct @ cm.T  # (tests, models)
        same = owner[:, None] == np.arange(len(usable))[None, :]
        g = np.array([group[s] for s in usable])
        impostor = ~same & (g[owner][:, None] == g[None, :])
        tar.append(scores[same])
        non.append(scores[impostor])
        raw_non.append((t_mat @ models.T)[impostor])
    norm, cos = np.concatenate(non), np.concatenate(raw_non)
    calibration = tuple((f, float(np.quantile(norm, 1 - f))) for f in CALIBRATION_FMRS)
    from voxgate.evaluation import eer

    info = dict(info or {})
    info.update(
        {
            "calibration_trials": len(norm),
            "calibration_target_trials": int(sum(len(t) for t in tar)),
            "calibration_eer_percent": round(100 * eer(np.concatenate(tar), norm), 3),
            "calibration_protocol": f"two speaker folds; model = mean of {model_pieces} "
            f"pieces of {PIECE_S[0]:g}-{PIECE_S[1]:g} s, attempt = one later piece; centre "
            "from the other fold",
            "raw_cosine_calibration": [
                {"fmr": f, "threshold": float(np.quantile(cos, 1 - f))} for f in CALIBRATION_FMRS
            ],
        }
    )
    if split is not None:
        info["calibration_protocol"] += "; impostors from the model's own voice group"
        info["voice_groups"] = sorted(np.bincount(split, minlength=2).tolist())
    log.info("cohort: %d speakers, %d impostor calibration trials", len(names), len(norm))
    return Cohort(
        model_id, entries, top_k, calibration, info, method="center", center=center_of(all_pieces)
    )


def embed_chunks(
    recordings: Sequence[tuple[str, np.ndarray]],
    embed: Callable[[np.ndarray], np.ndarray],
    progress: Callable[[int, int], None] | None = None,
    cut: Callable[[int, np.ndarray], list[np.ndarray]] | None = None,
) -> dict[str, list[np.ndarray]]:
    """Cut each (speaker, pcm) (default: CHUNK_S chunks; `cut(index, pcm)` otherwise) and embed
    the pieces; returns speaker -> piece embeddings."""
    out: dict[str, list[np.ndarray]] = {}
    for n, (spk, pcm) in enumerate(recordings, 1):
        for piece in cut(n, pcm) if cut else chunk(pcm):
            try:
                out.setdefault(spk, []).append(embed(piece))
            except Exception as exc:  # a too-short piece: skip it, keep building
                log.warning("cohort: %s: piece skipped (%s)", spk, exc)
        if progress:
            progress(n, len(recordings))
    return out
