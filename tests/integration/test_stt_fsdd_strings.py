"""The phonemes engine on long digit strings of real voices (FSDD, ../shared/data): every
genuine answer gets a reading, and the prompt explains it better than another string."""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from voxgate.audio.file import read_audio
from voxgate.config.stt import SttConfig
from voxgate.stt import ctc, digits_to_words, load_recognizer

pytest.importorskip("hama")
PAD = np.zeros(4800, np.int16)
GAP = np.zeros(3200, np.int16)


@pytest.mark.shared
@pytest.mark.slow
def test_every_genuine_ten_digit_answer_has_a_reading(shared_data: Path) -> None:
    """With a beam search, 3 of 15 genuine 10-digit FSDD answers lost every complete reading
    of their prompt and failed closed; the word graphs sum over all of them."""
    by: dict[tuple[str, str], list[Path]] = defaultdict(list)
    with open(shared_data / "fsdd" / "manifest.csv") as f:
        for row in csv.DictReader(f):
            by[(row["speaker"], row["text"])].append(shared_data / "fsdd" / row["path"])
    rec = load_recognizer(SttConfig(backend="phonemes"))
    rng = random.Random(3)
    for speaker in sorted({s for s, _ in by}):
        for _ in range(3):
            digits = "".join(rng.choice("0123456789") for _ in range(10))
            parts = [PAD]
            for d in digits:
                parts += [read_audio(rng.choice(by[(speaker, d)])), GAP]
            pcm = np.concatenate([*parts[:-1], PAD])
            other = "".join(rng.choice("0123456789") for _ in range(10))
            res = rec.check_prompt(pcm, digits_to_words(digits))
            assert res.score > ctc.NO_READING, (speaker, digits, res)
            wrong = rec.check_prompt(pcm, digits_to_words(other))
            assert wrong.score < res.score and not wrong.ok, (speaker, digits, other, wrong)
