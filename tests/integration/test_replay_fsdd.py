"""Replay prefilter on real speech (FSDD digit strings): it passes every replay the full
comparison catches on to it, so the decisions are the same, and fresh answers stay fresh."""

from __future__ import annotations

import csv
import random
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from voxgate.audio.file import read_audio
from voxgate.replay import COARSE_VIEW, SUB_HOP, ReplayDetector, fingerprint
from voxgate.replay_index import COARSE_MIN, FingerprintIndex

GAP = np.zeros(3200, np.int16)  # 0.2 s between digits, as a door challenge is answered
PAD = np.zeros(4800, np.int16)


def answers(data: Path, n: int, seed: int) -> list[np.ndarray]:
    """n 5-digit answers, speakers taken in turn, each recording used once."""
    rng = random.Random(seed)
    by: dict[str, list[Path]] = defaultdict(list)
    with open(data / "fsdd" / "manifest.csv") as f:
        for row in csv.DictReader(f):
            by[row["speaker"]].append(data / "fsdd" / row["path"])
    speakers = sorted(by)
    for paths in by.values():
        rng.shuffle(paths)
    out = []
    for i in range(n):
        paths = [by[speakers[i % len(speakers)]].pop() for _ in range(5)]
        parts = [PAD]
        for j, p in enumerate(paths):
            parts += [GAP, read_audio(p)] if j else [read_audio(p)]
        out.append(np.concatenate([*parts, PAD]))
    return out


def replays(pcm: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    click = rng.normal(0, int(np.abs(pcm).max()) / 3, 800).clip(-32767, 32767).astype(np.int16)
    gap = np.zeros(6400, np.int16)
    return {
        "exact": pcm,
        "quiet": (pcm * 0.3).astype(np.int16),
        "loud clipped": np.clip(pcm.astype(np.int32) * 2, -32768, 32767).astype(np.int16),
        "delayed": np.concatenate([np.zeros(int(rng.integers(1, 4800)), np.int16), pcm]),
        "half a frame late": pcm[80:],
        "click before": np.concatenate([click, gap, pcm]),
        "clicks both sides": np.concatenate([click, gap, pcm, gap, click]),
        "light noise": np.clip(pcm + rng.normal(0, 20, len(pcm)), -32768, 32767).astype(np.int16),
    }


def test_prefilter_passes_every_replay_the_full_comparison_catches(
    shared_data: Path, tmp_path: Path
) -> None:
    pcms = answers(shared_data, 14, seed=3)
    history, originals = pcms[:10], pcms[10:]
    rng = np.random.default_rng(3)
    missed = []
    for i, original in enumerate(originals):
        base = tmp_path / f"base{i}.db"
        det = ReplayDetector(base, 10**9)
        for k, h in enumerate(history):
            det.check_and_add(h, now=float(k))
        # Fresh: the history holds other answers by the same and by other speakers.
        assert not det.check_and_add(original, now=50.0).is_replay
        det.close()
        for name, x in replays(original, rng).items():
            results = []
            for exact in (False, True):
                path = tmp_path / f"{i}{name}{exact}.db"
                shutil.copyfile(base, path)
                det = ReplayDetector(path, 10**9, exact_only=exact)
                res = det.check_and_add(x, now=60.0)
                results.append((res.is_replay, res.similarity, res.matched_at))
                det.close()
            assert results[0] == results[1], (i, name)
            if not results[1][0]:
                missed.append(name)
            if results[1][0]:  # and the prefilter's own score says "compare it"
                index = FingerprintIndex()
                index.add(1, 0.0, *fingerprint(original))
                views = [fingerprint(x), fingerprint(x[SUB_HOP[COARSE_VIEW] :])]
                count = int(views[0][1].sum())
                score = index.coarse(views, int(count * 0.8), int(count / 0.8) + 1)
                assert score[0] >= COARSE_MIN, (i, name, score[0])
    # Everything but noise is caught whatever the answer (noise can push a replay of a
    # quiet answer under the threshold: docs/challenge.md).
    assert set(missed) <= {"light noise"} and len(missed) < len(originals)
