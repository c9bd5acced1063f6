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


def sequence_log_prob(logp: np.ndarray, labels: list[int]) -> float:
    """log P(labels | audio) summed over all CTC alignments (forward algorithm)."""
    t_len, classes = logp.shape
    blank = classes - 1
    ext = [blank]
    for lab in labels:
        ext += [lab, blank]
    s_len = len(ext)
    if t_len == 0:
        return NEG
    ext_a = np.array(ext)
    # Transitions from s-2 are allowed onto a label that differs from the label two back.
    skip = np.zeros(s_len, dtype=bool)
    skip[2:] = (ext_a[2:] != blank) & (ext_a[2:] != ext_a[:-2])
    alpha = np.full(s_len, NEG)
    alpha[0] = logp[0, ext[0]]
    if s_len > 1:
        alpha[1] = logp[0, ext[1]]
    for t in range(1, t_len):
        a1 = np.concatenate([[NEG], alpha[:-1]])
        a2 = np.where(skip, np.concatenate([[NEG, NEG], alpha[:-2]]), NEG)
        m = np.maximum(np.maximum(alpha, a1), a2)
        m_safe = np.where(m <= NEG, 0.0, m)
        tot = np.exp(alpha - m_safe) + np.exp(a1 - m_safe) + np.exp(a2 - m_safe)
        alpha = np.where(m <= NEG, NEG, m_safe + np.log(np.maximum(tot, 1e-300)))
        alpha = alpha + logp[t, ext_a]
    return float(_lse(alpha[-1], alpha[-2]) if s_len > 1 else alpha[-1])


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


def beam_decode(
    logp: np.ndarray, words: list[str], beam: int = 16, alphabet: str = ALPHABET
) -> tuple[list[str], float]:
    """Best word sequence (words from `words`, separated by spaces) and its beam log-prob.

    Prefix beam search whose prefixes must follow the word trie: inside a word only its
    continuations; after a complete word a space (then a new word) or the end.
    """
    t_len, classes = logp.shape
    blank = classes - 1
    space = alphabet.index(" ")
    root = _trie(words, alphabet)
    # prefix key: (tuple of finished words, chars of current word) -> (p_blank, p_nonblank)
    beams: dict[tuple[tuple[str, ...], tuple[int, ...]], list[float]] = {((), ()): [0.0, NEG]}

    def node_of(chars: tuple[int, ...]) -> _Trie | None:
        node: _Trie | None = root
        for c in chars:
            node = node.kids.get(c) if node else None
        return node

    for t in range(t_len):
        row = logp[t]
        nxt: dict[tuple[tuple[str, ...], tuple[int, ...]], list[float]] = {}

        def add(key, pb: float, pnb: float, nxt=nxt) -> None:  # type: ignore[no-untyped-def]
            cur = nxt.setdefault(key, [NEG, NEG])
            cur[0] = _lse(cur[0], pb)
            cur[1] = _lse(cur[1], pnb)

        for (done, chars), (pb, pnb) in beams.items():
            total = _lse(pb, pnb)
            add((done, chars), total + row[blank], NEG)  # blank
            last = chars[-1] if chars else (space if done else None)
            if last is not None:  # repeat of the last symbol collapses
                add((done, chars), NEG, pnb + row[last])
            node = node_of(chars)
            if node is None:
                continue
            for c, _child in node.kids.items():
                # the same letter twice needs a blank in between
                p = pb if c == last else total
                add((done, (*chars, c)), NEG, p + row[c])
            if node.word is not None and chars:
                p = pb if last == space else total
                add(((*done, node.word), ()), NEG, p + row[space])
        ranked = sorted(nxt.items(), key=lambda kv: -_lse(*kv[1]))
        beams = dict(ranked[:beam])

    best_words: list[str] = []
    best = NEG
    for (done, chars), (pb, pnb) in beams.items():
        node = node_of(chars)
        if chars and (node is None or node.word is None):
            continue  # ends inside a word
        seq = [*done, node.word] if chars and node else list(done)
        score = _lse(pb, pnb)
        if seq and score > best:
            best, best_words = score, seq
    return best_words, best


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
