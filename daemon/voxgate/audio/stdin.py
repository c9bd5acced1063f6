"""Raw 16 kHz mono S16_LE PCM from a byte stream (standard input by default)."""

from __future__ import annotations

import io
import os
import select
import sys
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

import numpy as np

from voxgate.audio.base import SAMPLE_RATE, AudioError, AudioSource, frame_samples

POLL_S = 0.2


class StdinSource(AudioSource):
    """e.g. `arecord -f S16_LE -r 16000 -c 1 | voxgate run --source stdin`."""

    def __init__(self, stream: BinaryIO | None = None, realtime: bool = False) -> None:
        if stream is None:
            if sys.stdin is None:  # started with fd 0 closed (`<&-`, some supervisors)
                raise AudioError("standard input is closed: pipe raw 16 kHz S16_LE PCM into it")
            stream = sys.stdin.buffer
        self.stream = stream
        self.realtime = realtime
        self._closed = False

    def frames(self, frame_ms: int = 30) -> Iterator[np.ndarray]:
        n = frame_samples(frame_ms)
        want = 2 * n
        t0 = time.monotonic()
        emitted = 0
        pending = b""
        read = self._reader()
        while not self._closed:
            chunk = read(want - len(pending))
            if chunk is None:
                continue  # nothing yet; look at _closed again
            if not chunk:
                break
            pending += chunk
            if len(pending) < want:
                continue
            frame = np.frombuffer(pending, dtype="<i2").astype(np.int16)
            pending = b""
            if self.realtime:
                delay = t0 + emitted / SAMPLE_RATE - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            emitted += n
            yield frame
        if pending:
            # An odd trailing byte cannot be a sample; the rest is padded, not lost.
            usable = len(pending) // 2 * 2
            last = np.zeros(n, dtype=np.int16)
            last[: usable // 2] = np.frombuffer(pending[:usable], dtype="<i2")
            yield last

    def _reader(self) -> Callable[[int], bytes | None]:
        """A pipe or file is read with os.read after select(), never through the buffered
        reader: a thread blocked inside BufferedReader.read holds its lock, and at exit
        (SIGTERM while the writer is idle) Python then aborts with "could not acquire lock
        for <stdin> at interpreter shutdown". Polling also lets close() end the loop."""
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            return self.stream.read  # an in-memory stream (tests) never blocks

        def read(k: int) -> bytes | None:
            ready, _, _ = select.select([fd], [], [], POLL_S)
            return os.read(fd, k) if ready else None

        return read

    def close(self) -> None:
        self._closed = True
