"""Per-user digit templates: cut from prompted enrollment takes, matched by the aligner.

Enrollment takes are prompted digit strings, so the words are known. Each take is cut into
its digits at the pauses (people read digits with small gaps; where a gap is missing the
longest segment is split at its quietest frame), and every cut becomes one template of
normalised MFCC frames. Templates are biometric data: the voiceprint store encrypts the
bytes from `DigitTemplates.to_bytes()`.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field

import numpy as np

from voxgate.stt.mfcc import TEMPLATES, MfccSpec, dct_matrix, log_mel, mfcc, n_frames

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPEECH_DB = 35.0  # frames this far below the loudest are treated as silence
FLOOR_DB = 12.0  # and frames within this of the quietest (room noise) too,
RANGE_DB = 25.0  # once the recording has shown this much range between noise and speech
LOOKAHEAD = 30  # frames (300 ms) of look-ahead for the loudness reference
MIN_WORD_FRAMES = 8  # 80 ms: shorter blobs are clicks or breaths
GAP_CLOSE_FRAMES = 4  # dips shorter than 40 ms do not separate words


class TemplateError(ValueError):
    """A take that cannot give templates (wrong digit count, no speech...)."""


def _frame_db(pcm: np.ndarray, spec: MfccSpec) -> np.ndarray:
    lm = log_mel(pcm, spec)
    if len(lm) == 0:
        return np.zeros(0, dtype=np.float32)
    energy = np.log(np.exp(lm).sum(1) + 1e-10) * (10 / np.log(10))
    # Causal 3-frame smoothing keeps single noisy frames from splitting a word.
    pad = np.concatenate([np.full(2, energy[0]), energy])
    return ((pad[2:] + pad[1:-1] + pad[:-2]) / 3).astype(np.float32)


class SpeechGate:
    """Per-frame speech decision with a short look-ahead (LOOKAHEAD frames).

    A frame is speech when it is within SPEECH_DB of the loudest frame seen so far (look-ahead
    included) and, once the recording has shown real dynamic range, clearly above the
    quietest frame (room noise). The look-ahead lets a recording that starts right on a word
    keep that word; decisions lag the audio by LOOKAHEAD frames and flush() ends the stream.
    """

    def __init__(self) -> None:
        self.peak = -np.inf
        self.floor = np.inf
        self.pending: list[float] = []

    def _decide(self, v: float) -> bool:
        if v <= max(self.peak - SPEECH_DB, -80.0):
            return False
        return not (self.peak - self.floor > RANGE_DB and v < self.floor + FLOOR_DB)

    def push(self, db: np.ndarray) -> np.ndarray:
        out = []
        for v in db:
            v = float(v)
            self.peak = max(self.peak, v)
            self.floor = min(self.floor, v)
            self.pending.append(v)
            if len(self.pending) > LOOKAHEAD:
                out.append(self._decide(self.pending.pop(0)))
        return np.array(out, dtype=bool)

    def flush(self) -> np.ndarray:
        out = np.array([self._decide(v) for v in self.pending], dtype=bool)
        self.pending = []
        return out

    @classmethod
    def whole(cls, db: np.ndarray) -> np.ndarray:
        """Decisions for a finished recording (an enrollment take), against its loudest and
        quietest frame. Unlike the causal gate, room noise before the first word is judged
        against the take's loudest word, not against itself, so a take that starts with half
        a second of noise does not get it cut as a digit."""
        gate = cls()
        if len(db):
            gate.peak, gate.floor = float(db.max()), float(db.min())
        return np.array([gate._decide(float(v)) for v in db], dtype=bool)


def speech_mask(pcm: np.ndarray, spec: MfccSpec = TEMPLATES) -> np.ndarray:
    """Boolean per frame: speech by the causal gate (what a streamed answer gets)."""
    gate = SpeechGate()
    return np.concatenate([gate.push(_frame_db(pcm, spec)), gate.flush()])


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def _segments(mask: np.ndarray, db: np.ndarray, n: int) -> list[tuple[int, int]]:
    """Cut a whole take (its speech mask and frame energies) into exactly n (start, end)
    frame ranges, or raise TemplateError."""
    runs = _runs(mask)
    # Close short dips, then drop blobs too short to be a word.
    merged: list[tuple[int, int]] = []
    for s, e in runs:
        if merged and s - merged[-1][1] < GAP_CLOSE_FRAMES:
            merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    segs = [(s, e) for s, e in merged if e - s >= MIN_WORD_FRAMES]
    if not segs:
        raise TemplateError("no speech found")
    while len(segs) > n:  # too many pieces: join across the shortest gap
        gaps = [segs[i + 1][0] - segs[i][1] for i in range(len(segs) - 1)]
        i = int(np.argmin(gaps))
        segs[i : i + 2] = [(segs[i][0], segs[i + 1][1])]
    while len(segs) < n:  # too few: split the longest piece at its quietest middle frame
        i = int(np.argmax([e - s for s, e in segs]))
        s, e = segs[i]
        if e - s < 2 * MIN_WORD_FRAMES:
            raise TemplateError(f"heard fewer than {n} words")
        lo, hi = s + MIN_WORD_FRAMES, e - MIN_WORD_FRAMES
        cut = lo + int(np.argmin(db[lo:hi]))
        segs[i : i + 1] = [(s, cut), (cut, e)]
    return segs


def _deltas(c: np.ndarray) -> np.ndarray:
    """Regression deltas over +-2 frames, edges repeated (c must have >= 1 row)."""
    pad = np.pad(c, ((2, 2), (0, 0)), mode="edge")
    return (2 * (pad[4:] - pad[:-4]) + (pad[3:-1] - pad[1:-3])) / 10.0


def features(pcm: np.ndarray, spec: MfccSpec = TEMPLATES) -> np.ndarray:
    """Frame features for alignment: MFCC c1..c12 + deltas.

    No per-utterance mean normalisation: templates and challenges come from the same device,
    and leaving it out keeps the features causal so the aligner can run while people speak.
    """
    c = mfcc(pcm, spec)[:, 1:]
    if len(c) == 0:
        return np.zeros((0, 2 * (spec.n_ceps - 1)), dtype=np.float32)
    return np.hstack([c, _deltas(c)]).astype(np.float32)


class FrontEnd:
    """Features of an answer's speech frames (pauses removed, so they need no model), as
    the person speaks: push audio, get feature frames as the causal gate settles them.

    Output lags the input by the gate's look-ahead; flush() at the end of speech returns
    the rest. Concatenated output does not depend on how the audio was chunked (the same
    frames kept, values equal to float rounding).
    """

    def __init__(self, spec: MfccSpec = TEMPLATES) -> None:
        self.spec = spec
        self.buf = np.zeros(0, dtype=np.int16)
        self.gate = SpeechGate()
        self.ceps: list[np.ndarray] = []  # all cepstra so far (small: 24 floats a frame)
        self.db_tail: list[float] = []  # last two raw energies, for causal smoothing
        self.decided = 0  # frames whose speech decision is known
        self.emitted = 0  # frames whose features were handed out (or dropped)
        self.mask: list[bool] = []
        self.samples = 0

    def _analyse(self, pcm: np.ndarray) -> None:
        self.buf = np.concatenate([self.buf, pcm])
        self.samples += len(pcm)
        count = n_frames(len(self.buf), self.spec)
        if count == 0:
            return
        used = (count - 1) * self.spec.step + self.spec.win
        lm = log_mel(self.buf[:used], self.spec)
        self.buf = self.buf[count * self.spec.step :]
        self.ceps.extend((lm @ dct_matrix(self.spec.n_mels, self.spec.n_ceps))[:, 1:])
        energy = np.log(np.exp(lm).sum(1) + 1e-10) * (10 / np.log(10))
        hist = self.db_tail or [float(energy[0])] * 2
        pad = np.concatenate([hist, energy])
        db = (pad[2:] + pad[1:-1] + pad[:-2]) / 3
        self.db_tail = [float(x) for x in pad[-2:]]
        self.mask.extend(self.gate.push(db))

    def _emit(self, upto: int) -> np.ndarray:
        """Features of speech frames in [emitted, upto); deltas need 2 frames after each."""
        if upto <= self.emitted:
            return np.zeros((0, 2 * (self.spec.n_ceps - 1)), dtype=np.float32)
        lo = max(0, self.emitted - 2)
        hi = min(len(self.ceps), upto + 2)
        c = np.array(self.ceps[lo:hi], dtype=np.float32)
        d = _deltas(c)
        feats = np.hstack([c, d])[self.emitted - lo : upto - lo]
        keep = np.array(self.mask[self.emitted : upto], dtype=bool)
        self.emitted = upto
        return feats[keep].astype(np.float32)

    def push(self, pcm: np.ndarray) -> np.ndarray:
        self._analyse(np.asarray(pcm, dtype=np.int16))
        # A frame's delta is final once two later frames exist.
        return self._emit(min(len(self.mask), len(self.ceps) - 2))

    def flush(self) -> np.ndarray:
        self.mask.extend(self.gate.flush())
        return self._emit(len(self.mask))

    @property
    def speech_frames(self) -> int:
        return int(sum(self.mask))


@dataclass
class DigitTemplates:
    """Feature templates per digit ('0'..'9') for one user."""

    refs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    spec: MfccSpec = TEMPLATES

    def add(self, digit: str, feats: np.ndarray) -> None:
        self.refs.setdefault(digit, []).append(feats.astype(np.float32))

    def digits(self) -> set[str]:
        return {d for d, r in self.refs.items() if r}

    def covers(self, text: str) -> bool:
        return set(text) <= self.digits()

    def flat(self) -> tuple[list[np.ndarray], list[str]]:
        refs, labels = [], []
        for d in sorted(self.refs):
            for r in self.refs[d]:
                refs.append(r)
                labels.append(d)
        return refs, labels

    def to_bytes(self) -> bytes:
        """A self-describing npz (no pickle) for the encrypted store."""
        arrays: dict[str, np.ndarray] = {"version": np.array([FORMAT_VERSION])}
        for d, lst in self.refs.items():
            for i, r in enumerate(lst):
                arrays[f"d{d}_{i}"] = r
        buf = io.BytesIO()
        # ignore: numpy's stubs cannot rule out a ** key named allow_pickle (a bool).
        np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> DigitTemplates:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                if int(z["version"][0]) != FORMAT_VERSION:
                    raise TemplateError(f"template format {int(z['version'][0])} not supported")
                out = cls()
                for key in sorted(
                    z.files,
                    key=lambda k: (k[:2], int(k.split("_")[1] or 0)) if k != "version" else ("", 0),
                ):
                    if key == "version":
                        continue
                    out.add(key[1], z[key])
                return out
        except (OSError, ValueError, KeyError) as exc:
            if isinstance(exc, TemplateError):
                raise
            raise TemplateError(f"not a digit-template blob: {exc}") from None


@dataclass(frozen=True)
class _Take:
    """One prompted take, analysed once: frame features, the whole-take speech mask, and
    the (digit, features) pieces it was cut into ([] when it could not be cut)."""

    feats: np.ndarray
    speech: np.ndarray
    pieces: list[tuple[str, np.ndarray]]

    def speech_feats(self) -> np.ndarray:
        return self.feats[self.speech[: len(self.feats)]]


def _analyse(k: int, pcm: np.ndarray, digits: str, spec: MfccSpec) -> _Take:
    """Take k cut into its digits; TemplateError only for a prompt that is not digits."""
    if not digits.isdigit():
        raise TemplateError(f"take {k}: prompt {digits!r} is not a digit string")
    db = _frame_db(pcm, spec)
    speech = SpeechGate.whole(db)
    feats = features(pcm, spec)
    try:
        segs = _segments(speech, db, len(digits))
    except TemplateError as exc:
        log.warning("enrollment take %d (%s) gives no templates: %s", k, digits, exc)
        return _Take(feats, speech, [])
    mask = speech[: len(feats)]
    pieces = []
    for (s, e), d in zip(segs, digits, strict=True):
        seg = feats[s:e][mask[s:e]]
        if len(seg) >= MIN_WORD_FRAMES // 2:
            pieces.append((d, seg))
    return _Take(feats, speech, pieces)


def _analyse_all(takes: list[tuple[np.ndarray, str]], spec: MfccSpec) -> list[_Take]:
    return [_analyse(k, pcm, d, spec) for k, (pcm, d) in enumerate(takes)]


def _templates(analysed: list[_Take], spec: MfccSpec) -> DigitTemplates:
    out = DigitTemplates(spec=spec)
    for take in analysed:
        for d, seg in take.pieces:
            out.add(d, seg)
    if not out.refs:
        raise TemplateError("no usable enrollment take")
    return out


def templates_from_takes(
    takes: list[tuple[np.ndarray, str]], spec: MfccSpec = TEMPLATES
) -> DigitTemplates:
    """Cut prompted enrollment takes (pcm, digits) into per-digit templates.

    Takes that cannot be cut into the right number of words are skipped with a log line;
    TemplateError when no take could be used at all.
    """
    return _templates(_analyse_all(takes, spec), spec)


def _mismatched(
    analysed: list[_Take], prompts: list[str], threshold: float, spec: MfccSpec
) -> list[int]:
    from voxgate.stt.dtw import align

    bad = []
    for k, digits in enumerate(prompts):
        try:
            others = _templates(analysed[:k] + analysed[k + 1 :], spec)
        except TemplateError:
            continue
        if not others.covers(digits):
            continue
        refs, labels = others.flat()
        a = align(analysed[k].speech_feats(), refs, labels, digits)
        if not a.frames or a.margin > threshold:
            bad.append(k)
    return bad


def inconsistent_takes(
    takes: list[tuple[np.ndarray, str]], threshold: float, spec: MfccSpec = TEMPLATES
) -> list[int]:
    """Indexes of prompted takes that do not say their prompt, judged leave-one-out: each
    take is aligned like a challenge answer against templates cut from the other takes
    (its speech frames chosen by the whole-take gate, as for cutting, not the streaming one).

    Templates are cut by position, not recognised, so a take that says something else
    would give templates that later deny their owner. A take whose digits the others do
    not cover cannot be judged and is kept.
    """
    return _mismatched(_analyse_all(takes, spec), [d for _, d in takes], threshold, spec)


def checked_templates(
    takes: list[tuple[np.ndarray, str]], threshold: float, spec: MfccSpec = TEMPLATES
) -> tuple[list[int], DigitTemplates | None]:
    """inconsistent_takes() and templates_from_takes() of the takes that pass, with each
    take analysed once: (indexes dropped, templates or None when no take could be cut)."""
    analysed = _analyse_all(takes, spec)
    bad = _mismatched(analysed, [d for _, d in takes], threshold, spec)
    try:
        return bad, _templates([a for k, a in enumerate(analysed) if k not in bad], spec)
    except TemplateError:
        return bad, None
