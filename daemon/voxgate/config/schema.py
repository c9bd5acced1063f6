"""The one config schema: every section, composed."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from voxgate.config.audio import AudioConfig, VadConfig
from voxgate.config.base import Section
from voxgate.config.fleet import ApiConfig, FleetConfig
from voxgate.config.logging import LoggingConfig
from voxgate.config.mqtt import MqttConfig
from voxgate.config.service import AuditConfig, LockoutConfig, MetricsConfig, ServiceConfig
from voxgate.config.speaker import SpeakerConfig
from voxgate.config.stt import ChallengeConfig, SttConfig


class VoxgateConfig(Section):
    device_id: str = Field(
        "voxgate-dev",
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="Unique per door; used in MQTT topics and signed decisions.",
    )
    data_dir: Path = Field(
        Path("/var/lib/voxgate"), description="Voiceprints, audit log and lockout state."
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    audio: AudioConfig = Field(default_factory=AudioConfig)
    vad: VadConfig = Field(default_factory=VadConfig)
    speaker: SpeakerConfig = Field(default_factory=SpeakerConfig)
    stt: SttConfig = Field(default_factory=SttConfig)
    challenge: ChallengeConfig = Field(default_factory=ChallengeConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    lockout: LockoutConfig = Field(default_factory=LockoutConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    fleet: FleetConfig = Field(default_factory=FleetConfig)
