"""Audio input and voice-activity settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from voxgate.config.base import Section


class AudioConfig(Section):
    source: Literal["mic", "file", "stdin"] = Field(
        "mic",
        description="Where audio comes from: a PyAudio microphone, a WAV/FLAC file, or raw "
        "16 kHz mono S16_LE PCM on standard input.",
    )
    device: str | int | None = Field(
        None,
        description="Microphone name (substring, case-insensitive) or PyAudio index; "
        "None picks the default input device.",
    )
    path: Path | None = Field(None, description="Audio file, for source: file.")
    device_rate: int | None = Field(
        None,
        ge=8000,
        le=192000,
        description="Capture rate to ask the device for; None tries 16000 then the device's "
        "default rate. Audio is resampled to 16 kHz at the boundary.",
    )
    frame_ms: Literal[10, 20, 30] = Field(30, description="Frame length handed to the VAD.")
    realtime: bool = Field(
        False,
        description="Pace the source at real time, as a microphone would: for files, stdin, "
        "and ALSA `file` PCMs used in tests (a real microphone paces itself).",
    )
    loop: bool = Field(False, description="Replay a file source forever (soak tests, demos).")

    @model_validator(mode="after")
    def _file_needs_path(self) -> AudioConfig:
        if self.source == "file" and self.path is None:
            raise ValueError("audio.source is 'file' but audio.path is not set")
        return self


class VadConfig(Section):
    aggressiveness: int = Field(
        2, ge=0, le=3, description="webrtcvad mode: 0 keeps most audio as speech, 3 the least."
    )
    pre_roll_ms: int = Field(300, ge=0, le=2000, description="Audio kept before speech onset.")
    hangover_ms: int = Field(
        500, ge=30, le=5000, description="Silence that must follow speech to end an utterance."
    )
    start_ms: int = Field(
        90,
        ge=10,
        le=1000,
        description="Speech needed (within a short window) before an utterance starts.",
    )
    min_utterance_ms: int = Field(
        300, ge=0, le=10000, description="Less speech than this is dropped as a click or cough."
    )
    max_utterance_ms: int = Field(
        15000,
        ge=1000,
        le=120000,
        description="Longer speech is split here so memory stays bounded.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> VadConfig:
        if self.min_utterance_ms >= self.max_utterance_ms:
            raise ValueError("vad.min_utterance_ms must be below vad.max_utterance_ms")
        return self
