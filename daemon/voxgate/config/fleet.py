"""Fleet settings: the local admin API and voiceprint sync between doors."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from voxgate.config.base import Section

NAME = r"^[A-Za-z0-9_.-]+$"
ALL_USERS = "*"


class ApiConfig(Section):
    enabled: bool = Field(False, description="Serve the local admin HTTP API.")
    host: str = Field("127.0.0.1", description="Bind address (keep it on localhost).")
    port: int = Field(9722, ge=1, le=65535, description="API port.")
    token_file: Path | None = Field(
        None, description="Bearer token file; $CREDENTIALS_DIRECTORY/api-token when unset."
    )
    max_upload_mb: float = Field(10.0, gt=0, le=200, description="Largest accepted upload.")
    max_takes: int = Field(20, ge=1, le=100, description="Most audio files in one enrollment.")
    decisions_limit: int = Field(
        200, ge=1, le=10000, description="Most audit entries one /decisions call returns."
    )


class FleetConfig(Section):
    enabled: bool = Field(False, description="Share voiceprints with other doors over MQTT.")
    site: str = Field("default", pattern=NAME, description="Fleet/site name (topic level).")
    key_file: Path | None = Field(
        None,
        description="Fleet key (AES-256, 32 raw bytes or 64 hex) for voiceprints in transit, "
        "shared by every door of the site; credential 'fleet-key' if unset.",
    )
    signing_key_file: Path | None = Field(
        None,
        description="This door's Ed25519 private key (32 raw bytes or 64 hex) for signing the "
        "voiceprints it enrolls; credential 'fleet-signing-key' if unset.",
    )
    signers: dict[str, str] = Field(
        default_factory=dict,
        description="device_id -> Ed25519 public key (64 hex) of the doors whose voiceprint "
        "updates this door accepts.",
    )
    groups: list[str] = Field(
        default_factory=list, description="Door groups this door belongs to (from the inventory)."
    )
    access: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Group -> users allowed through the doors of that group ('*' = everyone). "
        "An enrollment is sent to every group that allows the user, and only there.",
    )
    allowed_users: list[str] | None = Field(
        None,
        description="Users this door accepts, on top of the group rules; None = whatever "
        "its groups allow.",
    )
    state_file: Path | None = Field(
        None, description="Sync state (versions, tombstones); default <data_dir>/fleet.db."
    )

    @field_validator("signers")
    @classmethod
    def _hex_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for device, key in value.items():
            if len(key) != 64 or any(c not in "0123456789abcdefABCDEF" for c in key):
                raise ValueError(f"fleet.signers.{device}: expected 64 hex digits (Ed25519)")
        return value

    @field_validator("groups", "access")
    @classmethod
    def _group_names(cls, value: list[str] | dict[str, list[str]]) -> list[str] | dict:
        for g in value:
            if not re.match(NAME, g):
                raise ValueError(f"fleet group {g!r}: use letters, digits, '_', '.', '-'")
        return value

    @model_validator(mode="after")
    def _groups_known(self) -> FleetConfig:
        unknown = [g for g in self.groups if g not in self.access]
        if unknown:
            raise ValueError(f"fleet.groups {unknown} are not defined in fleet.access")
        return self
