"""The door's data folder fills up (an SD card full of journal or kept audio) while
`voxgate run` works: a real daemon process, a real mosquitto, the data folder on a small
tmpfs filled to the last block, then freed again. The lock must still get its signed
decisions, each failed write must say which file and why, and the door must catch up by
itself once space is back (docs/service.md, "Disk full")."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from broker import Broker
from mqtt_helpers import Recorder, wait_until
from small_fs import FILLER, fill, free, small_fs
from test_daemon_e2e import (
    ATTEMPT,
    DEV,
    DaemonProcess,
    decisions,
    device,  # noqa: F401 (the fixture, used through full_door)
    enroll,
    pause,
    speech,
    voxgate,
    write_config,
)

pytest.importorskip("voxgate.embedding")
pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")


@contextmanager
def online_door(config: Path, broker: Broker) -> Iterator[tuple[DaemonProcess, Recorder]]:
    """`voxgate run` on stdin, online on the broker, and the lock's view of its topics; the
    daemon is killed on the way out if a test left it running."""
    rec = Recorder(broker, "lock", [f"voxgate/{DEV}/#"])
    daemon = DaemonProcess(config)
    try:
        daemon.feed(pause(0.3))
        try:
            rec.wait_for(f"voxgate/{DEV}/status", lambda m: m.payload == b"online", timeout=30)
        except AssertionError as exc:  # say why: a daemon that stopped logged it
            raise AssertionError(f"{exc}\n{daemon.log()[-3000:]}") from None
        yield daemon, rec
    finally:
        rec.close()
        if daemon.proc.poll() is None:
            daemon.proc.kill()


@pytest.fixture
def full_door(request: pytest.FixtureRequest) -> Any:
    door = request.getfixturevalue("device")
    data = Path(door["doc"]["data_dir"])
    with small_fs(data):
        done = enroll(door, "bob", "en+m3")
        assert done.returncode == 0, done.stdout + done.stderr
        yield door, data


def test_a_full_disk_still_sends_the_decision_and_saves_the_sequence_once_freed(
    full_door: tuple[dict[str, Any], Path], broker: Broker
) -> None:
    """Seen: with the data folder full, decision-seq.json could not be replaced, every
    decision failed with a traceback ("decision granted could not be published") and the
    lock got nothing: bob stood at a shut door, while the log said "decision granted"."""
    door, data = full_door
    attempt = np.concatenate([pause(0.5), speech(ATTEMPT, "en+m3"), pause(1.2)])
    with online_door(door["config"], broker) as (daemon, rec):
        fill(data)
        daemon.feed(attempt)
        wait_until(lambda: len(decisions(rec)) >= 1, 20, "a decision on the full disk")
        daemon.feed(pause(1.0))
        free(data)
        daemon.feed(attempt)
        wait_until(lambda: len(decisions(rec)) >= 2, 20, "a decision once space is back")
        assert daemon.close() == 0
    full, freed = decisions(rec)
    assert (full.outcome, full.user) == ("granted", "bob"), daemon.log()
    assert (freed.outcome, freed.user) == ("granted", "bob"), daemon.log()
    assert freed.seq > full.seq
    log = daemon.log()
    assert "could not be published" not in log and "Traceback" not in log, log
    assert f"decision sequence {data / 'decision-seq.json'}: cannot save (disk full)" in log
    assert log.count("cannot save (disk full)") == 1  # once, not per decision
    assert "saved again" in log
    # A restart continues above every number sent.
    assert json.loads((data / "decision-seq.json").read_text())["seq"] >= freed.seq


PHRASE = "open the big old front door of the house right now"


def test_a_full_disk_keeps_checking_replays_from_memory(
    full_door: tuple[dict[str, Any], Path], broker: Broker
) -> None:
    """Seen: with the data folder full, replay.db refused the answer's fingerprint
    ("database or disk is full"), the attempt was aborted by a stage error and the lock got
    no decision at all. Now the fingerprint is held in memory: the answer gets its decision,
    and the same recording played again is still caught as a replay."""
    door, data = full_door
    door["doc"]["challenge"] = {"mode": "passphrase", "passphrase": PHRASE, "timeout_s": 10}
    write_config(door["dir"], door["doc"])
    wake = np.concatenate([pause(0.5), speech("hello door, it is bob", "en+m3"), pause(1.5)])
    answer = np.concatenate([speech(PHRASE, "en+m3"), pause(2.0)])
    with online_door(door["config"], broker) as (daemon, rec):
        fill(data)
        for n in (1, 2):
            daemon.feed(wake)
            daemon.feed(answer)
            wait_until(lambda n=n: len(decisions(rec)) >= n, 20, f"decision {n}")
            daemon.feed(pause(1.0))
        assert daemon.close() == 0
    first, again = decisions(rec)
    log = daemon.log()
    assert (first.outcome, first.user) == ("granted", "bob"), log
    assert (again.outcome, again.reasons) == ("denied", ("replay",)), log
    assert "attempt aborted" not in log and "Traceback" not in log, log
    assert f"replay store {data / 'replay.db'}: cannot write (database or disk is full)" in log


def test_a_first_start_on_a_full_disk_checks_replays_from_memory_and_saves_them_later(
    request: pytest.FixtureRequest, broker: Broker
) -> None:
    """Seen: `voxgate run` started on a full data folder with no replay.db yet stopped the
    challenge stage ("cannot create the replay store", exit 69) and systemd restarted it
    until there was room: the door opened for nobody. Now the fingerprints are kept in
    memory (a replay of an answer given since the start is refused), and the file is made,
    with what memory holds, by the first write once the disk has room."""
    from voxgate.replay import ReplayDetector, fingerprints_of

    door = request.getfixturevalue("device")
    data = Path(door["doc"]["data_dir"])
    # The voiceprints elsewhere: this is about the replay store alone.
    door["doc"]["speaker"]["database"] = str(door["dir"] / "voiceprints.db")
    door["doc"]["challenge"] = {"mode": "passphrase", "passphrase": PHRASE, "timeout_s": 10}
    write_config(door["dir"], door["doc"])
    wake = np.concatenate([pause(0.5), speech("hello door, it is bob", "en+m3"), pause(1.5)])
    answer = np.concatenate([speech(PHRASE, "en+m3"), pause(2.0)])
    with small_fs(data):
        done = enroll(door, "bob", "en+m3")
        assert done.returncode == 0, done.stdout + done.stderr
        assert not (data / "replay.db").exists()
        fill(data)
        with online_door(door["config"], broker) as (daemon, rec):
            for n in (1, 2):
                daemon.feed(wake)
                daemon.feed(answer)
                wait_until(lambda n=n: len(decisions(rec)) >= n, 20, f"decision {n}")
                daemon.feed(pause(1.0))
            assert not (data / "replay.db").exists()
            freed_at = time.time()
            free(data)
            daemon.feed(wake)
            daemon.feed(answer)  # the first fingerprint written with room makes the file
            wait_until(lambda: len(decisions(rec)) >= 3, 20, "decision 3")
            assert daemon.close() == 0
        log = daemon.log()
        stored = fingerprints_of(data / "replay.db", "bob")
        again = ReplayDetector(data / "replay.db", window_s=600)
        replayed = again.check_and_add(answer, time.time(), keep=False)
        again.close()
    first, second, third = decisions(rec)
    assert (first.outcome, first.user) == ("granted", "bob"), log
    assert (second.outcome, second.reasons) == ("denied", ("replay",)), log
    assert third.outcome == "denied" and "replay" in third.reasons, log
    assert "attempt aborted" not in log and "Traceback" not in log, log
    assert log.count(f"cannot create the replay store {data / 'replay.db'}") == 1, log
    # Every answer the door kept, those from the full disk included (stored at their time).
    assert len(stored) == 3, stored
    assert sum(float(str(s["stored_at"])) < freed_at for s in stored) == 2, stored
    assert replayed.is_replay  # a restart now still knows the first answer


def test_audit_lines_a_full_disk_held_are_not_lost_when_the_daemon_stops(
    request: pytest.FixtureRequest, broker: Broker
) -> None:
    """Seen: with the audit log on a full disk the decision went out and its line was held in
    memory, as documented; but a stop (SIGTERM, a restart) before space came back dropped
    the held lines without a word: the log named the disk, never which decisions were lost.
    Now the daemon's last log lines carry them whole. (/dev/full: every write ENOSPC.)"""
    door = request.getfixturevalue("device")
    done = enroll(door, "bob", "en+m3")
    assert done.returncode == 0, done.stdout + done.stderr
    full = door["dir"] / "audit-on-full-disk.jsonl"
    full.symlink_to("/dev/full")
    door["doc"]["audit"] = {"path": str(full)}
    write_config(door["dir"], door["doc"])
    with online_door(door["config"], broker) as (daemon, rec):
        daemon.feed(np.concatenate([pause(0.5), speech(ATTEMPT, "en+m3"), pause(1.2)]))
        wait_until(lambda: len(decisions(rec)) >= 1, 20, "the decision")
        assert daemon.close() == 0
    (sent,) = decisions(rec)
    log = daemon.log()
    assert "cannot write (disk full)" in log
    assert "line(s) could not be written before stopping" in log, log[-3000:]
    held = [
        json.loads(line.split("unwritten audit line: ", 1)[1])
        for line in log.splitlines()
        if "unwritten audit line: " in line
    ]
    assert [h["event"] for h in held] == ["service_start", "decision", "service_stop"]
    assert (held[1]["outcome"], held[1]["user"]) == (sent.outcome, sent.user)


def test_a_recording_the_full_disk_cut_short_is_not_left_behind(
    full_door: tuple[dict[str, Any], Path], broker: Broker
) -> None:
    """Seen with audit.keep_audio: the disk filled mid-write, "kept audio ... not written"
    was logged and the decision's audit line said audio null, but the cut-off file stayed
    in the audio folder. Nothing names it, so `users erase` never removed it: a piece of
    the person's voice (AES-GCM without its tag still decrypts) kept until retention."""
    door, data = full_door
    audio_key = door["dir"] / "audio.key"
    audio_key.write_bytes(bytes(range(32)))
    audio_key.chmod(0o600)
    door["doc"]["audit"] = {"keep_audio": True, "audio_key_file": str(audio_key)}
    write_config(door["dir"], door["doc"])
    with online_door(door["config"], broker) as (daemon, rec):
        fill(data)
        free_kib = 24  # less than the recording: the write starts and is cut off
        with open(data / FILLER, "r+b") as f:
            f.truncate(f.seek(0, 2) - free_kib * 1024)
        daemon.feed(np.concatenate([pause(0.5), speech(ATTEMPT, "en+m3"), pause(1.2)]))
        wait_until(lambda: len(decisions(rec)) >= 1, 20, "the decision")
        assert daemon.close() == 0
    (sent,) = decisions(rec)
    assert (sent.outcome, sent.user) == ("granted", "bob"), daemon.log()
    assert "kept audio" in daemon.log() and "not written" in daemon.log()
    assert list((data / "audio").iterdir()) == []


def test_a_full_disk_at_start_is_named_and_passes_once_space_is_back(tmp_path: Path) -> None:
    """Seen: on a full data folder `voxgate run` (exit 69) and `voxgate users list` both
    said "cannot use the voiceprint database (cannot commit - no transaction is active)":
    SQLite's real error (a "disk I/O error": it could not size voiceprints.db-shm) was
    hidden by a COMMIT after it, and nothing said the disk was full. The daemon now reads
    the store and runs (the test below); the commands still stop, saying so."""
    from test_sd_card_damaged import _door, _run

    (tmp_path / "door").mkdir()
    cfg, data = _door(tmp_path / "door", "off")
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    with small_fs(data, "1m"):
        for f in moved.iterdir():
            shutil.copy(f, data / f.name)
        fill(data)
        start = _run(cfg)
        listed = voxgate("users", "list", "-c", str(cfg))
        free(data)
        again = voxgate("users", "list", "-c", str(cfg))
    assert start.returncode == 0, start.stderr[-2000:]  # read it, ran, the input file ended
    for done in (start, listed):
        assert f"the disk is full: free space on {data}" in done.stderr, done.stderr[-2000:]
        assert "no transaction is active" not in done.stderr
    assert listed.returncode != 0
    assert again.returncode == 0 and "alice" in again.stdout, again.stderr


def test_an_enrollment_or_erase_the_full_disk_kept_out_of_the_audit_log_is_shown(
    request: pytest.FixtureRequest,
) -> None:
    """Seen: `voxgate enroll` and `voxgate users erase` with the audit log on a full disk
    printed "cannot write (disk full); keeping 1 line(s) in memory and going on", then
    exited: the enrollment or erase was done and its audit line was gone, unseen. The
    command now says so and prints the line. (/dev/full: every write ENOSPC.)"""
    door = request.getfixturevalue("device")
    full = door["dir"] / "audit-on-full-disk.jsonl"
    full.symlink_to("/dev/full")
    door["doc"]["audit"] = {"path": str(full)}
    write_config(door["dir"], door["doc"])
    enrolled = enroll(door, "bob", "en+m3")
    erased = voxgate("users", "erase", "bob", "-c", str(door["config"]))
    for done, event in ((enrolled, "enrollment"), (erased, "erase")):
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"this {event} is not in it" in done.stderr, done.stderr
        line = json.loads(done.stderr.strip().splitlines()[-1])
        assert (line["event"], line["user"], line["via"]) == (event, "bob", "cli")


def test_locks_set_while_the_disk_was_full_are_saved_once_it_has_room(tmp_path: Path) -> None:
    """Seen (the daemon's lockout book on a filled tmpfs): a lock set while the disk was
    full lived only in memory, and stayed there after space came back (a restart on the
    full disk even said "changes are not saved until a restart"); the next restart, for
    any reason, cleared it. Both cases now save the held changes with the next write that
    works."""
    from voxgate.config.service import LockoutConfig
    from voxgate.lockout import LockoutBook

    cfg = LockoutConfig(max_failures=2)
    with small_fs(tmp_path / "state", "1m") as folder:
        path = folder / "lockout.db"
        book = LockoutBook(path, cfg)
        t = time.time()  # entries whose last failure is long past expire at a restart
        book.record("alice", ok=False, now=t + 0)
        book.close()
        fill(folder)
        book = LockoutBook(path, cfg)  # a restart on the full disk
        for _ in range(2):
            book.record("bob", ok=False, now=t + 0)
        assert book.state("bob", t + 1).locked  # enforced from memory meanwhile
        free(folder)
        book.record("carol", ok=False, now=t + 2)  # the first write with room
        fill(folder)  # and again, while it runs
        for _ in range(2):
            book.record("dave", ok=False, now=t + 3)
        free(folder)
        book.record("carol", ok=False, now=t + 4)
        book.close()
        after = LockoutBook(path, cfg)
        assert after.state("bob", t + 5).locked
        assert after.state("dave", t + 5).locked
        assert after.state("carol", t + 5).user_failures == 2
        assert after.state("alice", t + 5).user_failures == 1
        after.close()


def test_a_lock_held_in_memory_is_saved_once_there_is_room_without_another_attempt(
    tmp_path: Path,
) -> None:
    """A lock set while the disk was full was saved only by the next write: a quiet door
    restarted after space came back (an update, a reboot) forgot it. The daemon's
    housekeeping now calls save_held() every second."""
    from voxgate.config.service import LockoutConfig
    from voxgate.lockout import LockoutBook

    cfg = LockoutConfig(max_failures=2)
    with small_fs(tmp_path / "state", "1m") as folder:
        path = folder / "lockout.db"
        book = LockoutBook(path, cfg)
        t = time.time()
        book.record("alice", ok=True, now=t)  # the file exists, as on a door in service
        fill(folder)
        for _ in range(2):
            book.record("bob", ok=False, now=t)
        assert book.state("bob", t + 1).locked and book.unsaved
        book.save_held()  # still full: still held
        assert book.unsaved
        free(folder)
        book.save_held()
        assert not book.unsaved
        book.close()
        after = LockoutBook(path, cfg)  # what a restart now reads
        assert after.state("bob", t + 1).locked
        after.close()


def test_answers_held_while_the_disk_was_full_are_saved_once_it_has_room(tmp_path: Path) -> None:
    """Seen (the daemon's replay store on a filled tmpfs): an answer whose fingerprint could
    not be saved was compared with from memory, and stayed memory-only after space came
    back; after the next restart its replay passed. It is saved now with the next write
    that works."""
    from voxgate.replay import ReplayDetector

    first = speech("four one seven two nine", "en+m3")
    second = speech("eight three zero six five", "en+m3")
    with small_fs(tmp_path / "state", "1m") as folder:
        store = ReplayDetector(folder / "replay.db", window_s=600)
        fill(folder)
        assert not store.check_and_add(first, 1000.0).is_replay  # held in memory
        assert store.check_and_add(first, 1001.0, keep=False).is_replay
        free(folder)
        assert not store.check_and_add(second, 1002.0).is_replay  # the first write with room
        store.close()
        again = ReplayDetector(folder / "replay.db", window_s=600)  # a restart
        assert again.check_and_add(first, 1003.0, keep=False).is_replay
        assert again.count() == 2
        again.close()


def test_an_anchor_the_full_disk_refuses_is_logged_once_and_rewritten_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Seen (the daemon's audit log on a filled tmpfs): each new line still fitted in the
    log file's last block, but the anchor (a new file, renamed over the old) did not, and
    "audit anchor ...: cannot write" was logged for every single line; docs/service.md says
    the error is logged once."""
    from voxgate.audit import AuditLog, verify

    with small_fs(tmp_path / "state", "1m") as folder:
        log = AuditLog(folder / "audit.jsonl")
        log.append("service_start")
        fill(folder)
        for _ in range(3):
            log.append("decision", outcome="denied")
        assert log.pending == 0  # the lines themselves were written
        failed = caplog.text.count("audit anchor")
        free(folder)
        log.append("decision", outcome="denied")
        assert verify(folder / "audit.jsonl").ok
    assert failed == 1, caplog.text
    assert "written again" in caplog.text


def test_an_anchor_the_full_disk_refused_is_written_once_there_is_room_without_a_new_line(
    tmp_path: Path,
) -> None:
    """Seen with `voxgate run` under a notify socket on a filled tmpfs: once space was back
    the anchor stayed behind the log until the next audit line (on a quiet door, hours), so
    a power cut meanwhile left a log that verify reports as appended to without its anchor.
    The daemon's housekeeping calls flush_pending() every second while the log is failing."""
    from voxgate.audit import AuditLog, verify

    with small_fs(tmp_path / "state", "1m") as folder:
        log = AuditLog(folder / "audit.jsonl")
        log.append("service_start")
        fill(folder)
        log.append("decision", outcome="denied")
        assert log.pending == 0 and log.failing  # the line fitted, its anchor did not
        free(folder)
        assert log.flush_pending() == 0
        assert not log.failing
        anchor = json.loads((folder / "audit.jsonl.anchor").read_text())
        assert anchor["seq"] == 2
        assert verify(folder / "audit.jsonl").ok


def test_a_line_the_full_backlog_drops_is_carried_whole_to_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past audit.MAX_PENDING held lines the oldest left memory with only "oldest unwritten
    line dropped (N so far)": the record was gone. Lines still held at a stop already went to
    the journal whole ('unwritten audit line: {...}'); a dropped one now does the same. The
    limit is lowered here (10000 lines would take minutes): the code path is the same."""
    from voxgate import audit

    monkeypatch.setattr(audit, "MAX_PENDING", 3)
    with small_fs(tmp_path / "state", "1m") as folder:
        log = audit.AuditLog(folder / "audit.jsonl")
        log.append("service_start")
        fill(folder)
        big = "x" * 8192  # more than a file's slack in its last block: the write fails
        for n in range(5):
            log.append("decision", outcome="denied", n=n, pad=big)
        assert log.pending == 3 and log.dropped == 2
    carried = [
        json.loads(r.getMessage().split("unwritten audit line: ", 1)[1])
        for r in caplog.records
        if "unwritten audit line: " in r.getMessage()
    ]
    assert [(c["event"], c["n"], c["pad"]) for c in carried] == [
        ("decision", 0, big),
        ("decision", 1, big),
    ]


def test_a_first_start_on_a_full_disk_leaves_no_empty_state_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Seen (a first start with the data folder on a filled tmpfs): lockout.db and
    replay.db were left at 0 bytes (SQLite makes the file, then cannot write its schema),
    and the next start logged them as "cut by a power cut or a failed restore". Each is
    now built under a temporary name and linked into place: a full disk leaves no file,
    the log says it could not be created, the lockouts and the replay fingerprints go on
    from memory and each file is made once there is room."""
    import logging

    from voxgate.config.service import LockoutConfig
    from voxgate.lockout import LockoutBook
    from voxgate.replay import ReplayDetector, forget_user_in_file

    cfg = LockoutConfig(max_failures=2)
    t = time.time()
    first = speech("four one seven two nine", "en+m3")
    second = speech("eight three zero six five", "en+m3")
    with small_fs(tmp_path / "state", "1m") as folder:
        fill(folder)
        with caplog.at_level(logging.INFO):
            book = LockoutBook(folder / "lockout.db", cfg)
            for _ in range(2):
                book.record("bob", ok=False, now=t)
            assert book.state("bob", t + 1).locked  # enforced from memory
            store = ReplayDetector(folder / "replay.db", window_s=600)
            assert not store.check_and_add(first, t, user="bob").is_replay
            assert store.check_and_add(first, t + 1, keep=False).is_replay  # from memory
        assert sorted(p.name for p in folder.iterdir()) == [FILLER], list(folder.iterdir())
        assert f"cannot create lockout state {folder / 'lockout.db'}" in caplog.text
        assert caplog.text.count(f"cannot create the replay store {folder / 'replay.db'}") == 1
        assert "cannot write" not in caplog.text  # the one line says it all
        assert "not a replay-fingerprint database" not in caplog.text
        free(folder)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            book.record("carol", ok=False, now=t + 2)  # the first write with room makes it
            book.close()
            again = LockoutBook(folder / "lockout.db", cfg)
            assert not store.check_and_add(second, t + 2, user="bob").is_replay  # and this one
            store.close()
            replays = ReplayDetector(folder / "replay.db", window_s=600)
            assert replays.check_and_add(first, t + 3, keep=False).is_replay  # saved
            replays.close()
        assert again.state("bob", t + 3).locked and again.state("carol", t + 3).user_failures
        again.close()
        assert "is empty" not in caplog.text, caplog.text
        assert "1 answer(s) held in memory saved" in caplog.text, caplog.text
        # Saved under the file's salt: erasing bob drops both.
        assert forget_user_in_file(folder / "replay.db", "bob") == 2


def test_a_replay_store_a_read_only_folder_kept_from_memory_is_made_once_writable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The same for a data folder that cannot be written at all at the first start (a
    file system mounted read-only after an error): the answers are checked from memory and
    the file is made, with them, once the folder is writable again."""
    import logging
    import subprocess

    from voxgate.replay import ReplayDetector

    first = speech("four one seven two nine", "en+m3")
    second = speech("eight three zero six five", "en+m3")
    with small_fs(tmp_path / "state", "1m") as folder:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        with caplog.at_level(logging.WARNING):
            store = ReplayDetector(folder / "replay.db", window_s=600)
            assert not store.check_and_add(first, 1000.0, user="bob").is_replay
            assert store.check_and_add(first, 1001.0, keep=False).is_replay
            subprocess.run(["mount", "-o", "remount,rw", str(folder)], check=True)
            assert not store.check_and_add(second, 1002.0, user="bob").is_replay
            store.close()
        assert "cannot create the replay store" in caplog.text
        assert "Read-only file system" in caplog.text, caplog.text
        again = ReplayDetector(folder / "replay.db", window_s=600)
        assert again.check_and_add(first, 1003.0, keep=False).is_replay
        assert again.count() == 2
        assert again.forget("bob") == 2
        again.close()


def test_answers_held_before_another_process_made_the_replay_store_are_erased_with_their_user(
    tmp_path: Path,
) -> None:
    """The file the store could not make at start may be made by another process before
    this one writes (under its own salt): the answers held in memory are saved under that
    salt, so that erasing their user still drops them."""
    import subprocess

    from voxgate.replay import ReplayDetector, forget_user_in_file

    first = speech("four one seven two nine", "en+m3")
    with small_fs(tmp_path / "state", "1m") as folder:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        held = ReplayDetector(folder / "replay.db", window_s=600)
        assert not held.check_and_add(first, 1000.0, user="Bob").is_replay
        subprocess.run(["mount", "-o", "remount,rw", str(folder)], check=True)
        ReplayDetector(folder / "replay.db", window_s=600).close()  # the other process
        held.check_and_add(speech("eight three zero six five", "en+m3"), 1001.0, user="bob")
        held.close()
        assert forget_user_in_file(folder / "replay.db", "bob") == 2


def test_a_restart_on_a_full_disk_reads_the_replay_store_and_holds_new_answers_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Seen (a door's SD card filled up, then the door rebooted): the existing replay.db
    could not be opened (SQLite cannot make its -wal and -shm files on a full disk), the
    store raised "not a replay-fingerprint database (disk I/O error)" and the challenge
    stage stopped with exit 69: the door opened for nobody, restarted by systemd for ever.
    Now the fingerprints in the file are read (read-only), a replay of an answer given
    before the restart is still caught, new answers are held in memory, the log says the
    disk is full, and the first write with room saves the held answers."""
    import logging

    from voxgate.replay import ReplayDetector

    before = speech("four one seven two nine", "en+m3")
    after = speech("eight three zero six five", "en+m3")
    later = speech("three three one four two", "en+m3")
    with small_fs(tmp_path / "state", "1m") as folder:
        path = folder / "replay.db"
        store = ReplayDetector(path, window_s=600)  # a normal run, stopped cleanly
        assert not store.check_and_add(before, 1000.0, user="bob").is_replay
        store.close()
        fill(folder)
        with caplog.at_level(logging.WARNING):
            store = ReplayDetector(path, window_s=600)  # the reboot on the full disk
            assert store.check_and_add(before, 1001.0, keep=False).is_replay  # from the file
            assert not store.check_and_add(after, 1002.0, user="bob").is_replay  # held
            assert store.check_and_add(after, 1003.0, keep=False).is_replay  # from memory
            assert store.count() == 2  # one read from the file, one held (review: it said 0)
        assert f"replay store {path}: the disk is full" in caplog.text, caplog.text
        assert "not a replay-fingerprint database" not in caplog.text
        assert "Traceback" not in caplog.text
        free(folder)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert not store.check_and_add(later, 1004.0, user="bob").is_replay  # saves all
            store.close()
        assert "1 answer(s) held in memory saved" in caplog.text, caplog.text
        again = ReplayDetector(path, window_s=600)  # the next restart knows all three
        for answer in (before, after, later):
            assert again.check_and_add(answer, 1005.0, keep=False).is_replay
        assert again.count() == 3
        assert again.forget("bob") == 3  # saved under the file's salt
        again.close()


def test_a_user_erased_while_the_replay_store_was_read_from_a_full_disk_is_dropped_with_room(
    tmp_path: Path,
) -> None:
    """Erasing a user on the daemon while the replay store was read from a full disk can
    only drop the user's fingerprints from memory: the ones in the file are deleted by the
    first write with room, not read back at the next restart. Their bytes go from the file
    then too (found reading _catch_up: it deleted them, but the WAL was not emptied, so the
    main file kept them until SQLite's next checkpoint, at the latest the stop)."""
    from tests.unit.test_replay_erase import raw
    from voxgate.replay import ReplayDetector, fingerprint, forget_user_in_file

    bobs = speech("four one seven two nine", "en+m3")
    alices = speech("eight three zero six five", "en+m3")
    with small_fs(tmp_path / "state", "1m") as folder:
        path = folder / "replay.db"
        store = ReplayDetector(path, window_s=600)
        store.check_and_add(bobs, 1000.0, user="bob")
        store.close()
        fill(folder)
        store = ReplayDetector(path, window_s=600)
        assert store.forget("bob") == 1
        assert not store.check_and_add(bobs, 1001.0, keep=False).is_replay
        free(folder)
        store.check_and_add(alices, 1002.0, user="alice")  # the first write with room
        assert fingerprint(bobs)[0].astype("<u4").tobytes()[:48] not in raw(path)
        store.close()
        assert forget_user_in_file(path, "bob") == 0  # gone already
        assert forget_user_in_file(path, "alice") == 1


def test_a_door_rebooted_on_a_full_disk_comes_online_and_still_catches_earlier_answers(
    request: pytest.FixtureRequest, broker: Broker
) -> None:
    """Seen (the field case: a door's SD card fills up, then the door reboots, with every
    store made by earlier runs): `voxgate run` stopped the speaker stage ("voiceprints.db:
    cannot use the voiceprint database (disk I/O error); the disk is full") and, with the
    voiceprints elsewhere, the challenge stage ("replay.db: not a replay-fingerprint
    database (disk I/O error)"), exit 69, restarted by systemd for ever: the door opened for
    nobody. Now it comes online, the answer given before the
    reboot is still refused as a replay (read from the file), and the decision's audit line
    follows the full-disk policy (docs/service.md): written, or held and carried whole by
    the daemon's last log lines."""
    door = request.getfixturevalue("device")
    data = Path(door["doc"]["data_dir"])
    door["doc"]["challenge"] = {"mode": "passphrase", "passphrase": PHRASE, "timeout_s": 10}
    write_config(door["dir"], door["doc"])
    wake = np.concatenate([pause(0.5), speech("hello door, it is bob", "en+m3"), pause(1.5)])
    answer = np.concatenate([speech(PHRASE, "en+m3"), pause(2.0)])
    with small_fs(data):
        done = enroll(door, "bob", "en+m3")
        assert done.returncode == 0, done.stdout + done.stderr
        with online_door(door["config"], broker) as (daemon, rec):  # a normal run
            daemon.feed(wake)
            daemon.feed(answer)
            wait_until(lambda: len(decisions(rec)) >= 1, 20, "the first decision")
            daemon.feed(pause(1.0))
            assert daemon.close() == 0
        (granted,) = decisions(rec)
        assert (granted.outcome, granted.user) == ("granted", "bob"), daemon.log()
        stores = ("voiceprints.db", "replay.db", "lockout.db", "audit.jsonl", "decision-seq.json")
        for name in stores:
            assert (data / name).is_file(), name
        fill(data)
        with online_door(door["config"], broker) as (daemon, rec):  # the reboot
            daemon.feed(wake)
            daemon.feed(answer)  # a recording of the answer given before
            wait_until(lambda: len(decisions(rec)) >= 1, 20, "a decision on the full disk")
            daemon.feed(pause(1.0))
            assert daemon.close() == 0
        written = (data / "audit.jsonl").read_text()
    (replayed,) = decisions(rec)
    log = daemon.log()
    assert (replayed.outcome, replayed.reasons) == ("denied", ("replay",)), log
    assert "attempt aborted" not in log and "Traceback" not in log, log
    assert "not a replay-fingerprint database" not in log, log
    assert f"replay store {data / 'replay.db'}: the disk is full" in log, log
    assert f"the disk is full: free space on {data}; reading it" in log, log  # voiceprints
    held = [
        json.loads(line.split("unwritten audit line: ", 1)[1])
        for line in log.splitlines()
        if "unwritten audit line: " in line
    ]
    lines = [json.loads(x) for x in written.splitlines() if x.strip()] + held
    decided = [(x["outcome"], x["reasons"]) for x in lines if x["event"] == "decision"]
    assert decided == [("granted", []), ("denied", ["replay"])], lines


def test_answers_in_a_wal_a_full_disk_cannot_read_are_named_and_read_once_it_has_room(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The rare case of the restart above: replay.db-wal holds answers not yet merged into
    the file and there is no -shm to read it with (a copy, a cleanup), which a full disk
    cannot make. The file is read without them (immutable=1), the log says how much of the
    -wal was left unread, and they are read, and checked again, once writes work."""
    import logging

    from voxgate.replay import ReplayDetector

    merged = speech("four one seven two nine", "en+m3")
    unmerged = speech("eight three zero six five", "en+m3")
    later = speech("three three one four two", "en+m3")
    keep = tmp_path / "crash"
    keep.mkdir()
    with small_fs(tmp_path / "state", "1m") as folder:
        path = folder / "replay.db"
        store = ReplayDetector(path, window_s=600)
        store.check_and_add(merged, 1000.0, user="bob")
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[union-attr]
        store.check_and_add(unmerged, 1001.0, user="bob")
        for name in ("replay.db", "replay.db-wal"):  # the files as a power cut left them
            shutil.copy(folder / name, keep / name)
        store.close()
        for name in ("replay.db", "replay.db-wal"):
            shutil.copy(keep / name, folder / name)
        assert not (folder / "replay.db-shm").exists()
        fill(folder)
        with caplog.at_level(logging.WARNING):
            store = ReplayDetector(path, window_s=600)
            assert store.check_and_add(merged, 1002.0, keep=False).is_replay
            assert not store.check_and_add(unmerged, 1003.0, keep=False).is_replay  # unread
        assert "replay.db-wal holds" in caplog.text and "not yet merged" in caplog.text
        free(folder)
        store.check_and_add(later, 1004.0, user="bob")  # the first write with room
        assert store.check_and_add(unmerged, 1005.0, keep=False).is_replay  # read now
        store.close()


def test_the_daemon_reads_voiceprints_from_a_full_disk_and_writes_once_it_has_room(
    tmp_path: Path,
) -> None:
    """Seen (a door's SD card filled up, then the door rebooted): voiceprints.db could not
    be opened (SQLite cannot size its -shm), the speaker stage stopped with exit 69 and
    systemd restarted the daemon until someone freed space: nobody got in. The daemon's
    store (read_when_full) now reads the file; a write says the disk is full; once there is
    room it writes again, and a change another process made is seen (an erase must count)."""
    from voxgate.voiceprints import StoreError, VoiceprintStore

    key = bytes(range(32))
    emb = np.random.default_rng(1).standard_normal((3, 256))
    with small_fs(tmp_path / "state", "1m") as folder:
        path = folder / "voiceprints.db"
        with VoiceprintStore(path, key) as store:
            store.add_user("alice", emb, "test-model/1", {"takes": 3})
            store.add_user("bob", emb, "test-model/1", {"takes": 3})
        fill(folder)
        with pytest.raises(StoreError, match="the disk is full"):
            VoiceprintStore(path, key)  # commands keep their policy: say it and stop
        store = VoiceprintStore(path, key, read_when_full=True)  # the daemon at the reboot
        assert sorted(u.name for u in store.users()) == ["alice", "bob"]
        assert store.get("alice") is not None
        with pytest.raises(StoreError, match="the disk is full"):
            store.add_user("carol", emb, "test-model/1", {"takes": 3})
        free(folder)
        with VoiceprintStore(path, key) as other:  # `voxgate users erase bob`
            assert other.erase("bob")
        assert store.get("bob") is None  # the daemon sees it at once
        store.add_user("carol", emb, "test-model/1", {"takes": 3})  # and writes again
        store.close()
        with VoiceprintStore(path, KEY) as after:
            assert sorted(u.name for u in after.users()) == ["alice", "carol"]


KEY = bytes(range(32))
EMB = np.random.default_rng(1).standard_normal((3, 256))


@contextmanager
def alice_read_from_a_full_disk(tmp_path: Path) -> Iterator[tuple[Path, Path, Any]]:
    """A voiceprint store holding alice on a 1 MB tmpfs, filled, then opened as the daemon
    opens it at a reboot (read_when_full): (folder, file, store). Closed at the end."""
    from voxgate.voiceprints import VoiceprintStore

    with small_fs(tmp_path / "state", "1m") as folder:
        path = folder / "voiceprints.db"
        with VoiceprintStore(path, KEY) as store:
            store.add_user("alice", EMB, "test-model/1")
        fill(folder)
        store = VoiceprintStore(path, KEY, read_when_full=True)
        try:
            yield folder, path, store
        finally:
            store.close()


def test_a_voiceprint_file_moved_aside_while_read_from_a_full_disk_is_a_store_error(
    tmp_path: Path,
) -> None:
    """Found in review: read from a full disk (immutable=1, no locks), each operation stat()s
    the file to see whether another process changed it; once it was moved aside that raised
    FileNotFoundError, an OSError the daemon's scorer does not catch (StoreError only), and
    the daemon's loop died. It is a StoreError naming the file now, and the store reads
    again once the file is back."""
    import os

    from voxgate.voiceprints import StoreError

    with alice_read_from_a_full_disk(tmp_path) as (folder, path, store):
        assert store.get("alice") is not None
        os.rename(path, folder / "voiceprints.db.aside")  # an operator moves it aside
        with pytest.raises(StoreError, match=r"voiceprints\.db: .* moved or deleted"):
            store.get("alice")
        os.rename(folder / "voiceprints.db.aside", path)  # and puts it back
        assert store.get("alice") is not None


def test_voiceprints_read_from_a_full_disk_stay_readable_while_the_reopen_for_writing_fails(
    tmp_path: Path,
) -> None:
    """Found in review: once the disk had room, the store read from a full disk closed its
    read-only connection before it opened the file for writing; when that failed for another
    reason (here another process holds the file locked), the store was left closed and every
    verification failed until a reopen worked. It keeps reading meanwhile now."""
    import sqlite3

    from voxgate.voiceprints import VoiceprintStore

    with alice_read_from_a_full_disk(tmp_path) as (folder, path, store):
        assert store.get("alice") is not None
        free(folder)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("PRAGMA locking_mode = EXCLUSIVE")  # holds the file until closed
        other.execute("BEGIN EXCLUSIVE")
        try:
            assert store.get("alice") is not None  # waits 5 s for the lock, then reads
        finally:
            other.close()
        store.add_user("carol", EMB, "test-model/1")  # opened for writing now
        store.close()
        with VoiceprintStore(path, KEY) as after:
            assert sorted(u.name for u in after.users()) == ["alice", "carol"]


def test_a_failing_reopen_for_writing_is_tried_again_after_a_pause_not_at_every_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Left alone at stop 18: while another process held the file locked, every operation
    of the store read from a full disk tried to reopen it for writing, waited the 5 s busy
    timeout each time, and logged the same warning each time: every verification at the door
    took 5 s longer. A read tries once, then again only after a pause; a write tries."""
    import logging
    import sqlite3

    from voxgate import voiceprints
    from voxgate.voiceprints import VoiceprintStore

    now = [1000.0]
    monkeypatch.setattr(voiceprints.time, "monotonic", lambda: now[0])
    with alice_read_from_a_full_disk(tmp_path) as (folder, path, store):
        free(folder)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("PRAGMA locking_mode = EXCLUSIVE")
        other.execute("BEGIN EXCLUSIVE")
        try:
            with caplog.at_level(logging.WARNING, logger="voxgate.voiceprints"):
                for _ in range(3):
                    assert store.get("alice") is not None
                    now[0] += 1.0
                tries = [r for r in caplog.records if "reading it as before" in r.message]
                assert len(tries) == 1
                now[0] += voiceprints.REOPEN_PAUSE_S  # after the pause, a read tries again
                assert store.get("alice") is not None
                tries = [r for r in caplog.records if "reading it as before" in r.message]
                assert len(tries) == 2
        finally:
            other.close()
        # An enrollment does not wait for the pause: it tries at once, and now it works.
        store.add_user("bob", EMB, "test-model/1")
        store.close()
        with VoiceprintStore(path, KEY) as after:
            assert sorted(u.name for u in after.users()) == ["alice", "bob"]


def test_a_backlog_that_cannot_fit_is_not_chained_for_nothing_and_is_written_with_room(
    tmp_path: Path,
) -> None:
    """Every try to write the held lines chained and serialised all of them first, then the
    full disk refused the write: at 10,000 lines about 130 ms of CPU per try, once a second from
    the daemon's housekeeping (benchmarks/audit_backlog_cost.py). The backlog is now only
    chained when it may fit. What the check stops must be a write that could never succeed
    on the real file system, and what fits in the file's last block still goes through."""
    import os

    from voxgate import audit

    with small_fs(tmp_path / "state", "1m") as folder:
        log = audit.AuditLog(folder / "audit.jsonl")
        log.append("service_start")
        fill(folder)
        fd = os.open(log.path, os.O_WRONLY | os.O_APPEND)
        try:
            st = os.fstat(fd)
            slack = st.st_blocks * 512 - st.st_size
            fits = slack // audit.MIN_LINE_BYTES
            assert fits >= 1  # the first line left most of its block free
            # Stopped: more than the free bytes and the slack together take; really refused.
            assert not audit._may_fit(fd, st, fits + 1)
            view = memoryview(b"\0" * ((fits + 1) * audit.MIN_LINE_BYTES))
            with pytest.raises(OSError):
                while view:  # as AuditLog writes: a short write, then the error
                    view = view[os.write(fd, view) :]
            os.ftruncate(fd, st.st_size)
            # Let through: one short line fits the block's slack, and it is written.
            assert audit._may_fit(fd, st, 1)
        finally:
            os.close(fd)
        log.append("decision", outcome="granted", user="alice")
        assert log.pending == 0
        last = json.loads((folder / "audit.jsonl").read_text().splitlines()[-1])
        assert (last["event"], last["user"]) == ("decision", "alice")


def test_held_lines_are_written_in_order_once_the_full_disk_has_room(tmp_path: Path) -> None:
    """The backlog the room check holds back is written whole and in order, and the chain
    verifies."""
    from voxgate import audit

    with small_fs(tmp_path / "state", "1m") as folder:
        log = audit.AuditLog(folder / "audit.jsonl")
        log.append("service_start")
        fill(folder)
        for n in range(40):
            log.append("decision", outcome="denied", n=n, pad="x" * 8192)  # > a block's slack
        assert log.pending == 40
        free(folder)
        log.append("decision", outcome="granted", n=40)
        assert log.pending == 0
        lines = [json.loads(x) for x in (folder / "audit.jsonl").read_text().splitlines()]
        assert [r.get("n") for r in lines if r["event"] == "decision"] == list(range(41))
        assert audit.verify(folder / "audit.jsonl").ok


def test_a_sequence_held_in_memory_is_saved_once_there_is_room_so_a_restart_cannot_rewind_it(
    tmp_path: Path,
) -> None:
    """A decision sequence ceiling the full disk refused was saved only with the next
    decision: a quiet door restarted after space came back (a reboot: a Pi without RTC, its
    clock behind until NTP) numbered from the old ceiling, below what the lock had accepted,
    and the lock refused every decision as replayed. The daemon's housekeeping now calls
    save_held() every second; the lock here is a real ReplayGuard."""
    from voxgate.decision import DecisionError, Issuer, ReplayGuard, SequenceCounter

    now = [time.time()]
    with small_fs(tmp_path / "state", "1m") as folder:
        path = folder / "decision-seq.json"
        lock = ReplayGuard(tmp_path / "lock-state.json")
        door = Issuer(DEV, SequenceCounter(path, clock=lambda: now[0]), ttl_s=5.0)
        lock.check_and_record(door.issue("granted", "bob", now[0]))
        fill(folder)
        now[0] += 60.0
        sent = door.issue("granted", "bob", now[0])
        lock.check_and_record(sent)
        assert door.seq.unsaved
        door.seq.save_held()  # still full: still held
        assert door.seq.unsaved
        free(folder)
        door.seq.save_held()
        assert not door.seq.unsaved
        # The restart, with the clock far behind: it must number above what the lock saw.
        behind = Issuer(DEV, SequenceCounter(path, clock=lambda: 1000.0), ttl_s=5.0)
        after = behind.issue("granted", "bob", now[0] + 1.0)
        assert after.seq > sent.seq
        try:
            lock.check_and_record(after)
        except DecisionError as exc:  # pragma: no cover - the failure being tested
            raise AssertionError(f"the lock refused the restarted door: {exc}") from None
