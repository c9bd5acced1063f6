"""Voice-activity detection and endpointing: frames in, utterances (with timestamps) out.

The endpointer is a small state machine over webrtcvad's per-frame decisions. It reports
events as they happen so later stages can work while the person is still speaking:
SpeechStarted (with the pre-roll), SpeechAudio for each frame inside speech, and
SpeechEnded with the whole utterance. Memory is bounded by max_utterance_ms: longer speech
is split into several utterances, each flagged `split`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import webrtcvad

from voxgate.audio.base import SAMPLE_RATE, frame_samples
from voxgate.config.audio import VadConfig


@dataclass(frozen=True)
class Utterance:
    pcm: np.ndarray  # int16, 16 kHz mono, pre-roll included
    start_s: float  # stream time of the first sample in pcm
    end_s: float  # stream time just after the last sample
    speech_s: float  # frames the VAD called speech (net speech)
    split: bool = False  # cut at max_utterance_ms; more of the same speech follows

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / SAMPLE_RATE


@dataclass(frozen=True)
class SpeechStarted:
    start_s: float
    pre_roll: np.ndarray  # the int16 audio kept from before the onset


@dataclass(frozen=True)
class SpeechAudio:
    pcm: np.ndarray  # one frame inside speech


@dataclass(frozen=True)
class SpeechEnded:
    utterance: Utterance | None  # None when it was shorter than min_utterance_ms


Event = SpeechStarted | SpeechAudio | SpeechEnded


class Endpointer:
    """Feed 10/20/30 ms int16 frames; get endpointing events back."""

    def __init__(self, cfg: VadConfig | None = None, frame_ms: int = 30) -> None:
        self.cfg = cfg or VadConfig()
        self.frame_ms = frame_ms
        self.frame_len = frame_samples(frame_ms)
        self._vad = webrtcvad.Vad(self.cfg.aggressiveness)
        ms = self.frame_ms
        self._pre_roll: deque[np.ndarray] = deque(maxlen=max(1, self.cfg.pre_roll_ms // ms))
        # Onset: start_ms worth of speech frames within a window twice that long.
        self._onset_need = max(1, self.cfg.start_ms // ms)
        self._onset: deque[bool] = deque(maxlen=2 * self._onset_need)
        self._hang_frames = max(1, self.cfg.hangover_ms // ms)
        self._max_frames = self.cfg.max_utterance_ms // ms
        self._min_speech_frames = self.cfg.min_utterance_ms // ms
        self._frames_seen = 0
        self._in_speech = False
        self._chunks: list[np.ndarray] = []
        self._start_frame = 0
        self._speech_frames = 0
        self._silence_run = 0

    def restart(self, cfg: VadConfig | None = None) -> Endpointer:
        """A fresh endpointer (no utterance in progress, `cfg` or these settings) that keeps
        this one's webrtcvad, which has adapted to the room: a new webrtcvad calls its first
        ~0.5 s of room noise speech at any level from -58 dBFS up (mode 2;
        benchmarks/vad_room_noise.py), so after the door's spoken prompt the room's noise
        became an answer nobody gave."""
        new = Endpointer(cfg or self.cfg, self.frame_ms)
        new._vad = self._vad
        new._vad.set_mode(new.cfg.aggressiveness)
        return new

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    @property
    def hangover_ms(self) -> int:
        return self._hang_frames * self.frame_ms

    def set_hangover_ms(self, ms: int) -> None:
        """The silence that ends an utterance, from the next frame on (an utterance in
        progress included): a spoken answer may pause longer than a wake phrase."""
        self._hang_frames = max(1, ms // self.frame_ms)

    @property
    def time_s(self) -> float:
        return self._frames_seen * self.frame_ms / 1000

    def is_speech(self, frame: np.ndarray) -> bool:
        return self._vad.is_speech(frame.tobytes(), SAMPLE_RATE)

    def feed(self, frame: np.ndarray) -> list[Event]:
        if frame.dtype != np.int16 or len(frame) != self.frame_len:
            raise ValueError(
                f"expected {self.frame_len} int16 samples ({self.frame_ms} ms), "
                f"got {len(frame)} {frame.dtype}"
            )
        speech = self.is_speech(frame)
        self._frames_seen += 1
        if not self._in_speech:
            return self._idle(frame, speech)
        return self._speaking(frame, speech)

    def flush(self) -> list[Event]:
        """End of stream: close an open utterance."""
        if not self._in_speech:
            return []
        if not self._chunks:  # the stream ended right after a split: nothing is open
            self._in_speech = False
            return []
        return [self._finish(split=False)]

    def _idle(self, frame: np.ndarray, speech: bool) -> list[Event]:
        self._pre_roll.append(frame)
        self._onset.append(speech)
        if sum(self._onset) < self._onset_need:
            return []
        pre = list(self._pre_roll)
        self._pre_roll.clear()
        self._onset.clear()
        self._in_speech = True
        self._chunks = pre
        self._start_frame = self._frames_seen - len(pre)
        self._speech_frames = self._onset_need
        self._silence_run = 0
        start = SpeechStarted(self._start_frame * self.frame_ms / 1000, np.concatenate(pre))
        return [start]

    def _speaking(self, frame: np.ndarray, speech: bool) -> list[Event]:
        self._chunks.append(frame)
        events: list[Event] = [SpeechAudio(frame)]
        if speech:
            self._speech_frames += 1
            self._silence_run = 0
        else:
            self._silence_run += 1
        if self._silence_run >= self._hang_frames:
            events.append(self._finish(split=False))
        elif len(self._chunks) - self._silence_run >= self._max_frames:
            # The pause that may end the utterance does not count: an answer's endpoint
            # (challenge.answer_pause_ms) is longer than the wake's, and with it counted a
            # 3 s answer hit a 4 s limit. Memory stays bounded (limit + hangover).
            events.append(self._finish(split=True))
            # Speech goes on: the next frame starts a new utterance right away.
            self._in_speech = True
            self._start_frame = self._frames_seen
        return events

    def _finish(self, split: bool) -> SpeechEnded:
        pcm = np.concatenate(self._chunks)
        start_s = self._start_frame * self.frame_ms / 1000
        speech_s = self._speech_frames * self.frame_ms / 1000
        keep = self._speech_frames >= self._min_speech_frames
        self._chunks = []
        self._speech_frames = 0
        self._silence_run = 0
        self._in_speech = False
        if not keep:
            return SpeechEnded(None)
        end_s = start_s + len(pcm) / SAMPLE_RATE
        return SpeechEnded(Utterance(pcm, start_s, end_s, speech_s, split))


def segment(
    frames: list[np.ndarray] | np.ndarray, cfg: VadConfig | None = None, frame_ms: int = 30
) -> list[Utterance]:
    """Endpoint a whole recording (int16 16 kHz array or list of frames): its utterances."""
    ep = Endpointer(cfg, frame_ms)
    if isinstance(frames, np.ndarray):
        n = ep.frame_len
        padded = np.zeros(-(-len(frames) // n) * n, dtype=np.int16)
        padded[: len(frames)] = frames
        frames = list(padded.reshape(-1, n))
    out: list[Utterance] = []
    for f in frames:
        for ev in ep.feed(f):
            if isinstance(ev, SpeechEnded) and ev.utterance is not None:
                out.append(ev.utterance)
    for ev in ep.flush():
        if isinstance(ev, SpeechEnded) and ev.utterance is not None:
            out.append(ev.utterance)
    return out
