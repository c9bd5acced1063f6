"""WAV/FLAC files (any rate, any channel count) as an audio source, and whole-file reads
(also from standard input or another pipe)."""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf

from voxgate.audio.base import SAMPLE_RATE, AudioError, AudioIncomplete, AudioSource, frame_samples
from voxgate.audio.convert import DcBlocker, Framer, StreamResampler, float_to_int16, to_mono
from voxgate.logs import WENT_ON

log = logging.getLogger(__name__)

BLOCK_S = 0.5  # read files in half-second blocks so an hour-long file costs no memory
# A take or an attempt is seconds long; a longer file is refused before it is all read (the
# embedder's working memory grows ~1 MB per second of audio: 10 minutes took 860 MB).
MAX_TAKE_S = 120.0
# Rates a microphone or recorder gives. A header may claim any rate up to 2**31-1 Hz; the
# resampler's filter and buffers grow with the rate (a 16 kB WAV claiming 2147483647 Hz
# asked for 8 GiB), so a file outside this range is refused before it is resampled.
MIN_RATE = 8000
MAX_RATE = 192000
# The conventional name for standard input: `arecord ... -t wav | voxgate verify alice -`.
STDIN = "-"
STDIN_NAME = "standard input"
# A pipe cannot be read twice or sought in, and libsndfile seeks: piped bytes are held in
# memory, so they are capped. 200 MB is more than MAX_TAKE_S of 192 kHz stereo float32
# (184 MB) takes; a larger cap would let `cat /dev/zero |` fill a small board's memory before
# the refusal (120 s of 192 kHz 8-channel float32 would be 737 MB).
MAX_PIPED_BYTES = 200_000_000
PIPE_CHUNK = 1 << 16


def piped_cap_text() -> str:
    """MAX_PIPED_BYTES as the refusal and `--help` say it ("200 MB"): one figure for both."""
    return f"{MAX_PIPED_BYTES / 1_000_000:g} MB"


def rates_text() -> str:
    """MIN_RATE-MAX_RATE as `--help` says it ("8-192 kHz")."""
    return f"{MIN_RATE / 1000:g}-{MAX_RATE / 1000:g} kHz"


def _open(path: Path) -> sf.SoundFile:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise AudioError(f"{path}: no such file") from None
    except OSError as exc:
        raise AudioError(f"{path}: cannot read ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioError(f"{path}: is a directory, not an audio file")
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        # Refused outright, not read up to a cap: /dev/zero or a disk is never a recording.
        raise AudioError(f"{path}: is a device, not an audio file; give a WAV or FLAC file")
    if not stat.S_ISREG(st.st_mode):
        raise AudioError(f"{path}: not a regular file")
    if st.st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        # libsndfile reports an unreadable file as "System error": open it ourselves first.
        with open(path, "rb") as fh:
            fill = _streamed_data_size(fh.read(_HEAD_BYTES), st.st_size)
    except OSError as exc:
        raise AudioError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        # A WAV saved from a pipe (`... | tee take.wav`) is read as the piped bytes are.
        f = sf.SoundFile(str(path)) if fill is None else _FilledSoundFile(path, *fill)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        why = exc if fill is None else _reason(exc)
        raise AudioError(f"{path}: not a readable WAV/FLAC file ({why})") from None
    return _check_rate(path, f)


def _reason(exc: Exception) -> str:
    """libsndfile's reason, without "Error opening <..._LengthFilled object at 0x...>"."""
    return str(getattr(exc, "error_string", exc))


class _FilledSoundFile(sf.SoundFile):
    """A SoundFile of a file whose WAV data length is filled in (_LengthFilled), which
    closes that file when it is closed itself."""

    def __init__(self, path: Path, at: int, size: int) -> None:
        self._fh = fh = open(path, "rb")  # noqa: SIM115 (closed with this SoundFile)
        try:
            super().__init__(_LengthFilled(fh, at, size))
        except BaseException:
            fh.close()
            raise

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._fh.close()


def _check_rate(name: str | Path, f: sf.SoundFile) -> sf.SoundFile:
    if not MIN_RATE <= f.samplerate <= MAX_RATE:
        f.close()
        raise AudioError(f"{name}: sample rate {f.samplerate} Hz; use {MIN_RATE}-{MAX_RATE} Hz")
    return f


def _open_bytes(name: str, data: bytes) -> sf.SoundFile:
    """Piped bytes, decoded as a file of them would be (the same libsndfile formats)."""
    if not data:
        raise AudioError(f"{name}: nothing was piped in (0 bytes); pipe a WAV or FLAC recording")
    raw: BinaryIO = io.BytesIO(data)  # shares `data`: no copy
    fill = _streamed_data_size(data[:_HEAD_BYTES], len(data))
    try:
        f = sf.SoundFile(_LengthFilled(raw, *fill) if fill else raw)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        # Raw PCM (arecord without -t wav) has no header to say its rate or layout.
        raise AudioError(
            f"{name}: not a readable WAV/FLAC recording ({_reason(exc)}); pipe a WAV or FLAC file "
            "(with arecord: add -t wav)"
        ) from None
    return _check_rate(name, f)


# How far into a WAV its data chunk is looked for (past fmt, LIST, fact and the like).
_HEAD_BYTES = 1 << 16


def _streamed_data_size(head: bytes, total: int) -> tuple[int, int] | None:
    """(offset of the size field, size the bytes after it hold) for a RIFF WAVE whose data
    chunk says 0 bytes but has audio after it: a writer that cannot seek back (into a pipe)
    may leave 0 there, and libsndfile then reads no samples at all. None for anything else
    (the other placeholders, near 2**31 or 2**32, libsndfile reads up to the end itself)."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(head):
        size = int.from_bytes(head[pos + 4 : pos + 8], "little")
        if head[pos : pos + 4] != b"data":
            pos += 8 + size + (size & 1)  # chunks are padded to an even length
            continue
        start = pos + 8
        if size or total <= start or _is_chunk(head[start : start + 8], total - start):
            return None  # a true length, or an empty data chunk with metadata after it
        return pos + 4, min(total - start, 0xFFFFFFFF)
    return None


def _is_chunk(header: bytes, left: int) -> bool:
    cid = header[:4]
    return (
        len(header) == 8
        and all(48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or c == 32 for c in cid)
        and int.from_bytes(header[4:], "little") + 8 <= left
    )


class _LengthFilled(io.RawIOBase):
    """A seekable binary file read with the 4-byte little-endian field at `at` replaced by
    `size` (the header in memory or on disk stays as it was)."""

    def __init__(self, raw: BinaryIO, at: int, size: int) -> None:
        super().__init__()
        self.raw, self.at, self.value = raw, at, size.to_bytes(4, "little")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        pos = self.raw.tell()
        data = self.raw.read(len(view))
        n = len(data)
        view[:n] = data
        lo, hi = max(pos, self.at), min(pos + n, self.at + 4)
        if lo < hi:
            view[lo - pos : hi - pos] = self.value[lo - self.at : hi - self.at]
        return n


# libsndfile's log of a WAV whose data chunk claims more bytes than the file holds.
_DATA_CLAIM = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# What a writer that cannot seek back (arecord, sox or ffmpeg into a pipe) leaves as the
# length: 0, or a value near 2**31 or 2**32 (tools differ in the exact one).
_STREAMED_MIN = 0x7FFF0000


# What to do with a file refused as incomplete (FileSource's `complete`).
AGAIN = "record or copy it again"
# libsndfile's frame count (SF_COUNT_MAX) for a file that does not state its length: a FLAC
# written into a pipe (`sox -d -t flac - |`) has 0 samples in its STREAMINFO.
_LENGTH_UNKNOWN = 0x7FFFFFFFFFFFFFFF


def _cut_short(path: str, f: sf.SoundFile) -> str | None:
    """A WAV cut short (an interrupted copy, a recorder that lost power) reads without an
    error, as far as it goes: what it lacks, or None. Unsaid, a verdict on half a sentence
    came without a word about the file (a cut FLAC does raise: see _one_pass)."""
    m = _DATA_CLAIM.search(f.extra_info)
    if m is None:
        return None
    claimed, present = int(m.group(1)), int(m.group(2))
    if not claimed or claimed >= _STREAMED_MIN or not present or claimed <= present:
        return None
    held_s = f.frames / f.samplerate
    return (
        f"{path}: cut short: its header promises {held_s * claimed / present:.1f} s of audio, "
        f"the file holds {held_s:.1f} s (an interrupted copy or recording?)"
    )


def read_audio(
    path: str | Path, max_s: float | None = None, *, complete: bool = False
) -> np.ndarray:
    """The whole file as 16 kHz mono int16. With max_s, AudioError for a longer file, found
    while reading so that a long stream is never held in memory. `-` reads standard input,
    and a pipe (a FIFO, bash's `<(...)`, /dev/stdin on a pipe) is read too: into memory, at
    most MAX_PIPED_BYTES, then decoded on the same path as a file of those bytes.
    complete=True: a file cut short or damaged part way, or a float file holding NaN or
    infinite samples, is refused (AudioIncomplete) instead of read as far as it goes (NaN/Inf
    as silence/full scale) with a log line; for an enrollment take, where half a take must
    not make a voiceprint."""
    src = _recording(path, complete)
    name = src.name
    frames: list[np.ndarray] = []
    n = 0
    limit = None if max_s is None else int(max_s * SAMPLE_RATE)
    try:
        for frame in src.frames(10):
            frames.append(frame)
            n += len(frame)
            if limit is not None and n > limit:
                raise AudioError(
                    f"{name}: longer than {max_s:g} s, the most a take or an attempt may be; "
                    "cut out the part with the speech"
                )
    finally:
        src.close()
    return np.concatenate(frames) if frames else np.zeros(0, dtype=np.int16)


def _recording(path: str | Path, complete: bool) -> FileSource:
    if str(path) == STDIN:
        return FileSource(STDIN_NAME, data=_read_stdin(), complete=complete)
    try:
        piped = stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        piped = False  # FileSource says what is wrong with it
    if not piped:
        return FileSource(path, complete=complete)
    try:
        with open(path, "rb") as fh:
            data = _read_pipe(str(path), fh)
    except OSError as exc:
        raise AudioError(f"{path}: cannot read ({exc.strerror})") from None
    return FileSource(path, data=data, complete=complete)


def _read_stdin() -> bytes:
    if sys.stdin is None:  # started with fd 0 closed (`<&-`, some supervisors)
        raise AudioError(f"{STDIN_NAME} is closed: pipe a WAV or FLAC recording into it")
    stream = sys.stdin.buffer
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (OSError, ValueError, io.UnsupportedOperation):
        mode = 0  # not a real descriptor (a test's stand-in): read it as a pipe
    if mode and stream.isatty():
        # Nothing was piped: waiting for a recording to be typed would look like a hang.
        raise AudioError(
            f"{STDIN_NAME} is a terminal: pipe a recording into it, e.g. "
            "arecord -f S16_LE -r 16000 -d 4 -t wav | voxgate verify NAME -"
        )
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):  # `< /dev/zero`, `< /dev/null`
        raise AudioError(f"{STDIN_NAME} is a device, not a recording: pipe a WAV or FLAC into it")
    try:
        return _read_pipe(STDIN_NAME, stream)
    except OSError as exc:  # EIO from a hung-up terminal, a stand-in that refuses reads
        raise AudioError(f"{STDIN_NAME}: cannot read ({exc.strerror or exc})") from None


def _read_pipe(name: str, stream: BinaryIO) -> bytes:
    """All of `stream`, refused past MAX_PIPED_BYTES (an endless writer stops there)."""
    buf = io.BytesIO()
    while True:
        chunk = stream.read(min(PIPE_CHUNK, MAX_PIPED_BYTES + 1 - buf.tell()))
        if not chunk:
            break
        buf.write(chunk)
        if buf.tell() > MAX_PIPED_BYTES:
            raise AudioError(
                f"{name}: more than {piped_cap_text()} piped in, more than a "
                f"take or an attempt of at most {MAX_TAKE_S:g} s needs; cut out the part with "
                "the speech"
            )
    return buf.getvalue()


def _decoded(f: sf.SoundFile, read: int) -> int:
    """How far libsndfile got in `f` (past the `read` frames handed out when a block failed
    part way); `read` where it cannot say (-1, or an error, after a failed read)."""
    try:
        at = f.tell()
    except (sf.LibsndfileError, RuntimeError):
        return read
    return at if at >= read else read


class FileSource(AudioSource):
    """Stream a file in blocks, converted to 16 kHz mono int16 at the boundary. A file cut
    short or damaged part way is read as far as it goes, and NaN/Inf samples as silence/full
    scale, with a log line; complete=True raises AudioIncomplete instead (read_audio)."""

    def __init__(
        self,
        path: str | Path,
        realtime: bool = False,
        loop: bool = False,
        *,
        data: bytes | None = None,
        complete: bool = False,
    ) -> None:
        """data: the file's bytes, already read from a pipe named `path` (read_audio)."""
        self.path = Path(path)
        self.name = str(self.path)  # "standard input" for piped bytes from it
        self.realtime = realtime
        self.loop = loop
        self._data = data
        self.complete = complete
        info = self._open()
        cut = _cut_short(self.name, info)
        if cut is not None and complete:
            info.close()
            raise AudioIncomplete(f"{cut}; {AGAIN}")
        if cut is not None:
            log.warning("%s; reading what is there", cut)
        self.file_rate = info.samplerate
        self.channels = info.channels
        info.close()
        self._closed = False

    def frames(self, frame_ms: int = 30) -> Iterator[np.ndarray]:
        framer = Framer(frame_samples(frame_ms))
        t0 = time.monotonic()
        emitted = 0
        while not self._closed:
            passed = emitted
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
            if emitted == passed:
                # Looping a file without samples (a header-only WAV) would reopen it
                # forever, one CPU busy and no frame ever given.
                raise AudioError(f"{self.name}: no audio samples in the file; cannot loop it")

    def _open(self) -> sf.SoundFile:
        return _open(self.path) if self._data is None else _open_bytes(self.name, self._data)

    def _one_pass(self, framer: Framer) -> Iterator[np.ndarray]:
        f = self._open()
        if f.samplerate != self.file_rate or f.channels != self.channels:
            # A looped file replaced between passes: resample at the new file's rate.
            log.info(
                "%s: now %d Hz, %d channel(s) (was %d Hz, %d)",
                self.name,
                f.samplerate,
                f.channels,
                self.file_rate,
                self.channels,
            )
            self.file_rate, self.channels = f.samplerate, f.channels
        resampler = StreamResampler(self.file_rate)
        # Per pass: each file is one recording with its own offset.
        blocker = self._blocker = DcBlocker()
        known = f.frames != _LENGTH_UNKNOWN
        if not known:
            # soundfile seeks to where each read ended, and libsndfile cannot seek to the end
            # of such a file: its last block was lost to "Internal psf_fseek() failed", and a
            # whole one refused as damaged. Read as the stream it is, nothing is sought.
            f.seekable = lambda: False  # type: ignore[method-assign]
        try:
            block = max(1, int(BLOCK_S * self.file_rate))
            bad, first_bad_s, done = 0, 0.0, 0  # done: frames read so far
            while True:
                try:
                    data = f.read(block, dtype="float32", always_2d=True)
                except (sf.LibsndfileError, RuntimeError) as exc:
                    # A truncated or damaged file (a cut FLAC): a stream keeps what was read
                    # and says what happened; a whole-file read that needs it all refuses it.
                    at = _decoded(f, done)
                    at_s = at / self.file_rate
                    # libsndfile's text reads "Error : flac decoder lost sync."
                    why = str(exc).removeprefix("Error : ").rstrip(".")
                    if self.complete:
                        promised = f" of the {f.frames / self.file_rate:.1f} s its header promises"
                        raise AudioIncomplete(
                            f"{self.name}: read error after {at_s:.1f} s"
                            f"{promised if known and f.frames > at else ''} ({why}): cut short "
                            f"or damaged (an interrupted copy or recording?); {AGAIN}"
                        ) from None
                    # An error in the log; a warning on a command's line (logs.WENT_ON):
                    # `voxgate eval` goes on with the rest of its set and succeeds.
                    log.error(
                        "%s: read error after %.1f s (%s); using what was read before it",
                        self.name,
                        at_s,
                        why,
                        extra={WENT_ON: True},
                    )
                    break
                if not len(data):
                    break
                done += len(data)
                if not np.isfinite(data).all():
                    # A float file may hold NaN/Inf: NaN has no int16 value (the cast is
                    # undefined) and either one smears over the resampler's whole filter.
                    if not bad:
                        first_bad_s = (done - len(data)) / self.file_rate
                    bad += int(np.count_nonzero(~np.isfinite(data)))
                    data = np.nan_to_num(data, nan=0.0, posinf=1.0, neginf=-1.0)
                pcm = float_to_int16(resampler.process(to_mono(data)))
                yield from framer.push(blocker.process(pcm))
            if bad and self.complete:
                # A take or an attempt: silence or full scale in place of what was recorded
                # is a damaged recording, refused as one cut short is (a verdict or a
                # voiceprint on altered audio came with one warning).
                raise AudioIncomplete(
                    f"{self.name}: {bad} sample(s) are not finite numbers (NaN or infinite) from "
                    f"{first_bad_s:.1f} s on: a damaged recording; {AGAIN}"
                )
            if bad:
                log.warning(
                    "%s: %d NaN/Inf sample(s) from %.1f s on, read as silence/full scale",
                    self.name,
                    bad,
                    first_bad_s,
                )
            yield from framer.push(blocker.process(float_to_int16(resampler.flush())))
            yield from framer.push(blocker.flush())
            yield from framer.flush()
        finally:
            f.close()

    def close(self) -> None:
        self._closed = True
