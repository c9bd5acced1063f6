"""Speaker model, enrollment and scoring settings (owned by the speaker-verification stage)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

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
        28.0,
        ge=-10,
        le=60,
        description="Attempts whose SNR, measured in their pauses, is lower give 'retry' "
        "(below ~28 dB genuine attempts are denied more than 10 % of the time: "
        "docs/speaker-verification.md).",
    )
    min_snr_db_no_pauses: float = Field(
        5.0,
        ge=-10,
        le=60,
        description="Level for attempts with less than 0.45 s of pauses (files cut to their "
        "speech), whose SNR estimate takes quiet speech for noise: it reads clean speech at "
        "15-25 dB and cannot tell 20+ dB of noise from none, so only grossly noisy cut "
        "recordings are retried. Not for the door's utterances: one without pauses there is "
        "noise taken for speech, always 'retry'.",
    )
    max_clipped: float = Field(
        0.0003,
        ge=0,
        le=1,
        description="Attempts (and enrollment takes) with a larger fraction of their samples "
        "in clipped runs (>= 3 full-scale samples) give 'retry' (clipped: too loud for the "
        "microphone). 0.0003 (0.03 %): from there up, genuine attempts from a hot microphone "
        "were denied more than 5 points more often than unclipped ones on both fsdd and "
        "vcc2018_eval, the rule benchmarks/clip_gate.py states (docs/speaker-verification.md, "
        "'Clipped attempts'); no clean recording of the protocol sets is clipped at all. "
        "1 turns the rule off.",
    )
    enroll_min_snr_db: float = Field(
        28.0,
        ge=-10,
        le=60,
        description="Enrollment takes whose SNR, measured in their pauses, is lower are "
        "rejected (noisy voiceprints raise false matches).",
    )
    enroll_min_snr_db_no_pauses: float = Field(
        10.0,
        ge=-10,
        le=60,
        description="Level for enrollment takes without pauses (files cut to their speech); "
        "as min_snr_db_no_pauses, only grossly noisy ones can be told apart. Takes at the door "
        "(MQTT enroll-start) without pauses are always rejected.",
    )
    cohort: Path | None = Field(
        None,
        description="Score-normalization cohort (.npz from 'voxgate eval --build-cohort'); "
        "None uses the one shipped for the loaded model.",
    )

    @model_validator(mode="after")
    def _snr_levels(self) -> SpeakerConfig:
        # An estimate without pauses reads clean speech far below its true SNR: a higher
        # level for it than for pauses would retry clean files first.
        for pauses, no_pauses in (
            ("min_snr_db", "min_snr_db_no_pauses"),
            ("enroll_min_snr_db", "enroll_min_snr_db_no_pauses"),
        ):
            if getattr(self, no_pauses) > getattr(self, pauses):
                raise ValueError(f"speaker.{no_pauses} must not be above speaker.{pauses}")
        return self
