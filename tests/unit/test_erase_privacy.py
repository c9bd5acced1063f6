"""Erase really erases: what the door holds about a person besides the voiceprint (lockout
entries naming them) goes too, checked on the bytes of real SQLite files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from voxgate.config import VoxgateConfig
from voxgate.config.service import LockoutConfig
from voxgate.lockout import LockoutBook, forget_in_file
from voxgate.service.users import UserServices
from voxgate.voiceprints import VoiceprintStore


def raw(path: Path) -> bytes:
    """The database file and whatever SQLite keeps beside it, as bytes on disk."""
    return b"".join(
        p.read_bytes()
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))
        if p.exists()
    )


def fail(book: LockoutBook, user: str, times: int, now: float | None = None) -> None:
    # By default now: entries whose last failure is long past expire at a restart.
    for _ in range(times):
        book.record(user, ok=False, now=time.time() if now is None else now)


def test_forget_removes_the_name_from_the_lockout_file_bytes(tmp_path: Path) -> None:
    path = tmp_path / "lockout.db"
    book = LockoutBook(path, LockoutConfig())
    fail(book, "Alice-Erased", 7)
    fail(book, "bob-stays", 2)
    assert b"alice-erased" in raw(path)  # the key holds the name in plain text
    assert book.forget("alice-erased")
    assert book.users() == ["bob-stays"]
    assert book.state("ALICE-ERASED", now=1001.0).user_failures == 0
    assert b"alice-erased" not in raw(path)
    assert b"bob-stays" in raw(path)
    book.close()
    # And it stays gone: a restart does not bring the entry back.
    again = LockoutBook(path, LockoutConfig())
    assert again.users() == ["bob-stays"]
    again.close()


def test_forget_in_file_while_the_daemon_has_the_book_open(tmp_path: Path) -> None:
    """`voxgate users erase` runs in another process than the daemon holding the book."""
    path = tmp_path / "lockout.db"
    book = LockoutBook(path, LockoutConfig())
    fail(book, "carol-erased", 6)
    assert forget_in_file(path, "Carol-Erased")
    assert b"carol-erased" not in raw(path)
    assert not forget_in_file(path, "carol-erased")  # nothing left to drop
    assert not forget_in_file(tmp_path / "none.db", "carol-erased")  # no file: none made
    assert not (tmp_path / "none.db").exists()
    book.close()


KEY = os.urandom(32)


def _store(tmp_path: Path) -> VoiceprintStore:
    store = VoiceprintStore(tmp_path / "voiceprints.db", KEY)
    emb = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    store.add_user("Dora", emb, "test/int8")
    return store


def test_daemon_forgets_a_user_erased_by_another_process(tmp_path: Path) -> None:
    """The daemon's book kept Dora's entry (memory and file) after `voxgate users erase
    dora` ran beside it; a name never enrolled keeps its lockout."""
    store = _store(tmp_path)
    book = LockoutBook(tmp_path / "lockout.db", LockoutConfig())
    users = UserServices(
        VoxgateConfig(data_dir=tmp_path), store, None, lambda e, **f: None, lockout=book
    )
    fail(book, "dora", 6)
    fail(book, "mallory", 6)  # claimed, never enrolled
    assert users.check_erased() == []
    other = VoiceprintStore(store.path, KEY)
    assert other.erase("DORA")
    other.close()
    assert users.check_erased() == ["Dora"]
    assert book.users() == ["mallory"]
    assert b"dora" not in raw(tmp_path / "lockout.db")
    store.close()
    book.close()


def test_mqtt_erase_command_drops_the_lockout_entry(tmp_path: Path) -> None:
    store = _store(tmp_path)
    book = LockoutBook(tmp_path / "lockout.db", LockoutConfig())
    users = UserServices(
        VoxgateConfig(data_dir=tmp_path), store, None, lambda e, **f: None, lockout=book
    )
    fail(book, "dora", 6)
    assert users.command_erase({"user": "dora"}) == {"user": "Dora", "erased": True}
    assert book.users() == []
    assert b"dora" not in raw(tmp_path / "lockout.db")
    store.close()
    book.close()


def test_fleet_erase_revoke_and_config_drop_forget_the_user(tmp_path: Path) -> None:
    """Erases that reach a door through fleet sync left the lockout entry behind too."""
    from tests.unit.test_fleet_apply import _door, _tomb, _vp

    door = _door(tmp_path, ["lobby"], {"lobby": ["alice", "bob", "carl"]})
    book = LockoutBook(tmp_path / "lockout.db", LockoutConfig())
    users = UserServices(
        VoxgateConfig(data_dir=tmp_path), door.store, None, lambda e, **f: None, lockout=book
    )
    door.on_erased = users.forget  # what UserServices.start wires
    for name in ("alice", "bob", "carl"):
        assert door.handle(*_vp("lobby", name, 1)) == "stored"
        fail(book, name, 6)
    assert door.handle(*_tomb("erase", "lobby", "alice", 2)) == "erased"
    assert door.handle(*_tomb("revoke", "lobby", "bob", 2)) == "revoked"
    door.cfg = door.cfg.model_copy(update={"access": {"lobby": ["dan"]}})
    assert door.enforce_access() == ["carl"]
    assert book.users() == []
    data = raw(tmp_path / "lockout.db")
    assert not any(n in data for n in (b"alice", b"bob", b"carl"))
    book.close()


def test_a_fleet_erase_withheld_by_a_full_disk_is_not_logged_as_another_processs_erase(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found reading check_erased: a fleet erase the full disk could not write withholds the
    user (VoiceprintStore.withhold), so store.has says no and housekeeping, seeing the
    name gone, logged "is no longer enrolled (erased by another process)": neither was true
    (this process's fleet sync; the voiceprint still in the file)."""
    import logging

    from tests.integration.small_fs import fill, free, small_fs
    from tests.unit.test_fleet_apply import _door, _tomb, _vp

    with small_fs(tmp_path / "state", "2m") as folder:
        door = _door(folder, ["lobby"], {"lobby": ["alice"]})
        book = LockoutBook(folder / "lockout.db", LockoutConfig())
        users = UserServices(
            VoxgateConfig(data_dir=folder), door.store, None, lambda e, **f: None, lockout=book
        )
        door.on_erased = users.forget  # what UserServices.start wires
        assert door.handle(*_vp("lobby", "alice", 1)) == "stored"
        fail(book, "alice", 2)
        assert users.check_erased() == []  # seen enrolled
        fill(folder)
        assert door.handle(*_tomb("erase", "lobby", "alice", 2)) == "erase_withheld"
        with caplog.at_level(logging.INFO, logger="voxgate.service.users"):
            assert users.check_erased() == ["alice"]  # forgotten all the same
        assert "erased by another process" not in caplog.text
        assert "alice is no longer recognised here: the erase waits" in caplog.text
        free(folder)
        door.retry_withheld()
        assert not door.store.has("alice") and not door.store.withholds("alice")
        book.close()
        door.store.close()


def test_fingerprints_out_of_the_replay_window_are_gone_from_the_file_bytes(
    tmp_path: Path,
) -> None:
    """Fingerprints are derived from the voice: "kept for replay_window_s" held only for the
    table; the deleted rows stayed readable in free pages and the WAL."""
    import sqlite3

    from voxgate.replay import ReplayDetector

    rng = np.random.default_rng(7)
    envelope = np.sin(np.linspace(0, 30, 16000))
    old = (rng.normal(0, 3000, 16000) * envelope).astype(np.int16)
    new = (rng.normal(0, 3000, 16000) * envelope[::-1]).astype(np.int16)
    path = tmp_path / "replay.db"
    det = ReplayDetector(path, window_s=100)
    det.check_and_add(old, now=0.0)
    with sqlite3.connect(path) as db:
        (blob,) = db.execute("SELECT fp FROM fingerprints").fetchone()
    probe = bytes(blob)[:48]
    assert probe in raw(path)
    det.check_and_add(new, now=151.0)  # the first one leaves the window
    assert det.count() == 1
    assert probe not in raw(path)
    det.close()


def test_a_sent_fleet_message_is_gone_from_the_sync_state_bytes(tmp_path: Path) -> None:
    """The outbox holds each enrollment's fleet message (the voiceprint, sealed with the
    fleet key) until the broker has it; after that, and after an erase replaced it, its
    bytes stayed in fleet.db's free pages and WAL."""
    from voxgate.fleet import SyncState

    path = tmp_path / "fleet.db"
    state = SyncState(path)
    topic = "voxgate/_fleet/acme/lobby/" + "ab" * 16
    voiceprint = os.urandom(3000)  # stands for the sealed message
    state.queue(topic, voiceprint, (1, "v"))
    assert voiceprint[:64] in raw(path)
    tombstone = os.urandom(300)
    state.queue(topic, tombstone, (2, "e"))  # erased before it went out
    state.sent(topic, (2, "e"))
    assert state.outbox() == []
    data = raw(path)
    assert voiceprint[:64] not in data and tombstone[:64] not in data
    state.close()


def test_kept_recordings_of_an_erased_user_are_deleted(tmp_path: Path) -> None:
    """With audit.keep_audio on, the person's attempt recordings (their voice, encrypted)
    stayed for the whole retention after they were erased."""
    from voxgate.audit import AuditLog
    from voxgate.service.keep import AudioKeeper

    cfg = VoxgateConfig(data_dir=tmp_path)
    keeper = AudioKeeper(tmp_path / "audio", os.urandom(32), retention_days=7)
    log = AuditLog(tmp_path / "audit.jsonl")
    pcm = np.arange(1600, dtype=np.int16)
    granted = keeper.store(pcm, "a1")
    denied = keeper.store(pcm, "a2")  # claimed by her, not recognised
    other = keeper.store(pcm, "a3")
    unknown = keeper.store(pcm, "a4")  # nobody identified or claimed: cannot be tied
    outside = tmp_path / "notes.vxa"
    outside.write_bytes(b"x")
    assert None not in (granted, denied, other, unknown)
    log.append("decision", outcome="granted", user="Dora", audio=str(granted))
    log.append("decision", outcome="denied", user=None, claimed_user="DORA", audio=str(denied))
    log.append("decision", outcome="granted", user="gus", audio=str(other))
    log.append("decision", outcome="denied", user=None, claimed_user=None, audio=str(unknown))
    log.append("decision", outcome="granted", user="dora", audio=str(outside))  # not ours
    store = _store(tmp_path)
    users = UserServices(cfg, store, None, lambda e, **f: None)
    assert users.command_erase({"user": "dora"})["erased"]
    assert not granted.exists() and not denied.exists()
    assert other.exists() and unknown.exists() and outside.exists()
    store.close()


def test_standalone_api_erase_hook_forgets_then_tells_the_fleet(tmp_path: Path) -> None:
    """`voxgate api` (without the daemon) erased the voiceprint only."""
    from voxgate.erasure import after_erase

    book = LockoutBook(tmp_path / "lockout.db", LockoutConfig())
    fail(book, "dora", 6)
    book.close()
    told: list[tuple[str, str]] = []
    hook = after_erase(VoxgateConfig(data_dir=tmp_path), lambda k, n: told.append((k, n)))
    hook("enrolled", "eve")
    hook("erased", "dora")
    assert told == [("enrolled", "eve"), ("erased", "dora")]
    assert b"dora" not in raw(tmp_path / "lockout.db")


def test_uploaded_takes_wait_in_ram_not_on_the_card(tmp_path: Path) -> None:
    """API enrollment wrote each uploaded take (a voice, in the clear) to /tmp, on the SD
    card of most doors, where the deleted file's blocks remain."""
    import io

    import pytest
    import soundfile as sf
    from werkzeug.datastructures import FileStorage

    from voxgate.api.app import _read_takes, upload_folder

    with open("/proc/self/mounts", encoding="utf-8") as f:
        if not any(line.split()[1:3] == ["/dev/shm", "tmpfs"] for line in f):
            pytest.skip("no tmpfs at /dev/shm here")
    assert upload_folder() == "/dev/shm"

    saved: list[Path] = []

    class Upload(FileStorage):
        def save(self, dst: object, buffer_size: int = 16384) -> None:  # type: ignore[override]
            saved.append(Path(str(dst)))
            super().save(dst, buffer_size)

    buf = io.BytesIO()
    sf.write(buf, np.zeros(16000, np.int16), 16000, format="WAV")
    take = Upload(io.BytesIO(buf.getvalue()), filename="t1.wav")
    assert len(_read_takes([take])[0]) == 16000
    assert saved and saved[0].parent.parent == Path("/dev/shm")
    assert not saved[0].exists()


def test_an_export_lists_the_replay_fingerprints_and_fleet_state_of_the_person(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen as the compliance officer: `voxgate users export` (and the API export) named
    the replay fingerprints only as "not listed here", although they are derived from the
    person's voice and held for 30 days, and said nothing of the fleet sync state: the
    person's user tag (their topic on the broker), the versions applied per group, and an
    enrollment or erase about them still waiting in the outbox (their voiceprint, sealed)."""
    import base64
    import sqlite3

    from tests.unit.test_replay_prefilter import signal
    from voxgate.erasure import held_about
    from voxgate.fleet import Codec, FleetKeys, SyncState
    from voxgate.replay import ReplayDetector

    for var in ("VOXGATE_FLEET_KEY", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)
    data = tmp_path / "data"
    key = tmp_path / "fleet.key"
    key.write_text(os.urandom(32).hex() + "\n")
    key.chmod(0o600)
    cfg = VoxgateConfig.model_validate(
        {"data_dir": str(data), "fleet": {"site": "acme", "key_file": str(key)}}
    )
    det = ReplayDetector(data / "replay.db", window_s=10**9)
    det.check_and_add(signal(1), now=1.0, user="erin")
    det.check_and_add(signal(2), now=2.0, user="frank")
    det.check_and_add(signal(3), now=3.0, user="ERIN")
    det.close()
    tag = Codec(FleetKeys.load(cfg.fleet), "acme", cfg.device_id).user_tag("Erin")
    state = SyncState(data / "fleet.db")
    state.set_user(tag, (7, "t"), "voiceprint", held=True)
    state.set_grant(tag, "lobby", (7, "t"), "voiceprint")
    state.queue(f"voxgate/_fleet/acme/lobby/{tag}", b"sealed", (7, "t"))
    state.queue("voxgate/_fleet/acme/lobby/" + "0" * 32, b"someone else", (8, "t"))
    state.close()

    held = held_about(cfg, "Erin")
    db = sqlite3.connect(data / "replay.db")
    stored = [bytes(r[0]) for r in db.execute("SELECT fp FROM fingerprints ORDER BY id")]
    db.close()
    prints = held["replay_fingerprints"]
    assert [p["stored_at"] for p in prints] == [1.0, 3.0]
    assert [base64.b64decode(p["fp_b64"]) for p in prints] == [stored[0], stored[2]]
    fleet = held["fleet"]
    assert fleet["user_tag"] == tag
    assert fleet["applied"] == {"version": 7, "kind": "voiceprint", "held": True}
    assert fleet["groups"] == [{"group": "lobby", "version": 7, "kind": "voiceprint"}]
    assert fleet["outbox"] == [{"topic": f"voxgate/_fleet/acme/lobby/{tag}", "version": 7}]
    assert not any("replay" in x for x in held["not_included"])


def test_lockout_and_replay_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """Seen in the data folder of a door started from a shell (umask 022): lockout.db and
    its -wal/-shm were 0644 (readable by every local user, and they name users: the key is
    `user:<name>`), and so was replay.db (fingerprints derived from voices), while
    voiceprints.db, fleet.db and the audit log beside them are 0600."""
    import stat

    from tests.unit.test_replay_prefilter import signal
    from voxgate.replay import ReplayDetector

    old = os.umask(0o022)
    try:
        book = LockoutBook(tmp_path / "elsewhere" / "lockout.db", LockoutConfig())
        book.record("erin", ok=False)
        det = ReplayDetector(tmp_path / "replay.db", window_s=10**9)
        det.check_and_add(signal(1), now=1.0, user="erin")
        files = [p for p in tmp_path.rglob("*.db*") if p.is_file()]
        assert {p.name for p in files} >= {"lockout.db", "lockout.db-wal", "replay.db"}
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
        assert set(modes.values()) == {0o600}, modes
        det.close()
        book.close()
    finally:
        os.umask(old)


def test_lockout_and_replay_files_made_before_are_closed_to_others(tmp_path: Path) -> None:
    """Files an older version made 0644 (with their -wal and -shm) stayed so after an
    upgrade; opening them now makes them 0600."""
    import sqlite3
    import stat

    from voxgate.replay import ReplayDetector

    old = os.umask(0o022)
    try:
        for name in ("lockout.db", "replay.db"):
            db = sqlite3.connect(tmp_path / name)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE t (x)")
            db.execute("INSERT INTO t VALUES (1)")
            db.commit()
            os.chmod(tmp_path / f"{name}-wal", 0o644)  # as a looser umask leaves it
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
            # `db` stays open: the -wal and -shm stay while a connection is open.
            if name == "lockout.db":
                LockoutBook(tmp_path / name, LockoutConfig()).close()
            else:
                ReplayDetector(tmp_path / name, window_s=10**9).close()
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.glob(f"{name}*")}
            db.close()
            assert set(modes.values()) == {0o600}, modes
    finally:
        os.umask(old)


def test_a_name_whose_fold_is_not_stable_is_not_taken_for_erased(tmp_path: Path) -> None:
    """Found in the security review (stop 19): for a few names (a long s or a dotted capital I
    before a combining mark) folding the folded name changes it again. check_erased asked
    the store about the folded name from the lockout book, which the store folds once more:
    "not enrolled", so every 5 s the enrolled user was taken for erased and their lockout
    entry dropped (a lockout cleared by housekeeping). It asks with the enrolled spelling."""
    name = "Jo\u017f\u0301"  # Joſ́
    store = VoiceprintStore(tmp_path / "voiceprints.db", bytes(range(32)))
    store.add_user(name, np.eye(3, 8, dtype=np.float32), "test/int8")
    book = LockoutBook(tmp_path / "lockout.db", LockoutConfig())

    class Link:
        last_user = name  # granted last: the daemon has seen them enrolled

    users = UserServices(
        VoxgateConfig(data_dir=tmp_path),
        store,
        None,
        lambda e, **f: None,
        lockout=book,
        link=Link(),
    )
    fail(book, name, 3)
    assert users.check_erased() == []
    assert users.check_erased() == []
    assert book.users() != []  # the lockout entry is kept
    store.erase(name)
    assert users.check_erased() == [name]  # a real erase is still seen
    book.close()
    store.close()


def test_a_retained_name_not_enrolled_here_is_not_logged_as_erased_by_another_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found starting `voxgate run` with a new data_dir on a broker where an earlier run of
    the same device_id had left `user` = sf1 retained: the first line after ready was "sf1
    is no longer enrolled (erased by another process)", though no process had erased
    anyone. A name this process never saw enrolled says where it came from."""
    import logging

    store = VoiceprintStore(tmp_path / "voiceprints.db", bytes(range(32)))
    store.add_user("alice", np.eye(3, 8, dtype=np.float32), "test/int8")

    class Link:
        def __init__(self) -> None:
            self.last_user: str | None = "sf1"
            self.last_user_from_broker = True  # read back from the broker at connect
            self.cleared: list[str] = []

        def forget_user(self, name: str) -> bool:
            self.cleared.append(name)
            return True

    link = Link()
    users = UserServices(
        VoxgateConfig(data_dir=tmp_path), store, None, lambda e, **f: None, link=link
    )
    with caplog.at_level(logging.INFO, logger="voxgate.service.users"):
        assert users.check_erased() == ["sf1"]
    assert link.cleared == ["sf1"]  # the topic is still cleared
    assert "erased by another process" not in caplog.text
    assert "the retained user topic named sf1, who is not enrolled here" in caplog.text
    # Someone seen enrolled by this process and then erased elsewhere keeps the old line.
    link.last_user, link.last_user_from_broker = "alice", False  # granted by this process
    caplog.clear()
    assert users.check_erased() == []
    store.erase("alice")
    with caplog.at_level(logging.INFO, logger="voxgate.service.users"):
        assert users.check_erased() == ["alice"]
    assert "alice is no longer enrolled (erased by another process)" in caplog.text
    store.close()
