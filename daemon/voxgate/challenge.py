"""Spoken challenges: a fresh CSPRNG digit string (or the fixed passphrase), one use only.

The Challenge object is published on MQTT for a display or TTS (by the mqtt stage) and may
be spoken locally with espeak-ng. ChallengeBook hands each nonce out for exactly one answer.
Its issued_at and expires_at are wall-clock times, for display; whether a challenge has
expired is decided on a clock no step moves (clocks.elapsed; the daemon's loop does the
same): on the wall clock, NTP stepping it forward during a challenge expired it at once, and
a step back left it open for as long as the step.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass

from voxgate import clocks
from voxgate.config.stt import ChallengeConfig, passphrase_words
from voxgate.stt.base import digits_to_words, words_to_digits

log = logging.getLogger(__name__)


class ChallengeError(Exception):
    """A challenge that cannot be used: unknown, already used or expired (str() says which)."""


@dataclass(frozen=True)
class Challenge:
    text: str  # the digits ("40712") or the passphrase
    words: tuple[str, ...]  # what must be said, as dictionary words
    nonce: str  # 128-bit random, hex; ties the answer and the signed decision together
    issued_at: float
    expires_at: float
    mode: str = "digits"  # "digits", "passphrase", or "enroll" (a prompt for enrollment take N)
    take: int | None = None  # enroll: which take this prompt is for (1-based)

    @property
    def digits(self) -> str | None:
        return self.text if self.mode == "digits" else None

    def spoken_form(self) -> str:
        """What a display or TTS should say: digits one by one, with pauses."""
        return ", ".join(self.words)

    def to_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "text": self.text,
            "words": list(self.words),
            "nonce": self.nonce,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            **({"take": self.take} if self.take is not None else {}),
        }


def audit_fields(digits: str | None, heard: str | None) -> dict[str, str | None]:
    """The digits asked for (`digits`: Challenge.digits, None for a passphrase) and the
    digits heard (LivenessResult.transcript), for the decision's audit line.

    A digit challenge is no secret once answered (ChallengeBook hands it out once), and an
    analyst needs both to tell a misheard answer from a wrong one. A passphrase is a secret
    for as long as it is in use: neither it nor what was heard of it is written (the
    recognizer does not even keep the latter); the score and the reason remain."""
    if digits is None:
        return {"liveness_prompt": None, "liveness_heard": None}
    if heard and not heard.isdigit():
        heard = words_to_digits(heard.split()) or heard  # engines say words, templates digits
    return {"liveness_prompt": digits, "liveness_heard": heard}


def enroll_prompt(digits: str, take: int, now: float, ttl_s: float) -> Challenge:
    """What enrollment take `take` should say: shown and spoken like a challenge, but it
    opens nothing (no nonce: no decision can ever refer to it)."""
    return Challenge(digits, digits_to_words(digits), "", now, now + ttl_s, "enroll", take)


def no_repeat_digits(length: int) -> str:
    """`length` CSPRNG digits, none equal to the one before it: 10 * 9^(length-1) strings.

    The digit templates refused genuine answers to prompts such as "40072" about 1.5 times
    as often as others (docs/challenge.md, "Adjacent repeats"). A liveness nonce shown to
    the speaker needs no secrecy, only freshness, so 65610 five-digit strings are plenty."""
    text = ""
    while len(text) < length:
        text += secrets.choice([d for d in "0123456789" if not text or d != text[-1]])
    return text


def new_challenge(cfg: ChallengeConfig, now: float) -> Challenge:
    """A new challenge; raises ChallengeError when the config asks for none."""
    nonce = secrets.token_hex(16)
    expires = now + cfg.timeout_s
    if cfg.mode == "digits":
        text = no_repeat_digits(cfg.length)
        return Challenge(text, digits_to_words(text), nonce, now, expires, "digits")
    if cfg.mode == "passphrase":
        words = passphrase_words(cfg.passphrase or "")
        if not words:
            raise ChallengeError("challenge.mode is passphrase but challenge.passphrase is empty")
        return Challenge(" ".join(words), words, nonce, now, expires, "passphrase")
    raise ChallengeError("challenge.mode is off: no spoken challenge")


def enrollment_prompts(takes: int = 4, length: int = 5) -> list[str]:
    """Prompts for enrollment takes that together say every digit about equally often.

    The template check needs each digit at least twice per user; 4 takes of 5 digits give
    exactly two of each. The order is shuffled with the CSPRNG.
    """
    if takes * length < 10:
        raise ValueError("enrollment needs at least 10 digits in total to cover every digit")
    rng = secrets.SystemRandom()
    pool: list[str] = []
    while len(pool) < takes * length:
        batch = list("0123456789")
        rng.shuffle(batch)
        pool += batch
    pool = pool[: takes * length]
    rng.shuffle(pool)
    return ["".join(pool[i * length : (i + 1) * length]) for i in range(takes)]


class ChallengeBook:
    """Outstanding challenges; each is redeemed at most once and only before it expires.
    `elapsed`: the clock expiry is measured on (never stepped; tests inject one)."""

    def __init__(self, limit: int = 64, elapsed: Callable[[], float] = clocks.elapsed) -> None:
        self._open: dict[str, tuple[Challenge, float]] = {}  # nonce -> (challenge, deadline)
        self._lock = threading.Lock()
        self._elapsed = elapsed
        self.limit = limit

    def issue(self, cfg: ChallengeConfig, now: float) -> Challenge:
        """`now`: the wall clock, for the challenge's issued_at and expires_at."""
        ch = new_challenge(cfg, now)
        deadline = self._elapsed() + (ch.expires_at - ch.issued_at)
        with self._lock:
            self._drop_expired()
            while len(self._open) >= self.limit:  # bounded: the oldest goes first
                self._open.pop(next(iter(self._open)))
            self._open[ch.nonce] = (ch, deadline)
        return ch

    def redeem(self, nonce: str) -> Challenge:
        """Take the challenge out of the book (whatever happens next it cannot be reused)."""
        with self._lock:
            entry = self._open.pop(nonce, None)
        if entry is None:
            raise ChallengeError("unknown or already used challenge")
        ch, deadline = entry
        late = self._elapsed() - deadline
        if late >= 0:
            raise ChallengeError(f"challenge expired {late:.1f} s ago")
        return ch

    def pending(self) -> int:
        with self._lock:
            self._drop_expired()
            return len(self._open)

    def _drop_expired(self) -> None:
        now = self._elapsed()
        for n in [n for n, (_, deadline) in self._open.items() if now >= deadline]:
            del self._open[n]


# espeak-ng's --stdout WAV: a 44-byte header (its length fields unset), 16-bit mono.
WAV_HEADER = 44
ECHO_S = 0.3  # after the last loud sample: the player's start-up and the room's echo


def speak(challenge: Challenge, voice: str = "en", wpm: int = 140) -> float:
    """Say the challenge with espeak-ng (non-blocking). Returns how long the prompt plays,
    in seconds (measured on espeak-ng's own rendering), 0.0 when nothing was spoken.

    The door must not listen meanwhile; a guess from the word count was 2 s short for ten
    long digits, and the door took the end of its own voice for the answer."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        log.warning("challenge.speak is on but espeak-ng is not installed")
        return 0.0
    cmd = [exe, "-v", voice, "-s", str(wpm), challenge.spoken_form()]
    seconds = 0.0
    try:
        wav = subprocess.run([*cmd, "--stdout"], capture_output=True, timeout=10).stdout
        seconds = _speech_end_s(wav)
        subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("espeak-ng failed: %s", exc)
        return 0.0
    return seconds


def _speech_end_s(wav: bytes) -> float:
    """Seconds to the last loud sample of espeak-ng's WAV (plus ECHO_S); 0.0 if silent."""
    import numpy as np

    if len(wav) < WAV_HEADER or wav[:4] != b"RIFF":
        raise ValueError("espeak-ng gave no WAV")
    rate = int.from_bytes(wav[24:28], "little")
    body = wav[WAV_HEADER:]
    pcm = np.frombuffer(body[: len(body) // 2 * 2], dtype="<i2")
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 328)  # above 1 % of full scale
    return 0.0 if not len(loud) or rate <= 0 else (int(loud[-1]) + 1) / rate + ECHO_S
