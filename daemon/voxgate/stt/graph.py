"""Exact CTC scoring over small word graphs: a prompt (each word with its spellings) against
a loop of every digit word.

A beam search keeps only some readings: a genuine 10-digit answer could lose every complete
reading of its prompt, and the prompt then failed closed. These graphs have a few hundred
states, so the forward algorithm can visit all of them: the prompt's probability sums over
every spelling and alignment, the loop's over every digit string, and neither can come up
empty for audio that has any reading at all.

A graph is built from token nodes (one model symbol each, e.g. a phoneme) and expanded the
usual CTC way: every node emits its symbol one or more times, an optional blank may follow
it, and two nodes with the same symbol in a row need the blank between them. Words are
separated by the word-boundary token; one may also lead and trail the answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voxgate.stt.ctc import NEG


@dataclass
class _Tokens:
    """Token-level graph before the CTC expansion."""

    labels: list[int]
    word_of: list[int | None]  # the word a node starts (its index in `words`), else None
    edges: list[tuple[int, int]]
    starts: list[int]
    finals: list[int]


class WordGraph:
    """A CTC graph over words; forward() gives log P(graph | rows), best() the best path."""

    def __init__(self, tokens: _Tokens, words: list[str], blank: int) -> None:
        n = len(tokens.labels)
        # State 2i emits node i's symbol; state 2i+1 is the blank after it; the last state
        # is the blank before anything was said.
        size = 2 * n + 1
        lead = size - 1
        allow = np.zeros((size, size), dtype=bool)
        for i in range(n):
            allow[2 * i, 2 * i] = allow[2 * i + 1, 2 * i + 1] = True  # repeats
            allow[2 * i, 2 * i + 1] = True
        allow[lead, lead] = True
        for i, j in tokens.edges:
            allow[2 * i + 1, 2 * j] = True
            if tokens.labels[i] != tokens.labels[j]:
                allow[2 * i, 2 * j] = True
        start = np.full(size, NEG)
        for j in tokens.starts:
            allow[lead, 2 * j] = True
            start[2 * j] = 0.0
        start[lead] = 0.0
        final = np.zeros(size, dtype=bool)
        for i in tokens.finals:
            final[2 * i] = final[2 * i + 1] = True
        self.allow = allow
        self.trans = allow.astype(np.float64)
        self.start = start
        self.final = final
        self.emits = np.array([*(lab for lab in tokens.labels for _ in (0, 1)), blank])
        self.emits[1 : 2 * n : 2] = blank
        # A path starts a word where it enters the node that starts it from another state.
        self.word_at = np.full(size, -1)
        for i, w in enumerate(tokens.word_of):
            if w is not None:
                self.word_at[2 * i] = w
        self.words = words

    def forward(self, logp: np.ndarray) -> float:
        """log of the summed probability of every path through the graph; NEG when none."""
        rows = np.asarray(logp, dtype=np.float64)[:, self.emits]
        if not len(rows):
            return NEG
        alpha = self.start + rows[0]
        for row in rows[1:]:
            top = alpha.max()
            if top <= NEG / 2:
                return NEG
            # Sums in the probability domain with the largest term scaled to 1: the graph is
            # a few hundred states, so a dense product per row is cheaper than edge lists.
            total = np.exp(alpha - top) @ self.trans
            with np.errstate(divide="ignore"):
                alpha = np.where(total > 0, np.log(total) + top, NEG) + row
        ends = alpha[self.final]
        top = ends.max()
        if top <= NEG / 2:
            return NEG
        return float(top + np.log(np.exp(ends - top).sum()))

    def best(self, logp: np.ndarray) -> tuple[list[str], float]:
        """The single best path: the words it reads and its log-probability."""
        rows = np.asarray(logp, dtype=np.float64)[:, self.emits]
        if not len(rows):
            return [], NEG
        penalty = np.where(self.allow, 0.0, NEG)
        score = self.start + rows[0]
        back = np.zeros((len(rows), len(score)), dtype=np.int32)
        for t in range(1, len(rows)):
            cand = score[:, None] + penalty
            back[t] = cand.argmax(0)
            score = cand[back[t], np.arange(len(score))] + rows[t]
        ends = np.where(self.final, score, NEG)
        state = int(ends.argmax())
        total = float(ends[state])
        if total <= NEG / 2:
            return [], NEG
        path = [state]
        for t in range(len(rows) - 1, 0, -1):
            state = int(back[t, state])
            path.append(state)
        path.reverse()
        read = [
            self.words[self.word_at[s]]
            for k, s in enumerate(path)
            if self.word_at[s] >= 0 and (k == 0 or path[k - 1] != s)
        ]
        return read, total


def _chain(tok: _Tokens, labels: list[int], word: int) -> tuple[int, int]:
    """Append one spelling as a chain of nodes; (first node, last node)."""
    first = len(tok.labels)
    for k, lab in enumerate(labels):
        tok.labels.append(lab)
        tok.word_of.append(word if k == 0 else None)
        if k:
            tok.edges.append((first + k - 1, first + k))
    return first, len(tok.labels) - 1


def _boundary(tok: _Tokens, label: int) -> int:
    tok.labels.append(label)
    tok.word_of.append(None)
    return len(tok.labels) - 1


def prompt_graph(
    spellings: list[list[list[int]]], words: list[str], boundary: int, blank: int
) -> WordGraph:
    """The prompt's words in order; spellings[k] holds word k's spellings (label lists)."""
    tok = _Tokens([], [], [], [], [])
    lead = _boundary(tok, boundary)
    prev = [lead]  # nodes the next word may follow, through a boundary
    tok.starts.append(lead)
    for k, forms in enumerate(spellings):
        ends = []
        for form in forms:
            first, last = _chain(tok, form, k)
            ends.append(last)
            for p in prev:
                tok.edges.append((p, first))
            if k == 0:
                tok.starts.append(first)
        sep = _boundary(tok, boundary)
        tok.edges += [(e, sep) for e in ends]
        prev = [sep]
        if k == len(spellings) - 1:
            tok.finals += [*ends, sep]
    return WordGraph(tok, words, blank)


def loop_graph(spellings: dict[str, list[list[int]]], boundary: int, blank: int) -> WordGraph:
    """One or more words from `spellings` (word -> its spellings), boundaries between them."""
    tok = _Tokens([], [], [], [], [])
    words = list(spellings)
    lead = _boundary(tok, boundary)
    sep = _boundary(tok, boundary)
    tok.starts.append(lead)
    tok.finals.append(sep)
    for w, forms in enumerate(spellings.values()):
        for form in forms:
            first, last = _chain(tok, form, w)
            tok.starts.append(first)
            tok.edges += [(lead, first), (sep, first), (last, sep)]
            tok.finals.append(last)
    return WordGraph(tok, words, blank)
