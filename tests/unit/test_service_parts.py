"""Small service parts: the capture queue, the state machine, logging setup, kept audio."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from voxgate.config.logging import LoggingConfig
from voxgate.logs import setup_logging
from voxgate.service.capture import EndOfStream, FrameQueue
from voxgate.service.keep import AudioKeeper, KeepError
from voxgate.service.states import State, StateMachine


def frame(i: int) -> np.ndarray:
    return np.full(480, i, dtype=np.int16)


def test_full_live_queue_drops_the_oldest_and_counts() -> None:
    q = FrameQueue(3, drop_oldest=True)
    for i in range(5):
        assert q.put(frame(i))  # never blocks
    assert q.dropped == 2 and len(q) == 3
    got = [int(q.get(0)[0]) for _ in range(3)]  # type: ignore[index]
    assert got == [2, 3, 4]
    assert q.get(0.01) is None


def test_file_queue_blocks_the_reader_instead_of_dropping() -> None:
    q = FrameQueue(2, drop_oldest=False)
    q.put(frame(0))
    q.put(frame(1))
    done = threading.Event()

    def producer() -> None:
        q.put(frame(2))
        done.set()

    threading.Thread(target=producer, daemon=True).start()
    assert not done.wait(0.2)  # waiting for room
    assert int(q.get(0)[0]) == 0  # type: ignore[index]
    assert done.wait(2)
    assert q.dropped == 0


def test_end_of_stream_carries_the_error() -> None:
    q = FrameQueue(4)
    q.put(frame(0))
    q.close(OSError("device unplugged"))
    assert isinstance(q.get(0), np.ndarray)  # queued audio is still delivered
    end = q.get(0)
    assert isinstance(end, EndOfStream) and isinstance(end.error, OSError)
    assert not q.put(frame(1))


def test_state_machine_notifies_and_survives_bad_listeners(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sm = StateMachine()
    seen: list[tuple[str, str]] = []
    sm.subscribe(lambda old, new, why: seen.append((old.value, new.value)))
    sm.subscribe(lambda old, new, why: 1 / 0)
    sm.move(State.LISTENING, "speech")
    sm.move(State.LISTENING, "again")  # no change, no event
    sm.move(State.DECIDED, "skipping verifying")  # not an allowed move: logged, still done
    assert seen == [("idle", "listening"), ("listening", "decided")]
    assert "unexpected state change listening -> decided" in caplog.text
    assert "state listener failed" in caplog.text


def test_json_logging_with_module_levels() -> None:
    out = io.StringIO()
    try:
        used = setup_logging(
            LoggingConfig(level="warning", format="json", modules={"voxgate.x": "debug"}), out
        )
        assert used == "json"
        logging.getLogger("voxgate.x").debug("frame %d", 7, extra={"device": "door-1"})
        logging.getLogger("voxgate.y").info("hidden")
        rec = json.loads(out.getvalue().splitlines()[-1])
        assert rec["msg"] == "frame 7" and rec["level"] == "debug"
        assert rec["logger"] == "voxgate.x" and rec["device"] == "door-1"
        assert "hidden" not in out.getvalue()
        # A reload replaces our handler (no duplicates) and forgets old module levels.
        setup_logging(LoggingConfig(level="info", format="text"), out)
        ours = [h for h in logging.getLogger().handlers if getattr(h, "_voxgate_handler", 0)]
        assert len(ours) == 1
        assert logging.getLogger("voxgate.x").level == logging.NOTSET
    finally:
        setup_logging(LoggingConfig(level="warning"))


def test_journal_format_falls_back_to_text_when_systemd_python_is_missing() -> None:
    try:
        import systemd.journal  # type: ignore[import-not-found]  # noqa: F401

        pytest.skip("systemd-python is installed here")
    except ImportError:
        pass
    out = io.StringIO()
    try:
        assert setup_logging(LoggingConfig(format="journal"), out) == "text"
        assert "systemd-python is not installed" in out.getvalue()
    finally:
        setup_logging(LoggingConfig(level="warning"))


def test_kept_audio_roundtrip_tamper_and_retention(tmp_path: Path) -> None:
    key = bytes(range(32))
    k = AudioKeeper(tmp_path, key, retention_days=1)
    pcm = (np.sin(np.arange(16000) / 5) * 8000).astype(np.int16)
    now = time.time()
    p = k.store(pcm, "nonce/../x", now)
    assert p is not None and p.parent == tmp_path and oct(p.stat().st_mode & 0o777) == "0o600"
    assert np.array_equal(k.load(p), pcm)
    with pytest.raises(KeepError):
        AudioKeeper(tmp_path, bytes(32), 1).load(p)
    moved = p.with_name("1-other.vxa")
    p.rename(moved)
    with pytest.raises(KeepError):
        k.load(moved)  # the name is bound into the ciphertext
    old = k.store(pcm, "old", now - 3 * 86400)
    assert old is not None and old.exists()
    assert not moved.exists()  # named as if from 1970: purged by that store()
    assert k.purge(now) == 1  # the 3-day-old one
    assert list(tmp_path.glob("*.vxa")) == []
    with pytest.raises(KeepError):
        AudioKeeper(tmp_path, b"short", 1)


def test_raw_audio_key_keeps_its_whitespace_bytes(tmp_path: Path) -> None:
    from voxgate.config import VoxgateConfig
    from voxgate.service.keep import parse_key
    from voxgate.service.loop import Daemon

    raw = b"\n" + bytes(range(40, 70)) + b"\r"
    assert parse_key(raw) == raw
    key_file = tmp_path / "audio.key"
    key_file.write_bytes(raw)
    key_file.chmod(0o600)
    cfg = VoxgateConfig.model_validate(
        {
            "data_dir": str(tmp_path),
            "audit": {"keep_audio": True, "audio_key_file": str(key_file)},
        }
    )
    keeper = Daemon._open_keeper(None, cfg)  # type: ignore[arg-type]
    pcm = np.arange(1600, dtype=np.int16)
    stored = keeper.store(pcm, "n1", time.time())
    assert np.array_equal(AudioKeeper(tmp_path / "audio", raw, 1).load(stored), pcm)


def test_a_wrong_audio_key_of_32_hex_digits_says_it_was_read_as_raw_bytes(tmp_path: Path) -> None:
    """An audio key holding 32 hex digits (the 64 cut short) is read as 32 raw bytes, like
    the voiceprint key. The daemon only writes kept audio, so nothing fails there; reading a
    recording back (AudioKeeper.load, the documented way) with such a key says how it was
    read. Such a key is not refused: recordings it sealed open with it."""
    import os

    full = os.urandom(32).hex()
    pcm = (np.arange(1600) % 200).astype(np.int16)
    stored = AudioKeeper(tmp_path, (full + "\n").encode(), 1).store(pcm, "n1")
    assert stored is not None
    with pytest.raises(KeepError, match="wrong key") as cut:
        AudioKeeper(tmp_path, full[:32].encode(), 1).load(stored)
    assert "read as 32 raw bytes" in str(cut.value) and "64 hex digits" in str(cut.value)
    with pytest.raises(KeepError, match="wrong key") as other:
        AudioKeeper(tmp_path, os.urandom(32).hex().encode(), 1).load(stored)
    assert "raw bytes" not in str(other.value)
    raw = AudioKeeper(tmp_path / "raw", full[:32].encode(), 1)
    own = raw.store(pcm, "n2")
    assert own is not None and np.array_equal(raw.load(own), pcm)
