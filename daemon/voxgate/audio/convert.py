"""Conversion to 16 kHz mono int16, done once at the source boundary."""

from __future__ import annotations

import math

import numpy as np

from voxgate.audio.base import SAMPLE_RATE


def to_mono(block: np.ndarray) -> np.ndarray:
    """Average channels of a (samples, channels) block into one float32 channel."""
    block = np.asarray(block, dtype=np.float32)
    return block.mean(axis=1) if block.ndim == 2 else block


def float_to_int16(x: np.ndarray) -> np.ndarray:
    """[-1, 1] float to int16, clipping anything outside (clipped input must not wrap around)."""
    return np.clip(np.rint(x * 32767.0), -32768, 32767).astype(np.int16)


def int16_to_float(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / 32768.0


def resample(x: np.ndarray, src_rate: int, dst_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a whole float signal (polyphase, anti-aliased)."""
    if src_rate == dst_rate:
        return np.asarray(x, dtype=np.float32)
    g = math.gcd(src_rate, dst_rate)
    from scipy.signal import resample_poly  # 1-2 s to import: only when a rate differs

    return resample_poly(x, dst_rate // g, src_rate // g).astype(np.float32)


class StreamResampler:
    """Resample a stream block by block, giving the same samples as resampling it whole.

    Each call keeps `pad` input samples on both sides of the region it emits, so the filter
    never sees an artificial edge; the right-hand pad is emitted on the next call (10 ms of
    latency at 44.1 kHz, 2 ms at 48 kHz).
    """

    def __init__(self, src_rate: int, dst_rate: int = SAMPLE_RATE) -> None:
        g = math.gcd(src_rate, dst_rate)
        self.up, self.down = dst_rate // g, src_rate // g
        self.passthrough = src_rate == dst_rate
        # resample_poly's filter reaches 10 * max(up, down) upsampled samples each way.
        reach = math.ceil(10 * max(self.up, self.down) / self.up) + 1
        self.pad = self.down * math.ceil(reach / self.down)
        self._buf = np.zeros(self.pad, dtype=np.float32)  # left context: silence before start

    def process(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.passthrough:
            return x
        self._buf = np.concatenate([self._buf, x])
        usable = (len(self._buf) - 2 * self.pad) // self.down * self.down
        if usable <= 0:
            return np.zeros(0, dtype=np.float32)
        window = self._buf[: 2 * self.pad + usable]
        from scipy.signal import resample_poly  # cached after the first call

        y = resample_poly(window, self.up, self.down)
        start = self.pad * self.up // self.down
        out = y[start : start + usable * self.up // self.down]
        self._buf = self._buf[usable:]
        return out.astype(np.float32)

    def flush(self) -> np.ndarray:
        """Emit what is held back, as if the stream were followed by silence."""
        if self.passthrough:
            return np.zeros(0, dtype=np.float32)
        held = len(self._buf) - self.pad
        tail = self.process(np.zeros(self.pad + self.down, dtype=np.float32))
        return tail[: max(0, held * self.up // self.down)]


class Framer:
    """Cut a stream of int16 samples into fixed-size frames, carrying the remainder."""

    def __init__(self, frame_len: int) -> None:
        self.frame_len = frame_len
        self._rest = np.zeros(0, dtype=np.int16)

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        data = np.concatenate([self._rest, samples]) if len(self._rest) else samples
        n = len(data) // self.frame_len
        frames = [data[i * self.frame_len : (i + 1) * self.frame_len] for i in range(n)]
        self._rest = data[n * self.frame_len :].copy()
        return frames

    def flush(self) -> list[np.ndarray]:
        """The last partial frame, zero-padded, so no audio is lost at the end of a stream."""
        if not len(self._rest):
            return []
        last = np.zeros(self.frame_len, dtype=np.int16)
        last[: len(self._rest)] = self._rest
        self._rest = np.zeros(0, dtype=np.int16)
        return [last]
