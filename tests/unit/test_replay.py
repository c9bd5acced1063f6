"""Replay detector: exact and altered replays caught, fresh recordings not, state persisted."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from voxgate.audio.file import read_audio
from voxgate.replay import ReplayDetector, ReplayStoreError, fingerprint, similarity

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng missing")


def say(text: str, speed: int = 150, pitch: int = 50) -> np.ndarray:
    with tempfile.TemporaryDirectory() as d:
        wav = Path(d) / "a.wav"
        subprocess.run(
            ["espeak-ng", "-v", "en", "-s", str(speed), "-p", str(pitch), "-w", str(wav), text],
            check=True,
        )
        return read_audio(wav)


@pytest.fixture(scope="module")
def takes() -> list[np.ndarray]:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng missing")
    # Same words, different delivery: what a live person gives on two attempts.
    return [say("four seven one nine two", s, p) for s, p in ((150, 50), (140, 45), (160, 55))]


@needs_espeak
def test_exact_and_altered_replays_are_caught(takes: list[np.ndarray], tmp_path: Path) -> None:
    det = ReplayDetector(tmp_path / "replay.db", window_s=3600)
    first = takes[0]
    assert not det.check_and_add(first, now=10.0).is_replay
    quiet = (first * 0.25).astype(np.int16)
    loud = np.clip(first.astype(np.int32) * 3, -32768, 32767).astype(np.int16)
    shifted = np.concatenate([np.zeros(1234, np.int16), first, np.zeros(800, np.int16)])
    for t, replayed in enumerate((first, quiet, loud, shifted), start=1):
        res = det.check_and_add(replayed, now=10.0 + t)
        assert res.is_replay, t
        assert res.matched_at == 10.0 or res.matched_at > 10.0
        assert res.similarity >= det.threshold


@needs_espeak
def test_fresh_recordings_of_the_same_words_are_not_replays(
    takes: list[np.ndarray], tmp_path: Path
) -> None:
    det = ReplayDetector(tmp_path / "replay.db", window_s=3600)
    results = [det.check_and_add(x, now=float(i)) for i, x in enumerate(takes)]
    assert not any(r.is_replay for r in results)
    assert all(r.similarity < det.threshold for r in results)
    assert results[0].matched_at is None


def test_only_fingerprints_are_stored_and_they_persist(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pcm = (rng.normal(0, 3000, 16000) * np.sin(np.linspace(0, 30, 16000))).astype(np.int16)
    path = tmp_path / "replay.db"
    det = ReplayDetector(path, window_s=3600)
    det.check_and_add(pcm, now=0.0)
    det.close()
    with sqlite3.connect(path) as db:
        (blob, mask) = db.execute("SELECT fp, loud FROM fingerprints").fetchone()
    # a fingerprint, far smaller than the audio
    assert len(blob) + len(mask) < len(pcm.tobytes()) / 4
    again = ReplayDetector(path, window_s=3600)  # a restarted daemon still knows it
    assert again.check_and_add(pcm, now=5.0).is_replay


def test_old_fingerprints_leave_the_window(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    pcm = (rng.normal(0, 3000, 16000) * np.sin(np.linspace(0, 30, 16000))).astype(np.int16)
    det = ReplayDetector(tmp_path / "replay.db", window_s=100)
    det.check_and_add(pcm, now=0.0)
    assert det.check_and_add(pcm, now=50.0).is_replay
    # At 151 s both earlier entries (0 s and 50 s) are older than the 100 s window.
    res = det.check_and_add(pcm, now=151.0)
    assert not res.is_replay
    assert det.count() == 1


def test_silence_and_tiny_inputs_do_not_crash(tmp_path: Path) -> None:
    det = ReplayDetector(tmp_path / "replay.db", window_s=100)
    for pcm in (np.zeros(0, np.int16), np.zeros(100, np.int16), np.zeros(16000, np.int16)):
        res = det.check_and_add(pcm, now=1.0)
        assert not res.is_replay
    bits, loud = fingerprint(np.zeros(0, np.int16))
    assert len(bits) == 0 and len(loud) == 0
    tiny = (np.zeros(3, np.uint32), np.ones(3, bool))
    assert similarity(tiny, tiny) == 0.0  # too short to judge


def test_a_foreign_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "replay.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ReplayStoreError, match="not a replay-fingerprint database"):
        ReplayDetector(bad, window_s=10)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "replay.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=99")
    with pytest.raises(ReplayStoreError, match="schema version 99"):
        ReplayDetector(path, window_s=10)


@needs_espeak
def test_a_sound_put_before_a_replay_does_not_hide_it(
    takes: list[np.ndarray], tmp_path: Path
) -> None:
    """The fingerprint starts at the first loud frame, and only offsets up to 300 ms from
    there were compared: a 50 ms click 0.4 s before the replayed answer (inside one
    utterance: the VAD's hang-over is 0.5 s) moved that frame past the search and hid every
    replay (similarity 0.51 on FSDD answers). Found replaying FSDD answers with edits."""
    first = takes[0]
    rng = np.random.default_rng(0)
    click = rng.normal(0, int(np.abs(first).max()) / 3, 800).clip(-32767, 32767).astype(np.int16)

    def gap(seconds: float) -> np.ndarray:
        return np.zeros(int(16000 * seconds), np.int16)

    cases = {
        "click 0.4 s before": [click, gap(0.4), first],
        "three clicks before": [click, gap(0.15), click, gap(0.15), click, gap(0.4), first],
        "click 1 s before, quieter": [(click * 0.1).astype(np.int16), gap(1.0), first],
    }
    for i, (name, parts) in enumerate(cases.items()):
        det = ReplayDetector(tmp_path / f"replay{i}.db", window_s=3600)
        det.check_and_add(first, now=10.0)
        res = det.check_and_add(np.concatenate(parts), now=11.0)
        assert res.is_replay, (name, res.similarity)
        # The stored answer may carry the sound instead: a replay cut from it still matches.
        det2 = ReplayDetector(tmp_path / f"stored{i}.db", window_s=3600)
        det2.check_and_add(np.concatenate(parts), now=10.0)
        assert det2.check_and_add(first, now=11.0).is_replay, name
    # A fresh answer behind the same click is still fresh.
    det = ReplayDetector(tmp_path / "fresh.db", window_s=3600)
    det.check_and_add(first, now=10.0)
    res = det.check_and_add(np.concatenate([click, gap(0.4), takes[1]]), now=11.0)
    assert not res.is_replay and res.similarity < det.threshold


def _stranger(i: int) -> np.ndarray:
    """One second of a distinct voiced-like sound (long enough to fingerprint)."""
    rng = np.random.default_rng(1000 + i)
    t = np.arange(16000) / 16000
    tone = np.sin(2 * np.pi * (120 + 7 * i) * t) * (1 + np.sin(2 * np.pi * 3 * t))
    return (tone * 6000 + rng.normal(0, 800, t.size)).astype(np.int16)


@needs_espeak
def test_answers_not_kept_cannot_push_a_genuine_one_out(
    takes: list[np.ndarray], tmp_path: Path
) -> None:
    """The daemon keeps only answers whose voice matched someone (keep=False otherwise).
    Keeping all, a stranger's answers (unusable ones are retries the lockout does not
    count) pushed the genuine answer out under replay_max_stored, and its replay passed."""
    genuine = takes[0]
    for keep_strangers, caught in ((True, False), (False, True)):
        det = ReplayDetector(tmp_path / f"r{keep_strangers}.db", window_s=3600, max_rows=100)
        assert not det.check_and_add(genuine, now=1.0).is_replay
        for i in range(101):
            det.check_and_add(_stranger(i), now=2.0 + i, keep=keep_strangers)
        assert det.check_and_add(genuine, now=200.0).is_replay is caught
