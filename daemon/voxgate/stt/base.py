"""The speech-to-text interface: transcribe, or check a known prompt; results as dataclasses."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
WORD_DIGIT = {w: str(i) for i, w in enumerate(DIGIT_WORDS)} | {"oh": "0"}

# LivenessResult.reason values. Retry: the person should simply try again. The others deny.
NO_SPEECH = "no_speech"
TOO_LONG = "too_long"
TOO_SHORT = "too_short"
PROMPT_MISMATCH = "prompt_mismatch"
RETRY_REASONS = frozenset({NO_SPEECH, TOO_LONG, TOO_SHORT})


class SttError(Exception):
    """A configuration or model problem (missing/wrong model file); str() is for the user."""


@dataclass(frozen=True)
class Transcript:
    text: str  # words, space-separated ("" when nothing was recognised)
    digits: str | None  # the words as digits when they all are digit words
    engine: str


@dataclass(frozen=True)
class LivenessResult:
    ok: bool
    score: float  # higher is better for every engine (negated costs where needed)
    threshold: float  # ok means score >= threshold (and no reason)
    transcript: str | None  # what the engine heard, for logs and the audit trail
    reason: str | None  # None when ok; one of the constants above otherwise
    method: str = ""  # "templates" or the engine name: which check decided

    @property
    def retry(self) -> bool:
        """True when the attempt should be repeated rather than counted as a failure."""
        return self.reason in RETRY_REASONS


def digits_to_words(digits: str) -> tuple[str, ...]:
    if not digits.isdigit():
        raise ValueError(f"not a digit string: {digits!r}")
    return tuple(DIGIT_WORDS[int(c)] for c in digits)


def words_to_digits(words: tuple[str, ...] | list[str]) -> str | None:
    """'one two oh' -> '120'; None when any word is not a digit word."""
    out = []
    for w in words:
        d = WORD_DIGIT.get(w.lower())
        if d is None:
            return None
        out.append(d)
    return "".join(out)


def check_pcm(pcm: np.ndarray) -> np.ndarray:
    """Reject what is not 16 kHz mono int16 audio (a programming error, not bad input)."""
    arr = np.asarray(pcm)
    if arr.dtype != np.int16 or arr.ndim != 1:
        raise TypeError(f"expected 1-D int16 audio, got {arr.dtype} with shape {arr.shape}")
    return arr


class PromptStream(ABC):
    """Audio of one challenge answer, pushed while the person speaks."""

    @abstractmethod
    def push(self, pcm: np.ndarray) -> None: ...

    @abstractmethod
    def finish(self) -> LivenessResult: ...


class Engine(ABC):
    """One speech engine (pocketsphinx, DeepSpeech): free recognition and a prompt score."""

    name: str

    @abstractmethod
    def transcribe(self, pcm: np.ndarray, digits_only: bool = False) -> Transcript: ...

    @abstractmethod
    def start_prompt(self, words: tuple[str, ...]) -> EngineStream:
        """Stream the audio; finish() gives (score, transcript), higher = better match."""


class EngineStream(ABC):
    # True when the words are checked as a free phrase rather than as digit words (the
    # engine's own lexicon decides: "oh" is a digit to some engines, not to others).
    phrase = False

    @abstractmethod
    def push(self, pcm: np.ndarray) -> None: ...

    @abstractmethod
    def finish(self) -> tuple[float, str]: ...
