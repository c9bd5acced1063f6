"""Conversion to 16 kHz mono int16, done once at the source boundary."""

from __future__ import annotations

import functools
import math

import numpy as np

from voxgate.audio.base import SAMPLE_RATE


def to_mono(block: np.ndarray) -> np.ndarray:
    """Average channels of a (samples, channels) block into one float32 channel."""
    block = np.asarray(block, dtype=np.float32)
    return block.mean(axis=1) if block.ndim == 2 else block


def float_to_int16(x: np.ndarray) -> np.ndarray:
    """[-1, 1) float to int16, clipping anything outside (clipped input must not wrap around).
    Scaled by 32768, the inverse of int16_to_float and of soundfile's float reading, so an
    int16 file or microphone arrives sample for sample (by 32767, every sample above half
    scale lost 1 LSB and a clipped top read 32766, below the rails DcBlocker keeps).
    Clipped before scaling: a float file's 1e38 times 32768 overflowed to inf with a warning."""
    return np.rint(np.clip(x, -1.0, 32767.0 / 32768.0) * 32768.0).astype(np.int16)


def int16_to_float(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / 32768.0


def resample(x: np.ndarray, src_rate: int, dst_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a whole float signal (polyphase, anti-aliased)."""
    if src_rate == dst_rate:
        return np.asarray(x, dtype=np.float32)
    g = math.gcd(src_rate, dst_rate)
    return _resample_poly(x, dst_rate // g, src_rate // g)


# Polyphase resampling as scipy.signal.resample_poly does it (the same Kaiser-windowed sinc,
# the same alignment and length; equal to float32 rounding), in numpy: importing scipy.signal
# cost a door with a 44.1/48 kHz input 60-70 MB of RSS and 1-2 s at start on a Pi.
KAISER_BETA = 5.0
HALF_LEN_PER_RATE = 10  # filter half-length in units of max(up, down), as resample_poly
OUT_CHUNK = 1024  # outputs per gather: its (outputs x taps) arrays stay near 1.5 MB
CACHED_MAX_RATE = 4096  # 44.1 kHz: 441, a 70 kB filter; an odd rate's (191999 Hz) is 30 MB


def _polyphase(up: int, down: int) -> tuple[np.ndarray, int]:
    """The filter split by phase (up rows of taps, in reverse input order) and how many
    leading outputs of the full convolution to drop so the output is centred. Kept for the
    usual rates, whose streams would otherwise design it again for every block."""
    if max(up, down) <= CACHED_MAX_RATE:
        return _cached_polyphase(up, down)
    return _design(up, down)


@functools.lru_cache(maxsize=8)
def _cached_polyphase(up: int, down: int) -> tuple[np.ndarray, int]:
    return _design(up, down)


def _design(up: int, down: int) -> tuple[np.ndarray, int]:
    max_rate = max(up, down)
    half_len = HALF_LEN_PER_RATE * max_rate
    n = 2 * half_len + 1
    m = np.arange(n) - half_len
    h = np.sinc(m / max_rate) / max_rate * np.kaiser(n, KAISER_BETA)
    h *= up / h.sum()  # unit gain at DC, times up for the zeros upsampling inserts
    pre = down - half_len % down
    h = np.concatenate([np.zeros(pre), h])
    taps = -(-len(h) // up)
    h = np.concatenate([h, np.zeros(taps * up - len(h))])
    return h.reshape(taps, up).T.copy(), (half_len + pre) // down


def _resample_poly(x: np.ndarray, up: int, down: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n_out = -(-len(x) * up // down)
    phases, skip = _polyphase(up, down)
    taps = phases.shape[1]
    out = np.empty(n_out, dtype=np.float32)
    for start in range(0, n_out, OUT_CHUNK):
        # Output m is sum_i phases[t % up, i] * x[t // up - i], t = (m + skip) * down.
        t = (np.arange(start, min(start + OUT_CHUNK, n_out)) + skip) * down
        newest = t // up
        lo = max(0, int(newest[0]) - taps + 1)
        hi = int(newest[-1]) + 1
        seg = np.zeros(hi - lo + taps, dtype=np.float64)  # zeros before and after x
        part = x[lo : min(hi, len(x))]
        seg[taps - 1 : taps - 1 + len(part)] = part
        idx = (newest - lo + taps - 1)[:, None] - np.arange(taps)[None, :]
        out[start : start + len(t)] = np.einsum("ij,ij->i", phases[t % up], seg[idx])
    return out


class StreamResampler:
    """Resample a stream block by block, giving the same samples as resampling it whole.

    Each call keeps `pad` input samples on both sides of the region it emits, so the filter
    never sees an artificial edge; the right-hand pad is emitted on the next call (10 ms of
    latency at 44.1 kHz, 2 ms at 48 kHz). Where the source sat at full scale, the output is
    put at full scale too (_keep_rails, from the same window, so it is chunk-invariant too):
    a clipped input must still read as clipped. `resample` is the filter alone.
    """

    def __init__(self, src_rate: int, dst_rate: int = SAMPLE_RATE) -> None:
        g = math.gcd(src_rate, dst_rate)
        self.up, self.down = dst_rate // g, src_rate // g
        self.passthrough = src_rate == dst_rate
        # The filter reaches HALF_LEN_PER_RATE * max(up, down) upsampled samples each way.
        reach = math.ceil(HALF_LEN_PER_RATE * max(self.up, self.down) / self.up) + 1
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
        y = _resample_poly(window, self.up, self.down)
        start = self.pad * self.up // self.down
        out = y[start : start + usable * self.up // self.down]
        _keep_rails(window, out, start, self.up, self.down)
        self._buf = self._buf[usable:]
        return out

    def flush(self) -> np.ndarray:
        """Emit what is held back, as if the stream were followed by silence."""
        if self.passthrough:
            return np.zeros(0, dtype=np.float32)
        held = len(self._buf) - self.pad
        tail = self.process(np.zeros(self.pad + self.down, dtype=np.float32))
        return tail[: max(0, held * self.up // self.down)]


def _keep_rails(window: np.ndarray, out: np.ndarray, start: int, up: int, down: int) -> None:
    """Put at full scale each output sample whose nearest source sample is at an int16 rail:
    the source's clipped stretches, sampled at the output's instants, as a 16 kHz converter
    clipping the same sound would have made them.

    A clipped top resampled is no longer flat: the filter's ripple leaves much of it below
    the gate's clipping level, and the DC removal keeps only exact rails; a 44.1/48 kHz hot
    take read about a third less clipped than the same take at 16 kHz
    (benchmarks/clip_rates.py). Only source samples at a rail change anything: a recording
    that never reaches full scale comes out exactly as the filter made it.
    out[j] stands for window time (start + j) * down / up, in source samples."""
    if window.max() < 32766 / 32768 and window.min() > -32767 / 32768:
        return  # no sample near a rail (most blocks): nothing to quantize
    q = float_to_int16(window)
    nearest = ((start + np.arange(len(out), dtype=np.int64)) * 2 * down + up) // (2 * up)
    for rail in (32767, -32768):
        at = q == rail
        if at.any():
            out[at[nearest]] = rail / 32768.0


# DC removal. Cheap microphones deliver their silence tens of LSB from zero (fsdd's nicolas
# near 230); the gate counted that as noise and the embedder heard it (benchmarks/dc_offset.py).
# A one-pole mean tracker m[n] = m[n-1] + A * (x[n] - m[n-1]) is subtracted: a zero at DC, a
# -3 dB corner at DC_CUTOFF_HZ. 4 Hz is four octaves below the lowest voice (~60 Hz; there
# -0.02 dB, 1 degree of phase) and settles a start-up error in 5 time constants (200 ms).
DC_CUTOFF_HZ = 4.0
# What the sources do to the samples, for the cohort tie (cohort.preprocessing): raise it when
# a change here alters the int16 they deliver (1: DC removal, rails kept, int16 exact; the
# full-scale runs of a 44.1/48 kHz source kept by _keep_rails change no 16 kHz recording).
AUDIO_PATH_VERSION = 1
DC_BLOCK = 160  # samples per step (10 ms): divides every frame length, so no added latency


class DcBlocker:
    """Remove a DC offset from a 16 kHz int16 stream, causally, block by block.

    The tracker starts at the mean of the first block with sound, so a constant offset is
    gone from the first sample on instead of fading out. Work is done in fixed blocks counted
    from the start of the stream (a partial block is held until it fills or flush()), and each
    block's recursion is a closed form (a cumulative sum), so the output is bit-identical
    however the stream is cut into chunks. A block of digital silence (every sample 0) stays
    exactly 0 and leaves the tracker where it was; only the samples of a block that is not
    all zeros are filtered (a gap's edge, inside a block, carries the offset removed).
    """

    def __init__(self, rate: int = SAMPLE_RATE, cutoff_hz: float = DC_CUTOFF_HZ) -> None:
        self.alpha = 1.0 - math.exp(-2.0 * math.pi * cutoff_hz / rate)
        beta = 1.0 - self.alpha
        k = np.arange(DC_BLOCK, dtype=np.float64)
        self._grow = beta**-k  # b^-k: within a block it stays below e^0.26
        self._decay = beta ** (k + 1)  # b^(n+1): how the carried state fades over a block
        self._scale = self.alpha * beta**k
        self._m: float | None = None  # the tracked offset at the end of the last block
        self._rest = np.zeros(0, dtype=np.int16)
        # What was subtracted, summed over the samples with sound once the start-up has
        # settled (5 time constants: a first block with loud voice in it starts the tracker
        # far off), for mean_offset; the output does not depend on it.
        self._settle = math.ceil(5 / self.alpha)
        self._removed = 0.0
        self._counted = 0
        self._sound = 0

    @property
    def offset(self) -> float | None:
        """The offset (LSB) the tracker holds now; None before the first block with sound.
        It ripples with a low voice (tens of LSB, more for a loud one): to say what the
        microphone's offset is, mean_offset is the steady figure."""
        return self._m

    @property
    def mean_offset(self) -> float | None:
        """The offset removed, averaged over the samples with sound since the tracker settled
        (the first 200 ms of sound); None before then. Over a second of sound it is within a
        few LSB of a constant offset, speech or not."""
        counted = self._counted
        return self._removed / counted if counted else None

    @property
    def sound_samples(self) -> int:
        """Samples filtered so far that were not in a block of digital silence."""
        return self._sound

    def _blocks(self, x: np.ndarray) -> np.ndarray:
        """Filter whole blocks (or one final partial block) of x; the state moves on."""
        n = len(x)
        rows = -(-n // DC_BLOCK)
        flat = np.zeros(rows * DC_BLOCK, dtype=np.float64)
        flat[:n] = x
        padded = flat.reshape(rows, DC_BLOCK)
        # Zero-state response of each block: alpha * sum_k b^(n-k) x[k], as a prefix sum.
        zs = self._scale * np.cumsum(padded * self._grow, axis=1)
        silent = np.logical_not(np.any(padded, axis=1))
        y = np.zeros_like(padded)
        m = self._m
        for r in range(rows):  # one step per 10 ms, not per sample
            if silent[r]:
                # Digital silence (a muted input, padding, a TTS gap) is no sound at all: it
                # stays exact zeros and says nothing about the offset, which is held.
                continue
            used = min(DC_BLOCK, n - r * DC_BLOCK)  # a final partial block's padding is not audio
            if m is None:  # the first sound: start at its mean, not at zero
                m = float(np.mean(padded[r, :used]))
            mean = zs[r] + m * self._decay
            y[r] = padded[r] - mean
            m = float(mean[-1])
            if self._sound >= self._settle:  # for mean_offset; the output does not depend on it
                self._removed += float(mean[:used].sum())
                self._counted += used
            self._sound += used
        self._m = m  # after a final partial block it is not used again
        out = np.clip(np.rint(y.reshape(-1)[:n]), -32768, 32767).astype(np.int16)
        # A sample at full scale says the microphone clipped; moved by the offset it would
        # fall below the gate's clipping level (a hot take's clipped share read ~40 % lower).
        rails = (x == 32767) | (x == -32768)
        out[rails] = x[rails]
        return out

    def process(self, x: np.ndarray) -> np.ndarray:
        """int16 in, int16 out (rounded, saturated); whole blocks only, the rest is held."""
        x = np.asarray(x, dtype=np.int16)
        data = np.concatenate([self._rest, x]) if len(self._rest) else x
        whole = len(data) // DC_BLOCK * DC_BLOCK
        self._rest = data[whole:].copy()
        if not whole:
            return np.zeros(0, dtype=np.int16)
        return self._blocks(data[:whole])

    def flush(self) -> np.ndarray:
        """The held partial block, filtered: the end of the stream."""
        if not len(self._rest):
            return np.zeros(0, dtype=np.int16)
        rest, self._rest = self._rest, np.zeros(0, dtype=np.int16)
        return self._blocks(rest)


def remove_dc(pcm: np.ndarray) -> np.ndarray:
    """A whole 16 kHz int16 recording through a fresh DcBlocker."""
    blocker = DcBlocker()
    return np.concatenate([blocker.process(pcm), blocker.flush()])


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
