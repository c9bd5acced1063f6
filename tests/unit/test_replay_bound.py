"""The replay check's cost per stored answer is bounded whatever the audio: the lag vote
weighs at most VOTE_RUNS loud runs of each answer, and at most MAX_EXACT stored answers
are compared exactly. A store of 5000 choppy 15 s answers made one check take 18-22 s,
past the unit's WatchdogSec=20 (benchmarks/bench_replay_memory.py; docs/challenge.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voxgate import replay
from voxgate.replay import MAX_EXACT, ReplayDetector
from voxgate.replay_index import GAP, VOTE_RUNS, FingerprintIndex, run_edges, vote_runs


def choppy(frames: int, seed: int, period: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Random bits, loud in runs of period - 2 frames: a ticking background."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**32, frames, dtype=np.uint64).astype(np.uint32)
    return bits, (np.arange(frames) % period) < period - 2


def choppy_audio(seconds: float, seed: int) -> np.ndarray:
    """30 ms noise bursts every 80 ms, some louder (so some loud runs are longer)."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * 16000))
    for i in range(0, len(out) - 800, 1280):
        n = int(rng.choice([480, 800]))
        out[i : i + n] = rng.normal(0, 5000, n)
    return out.clip(-32768, 32767).astype(np.int16)


def test_the_lag_vote_weighs_at_most_vote_runs_runs_of_each_stored_answer() -> None:
    index = FingerprintIndex()
    for i in range(40):
        index.add(i, 0.0, *choppy(1500, i))
    assert len(run_edges(choppy(1500, 0)[1])[0]) > 4 * VOTE_RUNS  # 188 runs each
    index.coarse([choppy(1500, 99)] * 2, 0, 10**6)  # builds the in-memory copy
    index.add(40, 0.0, *choppy(1500, 40))  # appended to it
    flat = index._flat
    assert flat is not None
    for rows in (flat.start_row, flat.end_row):
        assert np.bincount(rows, minlength=41).max() == VOTE_RUNS
    # Both ends of the same runs, each within its row.
    assert (flat.run_end >= flat.run_start).all() and (flat.start_row == flat.end_row).all()


def test_the_runs_kept_for_the_vote_are_the_longest_in_order() -> None:
    loud = np.zeros(400, bool)
    runs = [(10 * i, 10 * i + 2 + (i % 5)) for i in range(35)]  # lengths 3..7
    for s, e in runs:
        loud[s : e + 1] = True
    starts, ends = vote_runs(loud)
    assert len(starts) == VOTE_RUNS and (np.diff(starts) > 0).all()
    kept = sorted(e - s for s, e in zip(starts, ends, strict=True))
    every = sorted((e - s for s, e in runs), reverse=True)[:VOTE_RUNS]
    assert kept == sorted(every)
    few = np.zeros(50, bool)
    few[5:9] = few[20:30] = True
    assert [x.tolist() for x in vote_runs(few)] == [[5, 20], [8, 29]]  # all when few


def test_at_most_max_exact_stored_answers_are_compared_exactly(tmp_path: Path) -> None:
    pcm = choppy_audio(1.5, 1)
    det = ReplayDetector(tmp_path / "replay.db", window_s=10**9)
    # Earlier replays of the same answer all score like replays in the prefilter.
    for i in range(MAX_EXACT + 4):
        det.check_and_add(pcm, now=float(i))
    res = det.check_and_add(pcm, now=100.0)
    assert det.last_examined == MAX_EXACT
    assert res.is_replay and res.similarity == 1.0


def test_a_choppy_answer_behind_a_click_is_still_caught_among_choppy_ones(
    tmp_path: Path,
) -> None:
    """Only its longest runs vote now: the replay's lag is still found, beyond the +-30
    frames the exact check searches near the first loud frames."""
    original = choppy_audio(6.0, 3)
    assert len(run_edges(replay.fingerprint(original)[1])[0]) > 2 * VOTE_RUNS
    rng = np.random.default_rng(0)
    click = rng.normal(0, 8000, 800).clip(-32767, 32767).astype(np.int16)
    replayed = np.concatenate([click, np.zeros(6400, np.int16), original])
    det = ReplayDetector(tmp_path / "replay.db", window_s=10**9)
    for k in range(6):
        det.check_and_add(choppy_audio(6.0, 10 + k), now=float(k))
    det.check_and_add(original, now=50.0)
    res = det.check_and_add(replayed, now=60.0)
    assert res.is_replay and res.matched_at == 50.0


def test_building_the_in_memory_copy_takes_no_array_per_frame_of_row_numbers() -> None:
    """The flat copy is built when the detector opens: with a row number (and a position)
    per stored frame as int64 arrays it peaked at 39 bytes a frame, 370 MB resident for
    5000 stored 15 s answers; it keeps about 5 bytes a frame."""
    import tracemalloc

    index = FingerprintIndex()
    for i in range(100):
        index.add(i, 0.0, *choppy(1500, i))
    frames = 100 * 1500
    tracemalloc.start()
    try:
        flat = index.build()
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 30 * frames, f"{peak / frames:.1f} bytes a frame"
    assert kept < 8 * frames
    # The padding frames between rows are the ones not inside a row.
    assert int(flat.inside.sum()) == frames and len(flat.inside) == frames + 101 * GAP
