"""Drop non-speech from an utterance before it is embedded, in one go or streaming.

Pauses and leading/trailing room noise are not the speaker: embedding them pulls the mean
embedding towards the channel. Upstream Resemblyzer trims long silences over the whole
utterance after normalising its volume; a door attempt is embedded while the person speaks, so
this is a causal version with a short, bounded look-ahead:

1. 30 ms frames; each is raised to `level_dbfs` with the gain of the audio seen so far (never
   lowered) and classified by webrtcvad. The first `onset_s` of audio share the gain of that
   whole first stretch: a prefix of only leading silence would otherwise get a huge gain and
   its noise would be called speech. The stretch goes on past `onset_s` while it is still
   QUIET_DB below `level_dbfs` (a file that starts with seconds of room noise: raised 30 dB,
   -60 dBFS of it read as speech), up to the whole utterance, whose gain is then upstream's.
2. The speech flags are smoothed (majority over `smooth_frames`) and every kept frame keeps
   `pad_frames` of context on each side, so word edges and short gaps inside words stay.

A frame is decided `pad_frames + smooth_frames // 2` frames (210 ms) after it arrives, or at
finish(). That is less than the VAD hangover that ends an utterance (500 ms), so when the
daemon calls finish() every speech frame is already decided. A trailing part frame is dropped.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from voxgate.features import INT16_SCALE, level_gain, to_float

SAMPLE_RATE = 16000
# A first stretch this far below level_dbfs (-50 dBFS) is room noise, not speech (the sets'
# trimmed speech has a median level of -21 to -26 dBFS): it waits for louder audio.
QUIET_DB = 20.0


class TrimSpec(BaseModel):
    """Card block `trim:` (optional; absent = embed the audio as given)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    vad_mode: int = Field(3, ge=0, le=3, description="webrtcvad mode (3 keeps least as speech).")
    frame_ms: int = Field(30, description="VAD frame length.")
    level_dbfs: float = Field(-30.0, ge=-80, le=0, description="Level the VAD hears (raise only).")
    onset_s: float = Field(1.0, ge=0, le=5, description="First stretch sharing one VAD gain.")
    smooth_frames: int = Field(8, ge=1, le=100, description="Majority filter over the flags.")
    pad_frames: int = Field(3, ge=0, le=100, description="Context kept on each side of speech.")

    def model_post_init(self, _context: object) -> None:
        if self.frame_ms not in (10, 20, 30):
            raise ValueError("frame_ms must be 10, 20 or 30 (webrtcvad)")


class SpeechTrim:
    """push(int16 audio) -> the speech samples decided so far; finish() -> the rest."""

    def __init__(self, spec: TrimSpec) -> None:
        import webrtcvad

        self.spec = spec
        self._vad = webrtcvad.Vad(spec.vad_mode)
        self._n = SAMPLE_RATE * spec.frame_ms // 1000
        self._onset = max(1, round(spec.onset_s * 1000 / spec.frame_ms))
        self._before = (spec.smooth_frames - 1) // 2  # majority window: frames before and after
        self._after = spec.smooth_frames // 2
        # level_gain() changes nothing at or above this mean square: frames that loud skip it.
        self._loud = 10.0 ** (spec.level_dbfs / 10.0) * (1.0 + 1e-6)
        self._quiet = 10.0 ** ((spec.level_dbfs - QUIET_DB) / 10.0)
        self._onset_end: int | None = None  # last frame of the first stretch, once known
        self._scan = self._onset - 1  # the next frame that could end it
        self._pending = np.zeros(0, np.int16)
        self._held = np.zeros((0, self._n), np.int16)  # frames _decided, _decided + 1, ...
        self._energy: list[float] = []  # running sum of squares (float scale) per frame end
        self._flags: list[bool] = []
        self._smooth: list[bool] = []
        self._decided = 0  # frames whose keep/drop is settled (and no longer held)
        self.kept_frames = 0
        self._finished = False

    # The smoothed flag of frame k needs flags up to k + after; its kept/dropped state needs
    # smoothed flags up to k + pad. Many frames at once (a whole utterance) go through array
    # operations, except the VAD (it keeps state between frames); the frame or two of a
    # stream's push go through plain Python, where numpy's per-call cost would dominate.
    def _step(self, final: bool) -> np.ndarray:
        n_frames = self._decided + len(self._held)
        k0 = len(self._flags)
        if k0 < n_frames and self._stretch_end(n_frames, final) is not None:
            self._flag(k0, n_frames)
        s0 = len(self._smooth)
        s1 = len(self._flags) if final else max(s0, len(self._flags) - self._after)
        if s1 > s0:
            votes = _window_sums(self._flags, s0, s1, self._before, self._after)
            self._smooth.extend(2 * v > self.spec.smooth_frames for v in votes)  # half: no
        pad = self.spec.pad_frames
        d0 = self._decided
        d1 = len(self._smooth) if final else max(d0, len(self._smooth) - pad)
        if d1 == d0:
            return np.zeros(0, np.int16)
        keep = [v > 0 for v in _window_sums(self._smooth, d0, d1, pad, pad)]
        out = self._held[: d1 - d0][np.array(keep)].reshape(-1)
        self.kept_frames += sum(keep)
        self._held = self._held[d1 - d0 :]  # decided: the samples are no longer needed here
        self._decided = d1
        return out

    def _stretch_end(self, n_frames: int, final: bool) -> int | None:
        """The last frame of the first stretch (module doc, 1.), or None while it is not
        known yet: the first frame from onset - 1 on whose running level is no longer
        QUIET_DB below level_dbfs; at finish() at the latest, the last frame."""
        while self._onset_end is None and self._scan < n_frames:
            if self._energy[self._scan] >= (self._scan + 1) * self._n * self._quiet:
                self._onset_end = self._scan
            self._scan += 1
        if self._onset_end is None and final:
            self._onset_end = n_frames - 1
        return self._onset_end

    def _flag(self, k0: int, n_frames: int) -> None:
        """VAD flags of frames k0..n_frames-1, each heard with the gain of the audio up to
        frame j = max(k, end of the first stretch) (the last frame, when there are fewer)."""
        assert self._onset_end is not None
        gains = []
        for k in range(k0, n_frames):
            j = min(max(k, self._onset_end), n_frames - 1)
            loud = self._energy[j] >= (j + 1) * self._n * self._loud
            gains.append(
                1.0
                if loud
                else level_gain(self._energy[j], (j + 1) * self._n, self.spec.level_dbfs)
            )
        frames = self._held[k0 - self._decided :]
        if any(g != 1.0 for g in gains):
            scaled = np.round(frames * np.array(gains)[:, None])
            frames = np.clip(scaled, -32768, 32767).astype(np.int16)
        data = np.ascontiguousarray(frames).tobytes()
        size = 2 * self._n
        for i in range(len(gains)):
            self._flags.append(self._vad.is_speech(data[i * size : (i + 1) * size], SAMPLE_RATE))

    def push(self, pcm: np.ndarray) -> np.ndarray:
        if self._finished:
            raise ValueError("push() after finish()")
        pcm = _as_int16(pcm)
        buf = np.concatenate([self._pending, pcm]) if self._pending.size else pcm
        usable = buf.size // self._n * self._n
        self._pending = buf[usable:].copy()
        if usable:
            frames = buf[:usable].reshape(-1, self._n)
            # Each frame's sum of squares in integers (exact: below 2**53), then to float
            # scale: the same number a float sum of (x / 32768) ** 2 gives, in less time.
            wide = frames.astype(np.int32)
            energy = (wide * wide).sum(axis=1, dtype=np.int64) / (INT16_SCALE * INT16_SCALE)
            # Sequential running sum, as frame-by-frame addition: chunking never changes it.
            start = self._energy[-1] if self._energy else 0.0
            ends = np.cumsum(np.concatenate([[start], energy]))[1:]
            self._held = np.concatenate([self._held, frames])
            self._energy.extend(ends.tolist())
        return self._step(final=False)

    def finish(self) -> np.ndarray:
        if self._finished:
            raise ValueError("finish() called twice")
        self._finished = True
        return self._step(final=True)


def _window_sums(flags: list[bool], first: int, stop: int, before: int, after: int) -> list[int]:
    """For k in first..stop-1: how many of flags[k - before .. k + after] are set (the
    window cut at both ends of the list)."""
    if stop - first <= 4:  # a stream's push: plain sums cost less than numpy calls
        return [sum(flags[max(0, k - before) : k + after + 1]) for k in range(first, stop)]
    lo = max(0, first - before)
    counts = np.concatenate([[0], np.cumsum(np.asarray(flags[lo:], dtype=np.int64))])
    ks = np.arange(first, stop)
    hi = np.minimum(ks + after + 1, len(flags)) - lo
    return (counts[hi] - counts[np.maximum(ks - before, 0) - lo]).tolist()


def _as_int16(pcm: np.ndarray) -> np.ndarray:
    pcm = np.asarray(pcm)
    if pcm.dtype == np.int16:
        return pcm
    return np.clip(np.round(to_float(pcm) * INT16_SCALE), -32768, 32767).astype(np.int16)


def trim_speech(pcm: np.ndarray, spec: TrimSpec) -> np.ndarray:
    """The whole utterance at once; identical to pushing it in any chunks and finishing."""
    t = SpeechTrim(spec)
    head = t.push(pcm)
    return np.concatenate([head, t.finish()])
