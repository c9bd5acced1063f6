"""The audio-source interface: every source yields 16 kHz mono int16 frames."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # convert imports this module
    from voxgate.audio.convert import DcBlocker

SAMPLE_RATE = 16000


class AudioError(Exception):
    """An audio source that cannot be opened or read; str() is meant for the user."""


class AudioIncomplete(AudioError):
    """A file that holds less than its header promises, or cannot be read past some point
    (an interrupted copy or recording): raised only where the whole recording must be there
    (an enrollment take, a one-off check); a stream reads what there is (FileSource)."""


class AudioSource(ABC):
    """A stream of 16 kHz mono int16 frames of a fixed length (10, 20 or 30 ms)."""

    sample_rate: int = SAMPLE_RATE
    _blocker: DcBlocker | None = None  # the current stream's, set by frames()

    @property
    def dc_offset(self) -> float | None:
        """The DC offset (LSB) removed from the current stream, averaged over its sound so
        far; None before any sound. Read from another thread (the daemon's metrics)."""
        blocker = self._blocker
        return None if blocker is None else blocker.mean_offset

    @abstractmethod
    def frames(self, frame_ms: int = 30) -> Iterator[np.ndarray]:
        """Yield int16 arrays of frame_ms * 16 samples each until the source ends."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the device or file."""

    def __enter__(self) -> AudioSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def frame_samples(frame_ms: int) -> int:
    if frame_ms not in (10, 20, 30):
        raise ValueError(f"frame_ms must be 10, 20 or 30, not {frame_ms}")
    return SAMPLE_RATE * frame_ms // 1000
