"""WAV/FLAC files (any rate, any channel count) as an audio source, and whole-file reads."""

from __future__ import annotations

import logging
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from voxgate.audio.base import SAMPLE_RATE, AudioError, AudioIncomplete, AudioSource, frame_samples
from voxgate.audio.convert import DcBlocker, Framer, StreamResampler, float_to_int16, to_mono

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


def _open(path: Path) -> sf.SoundFile:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise AudioError(f"{path}: no such file") from None
    except OSError as exc:
        raise AudioError(f"{path}: cannot read ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioError(f"{path}: is a directory, not an audio file")
    if not stat.S_ISREG(st.st_mode):
        raise AudioError(f"{path}: not a regular file")
    if st.st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        # libsndfile reports an unreadable file as "System error": open it ourselves first.
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise AudioError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        f = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(f"{path}: not a readable WAV/FLAC file ({exc})") from None
    if not MIN_RATE <= f.samplerate <= MAX_RATE:
        f.close()
        raise AudioError(f"{path}: sample rate {f.samplerate} Hz; use {MIN_RATE}-{MAX_RATE} Hz")
    return f


# libsndfile's log of a WAV whose data chunk claims more bytes than the file holds.
_DATA_CLAIM = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# What a writer that cannot seek back (arecord, sox or ffmpeg into a pipe) leaves as the
# length: 0, or a value near 2**31 or 2**32 (tools differ in the exact one).
_STREAMED_MIN = 0x7FFF0000


# What to do with a file refused as incomplete (FileSource's `complete`).
AGAIN = "record or copy it again"


def _cut_short(path: Path, f: sf.SoundFile) -> str | None:
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
    while reading so that a long stream is never held in memory. complete=True: a file cut
    short or damaged part way is refused (AudioIncomplete) instead of read as far as it goes
    with a log line; for an enrollment take, where half a take must not make a voiceprint."""
    src = FileSource(path, complete=complete)
    frames: list[np.ndarray] = []
    n = 0
    limit = None if max_s is None else int(max_s * SAMPLE_RATE)
    try:
        for frame in src.frames(10):
            frames.append(frame)
            n += len(frame)
            if limit is not None and n > limit:
                raise AudioError(
                    f"{path}: longer than {max_s:g} s, the most a take or an attempt may be; "
                    "cut out the part with the speech"
                )
    finally:
        src.close()
    return np.concatenate(frames) if frames else np.zeros(0, dtype=np.int16)


class FileSource(AudioSource):
    """Stream a file in blocks, converted to 16 kHz mono int16 at the boundary. A file cut
    short or damaged part way is read as far as it goes, with a log line; complete=True
    raises AudioIncomplete instead (read_audio)."""

    def __init__(
        self, path: str | Path, realtime: bool = False, loop: bool = False, complete: bool = False
    ) -> None:
        self.path = Path(path)
        self.realtime = realtime
        self.loop = loop
        self.complete = complete
        info = _open(self.path)
        cut = _cut_short(self.path, info)
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
                raise AudioError(f"{self.path}: no audio samples in the file; cannot loop it")

    def _one_pass(self, framer: Framer) -> Iterator[np.ndarray]:
        f = _open(self.path)
        if f.samplerate != self.file_rate or f.channels != self.channels:
            # A looped file replaced between passes: resample at the new file's rate.
            log.info(
                "%s: now %d Hz, %d channel(s) (was %d Hz, %d)",
                self.path,
                f.samplerate,
                f.channels,
                self.file_rate,
                self.channels,
            )
            self.file_rate, self.channels = f.samplerate, f.channels
        resampler = StreamResampler(self.file_rate)
        # Per pass: each file is one recording with its own offset.
        blocker = self._blocker = DcBlocker()
        try:
            block = max(1, int(BLOCK_S * self.file_rate))
            bad, first_bad_s = 0, 0.0
            while True:
                try:
                    data = f.read(block, dtype="float32", always_2d=True)
                except (sf.LibsndfileError, RuntimeError) as exc:
                    # A truncated or damaged file (a cut FLAC): a stream keeps what was read
                    # and says what happened; a whole-file read that needs it all refuses it.
                    at_s = f.tell() / self.file_rate
                    if self.complete:
                        promised = f" of the {f.frames / self.file_rate:.1f} s its header promises"
                        # libsndfile's text reads "Error : flac decoder lost sync."
                        why = str(exc).removeprefix("Error : ").rstrip(".")
                        raise AudioIncomplete(
                            f"{self.path}: read error after {at_s:.1f} s"
                            f"{promised if f.frames > f.tell() else ''} ({why}): cut short or "
                            f"damaged (an interrupted copy or recording?); {AGAIN}"
                        ) from None
                    log.error("%s: read error after %.1f s: %s", self.path, at_s, exc)
                    break
                if not len(data):
                    break
                if not np.isfinite(data).all():
                    # A float file may hold NaN/Inf: NaN has no int16 value (the cast is
                    # undefined) and either one smears over the resampler's whole filter.
                    if not bad:
                        first_bad_s = (f.tell() - len(data)) / self.file_rate
                    bad += int(np.count_nonzero(~np.isfinite(data)))
                    data = np.nan_to_num(data, nan=0.0, posinf=1.0, neginf=-1.0)
                pcm = float_to_int16(resampler.process(to_mono(data)))
                yield from framer.push(blocker.process(pcm))
            if bad:
                log.warning(
                    "%s: %d NaN/Inf sample(s) from %.1f s on, read as silence/full scale",
                    self.path,
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
