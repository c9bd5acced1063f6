"""SpeakerEmbedder: audio -> one L2-normalised speaker embedding, in one go or streaming.

Two ways to cut audio into network inputs (the card's `windowing.type`):
- sliding (GE2E): windows of `frames` frames every `hop` frames; every full window is used,
  plus, with `last: pad`, a last partly filled one (zero padded) when it is at least
  `min_coverage` full, or, with `last: end`, one that ends where the audio ends. Audio
  shorter than one window is zero padded (`short: pad`) or repeated (`short: repeat`; with
  `short_shifts: K`, K times, the loop starting at K evenly spaced frames, the K embeddings
  averaged). The embedding is the normalised mean of the window embeddings. A stream runs
  each window as soon as its audio has arrived; with `last: end` the window ending at the
  audio's end is the only one left for finish().
- whole (CAM++/ECAPA/ResNet exports): the whole utterance's frames, mean-normalised, in one
  input of shape (1, T, bins). A stream computes the frames as audio arrives; the network runs
  at finish(), since mean normalisation needs the whole utterance.
"""

from __future__ import annotations

import logging

import numpy as np

from voxgate.embedding.card import ModelCard
from voxgate.embedding.errors import EmbeddingError, ModelError, TooShort
from voxgate.embedding.runtime import Runtime
from voxgate.embedding.trim import SpeechTrim, trim_speech
from voxgate.features import KaldiFbank, MelPower, level_gain, make_frontend, to_float

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000

_MAX_BATCH = 4


def _normalise(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0.0:
        log.warning("the model gave an all-zero or non-finite embedding")
        raise EmbeddingError("the model gave an all-zero or non-finite embedding")
    return (v / norm).astype(np.float32)


def _too_short(n_samples: int, sample_rate: int, min_s: float) -> TooShort:
    exc = TooShort(
        f"{n_samples / sample_rate:.2f} s of audio; the model needs at least {min_s:.2f} s"
    )
    log.info("no embedding: %s", exc)
    return exc


def _energy_to(audio: np.ndarray, ends: list[int], block: int, exact: bool) -> list[float]:
    """Sum of squares of audio[:end] for each end: the number a float64 running sum over the
    samples gives (np.cumsum(np.square(audio, dtype=np.float64))[end - 1]), which is what the
    level gains were made with. Without BLAS (a dot product would wake a thread pool per call).

    `exact`: the audio came from int16, so each sample is k / 32768 with integer k. Then every
    square and every partial sum is an exact float64 multiple of 2**-30 (below 2**22 samples),
    so any order of adding gives the same number: per block, then block by block, is faster."""
    if exact and audio.size < 2**22:
        squares = np.square(audio, dtype=np.float64)
        stop = max(ends, default=0) // block * block
        per_block = squares[:stop].reshape(-1, block).sum(axis=1)
        running = np.concatenate([[0.0], np.cumsum(per_block)])
        return [
            float(running[end // block] + squares[end // block * block : end].sum()) for end in ends
        ]
    energy = np.cumsum(np.square(audio, dtype=np.float64))
    return [float(energy[end - 1]) if end else 0.0 for end in ends]


def _check_pcm(pcm: np.ndarray) -> np.ndarray:
    pcm = np.asarray(pcm)
    if pcm.ndim != 1:
        log.warning("rejected audio of shape %s: expected mono (1-D)", pcm.shape)
        raise EmbeddingError(f"expected mono audio as a 1-D array, got shape {pcm.shape}")
    return pcm


class SpeakerEmbedder:
    def __init__(self, card: ModelCard, runtime: Runtime) -> None:
        if card.frontend.sample_rate != SAMPLE_RATE:
            # Audio is 16 kHz everywhere in voxgate (converted once at the source).
            raise ModelError(
                f"card {card.path}: the model wants {card.frontend.sample_rate} Hz audio; "
                f"voxgate provides {SAMPLE_RATE} Hz"
            )
        self.card = card
        self.model_id = card.id
        self.model_sha256 = card.model.sha256  # recorded with each voiceprint it makes
        self.dim = card.model.dim
        self.runtime = runtime
        self.frontend: MelPower | KaldiFbank = make_frontend(card.frontend)
        self._win = card.windowing
        self._sr = card.frontend.sample_rate
        self._min_samples = round(card.windowing.min_audio_s * self._sr)

    def self_check(self) -> None:
        """Run one silent input through the model: the card's feature size and `dim` must fit
        the file. Raises ModelError naming the card; also warms the runtime up."""
        frames = self._win.frames if self._win.type == "sliding" else 100
        probe = np.zeros((1, frames, self.frontend.n_bins), np.float32)
        try:
            out = self.runtime.run(probe)
        except Exception as exc:  # runtimes raise their own types for shape mismatches
            raise ModelError(
                f"{self.card.model_path}: rejects input (1, {frames}, {self.frontend.n_bins}) "
                f"made as card {self.card.path} describes: {exc}"
            ) from None
        if out.shape != (1, self.dim):
            raise ModelError(
                f"{self.card.model_path}: gives output of shape {out.shape}, but card "
                f"{self.card.path} says dim {self.dim}"
            )

    # -- shared pieces ---------------------------------------------------------------------

    def window_starts(self, n_samples: int) -> list[int]:
        """First frame of each sliding window used for audio of this length."""
        if n_samples < self._min_samples:
            raise _too_short(n_samples, self._sr, self._win.min_audio_s)
        hop = self.frontend.hop
        span = self._win.frames * hop
        starts: list[int] = []
        if self._win.last == "end":
            while (len(starts) * self._win.hop + self._win.frames) * hop <= n_samples:
                starts.append(len(starts) * self._win.hop)
            if not starts:
                return [0]
            end = self.frontend.default_frames(n_samples) - self._win.frames
            return [*starts, end] if end > starts[-1] else starts
        while True:
            start = len(starts) * self._win.hop
            coverage = (n_samples - start * hop) / span
            if coverage >= 1.0:
                starts.append(start)
                continue
            if coverage >= self._win.min_coverage or not starts:
                starts.append(start)
            return starts

    def network_runs(self, n_samples: int) -> int:
        """How many windows the network runs on for speech this long (sliding windows):
        one per window, or one per shift for short speech the card repeats."""
        if self._repeats(n_samples):
            return min(self._win.short_shifts, max(1, self.frontend.default_frames(n_samples)))
        return len(self.window_starts(n_samples))

    def _gains(self, audio: np.ndarray, starts: list[int], from_int16: bool = False) -> np.ndarray:
        """Power gain per window: level normalisation over the audio up to the window's end.
        `from_int16`: `audio` is int16 samples / 32768 (a faster, identical sum)."""
        target = getattr(self.card.frontend, "level_dbfs", None)
        if target is None:
            return np.ones(len(starts), np.float32)
        hop = self.frontend.hop
        ends = [min((start + self._win.frames) * hop, audio.size) for start in starts]
        gains = []
        for end, energy in zip(ends, _energy_to(audio, ends, hop, from_int16), strict=True):
            amp = level_gain(energy, end, target)
            gains.append(amp * amp)  # the features are power: amplitude gain squared
        return np.asarray(gains, np.float32)

    def _repeats(self, n_samples: int) -> bool:
        """Audio this long is shorter than one window and the card repeats it to fill one."""
        return self._win.short == "repeat" and n_samples < self._win.frames * self.frontend.hop

    def _fill_short(self, frames: np.ndarray, n_samples: int, shift: int = 0) -> np.ndarray:
        """Frames for audio shorter than one window, with the card's `short: repeat`: the
        audio's own frames repeated to fill the window instead of zero padding, starting
        `shift` frames into them (a circular shift of the repeated loop)."""
        n = self._win.frames
        if not self._repeats(n_samples):
            return frames
        own = max(1, min(self.frontend.default_frames(n_samples), frames.shape[0]))
        loop = np.roll(frames[:own], -(shift % own), axis=0) if shift % own else frames[:own]
        return np.tile(loop, (-(-n // own), 1))[:n]

    def _shifts(self, frames: np.ndarray, n_samples: int) -> list[int]:
        """Where the repeated loop starts, for each of the card's `short_shifts` embeddings of
        short audio: evenly spaced over the audio's own frames (0 first)."""
        own = max(1, min(self.frontend.default_frames(n_samples), frames.shape[0]))
        k = min(self._win.short_shifts, own)
        return sorted({round(j * own / k) for j in range(k)})

    def _embed_windows(
        self, frames: np.ndarray, starts: list[int], gains: np.ndarray, n_samples: int
    ) -> np.ndarray:
        """Normalised embeddings of the windows at `starts`, one row each. Audio shorter
        than one window that the card repeats is one window whose row is the normalised mean
        over the card's `short_shifts` circular shifts: which frame a repeated loop starts on
        changes the LSTM's last state, and so the embedding, on the same speech. One-shot and
        streaming embeddings both come through here."""
        if not self._repeats(n_samples):
            return self._run_windows(frames, starts, gains)
        n = self._win.frames
        shifts = self._shifts(frames, n_samples)
        filled = np.concatenate([self._fill_short(frames, n_samples, s) for s in shifts])
        per_shift = self._run_windows(
            filled, [i * n for i in range(len(shifts))], np.repeat(gains[:1], len(shifts))
        )
        if len(shifts) == 1:
            return per_shift  # as before short_shifts existed, bit for bit
        mean = per_shift.mean(axis=0, keepdims=True)
        return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)

    def _run_windows(self, frames: np.ndarray, starts: list[int], gains: np.ndarray) -> np.ndarray:
        n = self._win.frames
        # Windows go in batches of at most _MAX_BATCH: the runtime's working memory grows with
        # the batch and is kept, so one long utterance would raise RSS for good (ONNX Runtime
        # alone, int8 model: 59 MB loaded; after batches up to 40 windows 143 MB, up to 4
        # 71 MB, one at a time 67 MB). While someone speaks windows come one or two at a time
        # anyway. The shipped int8 model carries range anchors (models/build_ge2e.py), so
        # batching does not change its dynamic quantization.
        outs = []
        for i in range(0, len(starts), _MAX_BATCH):
            part = zip(starts[i : i + _MAX_BATCH], gains[i : i + _MAX_BATCH], strict=True)
            outs.append(self.runtime.run(np.stack([frames[s : s + n] * g for s, g in part])))
        out = np.concatenate(outs)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def _run_whole(self, frames: np.ndarray) -> np.ndarray:
        if frames.shape[0] == 0:
            raise _too_short(0, self._sr, self._win.min_audio_s)
        frames = self.frontend.post(frames) if isinstance(self.frontend, KaldiFbank) else frames
        return _normalise(self.runtime.run(frames[None].astype(np.float32))[0])

    # -- public ----------------------------------------------------------------------------

    def speech_of(self, pcm: np.ndarray) -> np.ndarray:
        """The audio the network sees: the card's speech trim (when it has one) applied,
        unless that leaves less than min_audio_s: then the audio as given."""
        pcm = _check_pcm(pcm)
        if self.card.trim is None:
            return pcm
        speech = trim_speech(pcm, self.card.trim)
        return speech if speech.size >= self._min_samples else pcm

    def embed(self, pcm: np.ndarray) -> np.ndarray:
        """int16 16 kHz mono audio -> float32 (dim,) L2-normalised embedding."""
        return self._embed_plain(self.speech_of(pcm))

    def _embed_plain(self, pcm: np.ndarray) -> np.ndarray:
        pcm = _check_pcm(pcm)
        if self._win.type == "whole":
            if pcm.size < self._min_samples:
                raise _too_short(pcm.size, self._sr, self._win.min_audio_s)
            return self._run_whole(self.frontend.frames(pcm))
        starts = self.window_starts(pcm.size)
        audio = to_float(pcm)
        frames = self.frontend.frames(audio, n_frames=starts[-1] + self._win.frames)
        gains = self._gains(audio, starts, from_int16=pcm.dtype == np.int16)
        per_window = self._embed_windows(frames, starts, gains, pcm.size)
        return _normalise(per_window.mean(axis=0))

    def stream(self) -> EmbeddingStream:
        return EmbeddingStream(self)


class EmbeddingStream:
    """push() audio while the person speaks; finish() returns the utterance's embedding.
    With a card `trim:` block, pushed audio goes through the speech trim first and only the
    speech reaches the windows (finish() == embed() of the whole audio, always)."""

    def __init__(self, embedder: SpeakerEmbedder) -> None:
        self._e = embedder
        spec = embedder.card.trim
        self._trim = SpeechTrim(spec) if spec is not None else None
        self._raw: list[np.ndarray] = []  # given audio, kept for the too-little-speech fallback
        self._fe = embedder.frontend.stream()
        self._chunks: list[np.ndarray] = []
        self._n = 0
        self._frames: list[np.ndarray] = []
        self._n_frames = 0
        self._done: list[np.ndarray] = []  # embeddings of windows already run
        self._int16 = True  # all audio so far came as int16 (see SpeakerEmbedder._gains)
        self._finished = False

    @property
    def windows_done(self) -> int:
        return len(self._done)

    def _audio(self) -> np.ndarray:
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0] if self._chunks else np.zeros(0, np.float32)

    def _all_frames(self) -> np.ndarray:
        if len(self._frames) > 1:
            self._frames = [np.concatenate(self._frames)]
        return (
            self._frames[0] if self._frames else np.zeros((0, self._e.frontend.n_bins), np.float32)
        )

    def push(self, pcm: np.ndarray) -> None:
        if self._finished:
            raise EmbeddingError("push() after finish()")
        pcm = _check_pcm(pcm)
        if self._trim is not None:
            self._raw.append(np.asarray(pcm).copy())
            pcm = self._trim.push(pcm)
        self._push_speech(pcm)

    def _push_speech(self, pcm: np.ndarray) -> None:
        self._int16 = self._int16 and np.asarray(pcm).dtype == np.int16
        audio = to_float(pcm)
        if audio.size == 0:
            return
        self._chunks.append(audio)
        self._n += audio.size
        new = self._fe.push(audio)
        if new.shape[0]:
            self._frames.append(new)
            self._n_frames += new.shape[0]
        e = self._e
        if e._win.type != "sliding":
            return
        # Run every window whose audio is complete and whose frames are all computed.
        win, hop_frames, hop = e._win.frames, e._win.hop, e.frontend.hop
        ready: list[int] = []
        while True:
            start = (len(self._done) + len(ready)) * hop_frames
            if self._n < (start + win) * hop or self._n_frames < start + win:
                break
            ready.append(start)
        if ready:
            gains = e._gains(self._audio(), ready, self._int16)
            self._done.extend(e._run_windows(self._all_frames(), ready, gains))

    def finish(self) -> np.ndarray:
        if self._finished:
            raise EmbeddingError("finish() called twice")
        e = self._e
        if self._trim is not None:
            self._push_speech(self._trim.finish())
            if self._n < e._min_samples:  # too little speech kept: embed the audio as given
                self._finished = True
                raw = np.concatenate(self._raw) if self._raw else np.zeros(0, np.int16)
                return e._embed_plain(raw)
        self._finished = True
        if e._win.type == "whole":
            if self._n < e._min_samples:
                raise _too_short(self._n, e._sr, e._win.min_audio_s)
            return e._run_whole(self._all_frames())
        starts = e.window_starts(self._n)
        todo = starts[len(self._done) :]
        if todo:
            rest = self._fe.finish(n_frames=starts[-1] + e._win.frames)
            if rest.shape[0]:
                self._frames.append(rest)
            gains = e._gains(self._audio(), todo, self._int16)
            self._done.extend(e._embed_windows(self._all_frames(), todo, gains, self._n))
        return _normalise(np.mean(self._done[: len(starts)], axis=0))
