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
