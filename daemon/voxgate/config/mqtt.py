"""MQTT settings (owned by the MQTT stage): the daemon's `mqtt:` section and the actuator's file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from voxgate.config.base import Section


class TlsConfig(Section):
    ca_file: Path | None = Field(
        None, description="CA bundle that signed the broker certificate; system CAs when unset."
    )
    cert_file: Path | None = Field(None, description="Client certificate (mutual TLS).")
    key_file: Path | None = Field(None, description="Client private key (mutual TLS).")
    insecure: bool = Field(False, description="Skip host-name checks (never in production).")

    @model_validator(mode="after")
    def _cert_and_key(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file go together (mutual TLS)")
        return self


class BrokerConfig(Section):
    """How to reach the broker; shared by the daemon and `voxgate actuator`."""

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
    client_id: str | None = Field(
        None,
        max_length=64,
        description="MQTT client id; default voxgate-<device_id> for the daemon, a random id "
        "kept beside state_file for voxgate actuator.",
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keep-alive.")
    reconnect_min_s: float = Field(
        0.5, ge=0.1, le=60, description="First retry delay after a lost connection."
    )
    reconnect_max_s: float = Field(
        30.0, ge=0.1, le=600, description="Longest retry delay (the delay doubles up to this)."
    )
    topic_prefix: str = Field("voxgate", pattern=r"^[^#+/]+$", description="Root topic.")

    @field_validator("protocol", mode="before")
    @classmethod
    def _bare_five(cls, value: object) -> object:
        # YAML reads `protocol: 5` as the integer 5, which the choices ('5', '3.1.1') refused.
        return "5" if value == 5 and not isinstance(value, bool) else value


class MqttConfig(BrokerConfig):
    enabled: bool = Field(True, description="Publish decisions over MQTT.")
    discovery_prefix: str | None = Field(
        "homeassistant",
        pattern=r"^[^#+/]+$",
        description="Home Assistant discovery prefix; null disables discovery.",
    )
    hmac_key_file: Path | None = Field(
        None,
        description="Per-device decision signing key; $VOXGATE_DECISION_KEY or "
        "$CREDENTIALS_DIRECTORY/decision-key override it.",
    )
    command_key_file: Path | None = Field(
        None,
        description="Key that signs commands sent to this device; $VOXGATE_COMMAND_KEY or "
        "$CREDENTIALS_DIRECTORY/command-key override it. Without a key, commands are refused.",
    )
    decision_ttl_s: float = Field(
        5.0, gt=0, le=60, description="A decision expires this long after it is issued."
    )
    command_max_bytes: int = Field(
        4096, ge=256, le=65536, description="Larger command payloads are refused."
    )
    command_max_skew_s: float = Field(
        5.0, ge=0, le=300, description="Clock difference tolerated on a command's issued_at."
    )

    @model_validator(mode="after")
    def _delays(self) -> MqttConfig:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        return self


class DeviceKey(Section):
    id: str = Field(
        ..., pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="device_id of a voxgate door."
    )
    key_file: Path | None = Field(
        None,
        description="That device's decision key; $VOXGATE_DECISION_KEY or "
        "$CREDENTIALS_DIRECTORY/decision-key override it (one door only: with several "
        "the actuator refuses to start, as the override would be every door's key).",
    )


class GpioAction(Section):
    pin: str = Field(..., min_length=1, description="gpiozero pin name, e.g. GPIO17 or BOARD11.")
    active_high: bool = Field(True, description="Relay energizes on a high level.")
    hold_s: float = Field(3.0, gt=0, le=60, description="How long the lock stays open.")


class CommandAction(Section):
    argv: list[str] = Field(
        ...,
        min_length=1,
        description="Program and arguments, run without a shell; decision fields arrive in "
        "VOXGATE_* environment variables.",
    )
    timeout_s: float = Field(10.0, gt=0, le=600, description="The command is killed after this.")


class ActuatorConfig(Section):
    """`voxgate actuator --config FILE`: the reference lock controller."""

    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    devices: list[DeviceKey] = Field(
        ..., min_length=1, description="Doors whose decisions this actuator obeys."
    )
    state_file: Path = Field(
        Path("/var/lib/voxgate-actuator/state.json"),
        description="Last accepted sequence number (and its issued_at) per device: replay "
        "protection.",
    )
    max_skew_s: float = Field(
        2.0, ge=0, le=60, description="How far in the future issued_at may be."
    )
    gpio: GpioAction | None = Field(None, description="Drive a relay on 'granted'.")
    command: CommandAction | None = Field(None, description="Run a program on 'granted'.")

    @model_validator(mode="after")
    def _one_action(self) -> ActuatorConfig:
        if (self.gpio is None) == (self.command is None):
            raise ValueError("set exactly one of 'gpio' or 'command'")
        ids = [d.id for d in self.devices]
        if len(set(ids)) != len(ids):
            raise ValueError("device ids must be unique")
        return self
