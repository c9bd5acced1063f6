"""Replay prefilter and store bound: a database written before them, the row cap, and the
prefilter deciding exactly as the full comparison on synthetic answers."""

from __future__ import annotations

import logging
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from voxgate import replay
from voxgate.replay import ReplayDetector
from voxgate.replay_index import COARSE_MIN, FingerprintIndex, _popcount_table, run_edges

OLD_DB = Path(__file__).resolve().parent.parent / "data" / "replay_v1.db"


def signal(seed: int) -> np.ndarray:
    """The answers tests/data/replay_v1.db was written from (by the detector at ebad684,
    before the prefilter: rows at 1000, 1001 and 1002 s for seeds 11, 12, 13)."""
    rng = np.random.default_rng(seed)
    env = np.abs(np.sin(np.linspace(0, 9 + seed, 24000)))
    return (rng.normal(0, 3000, 24000) * env).astype(np.int16)


@pytest.fixture
def old_db(tmp_path: Path) -> Path:
    path = tmp_path / "replay.db"
    shutil.copyfile(OLD_DB, path)
    return path


def test_a_database_written_before_the_prefilter_still_works(old_db: Path) -> None:
    det = ReplayDetector(old_db, window_s=10**9)
    assert det.count() == 3
    res = det.check_and_add(signal(12), now=2000.0)
    assert res.is_replay and res.matched_at == 1001.0
    assert not det.check_and_add(signal(14), now=2001.0).is_replay
    det.close()
    with sqlite3.connect(old_db) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == replay.FILE_VERSION
        assert db.execute("SELECT COUNT(*) FROM fingerprints").fetchone()[0] == 5
    # Reopened: the rows the new code wrote are read back like the old ones.
    again = ReplayDetector(old_db, window_s=10**9)
    assert again.check_and_add(signal(14), now=2002.0).matched_at == 2001.0
    assert again.check_and_add(signal(11), now=2003.0).matched_at == 1000.0


def test_a_damaged_row_is_skipped_with_a_log_line(
    old_db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with sqlite3.connect(old_db) as db:
        db.execute("UPDATE fingerprints SET fp = x'010203' WHERE id = 2")
    with caplog.at_level(logging.WARNING, logger="voxgate.replay"):
        det = ReplayDetector(old_db, window_s=10**9)
    assert "fingerprint row 2 is unreadable" in caplog.text
    assert det.check_and_add(signal(11), now=2000.0).is_replay  # the others still count
    assert not det.check_and_add(signal(12), now=2001.0).is_replay


def test_the_oldest_rows_go_first_beyond_the_cap(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    det = ReplayDetector(tmp_path / "replay.db", window_s=10**9, max_rows=3)
    with caplog.at_level(logging.DEBUG, logger="voxgate.replay"):
        for i, seed in enumerate((1, 2, 3, 4, 5)):
            det.check_and_add(signal(seed), now=100.0 + i)
    assert det.count() == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dropped 1 oldest" in warnings[0].getMessage()
    assert sum("dropped" in r.getMessage() for r in caplog.records) == 2
    # Seeds 1 and 2 were dropped (the database and the in-memory copy agree); 3 is kept
    # (and dropped by this check, which stores a fourth).
    assert det.check_and_add(signal(3), now=200.0).matched_at == 102.0
    assert not det.check_and_add(signal(1), now=201.0).is_replay
    det.close()
    reopened = ReplayDetector(tmp_path / "replay.db", window_s=10**9, max_rows=3)
    assert reopened.count() == 3
    assert not reopened.check_and_add(signal(2), now=300.0).is_replay


def test_a_database_over_the_cap_is_trimmed_at_the_next_check(old_db: Path) -> None:
    det = ReplayDetector(old_db, window_s=10**9, max_rows=2)
    det.check_and_add(signal(20), now=2000.0)
    assert det.count() == 2
    assert det.check_and_add(signal(13), now=2001.0).matched_at == 1002.0
    assert not det.check_and_add(signal(11), now=2002.0).is_replay


def test_window_pruning_reaches_the_in_memory_copy(tmp_path: Path) -> None:
    det = ReplayDetector(tmp_path / "replay.db", window_s=100)
    det.check_and_add(signal(1), now=0.0)
    det.check_and_add(signal(2), now=90.0)
    # At 150 s the first is out of the window: gone from both, the second still caught.
    assert not det.check_and_add(signal(1), now=150.0).is_replay
    assert det.check_and_add(signal(2), now=151.0).matched_at == 90.0


def variants(pcm: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Replays of pcm as tests/unit/test_replay.py and benchmarks/bench_replay.py make them."""
    click = rng.normal(0, int(np.abs(pcm).max()) / 3, 800).clip(-32767, 32767).astype(np.int16)
    gap = np.zeros(6400, np.int16)
    return {
        "exact": pcm,
        "quiet": (pcm * 0.3).astype(np.int16),
        "loud clipped": np.clip(pcm.astype(np.int32) * 2, -32768, 32767).astype(np.int16),
        "delayed 1234": np.concatenate([np.zeros(1234, np.int16), pcm]),
        "half a frame late": pcm[80:],
        "quarter frame late": pcm[40:],
        "click before": np.concatenate([click, gap, pcm]),
        "click after": np.concatenate([pcm, gap, click]),
        "clicks both sides": np.concatenate([click, gap, pcm, gap, click]),
    }


def test_prefilter_decides_as_the_full_comparison_on_synthetic_replays(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    original = signal(7)
    for t, (name, x) in enumerate(variants(original, rng).items()):
        results, examined = [], []
        for exact in (False, True):
            det = ReplayDetector(tmp_path / f"{t}{exact}.db", window_s=10**9, exact_only=exact)
            for k in range(8):  # unrelated history the prefilter has to look past
                det.check_and_add(signal(100 + k), now=float(k))
            det.check_and_add(original, now=50.0)
            res = det.check_and_add(x, now=60.0)
            results.append((res.is_replay, res.similarity, res.matched_at))
            examined.append(det.last_examined)
        assert results[1][0] and results[1][2] == 50.0, name  # the full comparison catches it
        assert results[0] == results[1], name  # the prefilter passed the original on
        assert examined[0] < examined[1] == 9, name  # ...and ruled out unrelated answers


def test_the_prefilter_passes_few_unrelated_answers(tmp_path: Path) -> None:
    det = ReplayDetector(tmp_path / "replay.db", window_s=10**9)
    for k in range(30):
        det.check_and_add(signal(200 + k), now=float(k))
    res = det.check_and_add(signal(300), now=100.0)
    assert not res.is_replay
    # Only the closest-looking stored answer is compared (for the reported similarity).
    assert det.last_examined == 1
    assert 0.4 < res.similarity < det.threshold


def test_run_edges() -> None:
    loud = np.array([0, 1, 1, 0, 0, 1, 0, 1, 1, 1], bool)
    starts, ends = run_edges(loud)
    assert starts.tolist() == [1, 5, 7] and ends.tolist() == [2, 5, 9]
    assert [e.tolist() for e in run_edges(np.zeros(4, bool))] == [[], []]


def test_the_index_scores_a_replay_at_a_far_lag_and_leaves_short_rows_out() -> None:
    index = FingerprintIndex()
    fp = replay.fingerprint(signal(9))
    index.add(1, 0.0, *fp)
    index.add(2, 0.0, *replay.fingerprint(signal(10)))
    index.add(3, 0.0, np.zeros(0, np.uint32), np.zeros(0, bool))  # silence: never a match
    # The stored answer seen 45 frames (beyond the +-30 searched near the start) later.
    bits, loud = fp
    shifted = (np.concatenate([bits[:5], np.zeros(40, np.uint32), bits]),
               np.concatenate([loud[:5], np.zeros(40, bool), loud]))  # fmt: skip
    count = int(fp[1].sum())
    score = index.coarse([shifted, shifted], int(count * 0.8), int(count / 0.8) + 1)
    assert score[0] >= 0.99 and score[1] < COARSE_MIN and score[2] == 0.0
    # Rows outside the loud-frame range the exact check compares are not scored.
    assert index.coarse([fp, fp], count * 2, count * 3).tolist() == [0.0, 0.0, 0.0]
    nothing = (np.zeros(0, np.uint32), np.zeros(0, bool))
    assert index.coarse([fp, nothing], int(count * 0.8), int(count / 0.8) + 1)[0] == 1.0
    assert index.coarse([nothing, fp], 0, 10**6).tolist() == [0.0, 0.0, 0.0]
    empty = FingerprintIndex()
    assert empty.coarse([fp, fp], 0, 10**6).tolist() == []


def test_the_cap_is_a_bounded_setting_that_waits_for_a_restart() -> None:
    from pydantic import ValidationError

    from voxgate.config import VoxgateConfig
    from voxgate.service.reload import plan_reload

    with pytest.raises(ValidationError, match="replay_max_stored"):
        VoxgateConfig.model_validate({"challenge": {"replay_max_stored": 10}})
    running = VoxgateConfig.model_validate({})
    assert running.challenge.replay_max_stored == replay.MAX_ROWS
    new = VoxgateConfig.model_validate({"challenge": {"replay_max_stored": 800}})
    # The detector is built once at start with the cap: a reload must not claim to apply it.
    plan = plan_reload(running, new)
    assert plan.needs_restart == ["challenge.replay_max_stored"]
    assert plan.cfg.challenge.replay_max_stored == replay.MAX_ROWS


def test_the_popcount_table_for_older_numpy_counts_bits() -> None:
    x = np.array([[0, 1, 0xFFFFFFFF], [0x80000001, 0x0F0F0F0F, 12345]], np.uint32)
    expected = [[bin(int(v)).count("1") for v in row] for row in x]
    assert _popcount_table(x).tolist() == expected
    assert _popcount_table(x[:, ::2]).tolist() == [r[::2] for r in expected]  # a strided view
