"""CTC scoring and the word-constrained beam search, on hand-made probability matrices."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from voxgate.stt import ctc

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "oh"]


def spell(text: str, frames_per_char: int = 2, sharp: float = 50.0) -> np.ndarray:
    """Log-probs that clearly spell `text`, with a blank after every character."""
    rows = []
    for ch in text:
        for _ in range(frames_per_char):
            r = np.ones(29)
            r[ctc.ALPHABET.index(ch)] = sharp
            rows.append(r / r.sum())
        r = np.ones(29)
        r[-1] = sharp
        rows.append(r / r.sum())
    return ctc.to_log_probs(np.array(rows))


def brute_force(logp: np.ndarray, labels: list[int]) -> float:
    blank = logp.shape[1] - 1
    total = []
    for path in itertools.product(range(logp.shape[1]), repeat=len(logp)):
        out, prev = [], None
        for p in path:
            if p != prev and p != blank:
                out.append(p)
            prev = p
        if out == labels:
            total.append(sum(logp[t, p] for t, p in enumerate(path)))
    return float(np.log(np.exp(total).sum()))


@pytest.mark.parametrize("labels", [[0], [0, 0], [0, 1], [1, 0, 1]])
def test_forward_matches_brute_force(labels: list[int]) -> None:
    rng = np.random.default_rng(len(labels))
    logp = ctc.to_log_probs(rng.normal(size=(5, 3)))
    assert ctc.sequence_log_prob(logp, labels) == pytest.approx(brute_force(logp, labels))


def test_prompt_spelled_scores_far_above_another() -> None:
    logp = spell("one two")
    right = ctc.sequence_log_prob(logp, ctc.encode("one two"))
    wrong = ctc.sequence_log_prob(logp, ctc.encode("one three"))
    assert right >= ctc.best_path_log_prob(logp)  # all alignments >= the single best one
    assert wrong < right - 10


def test_beam_decode_finds_digit_words_only() -> None:
    words, score = ctc.beam_decode(spell("nine oh five"), DIGITS, beam=16)
    assert words == ["nine", "oh", "five"]
    assert score == pytest.approx(
        ctc.sequence_log_prob(spell("nine oh five"), ctc.encode("nine oh five")), abs=0.5
    )


def test_beam_decode_forces_non_digit_speech_into_digits() -> None:
    # "cat" cannot be spelled with digit words: the result is digits or nothing, never "cat".
    words, _ = ctc.beam_decode(spell("cat"), DIGITS, beam=8)
    assert all(w in DIGITS for w in words)


def test_double_letters_need_a_blank() -> None:
    # "three" has "ee": greedy and beam must keep both letters when a blank separates them.
    logp = spell("three")
    assert ctc.greedy(logp) == "three"
    assert ctc.beam_decode(logp, DIGITS, beam=8)[0] == ["three"]


def test_softmax_and_raw_logits_give_the_same_log_probs() -> None:
    raw = np.random.default_rng(0).normal(size=(4, 29))
    soft = np.exp(raw) / np.exp(raw).sum(1, keepdims=True)
    assert np.allclose(ctc.to_log_probs(raw), ctc.to_log_probs(soft), atol=1e-6)


def test_characters_outside_the_alphabet_are_refused() -> None:
    with pytest.raises(ValueError, match="alphabet"):
        ctc.encode("zwölf")
