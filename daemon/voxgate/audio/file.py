"""WAV/FLAC files (any rate, any channel count) as an audio source, and whole-file reads."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from voxgate.audio.base import SAMPLE_RATE, AudioError, AudioSource, frame_samples
from voxgate.audio.convert import Framer, StreamResampler, float_to_int16, to_mono

log = logging.getLogger(__name__)

BLOCK_S = 0.5  # read files in half-second blocks so an hour-long file costs no memory


def _open(path: Path) -> sf.SoundFile:
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    try:
        return sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(f"{path}: not a readable WAV/FLAC file ({exc})") from None


def read_audio(path: str | Path) -> np.ndarray:
    """The whole file as 16 kHz mono int16."""
    src = FileSource(path)
    frames = list(src.frames(10))
    src.close()
    return np.concatenate(frames) if frames else np.zeros(0, dtype=np.int16)


class FileSource(AudioSource):
    """Stream a file in blocks, converted to 16 kHz mono int16 at the boundary."""

    def __init__(self, path: str | Path, realtime: bool = False, loop: bool = False) -> None:
        self.path = Path(path)
        self.realtime = realtime
        self.loop = loop
        info = _open(self.path)
        self.file_rate = info.samplerate
        self.channels = info.channels
        info.close()
        self._closed = False

    def frames(self, frame_ms: int = 30) -> Iterator[np.ndarray]:
        framer = Framer(frame_samples(frame_ms))
        t0 = time.monotonic()
        emitted = 0
        while not self._closed:
            for frame in self._one_pass(framer):
                if self.realtime:
                    # Pace like a microphone: never hand out audio before it "exists".
                    due = t0 + emitted / SAMPLE_RATE
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                emitted += len(frame)
                yield frame
                if self._closed:
                    return
            if not self.loop:
                return

    def _one_pass(self, framer: Framer) -> Iterator[np.ndarray]:
        resampler = StreamResampler(self.file_rate)
        f = _open(self.path)
        try:
            block = max(1, int(BLOCK_S * self.file_rate))
            while True:
                try:
                    data = f.read(block, dtype="float32", always_2d=True)
                except (sf.LibsndfileError, RuntimeError) as exc:
                    # A truncated or damaged file: keep what was read, say what happened.
                    log.error(
                        "%s: read error after %.1f s: %s", self.path, f.tell() / self.file_rate, exc
                    )
                    break
                if not len(data):
                    break
                yield from framer.push(float_to_int16(resampler.process(to_mono(data))))
            yield from framer.push(float_to_int16(resampler.flush()))
            yield from framer.flush()
        finally:
            f.close()

    def close(self) -> None:
        self._closed = True
