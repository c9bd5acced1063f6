"""Speaker-verification evaluation on a protocol folder (manifest.csv, enroll.csv, trials.csv).

Two systems are scored on the same trials:
- "cosine": the upstream recipe (model = normalized mean of the take embeddings, raw cosine).
- "backend": voxgate's back end as the daemon runs it: enrollment checks (bad and outlier
  takes dropped), voiceprints in a real encrypted store, the shipped cohort's normalization,
  the threshold from the target FMR, and the quality gate.
Every trial counts towards EER; the quality gate's retry rate is reported beside it. Nothing
here is tuned on the trials: the back end's settings come from the config and the cohort.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from voxgate.audio.base import SAMPLE_RATE, AudioError
from voxgate.cohort import model_sha256, preprocessing
from voxgate.quality import READING, Quality, assess, gate_reasons

log = logging.getLogger(__name__)

GAP_S = 0.2  # silence between ';'-joined files: one recording, as a microphone gives it
P_TARGET = 0.01
# Below these a protocol is too thin for its EER interval to mean much: 4 speakers give a
# speaker bootstrap only C(7, 4) = 35 distinct resamples, too few for 2.5 % tails, and
# with fewer than 30 trials of a class one trial moves the EER by more than 3 points.
MIN_CI_SPEAKERS = 5
MIN_CI_TRIALS = 30


class EvalError(Exception):
    """A protocol folder that cannot be evaluated; str() is meant for the user."""


# --- the protocol -----------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalSet:
    root: Path
    speaker_of: dict[str, str]  # file path -> speaker (from manifest.csv)
    enroll: dict[str, list[str]]  # model -> recordings (a recording may be 'a;b;c')
    trials: list[tuple[str, str, int]]  # (model, recording, target)

    @property
    def name(self) -> str:
        return self.root.resolve().name  # resolved: the name of '.' or '..' is not the folder's

    def speaker(self, recording: str) -> str:
        return self.speaker_of.get(recording.split(";")[0], "?")


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """The rows with their line numbers in the file (the reader skips blank lines, so a
    row's index is not its line)."""
    try:
        # utf-8-sig: a spreadsheet's BOM would otherwise become part of the first column's name
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            rows = [(reader.line_num, row) for row in reader]
    except FileNotFoundError:
        raise EvalError(f"{path}: missing (a protocol folder needs {path.name})") from None
    except UnicodeDecodeError as exc:  # a spreadsheet's "Unicode text" (UTF-16) or Latin-1
        raise EvalError(
            f"{path}: not UTF-8 text (byte {exc.start}); save it as CSV UTF-8"
        ) from None
    except (OSError, csv.Error) as exc:
        raise EvalError(f"{path}: unreadable: {exc}") from None
    # Said of the header itself: an empty file, or a ';'-separated spreadsheet export, was
    # blamed on line 2 or on another file ("model X not enrolled").
    if any(c not in header for c in columns):
        # Quoted: 'model, path' split into 'model' and ' path' read like the needed names.
        found = ", ".join(repr(c) for c in header) if header else "nothing"
        raise EvalError(f"{path}, line 1: needs columns {', '.join(columns)}; it has {found}")
    for n, row in rows:
        if None in row:  # DictReader's key for fields beyond the header's, else dropped unseen
            fields = len(header) + len(row[None])  # type: ignore[index]
            raise EvalError(
                f"{path}, line {n}: {fields} fields, the header has {len(header)} "
                f"({','.join(header)}); a field with a comma needs double quotes"
            )
        if any(not row.get(c) for c in columns):
            raise EvalError(f"{path}, line {n}: needs columns {', '.join(columns)}")
    return rows


def read_set(root: Path, need_trials: bool = True) -> EvalSet:
    root = Path(root)
    if not root.exists():
        raise EvalError(f"{root}: no such folder")
    if not root.is_dir():
        raise EvalError(f"{root}: not a folder")
    manifest = _read_csv(root / "manifest.csv", ("path", "speaker"))
    speaker_of: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for n, r in manifest:
        path, spk = r["path"], r["speaker"]
        if speaker_of.setdefault(path, spk) != spk:  # the later row silently won before
            raise EvalError(
                f"{root / 'manifest.csv'}, line {n}: {path} is {spk} here, "
                f"{speaker_of[path]} on line {first_line[path]}"
            )
        first_line.setdefault(path, n)
    enroll: dict[str, list[str]] = {}
    trials: list[tuple[str, str, int]] = []

    def listed(where: str, n: int, recording: str) -> None:
        # The manifest gives each recording its speaker; without it a trial's speaker was '?'
        # and the speaker bootstrap's interval collapsed onto the estimate.
        for part in recording.split(";"):
            if not part:  # 'a;' or 'a;;b': would be read as the set folder itself
                raise EvalError(f"{root / where}, line {n}: empty file name in {recording!r}")
            if part not in speaker_of:
                # quoted: a stray space is otherwise invisible
                raise EvalError(f"{root / where}, line {n}: {part!r} is not in manifest.csv")

    def once(where: str, seen: dict[tuple[str, str], int], n: int, r: dict[str, str]) -> None:
        # A repeated row was counted twice: a trial scored twice, a take weighed double.
        line = seen.setdefault((r["model"], r["path"]), n)
        if line != n:
            raise EvalError(
                f"{root / where}, line {n}: model {r['model']!r} and {r['path']} again "
                f"(line {line})"
            )

    # A cohort pool (need_trials=False) with either protocol file needs both: the protocol's
    # speakers must be known to be kept out of the cohort.
    if need_trials or any((root / n).exists() for n in ("enroll.csv", "trials.csv")):
        seen: dict[tuple[str, str], int] = {}
        for n, r in _read_csv(root / "enroll.csv", ("model", "path")):
            listed("enroll.csv", n, r["path"])
            once("enroll.csv", seen, n, r)
            enroll.setdefault(r["model"], []).append(r["path"])
        seen = {}
        for n, r in _read_csv(root / "trials.csv", ("model", "path", "target")):
            if r["target"] not in ("0", "1"):
                raise EvalError(
                    f"{root / 'trials.csv'}, line {n}: target must be 0 or 1, not {r['target']!r}"
                )
            if r["model"] not in enroll:  # quoted: a stray space is otherwise invisible
                known = ", ".join(repr(m) for m in list(enroll)[:5]) + (", ..." * (len(enroll) > 5))
                raise EvalError(
                    f"{root / 'trials.csv'}, line {n}: model {r['model']!r} is not in "
                    f"enroll.csv (it has {known or 'none'})"
                )
            listed("trials.csv", n, r["path"])
            once("trials.csv", seen, n, r)
            # The manifest's speakers decide what a target is (the bootstrap resamples by
            # them): a flipped or shifted target column was scored as given.
            model_spk = {speaker_of[rec.split(";")[0]] for rec in enroll[r["model"]]}
            test_spk = speaker_of[r["path"].split(";")[0]]
            if (test_spk in model_spk) != (r["target"] == "1"):
                raise EvalError(
                    f"{root / 'trials.csv'}, line {n}: target {r['target']}, but model "
                    f"{r['model']!r} is {'/'.join(sorted(model_spk))} and {r['path']} is "
                    f"{test_spk} in manifest.csv"
                )
            trials.append((r["model"], r["path"], int(r["target"])))
    return EvalSet(root, speaker_of, enroll, trials)


def load_recording(root: Path, recording: str) -> np.ndarray:
    """One recording: ';'-joined files in order with GAP_S of silence between them."""
    from voxgate.audio.file import read_audio

    gap = np.zeros(int(GAP_S * SAMPLE_RATE), dtype=np.int16)
    parts: list[np.ndarray] = []
    for i, rel in enumerate(recording.split(";")):
        if i:
            parts.append(gap)
        parts.append(read_audio(root / rel))
    return np.concatenate(parts)


# --- embeddings, computed once per recording ----------------------------------------------------


class EmbeddingCache:
    """Embeds each recording once; also an embedder (embed(pcm)) keyed by the audio's hash,
    so enrollment checks reuse the same numbers. Optionally persisted to an .npz file, where
    an embedding is reused only while its files keep their content (sha256 of the bytes)."""

    def __init__(
        self,
        embedder: Any,
        root: Path,
        vad_cfg: Any = None,
        cache_file: Path | None = None,
    ) -> None:
        self.embedder = embedder
        self.model_id: str = embedder.model_id
        self.dim: int = embedder.dim
        self.sha256 = model_sha256(embedder)
        # Embeddings also depend on the card's preprocessing: a cache made without it is stale.
        self.preprocess = preprocessing(embedder)
        self.root = root
        self.vad_cfg = vad_cfg
        # The cached quality (net speech, SNR) is the VAD's reading: other settings, other cache.
        self.vad = vad_cfg.model_dump() if vad_cfg is not None else None
        self.cache_file = cache_file
        self._emb: dict[str, np.ndarray | None] = {}
        self._quality: dict[str, Quality] = {}
        self._by_hash: dict[str, np.ndarray | None] = {}
        self._stamps: dict[str, str | None] = {}
        self._cached_errors: dict[str, str] = {}  # why a cached recording has no embedding
        self.errors: dict[str, str] = {}
        self.unreadable: set[str] = set()  # never cached: a fixed file is read next run
        self.reused = 0  # recordings fill() took from the cache, not embedded again
        if cache_file is not None and cache_file.exists():
            self._load(cache_file)

    def _load(self, path: Path) -> None:
        # Said in plain words, naming the file: the warning repeated numpy's text, e.g. its
        # advice to load a junk file "unsafely" with allow_pickle.
        again = "every recording is embedded again"
        try:
            with np.load(path, allow_pickle=False) as data:
                meta_text, all_emb = str(data["meta"]), np.asarray(data["emb"])
        except OSError as exc:  # a permission, a failing disk: the reason is the user's to fix
            log.warning("%s: embedding cache unreadable (%s); %s", path, exc.strerror, again)
            return
        except (ValueError, KeyError, TypeError, AttributeError, EOFError,
                zipfile.BadZipFile):  # fmt: skip
            log.warning(
                "%s: embedding cache unreadable (damaged, or not a file voxgate eval wrote); %s",
                path,
                again,
            )
            return
        try:
            meta = json.loads(meta_text)
            if (
                meta.get("model_id") != self.model_id
                or meta.get("sha256") != self.sha256
                or meta.get("preprocess") != self.preprocess
                or meta.get("vad") != self.vad
                # Older caches keyed files by size and modification time ("stamps"),
                # which other audio can share: their embeddings are all made again.
                or "file_sha256" not in meta
            ):
                return
            # Read whole before any of it is used: entries that do not fit (another
            # layout, lists of different lengths) leave nothing half taken in.
            embs, quality, stamps = {}, {}, {}
            for rec, emb, q, stamp in zip(meta["recordings"], all_emb, meta["quality"],
                                          meta["file_sha256"], strict=True):  # fmt: skip
                embs[rec] = emb if np.all(np.isfinite(emb)) else None
                if q is not None:  # None: not read again yet by this gate (see save)
                    quality[rec] = Quality(**q)
                stamps[rec] = stamp
            errors = {str(k): str(v) for k, v in meta.get("errors", {}).items()}
            if meta.get("quality_reading") != READING:
                # Read by an older gate (quality.READING): the embeddings hold, the
                # readings are made again (fill), or the gate's figures would be stale.
                quality = {}
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning(
                "%s: embedding cache ignored: its entries do not fit this voxgate's layout; %s",
                path,
                again,
            )
            return
        self._emb.update(embs)
        self._quality.update(quality)
        self._stamps.update(stamps)
        self._cached_errors.update(errors)

    def save(self) -> None:
        if self.cache_file is None:
            return
        # A recording without a reading (a Ctrl-C while an older gate's were read again) is
        # kept with quality null: the next run reads it again, without embedding it again.
        recs = sorted(r for r in self._emb if r not in self.unreadable)
        if not recs:
            return
        emb = np.stack(
            [e if (e := self._emb[r]) is not None else np.full(self.dim, np.nan) for r in recs]
        ).astype(np.float32)
        meta = {
            "model_id": self.model_id,
            "sha256": self.sha256,
            "preprocess": self.preprocess,
            "vad": self.vad,
            "recordings": recs,
            "quality": [q.__dict__ if (q := self._quality.get(r)) else None for r in recs],
            "quality_reading": READING,
            "file_sha256": [self._stamps.get(r) for r in recs],
            # Reported again by the next run, which reuses these recordings' missing embeddings.
            "errors": {
                r: self.errors.get(r) or self._cached_errors.get(r, "no embedding")
                for r in recs
                if self._emb[r] is None
            },
        }
        # Written beside and renamed: a Ctrl-C or a full disk mid-write leaves the previous
        # cache whole instead of a truncated file.
        part = self.cache_file.with_name(self.cache_file.name + ".part")
        try:
            with open(part, "wb") as f:
                np.savez(f, emb=emb, meta=np.array(json.dumps(meta)))
            part.replace(self.cache_file)
        except OSError as exc:  # named after the cache, not the part file
            part.unlink(missing_ok=True)
            raise OSError(exc.errno, exc.strerror, str(self.cache_file)) from None
        except BaseException:
            part.unlink(missing_ok=True)
            raise

    def embed(self, pcm: np.ndarray) -> np.ndarray:
        key = hashlib.sha1(np.asarray(pcm, np.int16).tobytes()).hexdigest()
        if key not in self._by_hash:
            self._by_hash[key] = self.embedder.embed(pcm)
        emb = self._by_hash[key]
        if emb is None:
            raise ValueError("no embedding")
        return emb

    def _stamp(self, rec: str) -> str | None:
        """sha256 of each file of a recording. The cache was keyed by the relative path
        alone, then by size and modification time, which a file replaced by other audio of
        the same length keeps under `cp -p`, `touch -r`, `rsync -t` or a tar extract: it was
        scored with the old embedding. Hashing the bytes costs little next to embedding
        them (benchmarks/eval_cache_hash.py)."""
        try:
            return ";".join(
                hashlib.sha256((self.root / part).read_bytes()).hexdigest()
                for part in rec.split(";")
            )
        except OSError:
            return None

    def fill(
        self,
        recordings: Iterable[str],
        progress: Callable[[int, int], None],
        reread: Callable[[int, int], None] | None = None,
    ) -> None:
        """Embed what the cache lacks, with progress(n, total); then read again the quality of
        recordings whose cached embeddings an older gate read, with reread(n, total) (default:
        progress). Either may be interrupted: save() keeps what was done."""
        stamps = {r: self._stamp(r) for r in dict.fromkeys(recordings)}
        fresh = [
            r
            for r, st in stamps.items()
            if r not in self._emb or st is None or self._stamps.get(r) != st
        ]
        done = set(stamps) - set(fresh)
        self.reused = len(done)
        # Embedded already, but read by an older gate: read again, not embedded again.
        again = [r for r in stamps if r in done and r not in self._quality]
        for r in stamps:  # in protocol order, as fill() reports them
            if r in done and r in self._cached_errors:
                self.errors[r] = self._cached_errors[r]
        for n, rec in enumerate(fresh, 1):
            # Forgotten until it is done again: a Ctrl-C halfway must not leave the old
            # embedding saved under the new stamp (save() keeps what is done).
            self._emb.pop(rec, None)
            self._stamps[rec] = stamps[rec]
            pcm = self._read(rec)
            if pcm is not None:
                try:
                    emb = self.embedder.embed(pcm)
                except Exception as exc:  # TooShort, or audio the model cannot take
                    self.errors[rec] = str(exc)
                    log.warning("%s: no embedding: %s", rec, exc)
                    emb = None
                self._emb[rec] = emb
                self._by_hash[hashlib.sha1(pcm.tobytes()).hexdigest()] = emb
            progress(n, len(fresh))
        for n, rec in enumerate(again, 1):
            self._read(rec)
            (reread or progress)(n, len(again))

    def _read(self, rec: str) -> np.ndarray | None:
        """The recording's audio, its quality reading taken; None (counted) when it cannot
        be read."""
        try:
            pcm = load_recording(self.root, rec)
        except AudioError as exc:  # a corrupt or missing file: counted, the run goes on
            self.errors[rec] = str(exc)
            self.unreadable.add(rec)
            log.warning("%s: no embedding: %s", rec, exc)
            self._emb[rec] = None
            return None
        self._quality[rec] = assess(pcm, self.vad_cfg)
        return pcm

    def get(self, rec: str) -> np.ndarray | None:
        return self._emb[rec]

    def quality(self, rec: str) -> Quality | None:
        """None for a recording that could not be read."""
        return self._quality.get(rec)


# --- metrics ------------------------------------------------------------------------------------


def _curve(
    tar: np.ndarray,
    non: np.ndarray,
    w_tar: np.ndarray | None = None,
    w_non: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, FNMR, FMR) over every distinct score; accept when score >= threshold."""
    w_tar = np.ones(len(tar)) if w_tar is None else w_tar
    w_non = np.ones(len(non)) if w_non is None else w_non
    scores = np.concatenate([tar, non])
    is_tar = np.concatenate([np.ones(len(tar), bool), np.zeros(len(non), bool)])
    w = np.concatenate([w_tar, w_non])
    order = np.argsort(scores, kind="mergesort")
    scores, is_tar, w = scores[order], is_tar[order], w[order]
    # Threshold at each score: everything strictly below it is rejected.
    miss = np.concatenate([[0.0], np.cumsum(np.where(is_tar, w, 0.0))])
    fa_below = np.concatenate([[0.0], np.cumsum(np.where(~is_tar, w, 0.0))])
    thr = np.concatenate([scores, [np.inf]])
    keep = np.concatenate([[True], scores[1:] != scores[:-1], [True]])
    total_t, total_n = max(w[is_tar].sum(), 1e-12), max(w[~is_tar].sum(), 1e-12)
    fnmr = miss[keep] / total_t
    fmr = 1 - fa_below[keep] / total_n
    return thr[keep], fnmr, fmr


def eer(tar: np.ndarray, non: np.ndarray, w_tar: Any = None, w_non: Any = None) -> float:
    """Equal error rate (0..1), linearly interpolated where FNMR crosses FMR."""
    _, fnmr, fmr = _curve(np.asarray(tar, float), np.asarray(non, float), w_tar, w_non)
    i = int(np.argmax(fnmr >= fmr))
    if i == 0:
        return float((fnmr[0] + fmr[0]) / 2)
    d0, d1 = fmr[i - 1] - fnmr[i - 1], fnmr[i] - fmr[i]
    a = d0 / (d0 + d1) if d0 + d1 > 0 else 0.5
    return float(fnmr[i - 1] + a * (fnmr[i] - fnmr[i - 1]))


def min_dcf(tar: np.ndarray, non: np.ndarray, p_target: float = P_TARGET) -> float:
    """Normalized minimum detection cost (C_miss = C_fa = 1)."""
    _, fnmr, fmr = _curve(np.asarray(tar, float), np.asarray(non, float))
    cost = p_target * fnmr + (1 - p_target) * fmr
    return float(cost.min() / min(p_target, 1 - p_target))


def rates_at(tar: np.ndarray, non: np.ndarray, threshold: float) -> tuple[float, float]:
    """(FMR, FNMR) when accepting score >= threshold."""
    tar, non = np.asarray(tar), np.asarray(non)
    fmr = float((non >= threshold).mean()) if len(non) else 0.0
    fnmr = float((tar < threshold).mean()) if len(tar) else 0.0
    return fmr, fnmr


def bootstrap_eer_ci(
    scores: np.ndarray,
    target: np.ndarray,
    spk_model: np.ndarray,
    spk_test: np.ndarray,
    n: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """95 % interval of the EER, resampling speakers with replacement (a trial counts
    m_model * m_test times), since trials of one speaker are not independent."""
    rng = np.random.default_rng(seed)
    speakers = np.unique(np.concatenate([spk_model, spk_test]))
    index = {s: i for i, s in enumerate(speakers)}
    mi = np.array([index[s] for s in spk_model])
    ti = np.array([index[s] for s in spk_test])
    out = []
    for _ in range(n):
        m = np.bincount(rng.integers(0, len(speakers), len(speakers)), minlength=len(speakers))
        w = (m[mi] * m[ti]).astype(float)
        wt, wn = w[target == 1], w[target == 0]
        if wt.sum() == 0 or wn.sum() == 0:
            continue
        out.append(eer(scores[target == 1], scores[target == 0], wt, wn))
    lo, hi = np.percentile(out, [2.5, 97.5])
    return float(lo), float(hi)


def binomial_interval(errors: int, n: int) -> tuple[float, float]:
    """95 % interval of an error rate from `errors` in `n` independent trials: exact
    (Clopper-Pearson); with no error, the one-sided bound 1 - 0.05^(1/n), about 3/n (the
    rule of three), since the rate cannot be below 0."""
    from scipy.stats import beta

    if errors <= 0:
        return 0.0, float(1 - 0.05 ** (1 / n))
    lo = float(beta.ppf(0.025, errors, n - errors + 1))
    hi = float(beta.ppf(0.975, errors + 1, n - errors)) if errors < n else 1.0
    return lo, hi


def eer_interval(
    scores: np.ndarray, target: np.ndarray, spk_model: np.ndarray, spk_test: np.ndarray
) -> tuple[tuple[float, float], str]:
    """95 % interval of the EER and how it was made. The speaker bootstrap, except where
    it cannot see the uncertainty: with no error it resamples only error-free trials (it
    printed 0.00-0.00, which reads as certainty), and with few speakers or trials it has
    few distinct outcomes. There the interval is widened to the exact binomial interval of
    the EER's errors in the smaller class's trials, the count that limits the EER."""
    tar, non = scores[target == 1], scores[target == 0]
    point = eer(tar, non)
    lo, hi = bootstrap_eer_ci(scores, target, spk_model, spk_test)
    n = min(len(tar), len(non))
    errors = max(1, round(point * n)) if point > 0 else 0
    speakers = len(np.unique(np.concatenate([spk_model, spk_test])))
    if errors > 0 and speakers >= MIN_CI_SPEAKERS and n >= MIN_CI_TRIALS:
        return (lo, hi), "speaker bootstrap"
    b_lo, b_hi = binomial_interval(errors, n)
    how = f"speaker bootstrap widened to the exact binomial interval of {errors} error(s) in {n}"
    if errors == 0:
        how = f"no error in {n} trials: upper end 1 - 0.05^(1/{n}) (the rule of three)"
    return (min(lo, b_lo), max(hi, b_hi)), how


def det_plot(systems: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> bool:
    """DET curves (probit axes) to a PNG; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'voxgate[dev]'): no DET plot")
        return False
    from scipy.stats import norm

    ticks = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4]
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    for name, (tar, non) in systems.items():
        _, fnmr, fmr = _curve(np.asarray(tar, float), np.asarray(non, float))
        clip = np.clip
        ax.plot(norm.ppf(clip(fmr, 1e-4, 0.5)), norm.ppf(clip(fnmr, 1e-4, 0.5)), label=name)
    ax.set_xticks(norm.ppf(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_yticks(norm.ppf(ticks), [f"{100 * t:g}" for t in ticks])
    lim = norm.ppf([0.0008, 0.45])
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.set_xlabel("false match rate (%)")
    ax.set_ylabel("false non-match rate (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --- the evaluation -----------------------------------------------------------------------------


@dataclass
class SystemResult:
    name: str
    scores: np.ndarray
    eer: float
    eer_ci: tuple[float, float]
    min_dcf: float
    eer_ci_method: str = "speaker bootstrap"
    threshold: float | None = None
    fmr: float | None = None
    fnmr: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out = {
            "eer_percent": round(100 * self.eer, 2),
            "eer_ci95_percent": [round(100 * x, 2) for x in self.eer_ci],
            "eer_ci95_method": self.eer_ci_method,
            "min_dcf": round(self.min_dcf, 4),
        }
        if self.threshold is not None:
            out.update(
                threshold=round(self.threshold, 4),
                fmr_percent=round(100 * (self.fmr or 0.0), 3),
                fnmr_percent=round(100 * (self.fnmr or 0.0), 2),
            )
        out.update(self.extra)
        return out


def _progress_printer(label: str) -> Callable[[int, int], None]:
    tty = sys.stderr.isatty()
    state = {"last": -1}

    def show(n: int, total: int) -> None:
        pct = 100 * n // max(total, 1)
        if tty:
            end = "\n" if n == total else ""
            print(f"\r{label}: {n}/{total} ({pct} %)", end=end, file=sys.stderr, flush=True)
        elif pct // 10 != state["last"] or n == total:
            state["last"] = pct // 10
            print(f"{label}: {n}/{total} ({pct} %)", file=sys.stderr, flush=True)

    return show


def _system(
    name: str, scores: np.ndarray, es: EvalSet, threshold: float | None = None
) -> SystemResult:
    target = np.array([t for _, _, t in es.trials])
    tar, non = scores[target == 1], scores[target == 0]
    spk_m, spk_t = _trial_speakers(es)
    ci, how = eer_interval(scores, target, spk_m, spk_t)
    res = SystemResult(name, scores, eer(tar, non), ci, min_dcf(tar, non), eer_ci_method=how)
    if threshold is not None:
        res.threshold = threshold
        res.fmr, res.fnmr = rates_at(tar, non, threshold)
    return res


@contextmanager
def _writing(out_dir: Path | None) -> Iterator[None]:
    """An output that cannot be written (a file where the folder should be, a full disk):
    EvalError naming the file, not a traceback."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or out_dir
        raise EvalError(f"{where}: cannot write the results ({exc.strerror or exc})") from None


def _trial_speakers(es: EvalSet) -> tuple[np.ndarray, np.ndarray]:
    """The speaker of each trial's model and of its test recording, which the speaker
    bootstrap resamples. Models are named after speakers in the protocols; a model's
    speaker is its takes'."""
    model_spk = {m: es.speaker(recs[0]) for m, recs in es.enroll.items()}
    spk_m = np.array([model_spk.get(m, m) for m, _, _ in es.trials])
    spk_t = np.array([es.speaker(r) for _, r, _ in es.trials])
    return spk_m, spk_t


def too_few_trials(es: EvalSet) -> str | None:
    """Said plainly, in the summary and in report.json, when the protocol is too thin for
    its EER to mean much (4 trials printed "EER 0.00 % (95 % CI 0.00-0.00)")."""
    n_target = sum(t for _, _, t in es.trials)
    n_non = len(es.trials) - n_target
    # The speakers of the trials, as the interval counts them: a model enrolled for no
    # trial does not help the bootstrap.
    speakers = set(np.concatenate(_trial_speakers(es)).tolist())
    n = min(n_target, n_non)
    why = []
    if n < MIN_CI_TRIALS:
        cls = "target" if n_target <= n_non else "non-target"
        why.append(f"one {cls} trial moves the EER by {100 / n:.1f} points")
    if len(speakers) < MIN_CI_SPEAKERS:
        why.append(f"a speaker bootstrap needs at least {MIN_CI_SPEAKERS} speakers")
    if not why:
        return None
    return (
        f"{n_target} target and {n_non} non-target trials of {len(speakers)} speaker(s) are "
        f"too few for the EER or its interval to mean much ({'; '.join(why)})"
    )


def _as_live(q: Quality | None, live: bool) -> Quality | None:
    return replace(q, live=True) if q is not None and live else q


def evaluate(
    set_dir: Path,
    embedder: Any,
    cfg: Any,
    cohort: Any,
    out_dir: Path | None = None,
    progress: bool = True,
    live: bool = False,
    live_takes: bool = False,
) -> dict[str, Any]:
    """Run both systems on a protocol folder; returns the report (also written to out_dir).
    `live` / `live_takes`: gate the test recordings / check the enrollment takes as
    utterances the door's endpointer cut (quality.Quality.live; benchmarks/noise_gate.py
    --room), not as files."""
    from voxgate.enrollment import check_takes
    from voxgate.scoring import Scorer
    from voxgate.voiceprints import VoiceprintStore, l2_normalize

    es = read_set(set_dir)
    if not es.trials:
        raise EvalError(f"{set_dir}: no trials")
    n_target = sum(t for _, _, t in es.trials)
    if n_target in (0, len(es.trials)):  # EER and minDCF are undefined with one class
        raise EvalError(
            f"{es.root / 'trials.csv'}: needs both target (1) and non-target (0) trials; "
            f"has {n_target} target and {len(es.trials) - n_target} non-target"
        )
    cache_file = None
    if out_dir is not None:
        with _writing(out_dir):
            out_dir.mkdir(parents=True, exist_ok=True)
        cache_file = out_dir / f"embeddings-{embedder.model_id.replace('/', '--')}.npz"
    cache = EmbeddingCache(embedder, es.root, cfg.vad, cache_file)
    recordings = [r for recs in es.enroll.values() for r in recs] + [r for _, r, _ in es.trials]
    noop: Callable[[int, int], None] = lambda n, total: None  # noqa: E731
    try:
        cache.fill(
            recordings,
            _progress_printer(f"embedding {es.name}") if progress else noop,
            # Only the quality gate's readings (an older gate's in the cache), not embedding.
            _progress_printer(f"re-reading {es.name} (quality only)") if progress else noop,
        )
    except KeyboardInterrupt:
        # Ctrl-C: what was embedded or read again is kept, so a rerun with the same --out
        # does only the rest.
        with _writing(out_dir):
            cache.save()
        raise
    if progress and cache.reused:
        # A rerun printed no progress at all: whether the cache was used was not said.
        print(
            f"{es.name}: {cache.reused} of {len(set(recordings))} recording(s) taken from the "
            f"embedding cache {cache_file} (a changed file is embedded again)",
            file=sys.stderr,
        )
    if cache.unreadable >= set(recordings):  # e.g. the CSV files copied without the audio
        first = next(iter(cache.errors.values()))
        raise EvalError(
            f"{es.root}: none of the {len(cache.unreadable)} recordings could be read "
            f"(the first: {first})"
        )
    with _writing(out_dir):
        cache.save()

    # Upstream recipe: normalized mean of the take embeddings, raw cosine.
    means: dict[str, np.ndarray] = {}
    for model, recs in es.enroll.items():
        embs = [e for e in (cache.get(r) for r in recs) if e is not None]
        if embs:
            means[model] = l2_normalize(np.mean(l2_normalize(np.stack(embs)), axis=0))

    def cos(model: str, rec: str) -> float:
        e, m = cache.get(rec), means.get(model)
        return float(m @ e) if e is not None and m is not None else float("-inf")

    baseline = np.array([cos(m, r) for m, r, _ in es.trials])
    # Unscorable trials count as no match; with no trial of one class scored, EER and minDCF
    # describe no trial at all (0.00 % with no impostor trial scored, 50.00 % with none).
    is_target = np.array([t for _, _, t in es.trials])
    for cls, label in ((1, "target"), (0, "non-target")):
        if not np.isfinite(baseline[is_target == cls]).any():
            one = next(iter(cache.errors.items()), None)
            named = f"; the first: {one[0]} ({one[1]})" if one else ""
            raise EvalError(
                f"{es.root / 'trials.csv'}: no {label} trial could be scored (each names a "
                f"recording or a model without an embedding: {len(cache.errors)} recording(s) "
                f"have none{named}); EER and minDCF would be meaningless"
            )

    # voxgate back end: enrollment checks, a real encrypted store, AS-norm, FMR threshold.
    # Protocol takes are a few seconds each: the enrollment totals (20 s, 3 takes) are a
    # device policy, so they are relaxed here; per-take checks and outlier removal stay.
    speaker_cfg = cfg.speaker.model_copy(update={"enroll_min_speech_s": 1, "enroll_min_takes": 1})
    rejected: dict[str, list[str]] = {}
    retry = 0
    # Store names of our own: a protocol's model labels need not be valid user names (longer
    # than 64 characters, or two labels the same after normalization raised StoreError).
    store_name = {model: f"model-{i}" for i, model in enumerate(es.enroll)}
    with tempfile.TemporaryDirectory() as tmp:
        store = VoiceprintStore(Path(tmp) / "eval.db", bytes(32))
        for model, all_recs in es.enroll.items():
            recs = []
            takes: list[np.ndarray] = []
            for rec_path in all_recs:
                try:
                    takes.append(load_recording(es.root, rec_path))
                    recs.append(rec_path)
                except AudioError:
                    pass  # unreadable: fill() counted it among the embedding errors
            result = check_takes(takes, cache, speaker_cfg, cfg.vad, live_takes)
            enroll_embs = result.embeddings
            if len(enroll_embs) == 0:  # every take rejected: enroll from all so trials still count
                usable = [e for e in (cache.get(r) for r in recs) if e is not None]
                enroll_embs = np.stack(usable) if usable else np.zeros((0, 0))
            rejected[model] = [f"{recs[t.index - 1]}: {t.reason}" for t in result.rejected]
            if len(enroll_embs) == 0:
                # No take could be embedded at all: the model stays unenrolled and its trials
                # score -inf (counted, as every trial is), instead of stopping the whole run.
                log.warning("%s: no enrollment take of %s could be embedded", es.name, model)
                continue
            store.add_user(store_name[model], enroll_embs, embedder.model_id)
        scorer = Scorer(store, embedder, speaker_cfg, cohort)
        threshold = scorer.threshold(1)
        backend = np.empty(len(es.trials))
        for n, (model, rec, _) in enumerate(es.trials):
            emb = cache.get(rec)
            if emb is None:
                backend[n] = -np.inf
                retry += 1
                continue
            q = _as_live(cache.quality(rec), live)
            r = scorer.verify(emb, store_name[model], quality=q)
            backend[n] = r.score
            retry += not r.quality_ok
        store.close()

    base = _system("cosine (upstream recipe)", baseline, es)
    back = _system("voxgate back end", backend, es, threshold)
    back.extra["retry_rate_percent"] = round(100 * retry / len(es.trials), 2)
    # What threshold this set itself would need for the target FMR (shows calibration drift;
    # needs well over 1/target_fmr impostor trials to mean much).
    non = backend[np.array([t for _, _, t in es.trials]) == 0]
    with np.errstate(invalid="ignore"):
        need = float(np.quantile(non, 1 - cfg.speaker.target_fmr))
    # Unscorable trials score -inf; next to them the quantile is NaN, which is not JSON.
    back.extra["threshold_for_target_fmr_on_this_set"] = (
        round(need, 3) if np.isfinite(need) else None
    )
    back.extra["rejected_enroll_takes"] = sum(len(v) for v in rejected.values())
    # Unreadable recordings are reported as embedding errors, not as short or noisy audio.
    readable = (_as_live(cache.quality(r), live) for r in dict.fromkeys(r for _, r, _ in es.trials))
    qualities = [q for q in readable if q is not None]
    sp = cfg.speaker
    gated = [
        gate_reasons(
            q, sp.min_speech_s, sp.min_snr_db, sp.min_snr_db_no_pauses, max_clipped=sp.max_clipped
        )
        for q in qualities
    ]
    report = {
        "set": es.name,
        "model_id": embedder.model_id,
        "trials": len(es.trials),
        "target_trials": int(sum(t for _, _, t in es.trials)),
        "too_few_trials": too_few_trials(es),
        "models": len(es.enroll),
        "target_fmr": cfg.speaker.target_fmr,
        # speaker.threshold, when set: the back end's threshold then is not target_fmr's
        "fixed_threshold": cfg.speaker.threshold,
        "cohort": {
            "speakers": len(cohort.embeddings) if cohort is not None else 0,
            "method": cohort.method if cohort is not None else None,
            "top_k": cohort.top_k if cohort is not None else None,
        },
        "test_recordings": len(qualities),
        "test_net_speech_s_median": (
            round(float(np.median([q.speech_s for q in qualities])), 2) if qualities else None
        ),
        "test_snr_db_median": (
            round(float(np.median([q.snr_db for q in qualities])), 1) if qualities else None
        ),
        "gate_too_little_speech": sum("too_little_speech" in g for g in gated),
        "gate_too_noisy": sum("too_noisy" in g for g in gated),
        "gate_clipped": sum("clipped" in g for g in gated),
        "embedding_errors": cache.errors,
        "rejected_enroll_takes": rejected,
        "systems": {"cosine": base.summary(), "backend": back.summary()},
    }
    if out_dir is not None:
        # The plot first, so that report.json names it as the printed summary does.
        systems = {}
        target = np.array([t for _, _, t in es.trials])
        for res in (base, back):
            systems[f"{res.name}: EER {100 * res.eer:.2f} %"] = (
                res.scores[target == 1],
                res.scores[target == 0],
            )
        png = out_dir / "det.png"
        with _writing(out_dir):
            if det_plot(systems, png, f"{es.name} ({embedder.model_id})"):
                report["det_png"] = str(png)
            else:
                # An earlier run's plot, left in place, looked like this run's.
                why = "matplotlib is not installed (pip install 'voxgate[dev]')"
                if png.exists():
                    png.unlink()
                    why += f"; the {png} of an earlier run was removed"
                report["no_det_png"] = why
        with _writing(out_dir):
            (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
            # UTF-8 like the protocol it came from, whatever the locale (non-ASCII labels)
            with open(out_dir / "scores.csv", "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["model", "path", "target", "cosine", "backend"])
                for (m, path, t), a, b in zip(es.trials, baseline, backend, strict=True):
                    w.writerow([m, path, t, f"{a:.6f}", f"{b:.6f}"])
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"{report['set']}: {report['trials']} trials ({report['target_trials']} target), "
        f"{report['models']} models, model {report['model_id']}",
    ]
    if report.get("too_few_trials"):  # before the figures, which it qualifies
        lines.append(f"  note: {report['too_few_trials']}")
    for key, label in (("cosine", "cosine (upstream recipe)"), ("backend", "voxgate back end")):
        s = report["systems"][key]
        lo, hi = s["eer_ci95_percent"]
        line = (
            f"  {label:26s} EER {s['eer_percent']:5.2f} % (95 % CI {lo:.2f}-{hi:.2f})  "
            f"minDCF {s['min_dcf']:.3f}"
        )
        if s.get("eer_ci95_method", "speaker bootstrap") != "speaker bootstrap":
            line += f"\n  {'':26s} interval: {s['eer_ci95_method']}"
        if "threshold" in s:
            fixed = report.get("fixed_threshold") is not None
            source = "fixed: speaker.threshold" if fixed else f"target FMR {report['target_fmr']:g}"
            line += (
                f"\n  {'':26s} at threshold {s['threshold']:.3f} ({source}): "
                f"FMR {s['fmr_percent']:.2f} %, "
                f"FNMR {s['fnmr_percent']:.2f} %, retry {s['retry_rate_percent']:.1f} %"
            )
        lines.append(line)
    errors = report.get("embedding_errors") or {}
    if errors:  # else only report.json says so, and a rerun from the cache logs nothing
        first, why = next(iter(errors.items()))
        more = f" and {len(errors) - 1} more" if len(errors) > 1 else ""
        lines.append(
            f"  {len(errors)} recording(s) without an embedding (left out of enrollment; "
            f"their trials score as no match): {first} ({why}){more}; all in report.json, "
            "embedding_errors"
        )
    if report.get("det_png"):
        lines.append(f"  DET curve: {report['det_png']}")
    elif report.get("no_det_png"):
        lines.append(f"  no DET curve: {report['no_det_png']}")
    return "\n".join(lines)


def cohort_files(out_dir: Path, model_id: str) -> tuple[Path, Path]:
    """The .npz and .json that --build-cohort writes for a model (cohort.save)."""
    from voxgate.cohort import slug

    npz = out_dir / (slug(model_id) + ".npz")
    return npz, npz.with_suffix(".json")


def build_cohort(
    set_dir: Path,
    embedder: Any,
    out_dir: Path,
    top_k: int,
    progress: bool = True,
    model_arg: str | None = None,
    replace: bool = False,
) -> Any:
    """Cohort + calibration from a set's speakers that have no trials (e.g. resemblyzer_ls's
    251 train-clean-100 speakers). Only embeddings are written, never audio. The model's
    cohort files in out_dir are replaced only with `replace`."""
    from voxgate import cohort as cohortmod

    es = read_set(set_dir, need_trials=False)
    in_trials = {es.speaker(r) for recs in es.enroll.values() for r in recs}
    in_trials |= {es.speaker(r) for _, r, _ in es.trials}
    recs = [(spk, p) for p, spk in es.speaker_of.items() if spk not in in_trials]
    n_spk = len({spk for spk, _ in recs})
    if len(recs) < 10 or n_spk < 10:  # said before embedding, not after
        raise EvalError(
            f"{set_dir}: only {len(recs)} recordings of {n_spk} speakers without trials; "
            "a cohort needs at least 10 speakers"
        )
    # Checked before embedding (seconds to minutes), not when the result is saved.
    if out_dir.exists() and not out_dir.is_dir():
        raise EvalError(f"{out_dir}: not a folder")
    # They were overwritten without a word (a cohort other configs may point at).
    there = [str(p) for p in cohort_files(out_dir, embedder.model_id) if p.exists()]
    if there and not replace:
        raise EvalError(
            f"{' and '.join(there)}: the cohort of {embedder.model_id} is already there; "
            f"add --replace to replace {'them' if len(there) > 1 else 'it'}"
        )
    show = _progress_printer(f"cohort {es.name}") if progress else (lambda n, t: None)

    def load(p: str) -> np.ndarray:
        try:
            return load_recording(es.root, p)
        except AudioError as exc:  # a cohort is built from clean data: stop and name the file
            raise EvalError(f"cohort recording {exc}") from None

    loaded = ((spk, load(p)) for spk, p in recs)
    # Door attempts are short (a 4-digit string is ~2 s of speech): the cohort and its
    # calibration trials are made of pieces that short. Piece n of recording i is seeded by i.
    speakers = cohortmod.embed_chunks(
        list(loaded), embedder.embed, show, cut=lambda i, pcm: cohortmod.pieces(pcm, seed=i)
    )
    lo, hi = cohortmod.PIECE_S
    info = {
        "model_sha256": cohortmod.model_sha256(embedder),
        "preprocess": cohortmod.preprocessing(embedder),
        "source": f"{es.name}: {len(recs)} recordings of speakers without trials, "
        f"cut into pieces of {lo:g}-{hi:g} s",
        "command": f"voxgate eval {set_dir} --build-cohort {out_dir}"
        + (f" --model {model_arg}" if model_arg else "")
        + (" --replace" if replace else ""),
        "license": "derived embeddings (numbers, no audio) of LibriSpeech train-clean-100, "
        "CC BY 4.0, Panayotov et al. 2015"
        if es.name == "resemblyzer_ls"
        else "see the source set's license",
    }
    try:
        c = cohortmod.build_centered(embedder.model_id, speakers, top_k=top_k, info=info)
    except cohortmod.CohortError as exc:  # e.g. recordings too short for enough pieces
        raise EvalError(f"{set_dir}: cannot build a cohort: {exc}") from None
    with _writing(out_dir):
        cohortmod.save(c, out_dir)
    return c
