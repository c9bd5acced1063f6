"""Service settings: the daemon loop, lockout policy, audit log, metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from voxgate.config.base import Section


class ServiceConfig(Section):
    queue_s: float = Field(
        5.0,
        ge=0.5,
        le=120,
        description="Audio the capture queue holds before the oldest is dropped (live sources).",
    )
    stop_timeout_s: float = Field(
        4.0,
        ge=0.5,
        le=30,
        description="On SIGTERM, how long an attempt in progress may take to finish.",
    )
    audio_timeout_s: float = Field(
        10.0,
        ge=1,
        le=300,
        description="No audio for this long at start (or from a microphone later) is an error "
        "and the daemon exits so systemd restarts it.",
    )
    decided_hold_s: float = Field(
        1.0, ge=0, le=30, description="How long the 'decided' state shows before 'idle'."
    )


class LockoutConfig(Section):
    max_failures: int = Field(
        5, ge=1, le=100, description="Consecutive failures of one user before back-off starts."
    )
    device_max_failures: int = Field(
        5,
        ge=1,
        le=1000,
        description="Consecutive failures on this door (any user) before the door backs off; "
        "anyone's success starts this count over (device_window_failures is the limit no "
        "success clears).",
    )
    device_window_failures: int = Field(
        20,
        ge=1,
        le=10000,
        description="Failures on this door (any user, any claimed name, identify mode) within "
        "device_window_s before the door backs off. No success clears them: a stranger at a "
        "busy door gets at most device_window_failures - 1 guesses per window without a "
        "back-off, however many people come in meanwhile.",
    )
    device_window_s: float = Field(
        7200.0,
        ge=60,
        le=7 * 86400,
        description="How long a failure counts towards device_window_failures.",
    )
    initial_s: float = Field(
        30.0, ge=1, le=3600, description="First back-off period; it doubles with each failure."
    )
    max_s: float = Field(3600.0, ge=1, le=86400, description="Longest back-off period.")
    path: Path | None = Field(None, description="Lockout state; default <data_dir>/lockout.db.")

    @model_validator(mode="after")
    def _bounds(self) -> LockoutConfig:
        if self.max_s < self.initial_s:
            raise ValueError("lockout.max_s must not be below lockout.initial_s")
        return self


class AuditConfig(Section):
    path: Path | None = Field(None, description="Audit log; default <data_dir>/audit.jsonl.")
    fsync: Literal["always", "never"] = Field(
        "always",
        description="always: fsync each line and the anchor before going on (decisions are "
        "rare, so this is cheap); never: leave it to the kernel (saves SD-card writes, a "
        "power cut may lose the last seconds).",
    )
    key_file: Path | None = Field(
        None,
        description="Key that signs the audit anchor (HMAC); the credential 'audit-key' or "
        "$VOXGATE_AUDIT_KEY is used when set. A named file that is missing stops the start "
        "(exit 78); without any key the anchor is a plain hash.",
    )
    keep_audio: bool = Field(False, description="Keep attempt audio (encrypted) for review.")
    audio_key_file: Path | None = Field(
        None,
        description="AES-256 key for kept audio (32 raw bytes or 64 hex); the credential "
        "'audio-key' is used when unset. Needed when keep_audio is on.",
    )
    audio_dir: Path | None = Field(None, description="Kept audio; default <data_dir>/audio.")
    audio_retention_days: int = Field(7, ge=1, le=365, description="How long kept audio lives.")


class MetricsConfig(Section):
    enabled: bool = Field(True, description="Serve Prometheus metrics.")
    host: str = Field("127.0.0.1", description="Address to bind the metrics endpoint to.")
    port: int = Field(9721, ge=0, le=65535, description="Metrics port (0: any free port).")
