"""Replay prefilter on real speech with a loud noise burst beside the replay: the burst sets
the loudness the answer's loud frames are measured against, so its loud runs come out
narrower, their starts later and their ends earlier than the original's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.integration.test_replay_fsdd import answers
from voxgate.replay import COARSE_VIEW, SUB_HOP, best_similarity, fingerprint
from voxgate.replay_index import COARSE_MIN, FingerprintIndex

RATE = 16000


def burst(
    pcm: np.ndarray, at_s: float, ms: int, gain: float, rng: np.random.Generator
) -> np.ndarray:
    """Noise `gain` times the answer's peak level added at `at_s` (before 0: the start)."""
    n, i = RATE * ms // 1000, int(at_s * RATE)
    out = pcm.astype(np.float64)
    if i < 0:
        out, i = np.concatenate([np.zeros(-i), out]), 0
    out = np.concatenate([out, np.zeros(max(0, i + n - len(out)))])
    out[i : i + n] += rng.normal(0, np.abs(pcm).max() / 3 * gain, n)
    return out.clip(-32768, 32767).astype(np.int16)


def test_prefilter_passes_replays_beside_a_loud_burst_that_the_full_comparison_catches(
    shared_data: Path,
) -> None:
    rng = np.random.default_rng(1)
    caught, missed = 0, []
    for i, pcm in enumerate(answers(shared_data, 16, seed=0)):
        loud = np.flatnonzero(np.abs(pcm) > np.abs(pcm).max() * 0.05)
        first, last = loud[0] / RATE, loud[-1] / RATE
        original = fingerprint(pcm)
        index = FingerprintIndex()
        index.add(1, 0.0, *original)
        for name, x in {
            "bursts both sides": burst(
                burst(pcm, first - 0.3, 100, 4, rng), last + 0.05, 100, 4, rng
            ),
            "burst 0.45 s before": burst(pcm, first - 0.45, 200, 3, rng),
            "burst 0.25 s before": burst(pcm, first - 0.25, 60, 8, rng),
        }.items():
            views = [fingerprint(x[k:]) for k in SUB_HOP]
            count = int(views[0][1].sum())
            lo, hi = int(count * 0.8), int(count / 0.8) + 1
            if not lo <= int(original[1].sum()) <= hi or best_similarity(views, original) < 0.85:
                continue  # the full comparison does not catch it either
            caught += 1
            score = index.coarse([views[0], views[COARSE_VIEW]], lo, hi)[0]
            if score < COARSE_MIN:
                missed.append((i, name, round(float(score), 2)))
    assert caught >= 24  # most are caught: the check below is about those
    assert not missed, (caught, len(missed), missed)
