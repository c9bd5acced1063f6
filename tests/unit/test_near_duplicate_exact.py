"""Enrollment's near-duplicate check, made cheaper, must decide exactly as before.

The reference is the check as it was (benchmarks/near_duplicate_cost.py, REFERENCE, kept
verbatim): its log-mel, fingerprints, similarities and far offsets. The cheaper one must give
the same bits, the same similarity values (not only the same decisions) and so the same
duplicates, on real speech: altered copies (resampled, re-encoded, trimmed, a little noise)
and genuine takes of one speaker, the same words among them."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from benchmarks.near_duplicate_cost import (
    altered,
    duplicates,
    ref_altered_copy_of,
    ref_best_similarity,
    ref_far_offsets,
    ref_fingerprint,
    ref_log_mel,
)
from voxgate.config.speaker import SpeakerConfig
from voxgate.enrollment import altered_copy_of, take_problem
from voxgate.evaluation import load_recording
from voxgate.quality import assess
from voxgate.replay import SPEC, SUB_HOP, best_similarity, far_offsets, fingerprint, loud_overlaps
from voxgate.stt.mfcc import DEEPSPEECH, FFT_ROWS, TEMPLATES, log_mel


def _paths(root: Path, speaker: str) -> list[str]:
    with open(root / "manifest.csv", newline="") as f:
        return sorted(r["path"] for r in csv.DictReader(f) if r["speaker"] == speaker)


def _takes(data: Path, tmp: Path) -> tuple[list[np.ndarray], dict[int, int]]:
    """Genuine takes and altered copies (1-based take -> the take it copies)."""
    vcc = data / "vcc2018_eval"
    sentences = _paths(vcc, "VCC2SF1")
    # Four takes of one speaker, five sentences each (about 17 s: many FFT_ROWS pieces).
    v = [load_recording(vcc, ";".join(sentences[k * 5 : k * 5 + 5])) for k in range(4)]
    fsdd = data / "fsdd"
    digits = _paths(fsdd, "george")
    # george saying "0 0 0 0" three times: same person, microphone and words.
    g = [load_recording(fsdd, ";".join(digits[k * 4 : k * 4 + 4])) for k in range(3)]
    takes = [v[0], v[1], g[0], v[2], g[1], v[3], g[2]]
    copies = {
        8: (1, altered(v[0], 0, tmp)),  # resampled through 8 kHz
        9: (2, altered(v[1], 1, tmp)),  # OGG Vorbis
        10: (4, altered(v[2], 2, tmp)),  # 44.1 kHz, gain -3 dB, 30 ms cut
        # 54.4 ms trimmed off the start (not a whole frame: the sub-hop views matter),
        # 50 ms off the end.
        11: (3, g[0][870:-800]),
        12: (6, altered(v[3], 3, tmp)),  # white noise 40 dB below
        13: (5, altered(g[1], 1, tmp)),  # OGG Vorbis of a short take
    }
    takes += [pcm for _, pcm in copies.values()]
    return takes, {i: j for i, (j, _) in copies.items()}


def test_the_cheaper_check_decides_as_the_reference_on_real_takes(
    shared_data: Path, tmp_path: Path
) -> None:
    takes, expected = _takes(shared_data, tmp_path)
    cfg = SpeakerConfig()
    usable = [(i, p) for i, p in enumerate(takes, 1) if take_problem(assess(p), cfg) is None]
    assert [i for i, _ in usable] == list(range(1, len(takes) + 1))
    # Every value, not only the decisions: each take's views against each earlier take.
    prints: list[tuple[int, tuple[np.ndarray, np.ndarray]]] = []
    for i, pcm in usable:
        views = [fingerprint(pcm[k:]) for k in SUB_HOP]
        ref_views = [ref_fingerprint(pcm[k:]) for k in SUB_HOP]
        for (bits, loud), (ref_bits, ref_loud) in zip(views, ref_views, strict=True):
            assert np.array_equal(bits, ref_bits) and np.array_equal(loud, ref_loud), i
        for j, fp in prints:
            assert far_offsets(views[0], fp) == ref_far_offsets(views[0], fp), (i, j)
            assert best_similarity(views, fp) == ref_best_similarity(views, fp), (i, j)
        prints.append((i, views[0]))
    found = duplicates(usable, altered_copy_of)
    assert found == duplicates(usable, ref_altered_copy_of)
    assert found == expected  # the copies are named, no genuine take is
    # At other levels too, where the copies' and the genuine pairs' values decide.
    for level in (0.5, 0.9, 0.95):
        assert duplicates(usable, altered_copy_of, level) == duplicates(
            usable, ref_altered_copy_of, level
        ), level


def test_log_mel_is_the_reference_to_the_bit(shared_data: Path) -> None:
    """Frames by strided view and the FFT in pieces of FFT_ROWS frames: the same floats, for
    lengths about a piece's edges, at every front end that uses log_mel."""
    vcc = shared_data / "vcc2018_eval"
    pcm = load_recording(vcc, ";".join(_paths(vcc, "VCC2TM1")[:4]))
    lengths = [len(pcm), 511, 512, 513, 1000]
    for spec in (SPEC, DEEPSPEECH, TEMPLATES):
        edge = spec.win + spec.step * (FFT_ROWS - 1)  # exactly FFT_ROWS frames
        for n in (*lengths, edge - 1, edge, edge + spec.step, 3 * edge):
            a, b = log_mel(pcm[:n], spec), ref_log_mel(pcm[:n], spec)
            assert a.dtype == b.dtype and np.array_equal(a, b), (spec, n)
    floats = pcm.astype(np.float32) / 40000.0
    assert np.array_equal(log_mel(floats, SPEC), ref_log_mel(floats, SPEC))


@pytest.mark.parametrize("seed", range(6))
def test_loud_overlaps_is_np_correlate(seed: int) -> None:
    """The FFT's counts, rounded, are np.correlate's to the last one, short or long, sparse
    or dense, either longer."""
    rng = np.random.default_rng(seed)
    for _ in range(60 if seed % 2 else 15):
        n, m = (int(x) for x in rng.integers(1, 800 if seed % 2 else 30000, 2))
        la = (rng.random(n) < rng.uniform(0.02, 1.0)).astype(np.float32)
        lb = (rng.random(m) < rng.uniform(0.02, 1.0)).astype(np.float32)
        got, want = loud_overlaps(la, lb), np.correlate(lb, la, mode="full")
        assert got.dtype == want.dtype and np.array_equal(got, want), (n, m)
