"""MFCC front end shared by the template aligner and the DeepSpeech backend.

Written here in numpy so the same numbers come out on every platform. The DeepSpeech
preset follows DeepSpeech 0.9.3's feature settings: 16 kHz, 32 ms Hann window, 20 ms step,
40 mel bands up to 8 kHz (20 Hz floor), 26 cepstra from the log mel energies, no liftering;
it matches TensorFlow's AudioSpectrogram + Mfcc ops to float32 rounding
(tests/unit/test_stt_mfcc.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16000
FFT_ROWS = 256  # frames per np.fft.rfft call in log_mel (see there)


@dataclass(frozen=True)
class MfccSpec:
    win_ms: float = 25.0
    step_ms: float = 10.0
    n_mels: int = 26
    n_ceps: int = 13
    f_min: float = 20.0
    f_max: float = 8000.0
    # TensorFlow's AudioSpectrogram + Mfcc ops (DeepSpeech's front end) differ from the usual
    # recipe in three ways: a periodic Hann window, mel filters over the magnitude (not
    # power) spectrum, and a DCT without the orthonormal c0 scaling.
    tf_style: bool = False

    @property
    def win(self) -> int:
        return round(self.win_ms * SAMPLE_RATE / 1000)

    @property
    def step(self) -> int:
        return round(self.step_ms * SAMPLE_RATE / 1000)

    @property
    def n_fft(self) -> int:
        return 1 << (self.win - 1).bit_length()


DEEPSPEECH = MfccSpec(win_ms=32.0, step_ms=20.0, n_mels=40, n_ceps=26, f_min=20.0, tf_style=True)
TEMPLATES = MfccSpec()


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)


@lru_cache(maxsize=8)
def _mel_matrix(spec: MfccSpec) -> np.ndarray:
    """Triangular filters on the mel scale, shape (n_fft//2+1, n_mels)."""
    n_bins = spec.n_fft // 2 + 1
    freqs = np.arange(n_bins) * SAMPLE_RATE / spec.n_fft
    edges = np.linspace(_hz_to_mel(spec.f_min), _hz_to_mel(spec.f_max), spec.n_mels + 2)
    mel = _hz_to_mel(freqs)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (mel[None, :] - lo) / (mid - lo)
    down = (hi - mel[None, :]) / (hi - mid)
    weights = np.maximum(0.0, np.minimum(up, down)).T
    if spec.tf_style:
        # TensorFlow's filterbank only reads bins from int(1.5 + f_min / bin width) up to
        # int(f_max / bin width): at 16 kHz / 512 points the 31 Hz bin is left out.
        width = SAMPLE_RATE / spec.n_fft
        weights[: int(1.5 + spec.f_min / width)] = 0.0
        weights[int(spec.f_max / width) + 1 :] = 0.0
    return weights.astype(np.float32)


@lru_cache(maxsize=8)
def dct_matrix(n_mels: int, n_ceps: int, orthonormal: bool = True) -> np.ndarray:
    """DCT-II, shape (n_mels, n_ceps); orthonormal or TensorFlow's sqrt(2/N) scaling."""
    k = np.arange(n_ceps)[None, :]
    n = np.arange(n_mels)[:, None]
    m = np.cos(np.pi * k * (2 * n + 1) / (2 * n_mels)) * np.sqrt(2.0 / n_mels)
    if orthonormal:
        m[:, 0] /= np.sqrt(2.0)
    return m.astype(np.float32)


def n_frames(n_samples: int, spec: MfccSpec) -> int:
    return 0 if n_samples < spec.win else 1 + (n_samples - spec.win) // spec.step


def log_mel(pcm: np.ndarray, spec: MfccSpec = TEMPLATES) -> np.ndarray:
    """(frames, n_mels) natural-log mel energies of int16 (or float) audio."""
    arr = np.asarray(pcm)
    x = arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        x /= 32768.0
    count = n_frames(len(x), spec)
    if count == 0:
        return np.zeros((0, spec.n_mels), dtype=np.float32)
    if spec.tf_style:
        window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(spec.win) / spec.win)
    else:
        window = np.hanning(spec.win + 2)[1:-1]
    window = window.astype(np.float32)
    # Frame m is x[m * step:][:win]: a strided view, where a (frames, win) index array and
    # its gather cost more than the FFT. The FFT runs FFT_ROWS frames at a time: numpy
    # transforms each row on its own (the same numbers as one call over all frames), and
    # one call over a two-minute take took 2-4x as long as in cache-sized pieces.
    view = np.lib.stride_tricks.sliding_window_view(x, spec.win)[:: spec.step]
    mag = np.empty((count, spec.n_fft // 2 + 1), dtype=np.float32)
    for lo in range(0, count, FFT_ROWS):
        frames = view[lo : lo + FFT_ROWS] * window
        mag[lo : lo + FFT_ROWS] = np.abs(np.fft.rfft(frames, n=spec.n_fft, axis=1))
    spectrum = mag if spec.tf_style else mag**2
    return np.log(np.maximum(spectrum @ _mel_matrix(spec), 1e-12 if spec.tf_style else 1e-10))


def mfcc(pcm: np.ndarray, spec: MfccSpec = TEMPLATES) -> np.ndarray:
    """(frames, n_ceps) MFCCs; c0 is kept (callers decide whether they want energy)."""
    return log_mel(pcm, spec) @ dct_matrix(spec.n_mels, spec.n_ceps, not spec.tf_style)
