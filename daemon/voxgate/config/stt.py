"""Speech-to-text and spoken-challenge settings (owned by the challenge stage)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from voxgate.config.base import Section


class SttConfig(Section):
    backend: Literal["pocketsphinx", "deepspeech"] = Field(
        "pocketsphinx", description="Speech-to-text engine for the spoken challenge."
    )
    deepspeech_model: Path | None = Field(
        None,
        description="DeepSpeech 0.9.3 .tflite file (a user download), for backend: deepspeech.",
    )
    deepspeech_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="Expected sha256 of deepspeech_model."
    )


class ChallengeConfig(Section):
    mode: Literal["digits", "passphrase", "off"] = Field(
        "digits",
        description="digits: a fresh random digit string each attempt; passphrase: a "
        "fixed phrase; off: voiceprint only (no liveness, not for doors).",
    )
    length: int = Field(5, ge=3, le=10, description="Digits in a challenge.")
    passphrase: str | None = Field(None, description="The phrase, for mode: passphrase.")
    timeout_s: float = Field(10.0, ge=2, le=120, description="Time to answer a challenge.")
    speak: bool = Field(False, description="Speak the challenge locally with espeak-ng.")
    replay_window_s: int = Field(
        30 * 24 * 3600,
        ge=0,
        description="How long attempt fingerprints are kept for replay checks.",
    )
