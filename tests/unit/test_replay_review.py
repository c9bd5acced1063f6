"""Replay store bookkeeping found in review: what is stored, and what the cap drops."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voxgate import replay
from voxgate.replay import ReplayDetector


def answer(seed: int) -> np.ndarray:
    """1.5 s of speech-like noise under a syllable envelope."""
    rng = np.random.default_rng(seed)
    env = np.abs(np.sin(np.linspace(0, 9 + seed, 24000)))
    return (rng.normal(0, 3000, 24000) * env).astype(np.int16)


def cough(seed: int) -> np.ndarray:
    """0.1 s of noise between 0.3 s of quiet: fewer loud frames than a fingerprint needs."""
    rng = np.random.default_rng(seed)
    quiet = rng.normal(0, 3, 4800)
    burst = rng.normal(0, 5000, 1600)
    return np.concatenate([quiet, burst, quiet]).astype(np.int16)


def test_answers_too_short_to_fingerprint_are_not_stored_nor_push_others_out(
    tmp_path: Path,
) -> None:
    c = cough(0)
    assert 0 < int(replay.fingerprint(c)[1].sum()) < replay.MIN_FRAMES
    det = ReplayDetector(tmp_path / "replay.db", window_s=10**9, max_rows=3)
    det.check_and_add(answer(1), now=100.0)
    # Coughs and one-word answers are retries the lockout does not count: each stored
    # row of them took a place under the cap, so a few of them dropped the real answer.
    for i in range(5):
        assert not det.check_and_add(cough(i), now=101.0 + i).is_replay
    assert det.count() == 1
    assert det.check_and_add(answer(1), now=200.0).matched_at == 100.0
    det.close()
