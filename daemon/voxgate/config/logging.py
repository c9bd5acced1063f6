"""Logging settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from voxgate.config.base import Section

Level = Literal["debug", "info", "warning", "error", "critical"]


class LoggingConfig(Section):
    level: Level = Field("info", description="Default level for every logger.")
    format: Literal["text", "json", "journal"] = Field(
        "text",
        description="text for a terminal, json for log shippers, journal for journald "
        "fields (needs systemd-python; falls back to text).",
    )
    modules: dict[str, Level] = Field(
        default_factory=dict, description="Per-logger levels, e.g. {'voxgate.mqtt': 'debug'}."
    )
