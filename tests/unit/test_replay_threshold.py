"""ReplayDetector with a threshold at or below 0: no stored attempt means no replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voxgate.replay import ReplayDetector


def test_first_attempt_with_zero_threshold_is_not_a_replay(tmp_path: Path) -> None:
    # Nothing stored yet, so there is no earlier attempt to match (matched_at would be None);
    # this used to raise TypeError computing the age of the match for the log line.
    det = ReplayDetector(tmp_path / "replay.db", window_s=3600, threshold=0.0)
    pcm = (np.random.default_rng(0).standard_normal(16000) * 8000).astype(np.int16)
    res = det.check_and_add(pcm, now=10.0)
    assert not res.is_replay
    assert res.matched_at is None
