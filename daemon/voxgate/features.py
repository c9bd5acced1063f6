"""Front ends: turn 16 kHz int16 audio into the frames a speaker model expects.

Two families, picked by a model card's `frontend:` block (see embedding/card.py):
- `mel_power`: linear (not log) mel power spectrogram with a Slaney mel scale and Slaney area
  normalisation, centred frames (zero padded at both ends). This is what the GE2E encoder was
  trained on.
- `kaldi_fbank`: Kaldi-style log mel filterbank (snip-edges framing, DC removal, pre-emphasis,
  Povey window, 512-point FFT, HTK-like mel scale). This is what CAM++/ECAPA/ResNet exports
  from WeSpeaker/3D-Speaker expect.

Each front end computes frames from a finished array (`frames`) and incrementally
(`stream().push`), and both give the same numbers, so streaming embeddings match batch ones.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from pydantic import BaseModel, ConfigDict, Field

INT16_SCALE = 32768.0


class Frontend(Protocol):
    sample_rate: int
    n_bins: int
    hop: int

    def frames(self, pcm: np.ndarray, n_frames: int | None = None) -> np.ndarray: ...

    def stream(self) -> FrontendStream: ...


class FrontendStream(Protocol):
    def push(self, pcm: np.ndarray) -> np.ndarray: ...

    def finish(self, n_frames: int | None = None) -> np.ndarray: ...


def to_float(pcm: np.ndarray) -> np.ndarray:
    """int16 samples (or floats already in [-1, 1]) as float32 in [-1, 1]."""
    pcm = np.asarray(pcm)
    if pcm.ndim != 1:
        raise ValueError(f"expected mono audio (1-D array), got shape {pcm.shape}")
    if pcm.dtype == np.int16:
        # One pass: 1/32768 is exact, so this equals a division by INT16_SCALE.
        return np.multiply(pcm, np.float32(1.0 / INT16_SCALE), dtype=np.float32)
    out = pcm.astype(np.float32)
    if np.isfinite(out).all():  # the usual case: one check instead of three rewrites
        return out
    return np.nan_to_num(out, copy=False, nan=0.0, posinf=1.0, neginf=-1.0)


# --- mel scales and filterbanks (written from the published formulas) -------------------------


def slaney_hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """Slaney's Auditory Toolbox scale: linear below 1 kHz (3 mels per 200 Hz), log above."""
    f = np.asarray(f, dtype=np.float64)
    linear = f / (200.0 / 3.0)
    log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (math.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log_part, linear)


def slaney_mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    linear = m * (200.0 / 3.0)
    log_part = 1000.0 * np.exp((math.log(6.4) / 27.0) * (m - 15.0))
    return np.where(m >= 15.0, log_part, linear)


def slaney_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_mels, n_fft//2+1) triangles evenly spaced on the Slaney scale, each of unit area
    in Hz (height 2 / bandwidth), evaluated at the FFT bin frequencies."""
    bin_hz = np.linspace(0.0, sr / 2.0, n_fft // 2 + 1)
    edges_mel = np.linspace(slaney_hz_to_mel(fmin), slaney_hz_to_mel(fmax), n_mels + 2)
    edges = slaney_mel_to_hz(edges_mel)
    bank = np.zeros((n_mels, bin_hz.size))
    for i in range(n_mels):
        left, centre, right = edges[i], edges[i + 1], edges[i + 2]
        rising = (bin_hz - left) / (centre - left)
        falling = (right - bin_hz) / (right - centre)
        bank[i] = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (right - left))
    return bank.astype(np.float32)


def kaldi_filterbank(
    sr: int, n_fft: int, n_mels: int, low_freq: float, high_freq: float
) -> np.ndarray:
    """(n_mels, n_fft//2+1) Kaldi triangles: evenly spaced on mel = 1127 ln(1 + f/700),
    triangular in the mel domain, peak 1, no area normalisation; the Nyquist bin stays 0."""
    nyquist = sr / 2.0
    if high_freq <= 0:
        high_freq = nyquist + high_freq

    def mel(f: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)

    lo, hi = float(mel(low_freq)), float(mel(high_freq))
    delta = (hi - lo) / (n_mels + 1)
    bin_mel = mel(np.arange(n_fft // 2) * sr / n_fft)
    bank = np.zeros((n_mels, n_fft // 2 + 1))
    for i in range(n_mels):
        left, centre, right = lo + i * delta, lo + (i + 1) * delta, lo + (i + 2) * delta
        up = (bin_mel - left) / (centre - left)
        down = (right - bin_mel) / (right - centre)
        bank[i, : n_fft // 2] = np.maximum(0.0, np.minimum(up, down))
    return bank.astype(np.float32)


def hann_periodic(n: int) -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)


def povey_window(n: int) -> np.ndarray:
    """Kaldi's default: a symmetric Hann window raised to 0.85 (never quite reaches zero)."""
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / (n - 1))
    return np.power(hann, 0.85).astype(np.float32)


# numpy adds up to this many numbers in one pairwise block (longer sums split recursively).
_PAIRWISE_BLOCK = 128
# Below this many frames (a stream's push) np.add.reduceat itself is faster (x86, 40 bands:
# 9 against 44 us for 3 frames, even at 100).
_FEW_FRAMES = 100


class SparseBank:
    """Apply a filterbank using only its non-zero weights.

    Triangular filters touch a few FFT bins each, and a dense matmul would go through BLAS,
    whose thread pool wakes every core for a tiny product: this stays on the calling thread.

    Each band's sum is the one np.add.reduceat made over its weighted bins, bit for bit: the
    first term plus numpy's pairwise sum of the rest (sequential below 8 terms, else eight
    running sums combined as a tree, then the rest). The int8 model turns a one-bit change of
    its input into a cosine change of ~1e-4, and shipped cohorts and enrolled voiceprints were
    made with these sums. For many frames (a whole utterance) they are done here as
    whole-array additions over all bands at once, padded with exact zeros, instead of one small
    reduction per band and frame; for a few frames reduceat itself is faster.
    """

    def __init__(self, bank: np.ndarray) -> None:
        n_bands, self.n_bins = bank.shape
        zero = self.n_bins  # index of an all-zero row added below the bins
        cols: list[np.ndarray] = []
        weights: list[np.ndarray] = []
        for row in bank:
            nz = np.flatnonzero(row)
            if nz.size == 0:  # an empty band (possible with many bands): weight 0 on bin 0
                nz = np.array([0])
            cols.append(nz)
            weights.append(row[nz].astype(np.float32))
        # For few frames, and wide filters (sums numpy splits recursively): reduceat itself.
        self._reduceat = (
            np.concatenate(cols),
            np.concatenate(weights),
            np.cumsum([0] + [c.size for c in cols[:-1]]),
        )
        rest = [c.size - 1 for c in cols]  # terms after the first
        self._wide = max(rest) > _PAIRWISE_BLOCK
        # Bands summed term by term (fewer than 8 after the first), longest first, and bands
        # summed with eight running sums, most blocks of 8 first: then each step below works
        # on a leading run of bands (the rest have no such term).
        self._seq = sorted((b for b in range(n_bands) if rest[b] < 8), key=lambda b: -rest[b])
        self._tree = sorted((b for b in range(n_bands) if rest[b] >= 8), key=lambda b: -rest[b])
        slots: list[tuple[int, float]] = []

        def add(bands: list[int], terms: list[int | None]) -> slice:
            """Slots for one term (index, or None: a zero) of each of these bands; returns
            where they are in the term table."""
            at = len(slots)
            for b, t in zip(bands, terms, strict=True):
                slots.append(
                    (int(cols[b][t]), float(weights[b][t])) if t is not None else (zero, 0.0)
                )
            return slice(at, len(slots))

        self._seq_first = add(self._seq, [0] * len(self._seq))
        self._seq_terms = []
        for t in range(1, max([rest[b] for b in self._seq], default=0) + 1):
            bands = [b for b in self._seq if rest[b] >= t]
            self._seq_terms.append(add(bands, [t] * len(bands)))
        self._tree_first = add(self._tree, [0] * len(self._tree))
        self._tree_blocks: list[list[slice]] = []
        for k in range(max([rest[b] // 8 for b in self._tree], default=0)):
            bands = [b for b in self._tree if rest[b] // 8 > k]
            self._tree_blocks.append([add(bands, [1 + 8 * k + j] * len(bands)) for j in range(8)])
        self._tree_tail = []  # over all tree bands: the missing terms are zeros
        for t in range(max([rest[b] % 8 for b in self._tree], default=0)):
            terms = [1 + rest[b] // 8 * 8 + t if t < rest[b] % 8 else None for b in self._tree]
            self._tree_tail.append(add(self._tree, terms))
        self._bins = np.array([i for i, _ in slots], dtype=np.intp)
        self._weights = np.array([w for _, w in slots], dtype=np.float32)[:, None]
        self._n_bands = n_bands

    def apply(self, power: np.ndarray) -> np.ndarray:
        """(T, bins) float32 power -> (T, bands) float32."""
        if self._wide or power.shape[0] < _FEW_FRAMES:
            bins, weights, starts = self._reduceat
            return np.add.reduceat(power[:, bins] * weights, starts, axis=1)
        n_frames = power.shape[0]
        by_bin = np.empty((self.n_bins + 1, n_frames), np.float32)
        by_bin[:-1] = power.T
        by_bin[-1] = 0.0
        terms = np.take(by_bin, self._bins, axis=0)
        terms *= self._weights  # each term: one float32 product, as before
        out = np.empty((self._n_bands, n_frames), np.float32)
        if self._seq:
            acc = np.zeros((len(self._seq), n_frames), np.float32)
            for term in self._seq_terms:  # 0 + t1 + t2 + ... in order
                acc[: term.stop - term.start] += terms[term]
            out[self._seq] = terms[self._seq_first] + acc
        if self._tree:
            first, blocks = self._tree_first, self._tree_blocks
            run = np.stack([terms[s] for s in blocks[0]])  # eight running sums
            for block in blocks[1:]:
                for j, s in enumerate(block):
                    run[j, : s.stop - s.start] += terms[s]
            acc = (run[0] + run[1]) + (run[2] + run[3])
            acc += (run[4] + run[5]) + (run[6] + run[7])
            for term in self._tree_tail:
                acc += terms[term]
            out[self._tree] = terms[first] + acc
        return np.ascontiguousarray(out.T)


# --- GE2E: mel power --------------------------------------------------------------------------


class MelPowerConfig(BaseModel):
    """A model card's `frontend:` block for GE2E-style models."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["mel_power"] = "mel_power"
    sample_rate: int = Field(16000, ge=8000, le=48000, description="Audio rate the model expects.")
    n_fft: int = Field(400, ge=64, le=4096, description="FFT size = window length (samples).")
    hop_length: int = Field(160, ge=16, le=4096, description="Frame step (samples).")
    n_mels: int = Field(40, ge=8, le=256, description="Mel bands (Slaney scale and area norm).")
    fmin: float = Field(0.0, ge=0, description="Lowest filter edge (Hz).")
    fmax: float = Field(8000.0, gt=0, description="Highest filter edge (Hz).")
    level_dbfs: float | None = Field(
        -30.0,
        ge=-80,
        le=0,
        description="Raise quieter audio to this RMS level (measured over the audio up to "
        "each window's end, so streaming can do the same); never lowers it; null = off.",
    )


class MelPower:
    """Centred frames: frame t covers samples [t*hop - n_fft/2, t*hop + n_fft/2) of the audio
    extended with zeros on both sides."""

    def __init__(self, cfg: MelPowerConfig) -> None:
        self.cfg = cfg
        self.sample_rate = cfg.sample_rate
        self.n_bins = cfg.n_mels
        self.hop = cfg.hop_length
        self._window = hann_periodic(cfg.n_fft)
        self._bank = SparseBank(
            slaney_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)
        )

    def default_frames(self, n_samples: int) -> int:
        return 1 + n_samples // self.hop

    def _compute(self, padded: np.ndarray, first: int, count: int) -> np.ndarray:
        """Frames first..first+count-1 from `padded` (audio with n_fft/2 zeros in front),
        where `padded` starts at frame `first`'s first sample."""
        if count <= 0:
            return np.zeros((0, self.n_bins), np.float32)
        n_fft, hop = self.cfg.n_fft, self.hop
        need = (count - 1) * hop + n_fft
        if padded.size < need:
            padded = np.concatenate([padded, np.zeros(need - padded.size, np.float32)])
        # A strided view, not an index array: the frames are copied once, by the window product.
        framed = sliding_window_view(padded[:need], n_fft)[::hop]
        spec = np.fft.rfft(framed * self._window, axis=1)
        power = (spec.real**2 + spec.imag**2).astype(np.float32, copy=False)
        return self._bank.apply(power)

    def frames(self, pcm: np.ndarray, n_frames: int | None = None) -> np.ndarray:
        x = to_float(pcm)
        if n_frames is None:
            n_frames = self.default_frames(x.size)
        # One buffer with the centring zeros in front and whatever zeros the last frames reach
        # past the end: _compute then needs no copy of its own.
        half = self.cfg.n_fft // 2
        need = max(half + x.size, (n_frames - 1) * self.hop + self.cfg.n_fft)
        padded = np.zeros(need, np.float32)
        padded[half : half + x.size] = x
        return self._compute(padded, 0, n_frames)

    def stream(self) -> MelPowerStream:
        return MelPowerStream(self)


class MelPowerStream:
    def __init__(self, fe: MelPower) -> None:
        self._fe = fe
        self._buf = np.zeros(fe.cfg.n_fft // 2, np.float32)  # the centring zeros
        self._next = 0  # index of the next frame to compute; _buf starts at its first sample

    def push(self, pcm: np.ndarray) -> np.ndarray:
        fe = self._fe
        self._buf = np.concatenate([self._buf, to_float(pcm)])
        ready = (
            0 if self._buf.size < fe.cfg.n_fft else 1 + (self._buf.size - fe.cfg.n_fft) // fe.hop
        )
        out = fe._compute(self._buf, self._next, ready)
        self._next += ready
        self._buf = self._buf[ready * fe.hop :]
        return out

    def finish(self, n_frames: int | None = None) -> np.ndarray:
        """The frames left, up to `n_frames` in total, with the audio's end extended by zeros."""
        fe = self._fe
        if n_frames is None:
            consumed = self._next * fe.hop + self._buf.size - fe.cfg.n_fft // 2
            n_frames = fe.default_frames(consumed)
        out = fe._compute(self._buf, self._next, n_frames - self._next)
        self._next = max(self._next, n_frames)
        self._buf = np.zeros(0, np.float32)
        return out


# --- Kaldi fbank ------------------------------------------------------------------------------


class KaldiFbankConfig(BaseModel):
    """A model card's `frontend:` block for Kaldi-fbank models (WeSpeaker, 3D-Speaker)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["kaldi_fbank"] = "kaldi_fbank"
    sample_rate: int = Field(16000, ge=8000, le=48000, description="Audio rate the model expects.")
    num_mel_bins: int = Field(80, ge=8, le=256, description="Mel bins.")
    frame_length_ms: float = Field(25.0, gt=0, le=100, description="Frame length.")
    frame_shift_ms: float = Field(10.0, gt=0, le=100, description="Frame step.")
    low_freq: float = Field(20.0, ge=0, description="Lowest filter edge (Hz).")
    high_freq: float = Field(
        0.0, description="Highest filter edge (Hz); <= 0 means Nyquist plus this value."
    )
    preemphasis: float = Field(0.97, ge=0, le=1, description="Pre-emphasis coefficient.")
    remove_dc_offset: bool = Field(True, description="Subtract each frame's mean.")
    window: Literal["povey", "hann", "hamming"] = Field("povey", description="Frame window.")
    input_scale: float = Field(
        32768.0, gt=0, description="Multiply [-1, 1] audio by this (32768 = Kaldi's int16 range)."
    )
    log: bool = Field(True, description="Natural log of the filter energies.")
    mean_norm: bool = Field(True, description="Subtract the utterance mean of each bin (CMN).")


class KaldiFbank:
    """Snip-edges framing: frame t covers samples [t*shift, t*shift + length); a partial frame
    at the end is dropped, as Kaldi does by default."""

    def __init__(self, cfg: KaldiFbankConfig) -> None:
        self.cfg = cfg
        self.sample_rate = cfg.sample_rate
        self.n_bins = cfg.num_mel_bins
        self.length = round(cfg.sample_rate * cfg.frame_length_ms / 1000)
        self.hop = round(cfg.sample_rate * cfg.frame_shift_ms / 1000)
        self.n_fft = 1 << (self.length - 1).bit_length()
        if cfg.window == "povey":
            self._window = povey_window(self.length)
        elif cfg.window == "hann":
            self._window = (
                0.5 - 0.5 * np.cos(2 * np.pi * np.arange(self.length) / (self.length - 1))
            ).astype(np.float32)
        else:
            self._window = (
                0.54 - 0.46 * np.cos(2 * np.pi * np.arange(self.length) / (self.length - 1))
            ).astype(np.float32)
        self._bank = SparseBank(
            kaldi_filterbank(
                cfg.sample_rate, self.n_fft, cfg.num_mel_bins, cfg.low_freq, cfg.high_freq
            )
        )

    def default_frames(self, n_samples: int) -> int:
        return 0 if n_samples < self.length else 1 + (n_samples - self.length) // self.hop

    def _compute(self, x: np.ndarray, count: int) -> np.ndarray:
        if count <= 0:
            return np.zeros((0, self.n_bins), np.float32)
        cfg = self.cfg
        idx = np.arange(count)[:, None] * self.hop + np.arange(self.length)[None, :]
        fr = x[idx].astype(np.float64) * cfg.input_scale
        if cfg.remove_dc_offset:
            fr -= fr.mean(axis=1, keepdims=True)
        if cfg.preemphasis:
            prev = np.concatenate([fr[:, :1], fr[:, :-1]], axis=1)
            fr = fr - cfg.preemphasis * prev
        fr *= self._window
        spec = np.fft.rfft(fr, n=self.n_fft, axis=1)
        power = (spec.real**2 + spec.imag**2).astype(np.float32)
        energies = self._bank.apply(power)
        if cfg.log:
            energies = np.log(np.maximum(energies, np.finfo(np.float32).eps))
        return energies.astype(np.float32)

    def frames(self, pcm: np.ndarray, n_frames: int | None = None) -> np.ndarray:
        x = to_float(pcm)
        available = self.default_frames(x.size)
        n = available if n_frames is None else min(n_frames, available)
        return self._compute(x, n)

    def post(self, frames: np.ndarray) -> np.ndarray:
        """Per-utterance mean normalisation (needs all frames, so it runs at the end)."""
        if self.cfg.mean_norm and frames.shape[0]:
            return frames - frames.mean(axis=0, keepdims=True)
        return frames

    def stream(self) -> KaldiFbankStream:
        return KaldiFbankStream(self)


class KaldiFbankStream:
    def __init__(self, fe: KaldiFbank) -> None:
        self._fe = fe
        self._buf = np.zeros(0, np.float32)

    def push(self, pcm: np.ndarray) -> np.ndarray:
        fe = self._fe
        self._buf = np.concatenate([self._buf, to_float(pcm)])
        ready = fe.default_frames(self._buf.size)
        out = fe._compute(self._buf, ready)
        self._buf = self._buf[ready * fe.hop :]
        return out

    def finish(self, n_frames: int | None = None) -> np.ndarray:
        self._buf = np.zeros(0, np.float32)
        return np.zeros((0, self._fe.n_bins), np.float32)


def make_frontend(cfg: MelPowerConfig | KaldiFbankConfig) -> MelPower | KaldiFbank:
    if isinstance(cfg, MelPowerConfig):
        return MelPower(cfg)
    return KaldiFbank(cfg)


def level_gain(sum_squares: float, n_samples: int, target_dbfs: float | None) -> float:
    """Amplitude gain that raises audio with this energy to `target_dbfs` (never lowers it).
    Silence (zero energy) gets gain 1 so all-zero input stays finite."""
    if target_dbfs is None or n_samples <= 0 or sum_squares <= 0.0:
        return 1.0
    rms = math.sqrt(sum_squares / n_samples)
    change_db = target_dbfs - 20.0 * math.log10(rms)
    return 10.0 ** (change_db / 20.0) if change_db > 0 else 1.0
