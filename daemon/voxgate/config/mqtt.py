"""MQTT connection and topic settings (owned by the MQTT stage)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from voxgate.config.base import Section


class TlsConfig(Section):
    ca_file: Path | None = Field(None, description="CA bundle that signed the broker certificate.")
    cert_file: Path | None = Field(None, description="Client certificate (mutual TLS).")
    key_file: Path | None = Field(None, description="Client private key (mutual TLS).")
    insecure: bool = Field(False, description="Skip host-name checks (never in production).")


class MqttConfig(Section):
    enabled: bool = Field(True, description="Publish decisions over MQTT.")
    host: str = Field("localhost", min_length=1, description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is usual for TLS).")
    protocol: Literal["5", "3.1.1"] = Field("5", description="MQTT protocol version.")
    username: str | None = Field(None, description="Broker user name.")
    password_file: Path | None = Field(
        None,
        description="File holding the broker password; $VOXGATE_MQTT_PASSWORD or the "
        "systemd credential 'mqtt-password' override it.",
    )
    tls: TlsConfig | None = Field(None, description="Connect with TLS when set.")
    topic_prefix: str = Field("voxgate", pattern=r"^[^#+/]+$", description="Root topic.")
    discovery_prefix: str | None = Field(
        "homeassistant", description="Home Assistant discovery prefix; None disables discovery."
    )
    hmac_key_file: Path | None = Field(
        None,
        description="Per-device decision signing key; $CREDENTIALS_DIRECTORY/decision-key "
        "is used when unset.",
    )
    decision_ttl_s: float = Field(
        5.0, gt=0, le=60, description="A decision expires this long after it is issued."
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keep-alive.")
