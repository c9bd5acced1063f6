"""Drop non-speech from an utterance before it is embedded, in one go or streaming.

Pauses and leading/trailing room noise are not the speaker: embedding them pulls the mean
embedding towards the channel. Upstream Resemblyzer trims long silences over the whole
utterance after normalising its volume; a door attempt is embedded while the person speaks, so
this is a causal version with a short, bounded look-ahead:

1. 30 ms frames; each is raised to `level_dbfs` with the gain of the audio seen so far (never
   lowered) and classified by webrtcvad. The first `onset_s` of audio share the gain of that
   whole first stretch: a prefix of only leading silence would otherwise get a huge gain and
   its noise would be called speech.
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
        self._pending = np.zeros(0, np.int16)
        self._frames: list[np.ndarray] = []
        self._energy: list[float] = []  # running sum of squares (float scale) per frame end
        self._flags: list[bool] = []
        self._smooth: list[bool] = []
        self._decided = 0  # frames whose keep/drop is settled
        self.kept_frames = 0
        self._finished = False

    # The smoothed flag of frame k needs flags up to k + after; its kept/dropped state needs
    # smoothed flags up to k + pad.
    def _step(self, final: bool) -> np.ndarray:
        n_frames = len(self._frames)
        while len(self._flags) < n_frames:
            k = len(self._flags)
            j = max(k, self._onset - 1)
            if j >= n_frames:
                if not final:
                    break
                j = n_frames - 1
            gain = level_gain(self._energy[j], (j + 1) * self._n, self.spec.level_dbfs)
            frame = self._frames[k]
            if gain != 1.0:
                frame = np.clip(np.round(frame * gain), -32768, 32767).astype(np.int16)
            self._flags.append(self._vad.is_speech(frame.tobytes(), SAMPLE_RATE))
        w = self.spec.smooth_frames
        while len(self._smooth) < len(self._flags):
            k = len(self._smooth)
            if k + self._after >= len(self._flags) and not final:
                break
            votes = sum(self._flags[max(0, k - self._before) : k + self._after + 1])
            self._smooth.append(2 * votes > w)  # exact half is not a majority
        pad = self.spec.pad_frames
        out = []
        while self._decided < len(self._smooth):
            k = self._decided
            if k + pad >= len(self._smooth) and not final:
                break
            if any(self._smooth[max(0, k - pad) : k + pad + 1]):
                out.append(self._frames[k])
                self.kept_frames += 1
            self._frames[k] = _EMPTY  # decided: the samples are no longer needed here
            self._decided += 1
        return np.concatenate(out) if out else np.zeros(0, np.int16)

    def push(self, pcm: np.ndarray) -> np.ndarray:
        if self._finished:
            raise ValueError("push() after finish()")
        pcm = _as_int16(pcm)
        buf = np.concatenate([self._pending, pcm]) if self._pending.size else pcm
        usable = buf.size // self._n * self._n
        self._pending = buf[usable:].copy()
        if usable:
            frames = buf[:usable].reshape(-1, self._n).copy()
            f = frames.astype(np.float64) / INT16_SCALE
            # Sequential running sum, as frame-by-frame addition: chunking never changes it.
            start = self._energy[-1] if self._energy else 0.0
            ends = np.cumsum(np.concatenate([[start], np.sum(f * f, axis=1)]))[1:]
            self._frames.extend(frames)
            self._energy.extend(ends.tolist())
        return self._step(final=False)

    def finish(self) -> np.ndarray:
        if self._finished:
            raise ValueError("finish() called twice")
        self._finished = True
        return self._step(final=True)


_EMPTY = np.zeros(0, np.int16)


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
