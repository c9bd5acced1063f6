"""Fleet settings: the local admin API and voiceprint sync between doors."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from voxgate.config.base import Section


class ApiConfig(Section):
    enabled: bool = Field(False, description="Serve the local admin HTTP API.")
    host: str = Field("127.0.0.1", description="Bind address (keep it on localhost).")
    port: int = Field(9722, ge=1, le=65535, description="API port.")
    token_file: Path | None = Field(
        None, description="Bearer token file; $CREDENTIALS_DIRECTORY/api-token when unset."
    )
    max_upload_mb: float = Field(10.0, gt=0, le=200, description="Largest accepted upload.")


class FleetConfig(Section):
    enabled: bool = Field(False, description="Share voiceprints with other doors over MQTT.")
    site: str = Field("default", pattern=r"^[A-Za-z0-9_.-]+$", description="Fleet/site name.")
    key_file: Path | None = Field(
        None, description="Fleet key for voiceprints in transit; credential 'fleet-key' if unset."
    )
    allowed_users: list[str] | None = Field(
        None, description="Users this door accepts; None accepts every fleet user."
    )
