"""TensorFlow's own MFCC of a fixed test signal, for checking voxgate's DeepSpeech front end.

    python models/deepspeech/tf_mfcc_reference.py            # rewrites tf_mfcc_reference.npz
    python models/deepspeech/tf_mfcc_reference.py --check DIR  # compare on real FLAC files

DeepSpeech 0.9.3 computes its features with TensorFlow's AudioSpectrogram (512-sample window,
320 step, squared magnitude) and Mfcc ops (16 kHz, 40 channels from 20 Hz to 8 kHz, 26
coefficients). This script runs those two ops on a deterministic signal (a chirp, two vowels'
worth of harmonics, noise, silence) and stores input and output, so the test suite can check
`voxgate.stt.mfcc` against TensorFlow without TensorFlow installed
(tests/unit/test_stt_deepspeech.py). Needs tensorflow (build time only) and numpy.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "tf_mfcc_reference.npz"
REPO = HERE.parent.parent
RATE = 16000


def test_signal(seconds: float = 2.0, seed: int = 7) -> np.ndarray:
    """int16: a 100 Hz -> 6 kHz chirp, a harmonic tone, white noise, and 0.3 s of silence."""
    t = np.arange(int(seconds * RATE)) / RATE
    chirp = np.sin(2 * np.pi * (100 * t + (6000 - 100) / (2 * seconds) * t * t))
    voiced = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 25))
    noise = np.random.default_rng(seed).normal(0, 1, t.size)
    x = 0.3 * chirp + 0.2 * voiced / 3 + 0.05 * noise
    x[: int(0.3 * RATE)] = 0.0
    return np.round(x * 12000).astype(np.int16)


def tf_mfcc(pcm: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    audio = tf.constant((pcm.astype(np.float32) / 32768.0)[:, None])
    spec = tf.raw_ops.AudioSpectrogram(
        input=audio, window_size=512, stride=320, magnitude_squared=True
    )
    out = tf.raw_ops.Mfcc(
        spectrogram=spec,
        sample_rate=RATE,
        upper_frequency_limit=8000.0,
        lower_frequency_limit=20.0,
        filterbank_channel_count=40,
        dct_coefficient_count=26,
    )
    return out.numpy()[0]


def ours(pcm: np.ndarray) -> np.ndarray:
    # Loaded from its file: the package's __init__ needs the daemon's dependencies.
    spec = importlib.util.spec_from_file_location(
        "voxgate_mfcc", REPO / "daemon" / "voxgate" / "stt" / "mfcc.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["voxgate_mfcc"] = mod
    spec.loader.exec_module(mod)
    return mod.mfcc(pcm, mod.DEEPSPEECH)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", type=Path, help="folder of 16 kHz FLAC/WAV files to compare on")
    args = ap.parse_args()
    if args.check is None:
        pcm = test_signal()
        np.savez_compressed(OUT, pcm=pcm, mfcc=tf_mfcc(pcm).astype(np.float32))
        print(f"wrote {OUT}")
        return 0
    import soundfile as sf

    worst, n = 0.0, 0
    for path in sorted(args.check.rglob("*.flac"))[:50]:
        pcm, rate = sf.read(path, dtype="int16")
        if rate != RATE or pcm.ndim != 1:
            continue
        ref, mine = tf_mfcc(pcm), ours(pcm)
        if ref.shape != mine.shape:
            print(f"{path}: {ref.shape} frames from TensorFlow, {mine.shape} here")
            return 1
        worst, n = max(worst, float(np.abs(ref - mine).max())), n + 1
    print(f"{n} files: largest difference to TensorFlow {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
