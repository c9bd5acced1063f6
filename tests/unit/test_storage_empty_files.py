"""A lockout.db or replay.db cut to 0 bytes (a power cut while it was written, a failed
restore): made again, since the door must not stop over them (docs/service.md), but named in
the log, not taken silently for a first start."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.unit.test_replay_prefilter import signal
from voxgate.config.service import LockoutConfig
from voxgate.lockout import LockoutBook
from voxgate.replay import ReplayDetector


def test_an_empty_lockout_or_replay_file_is_named_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Seen: with lockout.db cut to 0 bytes every running lock was gone and the start
    logged nothing (a damaged file logs an ERROR and is moved aside); replay.db alike, and
    answers given before were no longer recognised as replays."""
    (tmp_path / "lockout.db").write_bytes(b"")
    (tmp_path / "replay.db").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        book = LockoutBook(tmp_path / "lockout.db", LockoutConfig())
        det = ReplayDetector(tmp_path / "replay.db", window_s=10**9)
    text = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert (
        logging.ERROR,
        f"lockout state {tmp_path / 'lockout.db'} is empty (0 bytes: cut by a power cut or "
        "a failed restore, or left by a start on a full disk); starting with no lockouts",
    ) in text, text
    assert any(
        level == logging.WARNING and msg.startswith(f"{tmp_path / 'replay.db'} is empty (0 bytes")
        for level, msg in text
    ), text
    # Both work as new stores, and a second start (files no longer empty) says nothing.
    book.record("erin", ok=False)
    det.check_and_add(signal(1), now=1.0, user="erin")
    book.close()
    det.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        LockoutBook(tmp_path / "lockout.db", LockoutConfig()).close()
        ReplayDetector(tmp_path / "replay.db", window_s=10**9).close()
    assert not [r for r in caplog.records if "is empty" in r.getMessage()]
