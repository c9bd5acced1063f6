"""Audio sources. Everything downstream sees 16 kHz mono int16 frames."""

from __future__ import annotations

from voxgate.audio.base import SAMPLE_RATE, AudioError, AudioIncomplete, AudioSource, frame_samples
from voxgate.config.audio import AudioConfig


def open_source(cfg: AudioConfig) -> AudioSource:
    """The source a config names; raises AudioError with a user-facing message."""
    if cfg.source == "file":
        from voxgate.audio.file import FileSource

        assert cfg.path is not None  # the schema guarantees it
        return FileSource(cfg.path, realtime=cfg.realtime, loop=cfg.loop)
    if cfg.source == "stdin":
        from voxgate.audio.stdin import StdinSource

        return StdinSource(realtime=cfg.realtime)
    from voxgate.audio.mic import MicSource

    return MicSource(cfg.device, cfg.device_rate, realtime=cfg.realtime)


__all__ = [
    "SAMPLE_RATE",
    "AudioError",
    "AudioIncomplete",
    "AudioSource",
    "frame_samples",
    "open_source",
]
