"""Word-graph CTC scoring (voxgate.stt.graph) against brute force over every label string."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from voxgate.stt import ctc, graph

BLANK, WB = 5, 4
# Word "a" is two symbols; "b" has two spellings, one a doubled symbol (needs a blank between).
SPELLINGS = {"a": [[0, 1]], "b": [[2], [1, 1]]}


def strings(words: tuple[str, ...]) -> set[tuple[int, ...]]:
    """Every label string a word sequence may produce: its spellings joined by boundaries,
    with an optional boundary before and after."""
    out = set()
    for forms in itertools.product(*(SPELLINGS[w] for w in words)):
        core: list[int] = []
        for k, form in enumerate(forms):
            core += ([WB] if k else []) + form
        for lead, trail in itertools.product((0, 1), repeat=2):
            out.add(tuple([WB] * lead + core + [WB] * trail))
    return out


def total(logp: np.ndarray, labels: set[tuple[int, ...]]) -> float:
    acc = ctc.NEG
    for s in labels:
        acc = ctc._lse(acc, ctc.sequence_log_prob(logp, list(s)))
    return acc


@pytest.fixture
def logp() -> np.ndarray:
    return np.log(np.random.default_rng(4).dirichlet(np.ones(6), size=8))


def test_the_prompt_graph_sums_every_spelling_and_alignment(logp: np.ndarray) -> None:
    g = graph.prompt_graph([SPELLINGS["b"], SPELLINGS["a"]], ["b", "a"], WB, BLANK)
    assert g.forward(logp) == pytest.approx(total(logp, strings(("b", "a"))))


def test_the_loop_sums_every_word_string(logp: np.ndarray) -> None:
    # Eight rows hold at most four words (each needs a symbol and a boundary between).
    every = set()
    for n in range(1, 5):
        for words in itertools.product(SPELLINGS, repeat=n):
            every |= strings(words)
    g = graph.loop_graph(SPELLINGS, WB, BLANK)
    assert g.forward(logp) == pytest.approx(total(logp, every))


def test_best_reads_the_words_of_the_single_best_path() -> None:
    # Rows that spell "b" (as 1 _ 1), a boundary, then "a" (0 1), cleanly.
    path = [1, BLANK, 1, WB, 0, 1, BLANK]
    rows = np.full((len(path), 6), np.log(0.02))
    rows[np.arange(len(path)), path] = np.log(0.9)
    words, score = graph.loop_graph(SPELLINGS, WB, BLANK).best(rows)
    assert words == ["b", "a"]
    assert score == pytest.approx(float(rows[np.arange(len(path)), path].sum()))


def test_a_prompt_longer_than_the_audio_has_no_reading(logp: np.ndarray) -> None:
    """Ten words cannot fit in eight rows: no path, so the check fails closed."""
    g = graph.prompt_graph([SPELLINGS["a"]] * 10, ["a"] * 10, WB, BLANK)
    assert g.forward(logp) == graph.NEG
    assert g.best(logp) == ([], graph.NEG)
    assert ctc.prompt_ratio(g.forward(logp), 0.0, 10) == ctc.NO_READING
