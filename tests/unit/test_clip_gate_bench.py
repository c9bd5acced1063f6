"""benchmarks/clip_gate.py's hot microphone and its rule for the clipping level."""

from __future__ import annotations

import numpy as np

from benchmarks.clip_gate import EDGES, Row, bin_of, choose, louder


def test_louder_saturates_at_full_scale_as_a_hot_microphone() -> None:
    pcm = np.array([0, 1000, -1000, 3000, -3000, 32767, -32768], np.int16)
    assert louder(pcm, 1).tolist() == pcm.tolist()
    assert louder(pcm, 16).tolist() == [0, 16000, -16000, 32767, -32768, 32767, -32768]


def test_bins_hold_their_upper_edge_and_zero_alone() -> None:
    clipped = np.array([0.0, 1e-6, 1e-4, 1.1e-4, 1e-3, 0.5, 1.0])
    assert bin_of(clipped).tolist() == [0, 1, 1, 2, 3, 9, 9]
    assert len(EDGES) == 10


def _row(name: str, gain: float, clipped: float, denied: int, n: int = 40) -> Row:
    """`n` genuine trials of one test recording each, `denied` of them below the threshold."""
    scores = np.array([0.0] * denied + [1.0] * (n - denied))
    return Row(name, gain, np.full(n, clipped), np.zeros(n, bool), np.arange(n),
               np.ones(n, int), scores, 0.5, 0.0)  # fmt: skip


def test_the_rule_takes_the_highest_sets_edge_and_ignores_the_unclipped_bin() -> None:
    a = [
        _row("a", 1, 0.0, 0),
        _row("a", 8, 0.0, 20),  # unclipped but denied (loudness): no clipping level can help
        _row("a", 2, 2e-4, 10),  # 0.01-0.03 %: fails
        _row("a", 4, 2e-3, 20),  # 0.1-0.3 %: fails
    ]
    b = [
        _row("b", 1, 0.0, 0),
        _row("b", 2, 2e-4, 10),  # fails, but the next bin up does not
        _row("b", 3, 5e-4, 0),
        _row("b", 4, 2e-3, 20),  # 0.1-0.3 %: fails, and every bin up
    ]
    level, notes = choose(a + b, ["a", "b"])
    assert level == 1e-3, notes
    assert choose(a, ["a"])[0] == 1e-4
    # A set where no bin fails from some point up: no level.
    c = [_row("c", 1, 0.0, 0), _row("c", 4, 2e-3, 0)]
    assert choose(a + c, ["a", "c"])[0] is None
    # Bins with fewer than RULE_MIN genuine trials say nothing.
    d = [_row("d", 1, 0.0, 0), _row("d", 4, 2e-3, 10, n=20)]
    assert choose(d, ["d"])[0] is None
