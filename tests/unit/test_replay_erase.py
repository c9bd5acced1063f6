"""Erasing a user drops the replay fingerprints of their answers: each kept fingerprint is
stored under a salted hash of the user whose voice it matched, and every erase path (the
daemon's MQTT, API, fleet and noticed-CLI erases; `voxgate users erase` and the standalone
API on disk) deletes them, checked on the bytes of real SQLite files. Before, they stayed
until challenge.replay_window_s (30 days) aged them out."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import pytest

from tests.integration.small_fs import fill, free, small_fs
from tests.unit.test_replay_prefilter import OLD_DB, signal
from voxgate.config import VoxgateConfig
from voxgate.config.service import LockoutConfig
from voxgate.erasure import forget_on_disk
from voxgate.lockout import LockoutBook
from voxgate.replay import (
    FILE_VERSION,
    ReplayDetector,
    ReplayStoreError,
    fingerprint,
    forget_user_in_file,
)
from voxgate.service.users import UserServices
from voxgate.voiceprints import VoiceprintStore


def raw(path: Path) -> bytes:
    """The database file and whatever SQLite keeps beside it, as bytes on disk."""
    return b"".join(
        p.read_bytes()
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))
        if p.exists()
    )


def probe(seed: int) -> bytes:
    """The first 48 bytes of the fingerprint the detector stores for signal(seed)."""
    return fingerprint(signal(seed))[0].astype("<u4").tobytes()[:48]


def caught(det: ReplayDetector, seed: int, now: float) -> bool:
    return det.check_and_add(signal(seed), now=now, keep=False).is_replay


def test_forget_drops_the_users_fingerprints_from_memory_and_the_file_bytes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "replay.db"
    det = ReplayDetector(path, window_s=10**9)
    det.check_and_add(signal(1), now=1.0, user="Alice")
    det.check_and_add(signal(2), now=2.0, user="bob")
    det.check_and_add(signal(3), now=3.0, user=" ALICE ")  # the same person (names.fold)
    data = raw(path)
    assert all(probe(s) in data for s in (1, 2, 3))
    assert b"alice" not in data.lower()  # the rows name nobody in plain text
    assert det.forget("alice") == 2
    assert det._index._flat is not None  # rebuilt by the erase, not by the next check
    data = raw(path)
    assert probe(1) not in data and probe(3) not in data
    assert probe(2) in data
    assert not caught(det, 1, 10.0) and not caught(det, 3, 11.0)
    assert caught(det, 2, 12.0)
    assert det.forget("alice") == 0
    det.close()
    again = ReplayDetector(path, window_s=10**9)  # and they stay gone
    assert again.count() == 1 and not caught(again, 1, 20.0) and caught(again, 2, 21.0)
    again.close()


def test_a_schema_1_file_written_by_the_old_code_is_upgraded_and_keeps_working(
    tmp_path: Path,
) -> None:
    path = tmp_path / "replay.db"
    shutil.copyfile(OLD_DB, path)  # written by the detector at ebad684 (schema 1)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        assert "user_key" not in {r[1] for r in db.execute("PRAGMA table_info(fingerprints)")}
    db.close()
    det = ReplayDetector(path, window_s=10**9)
    assert det.count() == 3
    assert det.check_and_add(signal(12), now=2000.0, keep=False).matched_at == 1001.0
    det.check_and_add(signal(20), now=2001.0, user="carol")
    assert det.forget("carol") == 1
    assert probe(20) not in raw(path)
    # Rows from before name nobody: erase cannot tie them to anyone; they stay, still used.
    assert det.count() == 3 and caught(det, 11, 2002.0)
    det.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == FILE_VERSION
        assert "user_key" in {r[1] for r in db.execute("PRAGMA table_info(fingerprints)")}
    db.close()
    again = ReplayDetector(path, window_s=10**9)  # reopened after the upgrade
    again.check_and_add(signal(21), now=2003.0, user="dave")
    again.close()
    assert forget_user_in_file(path, "DAVE") == 1
    assert probe(21) not in raw(path)


def test_forget_user_in_file_beside_the_daemons_open_store(tmp_path: Path) -> None:
    """`voxgate users erase` runs in another process than the daemon holding replay.db."""
    path = tmp_path / "replay.db"
    det = ReplayDetector(path, window_s=10**9)
    det.check_and_add(signal(1), now=1.0, user="erin")
    det.check_and_add(signal(2), now=2.0, user="frank")
    assert forget_user_in_file(path, "Erin") == 1
    assert probe(1) not in raw(path) and probe(2) in raw(path)
    assert forget_user_in_file(path, "erin") == 0
    # The daemon's copy in memory goes when it learns of the erase (UserServices.forget).
    assert det.forget("erin") == 1
    assert not caught(det, 1, 10.0) and caught(det, 2, 11.0)
    det.close()
    assert forget_user_in_file(tmp_path / "none.db", "erin") == 0
    assert not (tmp_path / "none.db").exists()  # no file made
    old = tmp_path / "old.db"
    shutil.copyfile(OLD_DB, old)
    before = old.read_bytes()
    assert forget_user_in_file(old, "erin") == 0  # schema 1: nothing is tied to a user
    assert old.read_bytes() == before


def test_forget_user_in_file_on_a_damaged_file_logs_and_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "replay.db"
    bad.write_bytes(b"not a database at all" * 100)
    with caplog.at_level(logging.ERROR, logger="voxgate.replay"):
        assert forget_user_in_file(bad, "erin") == 0
    assert "cannot drop the replay fingerprints of erin" in caplog.text
    det = ReplayDetector(tmp_path / "ok.db", window_s=10**9)
    det.close()
    with sqlite3.connect(tmp_path / "ok.db") as db:
        db.execute("DELETE FROM meta")  # the salt gone: nothing can be matched to a user
    db.close()
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="voxgate.replay"):
        assert forget_user_in_file(tmp_path / "ok.db", "erin") == 0
    assert "salt is missing" in caplog.text
    with pytest.raises(ReplayStoreError, match="salt is missing"):
        ReplayDetector(tmp_path / "ok.db", window_s=10**9)


KEY = os.urandom(32)


def test_every_erase_path_of_the_daemon_drops_the_fingerprints(tmp_path: Path) -> None:
    store = VoiceprintStore(tmp_path / "voiceprints.db", KEY)
    emb = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    for name in ("Dora", "Eve", "Finn", "Gus"):
        store.add_user(name, emb, "test/int8")
    book = LockoutBook(tmp_path / "lockout.db", LockoutConfig())
    path = tmp_path / "replay.db"
    det = ReplayDetector(path, window_s=10**9)
    cfg = VoxgateConfig(data_dir=tmp_path)
    users = UserServices(cfg, store, None, lambda e, **f: None, lockout=book, replay=det)
    for i, name in enumerate(("Dora", "Eve", "Finn", "Gus")):
        det.check_and_add(signal(30 + i), now=float(i), user=name)
        book.record(name, ok=True, now=float(i))  # a granted attempt leaves an entry
    assert users.check_erased() == []  # all seen enrolled
    # MQTT erase-user.
    assert users.command_erase({"user": "dora"})["erased"]
    # The daemon's API (and fleet sync, which calls forget the same way).
    assert store.erase("Eve")
    users._api_change("erased", "Eve")
    # `voxgate users erase finn` in another process: its store handle and forget_on_disk.
    other = VoiceprintStore(store.path, KEY)
    assert other.erase("finn")
    other.close()
    assert "1 replay fingerprint(s)" in forget_on_disk(cfg, "finn")
    assert users.check_erased() == ["Finn"]  # the daemon drops its copy in memory
    data = raw(path)
    assert not any(probe(s) in data for s in (30, 31, 32))
    assert probe(33) in data
    assert [caught(det, s, 100.0 + s) for s in (30, 31, 32, 33)] == [False] * 3 + [True]
    det.close()
    book.close()
    store.close()


def test_a_replay_store_that_cannot_drop_rows_does_not_keep_the_rest_of_an_erase(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The replay step of an erase can fail (the file locked by `voxgate users erase` in
    another process, a full disk). It ran before the retained-name clear and the recordings,
    in one try: the failure skipped both, and nothing tried again (the lockout entry that
    makes housekeeping look at the name was already gone): the erased person's recordings
    stayed on disk for good."""
    from voxgate.audit import AuditLog
    from voxgate.service.keep import AudioKeeper

    store = VoiceprintStore(tmp_path / "voiceprints.db", KEY)
    store.add_user("Erin", np.eye(3, 8, dtype=np.float32), "test/int8")
    kept = AudioKeeper(tmp_path / "audio", os.urandom(32), 7).store(np.ones(800, np.int16), "n1")
    assert kept is not None
    AuditLog(tmp_path / "audit.jsonl").append("decision", user="Erin", audio=str(kept))
    book = LockoutBook(tmp_path / "lockout.db", LockoutConfig())
    book.record("erin", ok=False)
    det = ReplayDetector(tmp_path / "replay.db", window_s=10**9)
    det.check_and_add(signal(40), now=1.0, user="Erin")
    det._db.execute("PRAGMA busy_timeout=50")  # not the 5 s default: a fast test

    class Link:
        def __init__(self) -> None:
            self.cleared: list[str] = []

        def forget_user(self, name: str) -> bool:
            self.cleared.append(name)
            return True

    link = Link()
    cfg = VoxgateConfig(data_dir=tmp_path)
    users = UserServices(cfg, store, None, lambda e, **f: None, lockout=book, link=link)
    users.replay = det
    assert store.erase("erin")
    other = sqlite3.connect(tmp_path / "replay.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process writing the file
    try:
        with caplog.at_level(logging.ERROR):
            dropped = users.forget("erin")
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert not kept.exists() and "1 kept recording(s)" in dropped
    assert "cannot delete the replay fingerprints of erin" in caplog.text
    assert "database is locked" in caplog.text
    assert link.cleared == ["erin"] and "retained user topic" in dropped
    assert "lockout entry" in dropped
    # Out of memory at once, and out of the file with the next attempt (the lock is gone).
    assert "1 replay fingerprint(s)" in dropped
    assert probe(40) in raw(tmp_path / "replay.db")
    assert not caught(det, 40, 2.0)
    assert probe(40) not in raw(tmp_path / "replay.db")
    det.close()
    book.close()
    store.close()


@contextmanager
def unwritable(cause: str, det: ReplayDetector) -> Iterator[None]:
    """The replay file refuses writes inside: another process holds its write lock (as
    `voxgate users erase` does while it deletes), or its disk is full (a real tmpfs)."""
    if cause == "locked":
        assert det._db is not None
        det._db.execute("PRAGMA busy_timeout=50")  # not the 5 s default: a fast test
        other = sqlite3.connect(det.path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")
            other.close()
    else:
        fill(det.path.parent)
        try:
            yield
        finally:
            free(det.path.parent)


@pytest.mark.parametrize("cause", ["locked", "full"])
def test_an_erase_the_replay_file_cannot_take_drops_from_memory_at_once_and_from_the_file_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, cause: str
) -> None:
    """Found reading forget: it ran the file's DELETE first, so a DELETE that failed (the file
    locked by another process, a full disk) raised with the erased user's fingerprints still
    in memory (their answers still caught as replays, still counted) and in the file, and
    nothing deleted those rows later. Now memory drops them at once, forget does not raise,
    and the first write that works deletes the rows (zeroed, out of the WAL), no restart."""
    folder = small_fs(tmp_path / "state", "1m") if cause == "full" else nullcontext(tmp_path)
    with folder as where:
        path = where / "replay.db"
        det = ReplayDetector(path, window_s=10**9)
        det.check_and_add(signal(1), now=1.0, user="Erin")
        det.check_and_add(signal(2), now=2.0, user="frank")
        det.check_and_add(signal(3), now=3.0, user="erin")
        with unwritable(cause, det):
            with caplog.at_level(logging.WARNING, logger="voxgate.replay"):
                assert det.forget("erin") == 2  # memory held both
            assert "cannot delete the replay fingerprints of erin" in caplog.text
            assert not caught(det, 1, 10.0) and not caught(det, 3, 11.0)
            assert caught(det, 2, 12.0)
            assert det.count() == 1
            assert probe(1) in raw(path)  # the file could not take the DELETE
        det.check_and_add(signal(4), now=20.0, user="frank")  # the first write that works
        data = raw(path)
        assert probe(1) not in data and probe(3) not in data
        assert probe(2) in data and probe(4) in data
        assert forget_user_in_file(path, "erin") == 0  # nothing left to delete
        det.close()
        again = ReplayDetector(path, window_s=10**9)  # a restart does not read them back
        assert again.count() == 2 and not caught(again, 1, 30.0) and caught(again, 2, 31.0)
        again.close()


def test_an_erase_the_replay_file_cannot_take_is_deleted_at_the_latest_when_it_stops(
    tmp_path: Path,
) -> None:
    """No attempt after the erase (a quiet door): the stop deletes the rows, or a restart
    would read them back."""
    path = tmp_path / "replay.db"
    det = ReplayDetector(path, window_s=10**9)
    det.check_and_add(signal(1), now=1.0, user="erin")
    with unwritable("locked", det):
        assert det.forget("erin") == 1
    det.close()
    assert probe(1) not in raw(path)
    assert ReplayDetector(path, window_s=10**9).count() == 0


def test_the_daemon_closes_the_replay_store_at_stop_deleting_what_an_erase_left(
    tmp_path: Path,
) -> None:
    """The daemon's stages never closed the replay store: what an erase left in a file that
    could not take the delete would stay for the next start to read back."""
    from voxgate.cli import main
    from voxgate.config import load_config
    from voxgate.service.loop import Daemon
    from voxgate.service.notify import Notifier
    from voxgate.service.stages import build_stages

    key = tmp_path / "vp.key"
    assert main(["users", "init-key", str(key)]) == 0
    path = tmp_path / "voxgate.yaml"
    path.write_text(
        f"data_dir: {tmp_path}\naudio: {{source: stdin}}\nmqtt: {{enabled: false}}\n"
        f"speaker: {{key_file: {key}}}\nchallenge: {{mode: digits}}\n"
    )
    d = Daemon(load_config(path), config_path=path, notifier=Notifier({}))
    d.stages = build_stages(d.cfg)
    det = d.stages.replay
    assert isinstance(det, ReplayDetector)
    det.check_and_add(signal(1), now=1.0, user="erin")
    with unwritable("locked", det):
        assert det.forget("erin") == 1
    assert probe(1) in raw(tmp_path / "replay.db")
    d._close_stages()  # as the daemon stops
    assert probe(1) not in raw(tmp_path / "replay.db")


@pytest.mark.parametrize("cause", ["locked", "full"])
def test_a_quiet_door_deletes_what_an_erase_left_in_the_file_without_an_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cause: str
) -> None:
    """Left alone at the fix above: the rows an erase could not delete waited for the next
    attempt or the stop, so a quiet door kept an erased user's fingerprints on disk for
    hours after the disk had room again. The daemon's housekeeping (every 5 s) now retries,
    at most every replay.ERASE_RETRY_S (a locked file makes each try wait for it)."""
    from voxgate import replay

    now = [100.0]
    monkeypatch.setattr(replay.time, "monotonic", lambda: now[0])
    folder = small_fs(tmp_path / "state", "1m") if cause == "full" else nullcontext(tmp_path)
    with folder as where:
        path = where / "replay.db"
        det = ReplayDetector(path, window_s=10**9)
        det.check_and_add(signal(1), now=1.0, user="erin")
        with unwritable(cause, det):
            det.forget("erin")
            det.retry_erased()  # still unwritable: nothing, no error
            assert probe(1) in raw(path)
        det.retry_erased()  # too soon after the last try
        assert probe(1) in raw(path)
        now[0] += replay.ERASE_RETRY_S
        det.retry_erased()
        assert probe(1) not in raw(path)
        det.close()


def test_the_daemons_housekeeping_retries_the_replay_erase(tmp_path: Path) -> None:
    """The wiring of the test above: UserServices.housekeeping, as the daemon's loop calls it
    every second, deletes the rows once the file takes writes again."""
    store = VoiceprintStore(tmp_path / "voiceprints.db", KEY)
    det = ReplayDetector(tmp_path / "replay.db", window_s=10**9)
    det.check_and_add(signal(41), now=1.0, user="erin")
    users = UserServices(VoxgateConfig(data_dir=tmp_path), store, None, lambda e, **f: None)
    users.replay = det
    with unwritable("locked", det):
        det.forget("erin")
    assert probe(41) in raw(tmp_path / "replay.db")
    users.housekeeping()
    assert probe(41) not in raw(tmp_path / "replay.db")
    det.close()
    store.close()
