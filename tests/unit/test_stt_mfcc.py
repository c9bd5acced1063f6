"""The DeepSpeech front end (stt/mfcc.py) against TensorFlow's own ops."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voxgate.stt.mfcc import DEEPSPEECH, mfcc

REFERENCE = Path(__file__).resolve().parents[2] / "models/deepspeech/tf_mfcc_reference.npz"


def test_front_end_matches_tensorflows_mfcc_ops() -> None:
    """DeepSpeech computes its features with TensorFlow's AudioSpectrogram + Mfcc ops; the
    reference holds their output for a fixed signal (models/deepspeech/tf_mfcc_reference.py).
    Before the filterbank skipped the bins TensorFlow skips, c0-c3 were 0.1 off."""
    ref = np.load(REFERENCE)
    ours = mfcc(ref["pcm"], DEEPSPEECH)
    assert ours.shape == ref["mfcc"].shape == (99, 26)
    np.testing.assert_allclose(ours, ref["mfcc"], atol=2e-4)
