"""Speech-to-text and spoken-challenge settings (owned by the challenge stage)."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from voxgate.config.base import Section


class SttConfig(Section):
    backend: Literal["auto", "phonemes", "pocketsphinx", "deepspeech"] = Field(
        "auto",
        description="Speech-to-text engine for the spoken challenge, used when the person has "
        "no enrolled digit templates: phonemes (hama's phoneme recogniser: far more accurate, "
        "decodes after the answer), pocketsphinx (streams; weak on unknown voices), deepspeech "
        "(a user-supplied model); auto: phonemes where hama runs (64-bit Linux), else "
        "pocketsphinx. docs/challenge.md compares them.",
    )
    deepspeech_model: Path | None = Field(
        None,
        description="DeepSpeech 0.9.3 .tflite file (a user download), for backend: deepspeech.",
    )
    deepspeech_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="Expected sha256 of deepspeech_model."
    )
    deepspeech_beam: int = Field(
        16, ge=1, le=512, description="CTC beam width of the DeepSpeech decoder."
    )
    deepspeech_xnnpack: bool = Field(
        False,
        description="Run DeepSpeech with LiteRT's XNNPACK delegate: ~25 % faster but ~590 MB "
        "resident instead of ~60 MB (weights unpacked to float).",
    )
    deepspeech_threshold: float = Field(
        -2.0,
        ge=-100,
        le=0,
        description="Prompt check without templates, DeepSpeech: minimum per-word log-probability "
        "ratio of the prompt against the best free digit string.",
    )
    phonemes_threshold: float = Field(
        -1.4,
        ge=-100,
        le=0,
        description="Prompt check without templates, phonemes: minimum per-word log-probability "
        "ratio of the prompt against any digit string (set from data: "
        "benchmarks/bench_challenge.py, docs/challenge.md).",
    )
    phonemes_phrase_threshold: float = Field(
        -4.0,
        ge=-100,
        le=0,
        description="Passphrase check, phonemes: minimum per-word log-probability ratio of the "
        "phrase against the best path through any tokens (a stronger rival than the digit "
        "loop, hence lower; set from the Speech Commands words: benchmarks/bench_passphrase.py).",
    )
    use_templates: bool = Field(
        True,
        description="Check digit prompts against the user's own enrolled digit templates when "
        "they cover the prompt (much stronger than the engine alone; see docs/challenge.md).",
    )
    template_threshold: float = Field(
        0.76,
        ge=0,
        le=10,
        description="Template check: largest accepted per-frame cost gap between the prompt "
        "and the best free digit string (set from data, docs/challenge.md).",
    )
    pocketsphinx_prompt_bias: float = Field(
        0.0,
        ge=-50,
        le=50,
        description="Prompt check without templates, pocketsphinx: log10 prior weight of the "
        "prompt against any other digit string (higher accepts more; set from data).",
    )
    min_speech_s: float = Field(
        0.25, ge=0.05, le=5, description="Less speech than this in an answer means 'try again'."
    )
    max_answer_s: float = Field(
        20.0,
        ge=2,
        le=120,
        description="Longer answers are not decoded (bounded work) and mean 'try again'.",
    )

    @field_validator("deepspeech_sha256", mode="before")
    @classmethod
    def _hex_any_case(cls, v: object) -> object:
        # A checksum is the same in capitals (PowerShell's Get-FileHash prints them).
        return v.strip().lower() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _deepspeech_needs_model(self) -> SttConfig:
        # Else `voxgate config check` passed and the daemon stopped at start (exit 69).
        if self.backend == "deepspeech" and self.deepspeech_model is None:
            raise ValueError(
                "stt.backend is 'deepspeech' but stt.deepspeech_model is not set (a user "
                "download: docs/challenge.md)"
            )
        return self


# What a passphrase may hold: the engines spell English words in a-z (and the apostrophe);
# punctuation between words is dropped.
_PHRASE_CHARS = frozenset(string.ascii_letters + string.whitespace + "'.,!?;:-\"()")


def passphrase_words(phrase: str) -> tuple[str, ...]:
    """The words to say, lower case, without punctuation: 'Open, Sesame!' -> (open, sesame).

    The engines check words, and pocketsphinx has no 'sesame!' in its dictionary."""
    return tuple(re.findall(r"[a-z]+(?:'[a-z]+)*", phrase.lower()))


class ChallengeConfig(Section):
    mode: Literal["digits", "passphrase", "off"] = Field(
        "digits",
        description="digits: a fresh random digit string each attempt; passphrase: a "
        "fixed phrase; off: voiceprint only (no liveness, not for doors).",
    )
    length: int = Field(5, ge=3, le=10, description="Digits in a challenge.")
    passphrase: str | None = Field(None, description="The phrase, for mode: passphrase.")
    timeout_s: float = Field(10.0, ge=2, le=120, description="Time to answer a challenge.")
    passphrase_min_speech_s: float = Field(
        0.6,
        ge=0.2,
        le=30,
        description="mode passphrase: net speech the voiceprint needs when the prompt check "
        "heard the whole phrase, in place of speaker.min_speech_s when lower (a short phrase "
        "such as 'open the gate' has under 1 s); answers the check did not accept keep "
        "speaker.min_speech_s (docs/challenge.md).",
    )
    answer_pause_ms: int = Field(
        1200,
        ge=300,
        le=3000,
        description="Silence that ends a spoken answer (and an enrollment take at the door), "
        "in place of vad.hangover_ms, which ends the wake phrase: people pause between "
        "digits. The larger of the two applies; each 100 ms adds as much to the wait "
        "before every answer is judged (docs/challenge.md).",
    )
    speak: bool = Field(False, description="Speak the challenge locally with espeak-ng.")
    replay_window_s: int = Field(
        30 * 24 * 3600,
        ge=60,
        description="How long attempt fingerprints are kept for replay checks (at least a "
        "minute: 0 kept none, so no replay could be caught).",
    )
    replay_max_stored: int = Field(
        5000,
        ge=100,
        le=100_000,
        description="Most attempt fingerprints kept for replay checks; beyond it the "
        "oldest are dropped (logged). A check's time grows with them; its scratch memory "
        "stays within what opening the store takes (docs/challenge.md, 'Memory').",
    )
    replay_memory_mb: int = Field(
        64,
        ge=8,
        le=4096,
        description="Memory the replay check's kept fingerprints may take (at their peak, "
        "when the daemon starts: about 3 kB per second of answer kept); beyond it the "
        "oldest are dropped (logged), as beyond replay_max_stored. The default fits a Pi "
        "Zero 2 W's MemoryMax=300M with the models loaded (docs/challenge.md).",
    )

    @field_validator("mode", mode="before")
    @classmethod
    def _bare_off(cls, value: object) -> object:
        # YAML 1.1 reads a bare `mode: off` (as the docs write it) as false.
        return "off" if value is False else value

    @model_validator(mode="after")
    def _passphrase_needs_phrase(self) -> ChallengeConfig:
        # Else the door starts, reports ready, and aborts every attempt at the challenge.
        if self.mode == "passphrase" and not (self.passphrase or "").strip():
            raise ValueError("challenge.mode is 'passphrase' but challenge.passphrase is not set")
        if self.passphrase is not None:
            # Else the door starts and every attempt aborts where the engine cannot spell a
            # word (or a word is silently cut to its a-z letters).
            odd = sorted({c for c in self.passphrase if c not in _PHRASE_CHARS})
            if odd:
                raise ValueError(
                    f"challenge.passphrase has {''.join(odd)!r}: the speech engines spell "
                    "English words in the letters a-z (write numbers as words)"
                )
            if self.passphrase.strip() and not passphrase_words(self.passphrase):
                raise ValueError("challenge.passphrase has no words to say")
        return self
