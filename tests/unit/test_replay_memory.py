"""The replay store's memory is bounded by frames, not only by rows: 5000 long answers (the
row cap) took 257 MB to open, and the unit's MemoryMax=300M with the models loaded then
killed the door at every start (benchmarks/bench_replay_memory.py --open)."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from voxgate import replay
from voxgate.config.stt import ChallengeConfig
from voxgate.replay import ReplayDetector
from voxgate.replay_index import GAP


def speechlike(seconds: float, seed: int) -> np.ndarray:
    """Noise bursts of varying length and level with pauses: a fingerprintable answer."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * 16000))
    i = 800
    while i < len(out) - 4000:
        n = int(rng.integers(1600, 4000))
        out[i : i + n] = rng.normal(0, rng.uniform(1000, 6000), n)
        i += n + int(rng.integers(800, 3200))
    return out.clip(-32768, 32767).astype(np.int16)


def held_frames(det: ReplayDetector) -> int:
    index = det._index
    return sum(len(index.row(i).bits) + GAP for i in range(len(index)))


def test_the_frames_held_never_exceed_the_budget_and_the_oldest_go_first(
    tmp_path: Path,
) -> None:
    budget = 1500  # frames: a few answers of 1-4 s
    det = ReplayDetector(tmp_path / "replay.db", window_s=10**9, max_frames=budget)
    kept: list[int] = []
    for i in range(30):
        pcm = speechlike(1.0 + (i % 4), i)
        det.check_and_add(pcm, now=float(i))
        assert det._index.frames == held_frames(det) <= budget
        kept = [int(det._index.row(j).created) for j in range(len(det._index))]
        assert kept[-1] == i  # the newest stays
        assert kept == list(range(kept[0], i + 1))  # whole run of the newest
    assert 2 <= len(kept) < 30  # the row cap (5000) was never the reason
    assert det.count() == len(kept)  # the file dropped the same rows
    # What is kept is still caught; what was dropped is not compared any more.
    assert det.check_and_add(speechlike(4.0, 27), now=40.0, keep=False).is_replay
    det.close()


def test_a_store_bigger_than_the_budget_is_opened_within_it_newest_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "replay.db"
    det = ReplayDetector(path, window_s=10**9, max_frames=10**9)
    for i in range(12):
        det.check_and_add(speechlike(3.0, i), now=float(i))
    total = det._index.frames
    det.close()
    budget = total // 3
    with caplog.at_level(logging.WARNING, logger="voxgate.replay"):
        det = ReplayDetector(path, window_s=10**9, max_frames=budget)
    assert 0 < det._index.frames == held_frames(det) <= budget
    created = [det._index.row(j).created for j in range(len(det._index))]
    assert created == [float(x) for x in range(12 - len(created), 12)]
    assert det.count() == len(created)  # the older rows left the file too
    assert "replay_memory_mb" in caplog.text
    assert det.check_and_add(speechlike(3.0, 11), now=20.0).is_replay  # kept: one more out
    det.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM fingerprints").fetchone()[0] == len(created)
    db.close()


def test_the_memory_budget_is_a_bounded_setting_the_daemon_passes_on() -> None:
    assert ChallengeConfig().replay_memory_mb == replay.DEFAULT_MEMORY_MB
    for bad in (0, 7, 5000):
        with pytest.raises(ValidationError, match="replay_memory_mb"):
            ChallengeConfig(replay_memory_mb=bad)
    assert replay.frames_for(64) * replay.BYTES_PER_FRAME <= 64 << 20
    # 64 MB holds 5000 answers of 4 s (the row cap) but not 5000 of 15 s.
    assert 5000 * (400 + GAP) <= replay.frames_for(64) < 5000 * (1500 + GAP)


def test_a_checks_scratch_memory_stays_small_whatever_the_store_holds() -> None:
    """A check's scratch arrays came on top of the store: the lag vote's blocks of rows
    (about 45 MB each) and every (stored answer, lag) pair's windows at once (about 1 kB
    each): a check against 5000 stored 3 s answers peaked 70 MB above the open."""
    import tracemalloc

    from voxgate.replay_index import FingerprintIndex

    rng = np.random.default_rng(0)

    def bits(n: int) -> np.ndarray:
        return rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)

    index = FingerprintIndex()
    for i in range(6000):  # loud runs of 3-6 frames: the vote offers each row many lags
        loud = (np.arange(300) % (6 + i % 4)) < 3 + i % 4
        index.add(i, 0.0, bits(300), loud)
    index.build()  # the store itself, before the check
    views = [(bits(300), (np.arange(300) % 7) < 4)] * 2
    tracemalloc.start()
    try:
        score = index.coarse(views, 0, 10**6)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(score) == 6000
    # Per-row arrays (lags, scores: under 1 kB a row) remain, 6 MB here.
    assert peak < 20 << 20, f"{peak / 2**20:.1f} MB"
