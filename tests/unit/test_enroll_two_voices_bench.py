"""benchmarks/enroll_two_voices.py's outlier rules: "raw" is the shipped find_outliers, and
the candidates differ from it only where they are meant to."""

from __future__ import annotations

import numpy as np

from benchmarks.enroll_two_voices import RULES
from voxgate.enrollment import find_outliers
from voxgate.voiceprints import l2_normalize


def _takes(seed: int, n: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    center = l2_normalize(rng.normal(size=64))
    voice = l2_normalize(center + l2_normalize(rng.normal(size=64)))
    return l2_normalize(voice + rng.normal(size=(n, 64)) * spread), center


def test_the_raw_rule_is_the_shipped_one() -> None:
    rng = np.random.default_rng(7)
    for seed in range(40):
        takes, center = _takes(seed, 10, float(rng.uniform(0.02, 0.2)))
        odd = l2_normalize(rng.normal(size=(int(rng.integers(0, 4)), 64)))
        e = np.vstack([takes[: 10 - len(odd)], odd])
        assert RULES["raw"](e, center) == find_outliers(e)[0]


def test_iterating_finds_the_second_odd_take_one_pass_misses() -> None:
    """Two odd takes, one far off and leaning the way the other leaves the voice: in the
    mean of the others it pulls the nearer odd take's cosine up, so one pass flags only the
    far one; judged again without it, the nearer one is flagged too."""
    takes, center = _takes(3, 10, 0.03)
    rng = np.random.default_rng(4)
    voice = l2_normalize(takes[:8].mean(axis=0))
    away, far = (l2_normalize(rng.normal(size=64)) for _ in range(2))
    away = l2_normalize(away - (away @ voice) * voice)  # orthogonal to the voice
    near = 0.855 * voice + np.sqrt(1 - 0.855**2) * away  # cosine 0.855 to the voice
    far = l2_normalize(far - (far @ voice) * voice - (far @ away) * away)
    e = np.vstack([takes[:8], l2_normalize(far + away), near])
    assert RULES["raw"](e, center) == [8]
    assert RULES["iterative"](e, center) == [8, 9]
    assert RULES["iterative"](takes, center) == []  # one voice: nothing dropped
