"""Replay detection: fingerprint every answer and reject near-duplicates of earlier ones.

A recording played back at the door is the same waveform as an earlier attempt (perhaps
louder or quieter, a little earlier or later). A live person never says the same thing
twice in exactly the same way. The fingerprint is one 32-bit word per 10 ms frame: the
signs of the band-energy differences across frequency and time on a log-mel scale, which
do not change with volume. Two answers are compared at every offset up to MAX_SHIFT frames;
similarity = 1 - bit error rate. Only fingerprints are stored (SQLite), never audio.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxgate.stt.mfcc import MfccSpec, log_mel

log = logging.getLogger(__name__)

SPEC = MfccSpec(win_ms=32.0, step_ms=10.0, n_mels=33, f_min=200.0, f_max=5000.0)
MAX_SHIFT = 30  # frames (+-300 ms) searched when comparing two answers
MIN_FRAMES = 20  # shorter answers (200 ms of speech) are too short to fingerprint
DEFAULT_THRESHOLD = 0.75  # similarity at or above this is a replay (see docs/challenge.md)
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ReplayResult:
    is_replay: bool
    similarity: float  # best similarity to any kept fingerprint (0..1; ~0.5 = unrelated)
    matched_at: float | None  # when the matching earlier attempt was made


def fingerprint(pcm: np.ndarray) -> np.ndarray:
    """uint32 per frame over the loud part of the recording (silence at the ends trimmed)."""
    lm = log_mel(np.asarray(pcm), SPEC).astype(np.float64)
    if len(lm) < 2:
        return np.zeros(0, dtype=np.uint32)
    energy = np.log(np.exp(lm).sum(1) + 1e-10)
    loud = np.flatnonzero(energy > energy.max() - np.log(10) * 3.5)  # within 35 dB of peak
    lm = lm[max(0, loud[0] - 1) : loud[-1] + 1]
    band = lm[:, :-1] - lm[:, 1:]
    bits = (band[1:] - band[:-1]) > 0  # (frames-1, 32)
    weights = (1 << np.arange(32, dtype=np.uint64)).astype(np.uint64)
    return (bits.astype(np.uint64) @ weights).astype(np.uint32)


def similarity(a: np.ndarray, b: np.ndarray, max_shift: int = MAX_SHIFT) -> float:
    """1 - the lowest bit error rate over offsets; the overlap must cover 80 % of the shorter."""
    if min(len(a), len(b)) < MIN_FRAMES:
        return 0.0
    need = int(0.8 * min(len(a), len(b)))
    best = 1.0
    for shift in range(-max_shift, max_shift + 1):
        x = a[max(0, shift) :]
        y = b[max(0, -shift) :]
        n = min(len(x), len(y))
        if n < need:
            continue
        ber = np.bitwise_count(x[:n] ^ y[:n]).sum() / (32.0 * n)
        best = min(best, float(ber))
    return 1.0 - best


class ReplayDetector:
    """Fingerprints of recent attempts in SQLite; check_and_add() compares and remembers."""

    def __init__(self, path: Path, window_s: float, threshold: float = DEFAULT_THRESHOLD) -> None:
        self.path = Path(path)
        self.window_s = window_s
        self.threshold = threshold
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._init_schema()
        except sqlite3.DatabaseError as exc:
            raise ReplayStoreError(
                f"{self.path}: not a replay-fingerprint database ({exc})"
            ) from None

    def _init_schema(self) -> None:
        cur = self._db.execute("PRAGMA user_version")
        version = cur.fetchone()[0]
        if version == 0:
            with self._db:
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS fingerprints ("
                    " id INTEGER PRIMARY KEY, created_at REAL NOT NULL,"
                    " frames INTEGER NOT NULL, fp BLOB NOT NULL)"
                )
                self._db.execute("CREATE INDEX IF NOT EXISTS fp_time ON fingerprints(created_at)")
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise ReplayStoreError(f"{self.path}: schema version {version} is not supported")

    def check_and_add(self, pcm: np.ndarray, now: float) -> ReplayResult:
        fp = fingerprint(pcm)
        with self._lock:
            self._prune(now)
            best, when = 0.0, None
            if len(fp) >= MIN_FRAMES:
                lo, hi = int(len(fp) * 0.75), int(len(fp) / 0.75) + 1
                rows = self._db.execute(
                    "SELECT created_at, fp FROM fingerprints WHERE frames BETWEEN ? AND ?",
                    (lo, hi),
                )
                for created, blob in rows:
                    sim = similarity(fp, np.frombuffer(blob, dtype=np.uint32))
                    if sim > best:
                        best, when = sim, created
                with self._db:
                    self._db.execute(
                        "INSERT INTO fingerprints (created_at, frames, fp) VALUES (?, ?, ?)",
                        (now, len(fp), fp.astype("<u4").tobytes()),
                    )
        is_replay = best >= self.threshold
        if is_replay:
            log.warning(
                "replay: answer matches an attempt from %.0f s ago (%.2f)", now - when, best
            )
        return ReplayResult(is_replay, best, when if is_replay else None)

    def _prune(self, now: float) -> None:
        with self._db:
            self._db.execute(
                "DELETE FROM fingerprints WHERE created_at < ?", (now - self.window_s,)
            )

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM fingerprints").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class ReplayStoreError(Exception):
    """The fingerprint database cannot be opened or has a foreign schema."""
