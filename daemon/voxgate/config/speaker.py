"""Speaker model, enrollment and scoring settings (owned by the speaker-verification stage)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from voxgate.config.base import Section


class SpeakerConfig(Section):
    model: Path | None = Field(
        None, description="Model card (.yaml) or model file; None uses the shipped default."
    )
    threads: int = Field(1, ge=1, le=8, description="Inference threads.")
    target_fmr: float = Field(
        0.001, gt=0, lt=0.5, description="False-match rate the threshold is set for (1/1000)."
    )
    threshold: float | None = Field(
        None, ge=-10, le=10, description="Fixed score threshold; None derives it from target_fmr."
    )
    min_speech_s: float = Field(
        1.0, ge=0.2, le=30, description="Less net speech in an attempt gives 'retry'."
    )
    enroll_min_speech_s: float = Field(
        20.0, ge=1, le=300, description="Net speech needed to enroll, over all takes."
    )
    enroll_min_takes: int = Field(3, ge=1, le=20, description="Takes needed to enroll.")
    enroll_two_voices_cosine: float | None = Field(
        0.62,
        ge=-1,
        le=1,
        description="Enrollment is refused when its takes split into two groups (2+ takes "
        "each) whose voiceprints score below this centred cosine: two people's takes. "
        "None turns the check off.",
    )
    key_file: Path | None = Field(
        None,
        description="AES-256 key for voiceprints (0600 file, 32 raw bytes or 64 hex); "
        "$CREDENTIALS_DIRECTORY/voiceprint-key is used when unset.",
    )
    database: Path | None = Field(
        None, description="Voiceprint SQLite file; default <data_dir>/voiceprints.db."
    )
    min_snr_db: float = Field(
        5.0, ge=-10, le=60, description="Attempts with a lower estimated SNR give 'retry'."
    )
    enroll_min_snr_db: float = Field(
        10.0, ge=-10, le=60, description="Enrollment takes with a lower estimated SNR are rejected."
    )
    cohort: Path | None = Field(
        None,
        description="Score-normalization cohort (.npz from 'voxgate eval --build-cohort'); "
        "None uses the one shipped for the loaded model.",
    )
