"""The phonemes engine on real, unknown voices: the Speech Commands sample's digit words
(../shared/data), no templates, the shipped threshold."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pytest

from voxgate.audio.file import read_audio
from voxgate.config.stt import SttConfig
from voxgate.stt import DIGIT_WORDS, load_recognizer

pytest.importorskip("hama")
PAD = np.zeros(4800, np.int16)


@pytest.mark.shared
@pytest.mark.slow
def test_speech_commands_digits_without_templates(shared_data: Path) -> None:
    folder = shared_data / "speechcommands_v001_sample"
    with open(folder / "manifest.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["text"] in DIGIT_WORDS]
    assert len(rows) >= 90
    rec = load_recognizer(SttConfig(backend="phonemes"))
    rng = random.Random(3)
    genuine = wrong = 0
    for row in rows:
        pcm = np.concatenate([PAD, read_audio(folder / row["path"]), PAD])
        other = rng.choice([w for w in DIGIT_WORDS if w != row["text"]])
        genuine += rec.check_prompt(pcm, (row["text"],)).ok
        wrong += rec.check_prompt(pcm, (other,)).ok
    # Measured with this seed at the shipped threshold: 98 of 100 accepted, 1 of 100 other
    # digits accepted (benchmarks/bench_challenge.py scores every other digit and reports
    # held-out figures; docs/challenge.md).
    assert genuine / len(rows) >= 0.95
    assert wrong / len(rows) <= 0.02


@pytest.mark.shared
def test_other_digits_do_not_pass_for_zero_as_oh(shared_data: Path) -> None:
    """With "oh" allowed for zero, the digit loop with "oh" in it read these real "two",
    "four", "six" and "eight" as a lone "oh", and they passed for zero (-0.03 to -0.65
    against -1.4; 6 of the 90 clips of other digits); the loop without "oh" heard the digit
    said, and that now stops them. Every "zero" of the sample still passes."""
    folder = shared_data / "speechcommands_v001_sample"
    with open(folder / "manifest.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["text"] in DIGIT_WORDS]
    rec = load_recognizer(SttConfig(backend="phonemes"))
    passed = {}
    for row in rows:
        pcm = np.concatenate([PAD, read_audio(folder / row["path"]), PAD])
        passed[row["path"]] = rec.check_prompt(pcm, ("zero",)).ok
    zeros = [p for p, r in zip(passed, rows, strict=True) if r["text"] == "zero"]
    others = [p for p, r in zip(passed, rows, strict=True) if r["text"] != "zero"]
    assert all(passed[p] for p in zeros), [p for p in zeros if not passed[p]]
    assert [p for p in others if passed[p]] == []
