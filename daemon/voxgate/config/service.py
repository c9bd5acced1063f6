"""Service settings: lockout policy, audit log, metrics."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from voxgate.config.base import Section


class LockoutConfig(Section):
    max_failures: int = Field(5, ge=1, le=100, description="Consecutive failures before back-off.")
    initial_s: float = Field(30.0, ge=1, le=3600, description="First back-off period.")
    max_s: float = Field(3600.0, ge=1, le=86400, description="Longest back-off period.")


class AuditConfig(Section):
    path: Path | None = Field(None, description="Audit log; default <data_dir>/audit.jsonl.")
    keep_audio: bool = Field(False, description="Keep attempt audio (encrypted) for review.")
    audio_retention_days: int = Field(7, ge=1, le=365, description="How long kept audio lives.")


class MetricsConfig(Section):
    enabled: bool = Field(True, description="Serve Prometheus metrics.")
    host: str = Field("127.0.0.1", description="Address to bind the metrics endpoint to.")
    port: int = Field(9721, ge=1, le=65535, description="Metrics port.")
