"""Microphone input through PyAudio (PortAudio), resampled to 16 kHz when the device needs it."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from voxgate.audio.base import SAMPLE_RATE, AudioError, AudioSource, frame_samples
from voxgate.audio.convert import (
    DcBlocker,
    Framer,
    StreamResampler,
    float_to_int16,
    int16_to_float,
)

log = logging.getLogger(__name__)

# The microphone's DC offset is said once per stream, after this much audio with sound: the
# tracker's average over a second of speech is within a few LSB of a constant offset.
DC_REPORT_S = 1.0
# From here an offset matters: at 16 LSB, takes and attempts that differ by it tripled fsdd's
# EER (benchmarks/dc_offset.py; docs/speaker-verification.md). Clean speech reads within 3.
DC_WARN_LSB = 16.0
DC_REMOVED_SINCE = "2026-11-27"  # the first voxgate that removed it (audio path version 1)


def log_dc_offset(offset: float) -> None:
    """The daemon's line for a microphone's offset: one line, the figure also as a field."""
    fields = {"dc_offset_lsb": round(offset, 1)}
    if abs(offset) < DC_WARN_LSB:
        log.info("microphone DC offset %+.0f LSB (removed before the VAD)", offset, extra=fields)
        return
    log.warning(
        "microphone DC offset %+.0f LSB (removed before the VAD); voiceprints enrolled "
        "through this microphone by a voxgate that did not remove it (before %s) hold the "
        "offset and match worse: those users should re-enroll (voxgate enroll NAME --replace)",
        offset,
        DC_REMOVED_SINCE,
        extra=fields,
    )


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    channels: int
    default_rate: int


def _pyaudio() -> Any:
    try:
        import pyaudio
    except ImportError:
        raise AudioError(
            "microphone input needs PyAudio: pip install 'voxgate[mic]' "
            "(and apt-get install portaudio19-dev before it, to build it)"
        ) from None
    # PortAudio prints ALSA probing noise on stderr; hide it while initialising.
    with _quiet_stderr():
        return pyaudio.PyAudio()


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)


def _devices(pa: Any) -> list[DeviceInfo]:
    out = []
    for i in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(i)
        if int(info.get("maxInputChannels", 0)) > 0:
            out.append(
                DeviceInfo(
                    i,
                    str(info["name"]),
                    int(info["maxInputChannels"]),
                    int(info["defaultSampleRate"]),
                )
            )
    return out


def list_input_devices() -> list[DeviceInfo]:
    pa = _pyaudio()
    try:
        return _devices(pa)
    finally:
        pa.terminate()


def find_device(
    devices: list[DeviceInfo], want: str | int | None, default: int | None
) -> DeviceInfo:
    """Pick by index, or by case-insensitive name substring; the error lists what exists."""
    listing = (
        "\n".join(f"  {d.index}: {d.name} ({d.channels} ch, {d.default_rate} Hz)" for d in devices)
        or "  (none)"
    )
    if want is None:
        match = [d for d in devices if d.index == default] or devices[:1]
    elif isinstance(want, int) or (isinstance(want, str) and want.isascii() and want.isdigit()):
        match = [d for d in devices if d.index == int(want)]
    else:
        exact = [d for d in devices if d.name.lower() == want.lower()]
        match = exact or [d for d in devices if want.lower() in d.name.lower()]
    if not match:
        what = "no default input device" if want is None else f"no input device matches {want!r}"
        raise AudioError(f"{what}; available inputs:\n{listing}")
    return match[0]


class MicSource(AudioSource):
    """Blocking reads from a PortAudio input stream."""

    # Told the stream's DC offset (LSB) once, after DC_REPORT_S of sound; guided enrollment
    # puts its own here (it prints, and gives no re-enroll advice to someone enrolling).
    dc_report: Callable[[float], None] | None = staticmethod(log_dc_offset)

    def __init__(
        self,
        device: str | int | None = None,
        device_rate: int | None = None,
        realtime: bool = False,
    ) -> None:
        # realtime: pace reads by the wall clock. A microphone paces itself; an ALSA `file`
        # PCM (tests, benchmarks) has no clock and would hand over a whole file at once.
        self.realtime = realtime
        self._pa = _pyaudio()
        try:
            default = None
            with contextlib.suppress(OSError, IOError):
                default = int(self._pa.get_default_input_device_info()["index"])
            self.device = find_device(_devices(self._pa), device, default)
            self.rate = self._pick_rate(device_rate)
            self.channels = 1 if self._supported(self.rate, 1) else self.device.channels
        except Exception:
            self._pa.terminate()
            raise
        self._stream: Any = None
        # close() comes from another thread (Capture.stop, shutdown) while frames() is
        # blocked in a read; closing the stream or PortAudio under that read crashes the
        # process (SIGSEGV). The lock and _in_read hand the release to the reader.
        self._lock = threading.Lock()
        self._in_read = False
        self._closed = False
        log.info(
            "microphone %r (index %d) at %d Hz, %d channel(s)%s",
            self.device.name,
            self.device.index,
            self.rate,
            self.channels,
            "" if self.rate == SAMPLE_RATE else ", resampled to 16000 Hz",
        )

    def _supported(self, rate: int, channels: int) -> bool:
        import pyaudio

        try:
            return bool(
                self._pa.is_format_supported(
                    rate,
                    input_device=self.device.index,
                    input_channels=channels,
                    input_format=pyaudio.paInt16,
                )
            )
        except ValueError:
            return False

    def _pick_rate(self, asked: int | None) -> int:
        for rate in (asked, SAMPLE_RATE, self.device.default_rate, 48000, 44100):
            if rate and (self._supported(rate, 1) or self._supported(rate, self.device.channels)):
                return rate
        raise AudioError(
            f"input device {self.device.name!r} supports none of 16/44.1/48 kHz with 16-bit samples"
        )

    def frames(self, frame_ms: int = 30) -> Iterator[np.ndarray]:
        import pyaudio

        framer = Framer(frame_samples(frame_ms))
        resampler = StreamResampler(self.rate)
        blocker = self._blocker = DcBlocker()
        reported = False
        block = max(1, self.rate * frame_ms // 1000)
        with self._lock:
            if self._closed:
                return
            try:
                self._stream = self._pa.open(
                    format=pyaudio.paInt16,
                    channels=self.channels,
                    rate=self.rate,
                    input=True,
                    input_device_index=self.device.index,
                    frames_per_buffer=block,
                )
            except OSError as exc:
                raise AudioError(f"cannot open input device {self.device.name!r}: {exc}") from None
            stream = self._stream
        t0: float | None = None  # the clock starts at the first block (the first read is slow)
        blocks = 0
        while True:
            if self.realtime and t0 is not None:
                blocks += 1
                delay = t0 + blocks * block / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            with self._lock:
                if self._closed:
                    return
                self._in_read = True
            try:
                raw = stream.read(block, exception_on_overflow=False)
            except OSError as exc:
                if self._closed:
                    return
                raise AudioError(f"reading from {self.device.name!r} failed: {exc}") from None
            finally:
                with self._lock:
                    self._in_read = False
                    if self._closed:  # close() left the release to us
                        self._release()
            t0 = t0 if t0 is not None else time.monotonic()
            if not raw:
                return
            data = np.frombuffer(raw, dtype=np.int16)
            if self.channels > 1:
                data = data.reshape(-1, self.channels).mean(axis=1).astype(np.int16)
            if self.rate != SAMPLE_RATE:
                data = float_to_int16(resampler.process(int16_to_float(data)))
            out = blocker.process(data)
            if not reported and blocker.sound_samples >= DC_REPORT_S * SAMPLE_RATE:
                reported = True
                offset = blocker.mean_offset
                if self.dc_report is not None and offset is not None:
                    self.dc_report(offset)
            yield from framer.push(out)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if not self._in_read:
                self._release()

    def _release(self) -> None:
        """Close the stream and PortAudio; called with the lock held, never under a read."""
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.stop_stream()
                stream.close()
        if self._pa is not None:
            self._pa.terminate()
            self._pa = None
