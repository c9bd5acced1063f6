"""Simple, real stand-ins for the stages the service loop drives, for loop tests and benchmarks.

They follow the CONTRACTS.md shapes so the loop can be exercised before (and independently
of) the real embedding, STT, scoring and MQTT stages. They compute real things (a log-mel
spectrum vector, cosine scores, fingerprints of audio) but are NOT voice biometrics and are
never used by `voxgate run`: the daemon only uses service.stages.build_stages.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from voxgate.config.stt import ChallengeConfig
from voxgate.service.stages import AttemptResult, Stages

SR = 16000
WINDOW = 16000  # 1 s embedding windows, computed as they fill


class TooShort(Exception):
    pass


def _logmel(pcm: np.ndarray) -> np.ndarray:
    x = pcm.astype(np.float32) / 32768.0
    n = 512
    frames = np.lib.stride_tricks.sliding_window_view(x, n)[::160] if len(x) >= n else x[None, :n]
    spec = np.abs(np.fft.rfft(frames * np.hanning(frames.shape[-1]), n=n)) ** 2
    bands = np.array_split(spec, 40, axis=-1)
    return np.log(np.stack([b.sum(-1) for b in bands], -1) + 1e-8).mean(0)


class MelStream:
    def __init__(self, owner: MelEmbedder) -> None:
        self.owner = owner
        self.buf = np.zeros(0, dtype=np.int16)
        self.windows: list[np.ndarray] = []
        self.pushed_samples = 0

    def push(self, pcm: np.ndarray) -> None:
        self.owner.pushes += 1
        if self.owner.stall is not None:
            self.owner.stall.wait()
        self.pushed_samples += len(pcm)
        self.buf = np.concatenate([self.buf, pcm])
        while len(self.buf) >= WINDOW:  # full windows now, while the person speaks
            self.windows.append(_logmel(self.buf[:WINDOW]))
            self.buf = self.buf[WINDOW:]

    def finish(self) -> np.ndarray:
        self.owner.finishes.append((len(self.windows), len(self.buf)))
        if len(self.buf) >= 4800:
            self.windows.append(_logmel(self.buf))
        if not self.windows:
            raise TooShort("less than 0.3 s of audio")
        v = np.mean(self.windows, axis=0)
        v = v - v.mean()
        return (v / (np.linalg.norm(v) + 1e-9)).astype(np.float32)


class MelEmbedder:
    model_id = "standin-logmel40"
    dim = 40

    def __init__(self) -> None:
        self.pushes = 0
        # (windows done before finish, samples left), for the last 100 attempts
        self.finishes: deque[tuple[int, int]] = deque(maxlen=100)
        self.stall: threading.Event | None = None  # set to a cleared Event to block push()

    def stream(self) -> MelStream:
        return MelStream(self)

    def embed(self, pcm: np.ndarray) -> np.ndarray:
        s = self.stream()
        s.push(pcm)
        return s.finish()


@dataclass(frozen=True)
class SpeakerResult:
    user: str | None
    score: float
    raw_cosine: float
    threshold: float
    accepted: bool
    quality_ok: bool
    reasons: tuple[str, ...]


class CosineScorer:
    def __init__(self, voiceprints: dict[str, np.ndarray], threshold: float = 0.9) -> None:
        self.voiceprints = voiceprints
        self.threshold = threshold

    # quality is accepted as the loop passes it, and not gated on: these loop tests are about
    # the loop, and their synthetic answers are often shorter than the real gate allows.
    def verify(
        self, emb: np.ndarray, claimed_user: str, quality: Any = None, min_speech_s: Any = None
    ) -> SpeakerResult:
        ref = self.voiceprints.get(claimed_user)
        score = float(emb @ ref) if ref is not None else -1.0
        ok = score >= self.threshold
        return SpeakerResult(claimed_user, score, score, self.threshold, ok, True, ())

    def identify(
        self, emb: np.ndarray, quality: Any = None, min_speech_s: Any = None
    ) -> SpeakerResult:
        if not self.voiceprints:
            return SpeakerResult(None, -1.0, -1.0, self.threshold, False, True, ("no users",))
        user, ref = max(self.voiceprints.items(), key=lambda kv: float(emb @ kv[1]))
        score = float(emb @ ref)
        ok = score >= self.threshold
        return SpeakerResult(user if ok else None, score, score, self.threshold, ok, True, ())


@dataclass(frozen=True)
class LivenessResult:
    ok: bool
    score: float
    threshold: float
    transcript: str | None
    reason: str | None

    @property
    def retry(self) -> bool:  # as stt.LivenessResult: policy reads it
        return self.reason in ("no_speech", "too_short", "too_long")


class PromptStream:
    def __init__(self, owner: SpeechLengthRecognizer) -> None:
        self.owner = owner
        self.samples = 0

    def push(self, pcm: np.ndarray) -> None:
        self.samples += len(pcm)

    def finish(self) -> LivenessResult:
        secs = self.samples / SR
        ok = secs >= self.owner.min_s
        return LivenessResult(ok, secs, self.owner.min_s, None, None if ok else "too_short")


class SpeechLengthRecognizer:
    """Accepts any answer at least min_s long (no speech recognition: loop tests only)."""

    def __init__(self, min_s: float = 0.8) -> None:
        self.min_s = min_s
        self.started: list[tuple[str, ...]] = []

    def start(self, words: Sequence[str]) -> PromptStream:
        self.started.append(tuple(words))
        return PromptStream(self)


@dataclass(frozen=True)
class Challenge:
    digits: str
    words: tuple[str, ...]
    nonce: str
    issued_at: float
    expires_at: float


def new_challenge(cfg: ChallengeConfig, now: float) -> Challenge:
    digits = "".join(secrets.choice("0123456789") for _ in range(cfg.length))
    return Challenge(digits, tuple(digits), secrets.token_hex(8), now, now + cfg.timeout_s)


@dataclass(frozen=True)
class ReplayResult:
    is_replay: bool
    similarity: float
    matched_at: float | None


class HashReplay:
    def __init__(self, keep: int = 10000) -> None:
        self.seen: dict[str, float] = {}
        self.users: dict[str, str | None] = {}  # whose matched voice each kept answer had
        self.keep = keep

    def check_and_add(
        self, pcm: np.ndarray, now: float, keep: bool = True, user: str | None = None
    ) -> ReplayResult:
        h = hashlib.sha256(pcm.tobytes()).hexdigest()
        at = self.seen.get(h)
        if keep:  # moved to the end: the newest
            self.seen.pop(h, None)
            self.seen[h] = now
            self.users[h] = user
        while len(self.seen) > self.keep:  # oldest first (dicts keep insertion order)
            del self.seen[next(iter(self.seen))]
        return ReplayResult(at is not None, 1.0 if at is not None else 0.0, at)

    def forget(self, user: str) -> int:
        gone = [
            h for h, u in self.users.items() if u is not None and u.casefold() == user.casefold()
        ]
        for h in gone:
            self.seen.pop(h, None)
            del self.users[h]
        return len(gone)

    def retry_erased(self) -> None:
        """Nothing to retry: this stand-in holds no file."""


class RecordingLink:
    """Keeps what the loop publishes (and appends it to `log_file` as JSON lines)."""

    def __init__(self, log_file: Path | None = None, keep: int | None = None) -> None:
        self.log_file = log_file
        self.connected = True
        self.events: deque[tuple[str, Any]] = deque(maxlen=keep)
        self.handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def _add(self, kind: str, value: Any) -> None:
        with self._lock:
            self.events.append((kind, value))
            if self.log_file is not None:
                with open(self.log_file, "a") as f:
                    f.write(json.dumps([kind, value], default=str) + "\n")

    def start(self) -> None:
        self._add("start", None)

    def stop(self) -> None:
        self._add("stop", None)

    def publish_state(self, state: str) -> None:
        self._add("state", state)

    def publish_challenge(self, challenge: Any) -> None:
        self._add("challenge", challenge.digits)

    def publish_decision(self, decision: Any) -> None:
        self._add("decision", decision)

    def publish_lockout(self, locked: list[dict[str, Any]]) -> None:
        self._add("lockout", locked)

    def on_command(self, name: str, handler: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.handlers[name] = handler

    def of(self, kind: str) -> list[Any]:
        with self._lock:
            return [v for k, v in self.events if k == kind]


def decision_dict(res: AttemptResult) -> dict[str, Any]:
    return {
        "outcome": res.verdict.outcome,
        "user": res.verdict.user,
        "reasons": list(res.verdict.reasons),
        "score": getattr(res.speaker, "score", None),
    }


def standin_stages(
    source: Any,
    voiceprints: dict[str, np.ndarray] | None = None,
    link: RecordingLink | None = None,
    challenge: bool = True,
    threshold: float = 0.9,
) -> Stages:
    return Stages(
        source=source,
        embedder=MelEmbedder(),
        scorer=CosineScorer(voiceprints or {}, threshold),
        link=link or RecordingLink(),
        make_decision=decision_dict,
        recognizer=SpeechLengthRecognizer() if challenge else None,
        new_challenge=new_challenge if challenge else None,
        replay=HashReplay() if challenge else None,
        no_speech_errors=(TooShort,),
        close=[source.close],
    )


# -- systemd's side of sd_notify ---------------------------------------------------------


class NotifyListener:
    """A real AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._run = True
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while self._run:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            for line in data.decode().split("\n"):
                self.messages.append((now, line))

    def times(self, line: str) -> list[float]:
        return [t for t, m in list(self.messages) if m == line]

    def has(self, prefix: str) -> bool:
        return any(m.startswith(prefix) for _, m in list(self.messages))

    def statuses(self) -> list[str]:
        return [m[len("STATUS=") :] for _, m in list(self.messages) if m.startswith("STATUS=")]

    def close(self) -> None:
        self._run = False
        self._thread.join(1)
        self.sock.close()


# -- audio -------------------------------------------------------------------------------


def espeak(text: str, voice: str = "en") -> np.ndarray:
    """Synthesised speech as 16 kHz int16 (espeak-ng; raises RuntimeError when missing)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    raw = subprocess.run(
        [exe, "-v", voice, "--stdout", text], capture_output=True, check=True, timeout=30
    ).stdout
    import io

    data, rate = sf.read(io.BytesIO(raw), dtype="float32")
    from voxgate.audio.convert import float_to_int16, resample

    return float_to_int16(resample(data, rate) * 0.8)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.int16)


def write_wav(path: Path, pcm: np.ndarray) -> Path:
    sf.write(str(path), pcm, SR, subtype="PCM_16")
    return path


def attempt_recording(directory: Path) -> Path:
    """silence, a wake phrase, a pause, a spoken 5-digit answer, silence (about 9 s)."""
    path = directory / "attempt.wav"
    if not path.exists():
        pcm = np.concatenate(
            [
                silence(1.0),
                espeak("hello, it is me at the door"),
                silence(1.5),
                espeak("four, seven, one, nine, two", voice="en+m3"),
                silence(2.5),
            ]
        )
        write_wav(path, pcm)
    return path


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()
