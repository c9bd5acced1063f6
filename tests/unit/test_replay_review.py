"""Replay store bookkeeping found in review: what is stored, and what the cap drops."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voxgate import replay
from voxgate.replay import ReplayDetector
from voxgate.replay_index import COARSE_MIN


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


def choppy_fingerprint(frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random bits, loud in runs of 6 frames with 2 quiet between: a ticking or clicking
    background gives answers like this, a run every 80 ms."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**32, frames, dtype=np.uint64).astype(np.uint32)
    loud = (np.arange(frames) % 8) < 6
    return bits, loud


def test_the_prefilter_memory_does_not_grow_with_stored_runs_times_new_runs() -> None:
    import tracemalloc

    from voxgate.replay_index import FingerprintIndex, run_edges

    index = FingerprintIndex()
    for i in range(150):
        index.add(i, 0.0, *choppy_fingerprint(1500, i))
    fp = choppy_fingerprint(1500, 999)
    index.add(150, 0.0, *fp)  # its replay is stored too
    count = int(fp[1].sum())
    stored_edges, new_edges = 150 * len(run_edges(fp[1])[0]), len(run_edges(fp[1])[0])
    assert stored_edges * new_edges > 5_000_000  # pairs of run starts the lag vote weighs
    index.coarse([fp, fp], 0, 10**6)  # the flat copy is built here, outside the measure
    tracemalloc.start()
    try:
        score = index.coarse([fp, fp], int(count * 0.8), int(count / 0.8) + 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Every pair at once took ~60 bytes a pair: 5.3 M pairs here, 330 MB (2.2 GB with 1000
    # stored 15 s answers like these: more than a Raspberry Pi has).
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MB"
    assert score[150] == 1.0 and score[:150].max() < COARSE_MIN
