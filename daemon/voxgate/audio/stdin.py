"""Raw 16 kHz mono S16_LE PCM from a byte stream (standard input by default)."""

from __future__ import annotations

import io
import logging
import os
import select
import struct
import sys
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

import numpy as np

from voxgate.audio.base import SAMPLE_RATE, AudioError, AudioSource, frame_samples
from voxgate.audio.convert import DcBlocker

log = logging.getLogger(__name__)

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
        read = self._reader()
        blocker = self._blocker = DcBlocker()  # frames are whole 10 ms blocks: nothing is held back
        pending = self._skip_wav_header(read)
        while not self._closed:
            chunk = read(want - len(pending))
            if chunk is None:
                continue  # nothing yet; look at _closed again
            if not chunk:
                break
            pending += chunk
            if len(pending) < want:
                continue
            frame = blocker.process(np.frombuffer(pending, dtype="<i2").astype(np.int16))
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
            tail = blocker.process(np.frombuffer(pending[:usable], dtype="<i2").astype(np.int16))
            tail = np.concatenate([tail, blocker.flush()])
            last[: len(tail)] = tail
            yield last

    def _read_exact(self, read: Callable[[int], bytes | None], k: int) -> bytes:
        """k bytes, fewer only at the end of the stream or on close()."""
        got = b""
        while len(got) < k and not self._closed:
            chunk = read(k - len(got))
            if chunk is None:
                continue
            if not chunk:
                break
            got += chunk
        return got

    def _skip_wav_header(self, read: Callable[[int], bytes | None]) -> bytes:
        """arecord writes a WAV header unless told -t raw (the sox/ffmpeg '-t wav -' pipes too):
        read as samples it was a click, and a 48 kHz or stereo stream was taken for 16 kHz mono
        without a word. A 16 kHz mono 16-bit header is skipped, any other is an AudioError.
        Returns the bytes read that are samples."""
        head = self._read_exact(read, 12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return head
        fmt: tuple[int, int, int, int] | None = None
        while True:
            chunk = self._read_exact(read, 8)
            if len(chunk) < 8:
                raise AudioError("standard input: a WAV header without a data chunk")
            name, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if name == b"data":
                break
            body = self._read_exact(read, min(size + size % 2, 1 << 16))
            if name == b"fmt " and len(body) >= 16:
                tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
                fmt = (tag, channels, rate, bits)
        if fmt is None or fmt[0] not in (1, 0xFFFE) or fmt[1:] != (1, SAMPLE_RATE, 16):
            got = "no format" if fmt is None else f"{fmt[2]} Hz, {fmt[1]} channel(s), {fmt[3]}-bit"
            raise AudioError(
                f"standard input is a WAV stream ({got}); --source stdin takes 16 kHz mono "
                "16-bit: e.g. arecord -f S16_LE -r 16000 -c 1 -t raw, or sox ... -r 16000 -c 1 "
                "-b 16 -t raw -"
            )
        log.info("standard input: a 16 kHz mono 16-bit WAV header skipped")
        return b""

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
