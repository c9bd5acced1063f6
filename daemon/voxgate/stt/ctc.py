"""CTC scoring for the DeepSpeech engine: exact prompt probability and a word-constrained
beam search (the decoder may only spell words from a given list, e.g. the digit words).

Inputs are (T, C) log-probabilities; the blank is the last class (DeepSpeech's layout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# DeepSpeech 0.9.3 English alphabet: space, a-z, apostrophe; the blank follows (index 28).
ALPHABET = " abcdefghijklmnopqrstuvwxyz'"
NEG = -1e30
NO_READING = -1000.0  # a prompt score far below any threshold that logs can still show


def encode(text: str, alphabet: str = ALPHABET) -> list[int]:
    try:
        return [alphabet.index(ch) for ch in text]
    except ValueError:
        raise ValueError(f"{text!r} has characters outside the model alphabet") from None


def _lse(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    if b <= NEG:
        return a
    return a + math.log1p(math.exp(b - a))


def to_log_probs(out: np.ndarray) -> np.ndarray:
    """Model output -> log-probabilities (DeepSpeech exports softmax; raw logits also work)."""
    out = np.asarray(out, dtype=np.float64)
    if out.min() >= 0 and np.allclose(out.sum(-1), 1.0, atol=1e-3):
        return np.log(np.maximum(out, 1e-30))
    shifted = out - out.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


class Forward:
    """Streaming CTC forward algorithm: push rows of log-probs, read log P(labels) any time."""

    def __init__(self, labels: list[int], classes: int) -> None:
        blank = classes - 1
        ext = [blank]
        for lab in labels:
            ext += [lab, blank]
        self.ext = np.array(ext)
        # A move from s-2 is allowed onto a label that differs from the label two back.
        skip = np.zeros(len(ext), dtype=bool)
        skip[2:] = (self.ext[2:] != blank) & (self.ext[2:] != self.ext[:-2])
        self.skip = skip
        self.alpha: np.ndarray | None = None

    def push(self, logp: np.ndarray) -> None:
        for row in np.asarray(logp, dtype=np.float64):
            if self.alpha is None:
                self.alpha = np.full(len(self.ext), NEG)
                self.alpha[:2] = row[self.ext[:2]]
                continue
            alpha = self.alpha
            a1 = np.concatenate([[NEG], alpha[:-1]])
            a2 = np.where(self.skip, np.concatenate([[NEG, NEG], alpha[:-2]]), NEG)
            m = np.maximum(np.maximum(alpha, a1), a2)
            dead = m <= NEG
            m_safe = np.where(dead, 0.0, m)
            tot = np.exp(alpha - m_safe) + np.exp(a1 - m_safe) + np.exp(a2 - m_safe)
            self.alpha = np.where(dead, NEG, m_safe + np.log(np.maximum(tot, 1e-300)))
            self.alpha = self.alpha + row[self.ext]

    def result(self) -> float:
        if self.alpha is None:
            return NEG
        if len(self.alpha) == 1:
            return float(self.alpha[-1])
        return float(_lse(self.alpha[-1], self.alpha[-2]))


def sequence_log_prob(logp: np.ndarray, labels: list[int]) -> float:
    """log P(labels | audio) summed over all CTC alignments (forward algorithm)."""
    f = Forward(labels, logp.shape[1])
    f.push(logp)
    return f.result()


@dataclass
class _Trie:
    kids: dict[int, _Trie] = field(default_factory=dict)
    word: str | None = None


def _trie(words: list[str], alphabet: str) -> _Trie:
    root = _Trie()
    for w in words:
        node = root
        for c in encode(w, alphabet):
            node = node.kids.setdefault(c, _Trie())
        node.word = w
    return root


Key = tuple[tuple[str, ...], tuple[int, ...]]  # (finished words, letters of the current one)


class PrefixBeam:
    """Streaming prefix beam search whose prefixes must follow a word list.

    Inside a word only its continuations may follow; after a complete word a space (then a
    new word) or the end. push() rows as they come; result() at any time.
    """

    def __init__(self, words: list[str], beam: int = 16, alphabet: str = ALPHABET) -> None:
        self.root = _trie(words, alphabet)
        self.beam = beam
        self.space = alphabet.index(" ")
        self.beams: dict[Key, list[float]] = {((), ()): [0.0, NEG]}

    def _node(self, chars: tuple[int, ...]) -> _Trie | None:
        node: _Trie | None = self.root
        for c in chars:
            node = node.kids.get(c) if node else None
        return node

    def push(self, logp: np.ndarray) -> None:
        for row in np.asarray(logp, dtype=np.float64):
            self._step(row)

    def _step(self, row: np.ndarray) -> None:
        blank = len(row) - 1
        space = self.space
        nxt: dict[Key, list[float]] = {}

        def add(key: Key, pb: float, pnb: float) -> None:
            cur = nxt.setdefault(key, [NEG, NEG])
            cur[0] = _lse(cur[0], pb)
            cur[1] = _lse(cur[1], pnb)

        for (done, chars), (pb, pnb) in self.beams.items():
            total = _lse(pb, pnb)
            add((done, chars), total + row[blank], NEG)  # blank
            last = chars[-1] if chars else (space if done else None)
            if last is not None:  # a repeat of the last symbol collapses into it
                add((done, chars), NEG, pnb + row[last])
            node = self._node(chars)
            if node is None:
                continue
            for c in node.kids:
                p = pb if c == last else total  # the same letter twice needs a blank between
                add((done, (*chars, c)), NEG, p + row[c])
            if node.word is not None and chars:
                p = pb if last == space else total
                add(((*done, node.word), ()), NEG, p + row[space])
        ranked = sorted(nxt.items(), key=lambda kv: -_lse(*kv[1]))
        self.beams = dict(ranked[: self.beam])

    def result(self) -> tuple[list[str], float]:
        """Best complete word sequence and its (beam) log-probability."""
        best_words: list[str] = []
        best = NEG
        for (done, chars), (pb, pnb) in self.beams.items():
            node = self._node(chars)
            if chars and (node is None or node.word is None):
                continue  # ends inside a word
            seq = [*done, node.word] if chars and node and node.word else list(done)
            score = _lse(pb, pnb)
            if seq and score > best:
                best, best_words = score, seq
        return best_words, best


def beam_decode(
    logp: np.ndarray, words: list[str], beam: int = 16, alphabet: str = ALPHABET
) -> tuple[list[str], float]:
    """Best word sequence (words from `words`, separated by spaces) and its beam log-prob."""
    search = PrefixBeam(words, beam, alphabet)
    search.push(logp)
    return search.result()


def greedy(logp: np.ndarray, alphabet: str = ALPHABET) -> str:
    """Best-path transcript (argmax per frame, repeats merged, blanks dropped)."""
    if len(logp) == 0:
        return ""
    best = logp.argmax(1)
    blank = logp.shape[1] - 1
    out = [c for i, c in enumerate(best) if c != blank and (i == 0 or c != best[i - 1])]
    return " ".join("".join(alphabet[c] for c in out).split())


def best_path_log_prob(logp: np.ndarray) -> float:
    return float(logp.max(1).sum()) if len(logp) else NEG


def prompt_ratio(prompt: float, free: float, words: int) -> float:
    """Per-word log-probability ratio of a prompt against the best free reading, at most 0.

    Fails closed: NO_READING when the prompt has no reading, when the free search has none
    (every prefix it kept ended inside a word, as in a recording cut off mid-word: the ratio
    used to come out 0 there and accept any prompt), or when anything is not finite.
    """
    if not (math.isfinite(prompt) and math.isfinite(free)) or prompt <= NEG or free <= NEG:
        return NO_READING
    # A beam can miss the true best; the ratio is capped at 0 (prompt = best).
    return min(0.0, prompt - max(free, prompt)) / max(1, words)
