"""Voiceprint store: encryption at rest, erase leaves no bytes, bad files are refused untouched."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from voxgate import voiceprints as vpmod
from voxgate.voiceprints import ModelMismatch, StoreError, VoiceprintStore

KEY = bytes(range(32))
MODEL = "test-model/float"


def _emb(seed: int, k: int = 4, dim: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(k, dim)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def _raw_bytes(db: Path) -> bytes:
    out = b""
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(db) + suffix)
        if p.exists():
            out += p.read_bytes()
    return out


def test_roundtrip_and_metadata(tmp_path: Path) -> None:
    db = tmp_path / "vp.db"
    emb = _emb(1)
    with VoiceprintStore(db, KEY) as store:
        vp = store.add_user("Alice", emb, MODEL, {"takes": 4})
        assert vp.version == 1
        got = store.get("alice")  # names match case-insensitively
        assert got is not None and got.name == "Alice"
        np.testing.assert_allclose(got.embeddings, emb, atol=1e-6)
        expect_mean = emb.mean(axis=0) / np.linalg.norm(emb.mean(axis=0))
        np.testing.assert_allclose(got.mean, expect_mean, atol=1e-6)
        assert got.meta == {"takes": 4}
        assert store.get("bob") is None
        with pytest.raises(StoreError, match="already enrolled"):
            store.add_user("ALICE", emb, MODEL)
        again = store.replace("Alice", _emb(2, k=3), MODEL)
        assert again.version == 2 and again.created_at == vp.created_at
        assert [u.name for u in store.users()] == ["Alice"]
        assert store.users()[0].takes == 3
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    # Reopens with the same key; the file is WAL and carries our schema version.
    with VoiceprintStore(db, KEY) as store:
        assert store.get("Alice") is not None
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == vpmod.SCHEMA_VERSION
    con.close()


def test_nothing_readable_without_key(tmp_path: Path) -> None:
    db = tmp_path / "vp.db"
    emb = _emb(3)
    with VoiceprintStore(db, KEY) as store:
        store.add_user("Zebediah Quux", emb, MODEL)
        store.add_user("x", _emb(4, k=9), MODEL)
    raw = _raw_bytes(db)
    assert b"Zebediah" not in raw and b"zebediah" not in raw
    assert MODEL.encode() not in raw
    assert emb[0].astype("<f4").tobytes()[:8] not in raw
    assert emb[0].astype("<f4").tobytes().hex().encode()[:16] not in raw
    # Blob sizes do not tell how many takes a user gave.
    con = sqlite3.connect(db)
    sizes = {len(r[0]) for r in con.execute("SELECT sealed FROM voiceprints")}
    con.close()
    assert len(sizes) == 1


def test_model_mismatch_refused(tmp_path: Path) -> None:
    with VoiceprintStore(tmp_path / "vp.db", KEY) as store:
        store.add_user("alice", _emb(5), MODEL)
        assert store.get("alice", model_id=MODEL) is not None
        with pytest.raises(ModelMismatch, match="re-enroll"):
            store.get("alice", model_id="other-model/int8")


def test_model_mismatch_names_a_command_that_re_enrolls(tmp_path: Path) -> None:
    # `voxgate verify` after switching speaker.model said "re-enroll: voxgate enroll alice",
    # which, run as shown, refuses: "user 'alice' is already enrolled; add --replace".
    with VoiceprintStore(tmp_path / "vp.db", KEY) as store:
        store.add_user("alice", _emb(5), MODEL)
        store.add_user("Mary Ann", _emb(6), MODEL)
        with pytest.raises(ModelMismatch, match="voxgate enroll alice --replace"):
            store.get("alice", model_id="other-model/int8")
        with pytest.raises(ModelMismatch, match="voxgate enroll 'Mary Ann' --replace"):
            store.get("mary ann", model_id="other-model/int8")


SHA_A, SHA_B = "a" * 64, "b" * 64


def test_the_model_file_a_voiceprint_was_made_with_is_kept_and_checked(tmp_path: Path) -> None:
    """Only the card id was kept with a voiceprint: weights swapped in under the same id
    scored it as their own. The file's sha256 now travels with it (export shows it)."""
    with VoiceprintStore(tmp_path / "vp.db", KEY) as store:
        store.add_user("alice", _emb(5), MODEL, model_sha256=SHA_A)
        assert store.get("alice", MODEL, SHA_A).model_sha256 == SHA_A
        with pytest.raises(
            ModelMismatch, match=r"another file of model .*sha256 a{12}, loaded b{12}\)"
        ):
            store.get("alice", MODEL, SHA_B)
        assert store.export("alice")["model_sha256"] == SHA_A
        store.replace("alice", _emb(6), MODEL, model_sha256=SHA_B)  # re-enrolled: the new file
        assert store.get("alice", MODEL, SHA_B).version == 2
    with VoiceprintStore(tmp_path / "vp.db", KEY) as store:  # as read back from disk
        assert store.get("alice").model_sha256 == SHA_B


def test_a_voiceprint_stored_before_the_file_was_recorded_is_scored_as_before(
    tmp_path: Path,
) -> None:
    """Which file made it cannot be told: refusing it would lock every enrolled user out
    on upgrade; a door that cannot say which file it runs checks the id alone."""
    with VoiceprintStore(tmp_path / "vp.db", KEY) as store:
        store.add_user("alice", _emb(5), MODEL)
        store.add_user("bob", _emb(6), MODEL, model_sha256=SHA_A)
        assert store.get("alice", MODEL, SHA_B).model_sha256 is None
        assert store.get("bob", MODEL).model_sha256 == SHA_A
        with pytest.raises(ModelMismatch, match="enrolled with model test-model/float, but"):
            store.get("bob", "other-model/int8", SHA_A)
        # Anything but 64 hex digits is not kept as a file's sha256.
        assert store.replace("carol", _emb(7), MODEL, model_sha256="A" * 64).model_sha256 is None


def test_erase_removes_bytes_from_disk(tmp_path: Path) -> None:
    db = tmp_path / "vp.db"
    with VoiceprintStore(db, KEY) as store:
        store.add_user("alice", _emb(6), MODEL)
        store.add_user("bob", _emb(7), MODEL)
        uid = store._user_id("alice")
        con = sqlite3.connect(db)
        sealed = con.execute("SELECT sealed FROM voiceprints WHERE id = ?", (uid,)).fetchone()[0]
        con.close()
        raw = _raw_bytes(db)
        assert uid in raw and sealed[40:72] in raw
        assert store.erase("alice") is True
        assert store.erase("alice") is False
        raw = _raw_bytes(db)
        assert uid not in raw
        assert sealed[40:72] not in raw
        assert store.get("bob") is not None
        export = store.export("bob")
    assert json.loads(json.dumps(export))["name"] == "bob"
    assert len(export["embeddings"]) == 4 and len(export["mean"]) == 16


def test_an_erase_blocked_by_a_reader_is_finished_by_erasing_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While another connection held a read transaction (a sqlite3 shell, a backup), the
    erase's checkpoint could not run: the old pages with the voiceprint stayed in the file,
    and the log said "rerun erase later", but erasing again only answered that nobody of
    that name is enrolled and left them there. The second erase now finishes the clean-up."""
    db = tmp_path / "vp.db"
    with VoiceprintStore(db, KEY) as store:
        store.add_user("alice", _emb(11), MODEL)
        store.add_user("bob", _emb(12), MODEL)
        uid = store._user_id("alice")
        store._db.execute("PRAGMA busy_timeout = 50")  # not the 5 s a door waits
        reader = sqlite3.connect(db, isolation_level=None)
        sealed = reader.execute("SELECT sealed FROM voiceprints WHERE id = ?", (uid,)).fetchone()[0]
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM voiceprints").fetchone()
        assert store.erase("alice") is True
        assert "erase alice again" in caplog.text
        assert sealed[40:72] in _raw_bytes(db)  # still on disk: the reader holds the pages
        reader.execute("COMMIT")  # done reading; the connection stays open, as a daemon's
        assert store.erase("alice") is False  # nobody of that name, as before ...
        assert sealed[40:72] not in _raw_bytes(db)  # ... but the old pages are gone now
        assert store.get("bob") is not None
        reader.close()


def test_random_bytes_file_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "vp.db"
    junk = os.urandom(8192)
    db.write_bytes(junk)
    with pytest.raises(StoreError, match="not SQLite"):
        VoiceprintStore(db, KEY)
    assert db.read_bytes() == junk


def test_corrupt_sqlite_refused(tmp_path: Path) -> None:
    db = tmp_path / "vp.db"
    with VoiceprintStore(db, KEY) as store:
        store.add_user("alice", _emb(8), MODEL)
    data = bytearray(db.read_bytes())
    data[100:4096] = os.urandom(3996)  # smash the schema page after the magic header
    db.write_bytes(bytes(data))
    with pytest.raises(StoreError):
        VoiceprintStore(db, KEY)
    assert db.read_bytes() == bytes(data)


def _each_page_smashed(tmp_path: Path, fill: Callable[[int], bytes]) -> Iterator[Path]:
    """A real three-user voiceprints.db, once per page with that page overwritten."""
    clean = tmp_path / "clean.db"
    with VoiceprintStore(clean, KEY) as store:
        for i, name in enumerate(("alice", "bob", "carol")):
            store.add_user(name, _emb(i, k=8, dim=256), MODEL)
    data = clean.read_bytes()
    for page in range(1, len(data) // 4096):
        db = tmp_path / f"page{page}.db"
        smashed = bytearray(data)
        smashed[page * 4096 : (page + 1) * 4096] = fill(page)
        db.write_bytes(bytes(smashed))
        yield db


def test_a_damaged_file_says_what_to_do(tmp_path: Path) -> None:
    # Found smashing one 4 KiB page at a time of a real voiceprints.db and running `voxgate
    # users list` / `verify`: SQLite's "database disk image is malformed" reached the user
    # as "damaged voiceprint store (...)", "cannot read the voiceprint database (...)" or
    # "cannot use ...", none saying what to do, unlike the 0-byte file's message.
    messages = []
    for db in _each_page_smashed(tmp_path, lambda page: b"\x5a" * 4096):
        for read_only in (False, True):
            try:
                with VoiceprintStore(db, KEY, read_only=read_only) as store:
                    store.readable()
                    store.get("alice", model_id=MODEL)
            except StoreError as exc:
                messages.append(str(exc))
    malformed = [m for m in messages if "malformed" in m]
    assert malformed, messages
    for m in malformed:
        assert "left untouched" in m and "Restore it from a backup" in m, m


def test_every_damaged_file_message_says_what_to_do(tmp_path: Path) -> None:
    # Found in review running `voxgate users list` on a real voiceprints.db with page 4
    # overwritten: "SQLite finds it damaged (Page 4: btreeInitPage() ...); left untouched",
    # and on random bytes: "not a voxgate voiceprint database (not SQLite); left untouched".
    # Neither said what to do, unlike the "malformed" and 0-byte messages (the daemon adds
    # advice of its own; the commands print the store's message alone).
    messages = []
    for db in _each_page_smashed(tmp_path, lambda page: np.random.default_rng(page).bytes(4096)):
        try:
            with VoiceprintStore(db, KEY) as store:
                store.readable()
        except vpmod.Damaged as exc:
            messages.append(str(exc))
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(8192))
    with pytest.raises(vpmod.Damaged) as refused:
        VoiceprintStore(junk, KEY)
    messages.append(str(refused.value))
    assert any("finds it damaged" in m for m in messages), messages
    for m in messages:
        assert "left untouched" in m and "from a backup" in m, m


def test_store_path_not_a_file_is_a_store_error(tmp_path: Path) -> None:
    folder = tmp_path / "vp.db"
    folder.mkdir()
    with pytest.raises(StoreError, match=r"vp\.db: cannot open .*Is a directory"):
        VoiceprintStore(folder, KEY)
    not_dir = tmp_path / "data"
    not_dir.write_text("a file where data_dir should be")
    with pytest.raises(StoreError, match=r"cannot open .*Not a directory"):
        VoiceprintStore(not_dir / "vp.db", KEY)
    assert not_dir.read_text() == "a file where data_dir should be"


def test_unreadable_key_file_gives_no_new_key_advice(tmp_path: Path, no_secret_env: None) -> None:
    # A new key would not open the stored voiceprints: say what is wrong with this one.
    from voxgate.config.speaker import SpeakerConfig

    folder = tmp_path / "voiceprint.key"
    folder.mkdir()
    with pytest.raises(StoreError, match="Is a directory") as exc:
        vpmod.load_key(SpeakerConfig(key_file=folder))
    assert "init-key" not in str(exc.value)


def test_foreign_sqlite_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE photos (id INTEGER, path TEXT)")
    con.execute("INSERT INTO photos VALUES (1, 'a.jpg')")
    con.commit()
    con.close()
    before = db.read_bytes()
    with pytest.raises(StoreError, match="not a voxgate voiceprint store"):
        VoiceprintStore(db, KEY)
    assert db.read_bytes() == before


def test_newer_schema_refused(tmp_path: Path) -> None:
    db = tmp_path / "vp.db"
    VoiceprintStore(db, KEY).close()
    con = sqlite3.connect(db)
    con.execute(f"PRAGMA user_version = {vpmod.SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(StoreError, match="newer voxgate"):
        VoiceprintStore(db, KEY)


def test_a_schema_migration_is_applied_once_and_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The migration loop ran each entry with executescript(), which COMMITs the open
    transaction first: the script and the version bump were committed apart, and the
    transaction's own COMMIT then failed ("cannot commit - no transaction is active"), so
    the first schema change ever shipped would have stopped every door from opening its
    store. Checked here with a made-up schema 2 (none exists yet)."""
    db = tmp_path / "vp.db"
    with VoiceprintStore(db, KEY) as store:
        store.add_user("alice", _emb(10), MODEL)
    monkeypatch.setattr(vpmod, "SCHEMA_VERSION", 2)
    broken = ("CREATE TABLE extra (x INTEGER);\nINSERT INTO no_such_table VALUES (1);",)
    monkeypatch.setattr(VoiceprintStore, "MIGRATIONS", broken)
    with pytest.raises(StoreError, match="no_such_table"):
        VoiceprintStore(db, KEY)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 1  # nothing of it applied
    assert con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'extra'").fetchone()[0] == 0
    con.close()
    good = ("CREATE TABLE extra (x INTEGER);\nINSERT INTO extra VALUES (1);",)
    monkeypatch.setattr(VoiceprintStore, "MIGRATIONS", good)
    with VoiceprintStore(db, KEY) as store:
        assert store.get("alice") is not None
    with VoiceprintStore(db, KEY) as store:  # applied once: the next open does nothing
        assert store.get("alice") is not None
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 2
    assert con.execute("SELECT x FROM extra").fetchall() == [(1,)]
    con.close()


def test_wrong_key_refused(tmp_path: Path) -> None:
    db = tmp_path / "vp.db"
    with VoiceprintStore(db, KEY) as store:
        store.add_user("alice", _emb(9), MODEL)
    with pytest.raises(StoreError, match="wrong voiceprint key"):
        VoiceprintStore(db, bytes(32))
    with VoiceprintStore(db, KEY) as store:
        assert store.get("alice") is not None


def test_swapped_blob_fails_authentication(tmp_path: Path) -> None:
    # Someone with write access moves Bob's voiceprint onto Alice's row: it must not load.
    db = tmp_path / "vp.db"
    with VoiceprintStore(db, KEY) as store:
        store.add_user("alice", _emb(10), MODEL)
        store.add_user("bob", _emb(11), MODEL)
        a, b = store._user_id("alice"), store._user_id("bob")
    con = sqlite3.connect(db)
    bob_blob = con.execute("SELECT sealed FROM voiceprints WHERE id = ?", (b,)).fetchone()[0]
    con.execute("UPDATE voiceprints SET sealed = ? WHERE id = ?", (bob_blob, a))
    con.commit()
    con.close()
    with VoiceprintStore(db, KEY) as store:
        with pytest.raises(StoreError, match="authentication"):
            store.get("alice")
        assert [v.name for v in store.readable()[0]] == ["bob"] and store.readable()[1] == 1
        # Re-enrolling is how the damaged row is repaired: replace() must not be refused.
        with pytest.raises(StoreError, match="already enrolled"):
            store.add_user("alice", _emb(12), MODEL)
        vp = store.replace("alice", _emb(12), MODEL)
        assert vp.version == 1 and store.get("alice") is not None
        assert store.readable()[1] == 0


def test_bad_names_and_embeddings(tmp_path: Path) -> None:
    with VoiceprintStore(tmp_path / "vp.db", KEY) as store:
        for name in ("", "   ", "a" * 65, "bad\nname"):
            with pytest.raises(StoreError):
                store.add_user(name, _emb(12), MODEL)
        with pytest.raises(StoreError, match="shape"):
            store.add_user("alice", np.zeros(16, np.float32), MODEL)
        bad = _emb(13)
        bad[0, 0] = np.nan
        with pytest.raises(StoreError, match="NaN"):
            store.add_user("alice", bad, MODEL)
        assert store.users() == []


def test_key_file_create_and_parse(tmp_path: Path) -> None:
    path = tmp_path / "voiceprint.key"
    vpmod.write_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = vpmod.parse_key(path.read_bytes())
    assert len(key) == 32
    with pytest.raises(StoreError, match="already exists"):
        vpmod.write_key_file(path)
    assert vpmod.parse_key(path.read_bytes()) == key  # not overwritten
    assert vpmod.parse_key(bytes(range(32))) == bytes(range(32))
    with pytest.raises(StoreError, match="64 hex"):
        vpmod.parse_key(b"short")
    # A mistyped hex key (O for 0): say so, not "got 64 bytes" against "must be 64 hex".
    typo = b"O" + key.hex()[1:].encode() + b"\n"
    with pytest.raises(StoreError, match="not all are hex digits") as exc:
        vpmod.parse_key(typo)
    assert "init-key" not in str(exc.value)


def test_side_files_private_and_second_process_sees_changes(tmp_path: Path) -> None:
    db = tmp_path / "vp.db"
    daemon = VoiceprintStore(db, KEY)  # e.g. the running daemon keeps its store open
    with VoiceprintStore(db, KEY) as cli:  # while the CLI enrolls and erases
        cli.add_user("alice", _emb(14), MODEL)
        assert daemon.get("alice") is not None
        for suffix in ("-wal", "-shm"):
            side = Path(str(db) + suffix)
            if side.exists():
                assert stat.S_IMODE(side.stat().st_mode) == 0o600
        assert cli.erase("alice")
    assert daemon.get("alice") is None
    daemon.close()


def test_export_unknown_user(tmp_path: Path) -> None:
    with (
        VoiceprintStore(tmp_path / "vp.db", KEY) as store,
        pytest.raises(StoreError, match="no user"),
    ):
        store.export("nobody")


def test_a_full_disk_while_replacing_keeps_the_old_voiceprint(tmp_path: Path) -> None:
    """No data loss: a re-enrollment that cannot be written leaves the stored one intact."""
    import resource
    import signal

    path = tmp_path / "vp.db"
    old = np.random.default_rng(1).standard_normal((3, 256)).astype(np.float32)
    with VoiceprintStore(path, KEY) as store:
        store.add_user("alice", old, MODEL)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16, hard))  # no file may grow: a full disk
        try:
            with pytest.raises(StoreError, match="cannot write to the voiceprint database"):
                store.replace("alice", np.ones((8, 256), np.float32), MODEL)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, handler)
        vp = store.get("alice")
        assert vp is not None and vp.version == 1
        assert np.allclose(vp.embeddings, old / np.linalg.norm(old, axis=1, keepdims=True))
    with VoiceprintStore(path, KEY) as again:  # and after a restart
        vp = again.get("alice")
        assert vp is not None and vp.version == 1 and vp.embeddings.shape == (3, 256)


def test_erase_that_cannot_compact_the_file_still_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A nearly full disk: the DELETE fits, the VACUUM after it does not. The user is gone,
    so erase() must say so (the CLI then audits it and tells the fleet), not raise as if
    nothing had happened; a second erase would only answer "no user"."""
    import resource
    import signal

    db = tmp_path / "vp.db"
    with VoiceprintStore(db, KEY) as store:
        for i in range(30):
            store.add_user(f"u{i}", _emb(i, k=5, dim=256), MODEL)
        uid = store._user_id("u0")
        con = sqlite3.connect(db)
        sealed = con.execute("SELECT sealed FROM voiceprints WHERE id = ?", (uid,)).fetchone()[0]
        con.close()
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = db.stat().st_size
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        # Room for the DELETE's few WAL pages, not for a compacted copy of the file.
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, hard))
        try:
            assert store.erase("u0") is True
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, handler)
        assert "u0 erased, but" in caplog.text
        assert store.get("u0") is None and store.get("u1") is not None
    # secure_delete overwrote the row before the compaction failed.
    raw = _raw_bytes(db)
    assert uid not in raw and sealed[40:72] not in raw
    with VoiceprintStore(db, KEY) as again:
        assert again.get("u0") is None and len(again.all()) == 29


def test_raw_key_may_start_or_end_with_a_whitespace_byte(
    tmp_path: Path, no_secret_env: None
) -> None:
    """'32 raw bytes' (e.g. head -c 32 /dev/urandom): about 1 key in 20 starts or ends with
    a whitespace byte, which must not be trimmed away ("got 30 bytes")."""
    from voxgate.config.speaker import SpeakerConfig

    path = tmp_path / "voiceprint.key"
    raw = b"\t" + bytes(range(100, 130)) + b" "
    path.write_bytes(raw)
    path.chmod(0o600)
    cfg = SpeakerConfig(key_file=path)
    assert vpmod.load_key(cfg) == raw
    # What was read before still reads the same: hex with a newline, raw bytes and a newline.
    path.write_text(KEY.hex() + "\n")
    assert vpmod.load_key(cfg) == KEY
    path.write_bytes(KEY[::-1] + b"\n")
    assert vpmod.load_key(cfg) == KEY[::-1]
    path.write_bytes(bytes(range(31)))
    with pytest.raises(StoreError, match=r"got 31 bytes"):
        vpmod.load_key(cfg)


def test_a_store_created_by_another_process_meanwhile_is_opened(tmp_path: Path) -> None:
    """First start: the daemon and a command open the new, empty file at the same moment.
    The one that finds the schema written while it waited for the write lock opens it
    (it used to fail with "table meta already exists", or took the half-read file for a
    foreign database)."""
    import threading

    ref = tmp_path / "ref.db"
    VoiceprintStore(ref, KEY).close()
    dump = [
        s for s in sqlite3.connect(ref).iterdump() if s not in ("BEGIN TRANSACTION;", "COMMIT;")
    ]
    db = tmp_path / "vp.db"
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("PRAGMA journal_mode = WAL")
    other.execute("BEGIN IMMEDIATE")  # the other process is creating the store right now
    for statement in dump:
        other.execute(statement)
    other.execute(f"PRAGMA application_id = {vpmod.APPLICATION_ID}")
    other.execute(f"PRAGMA user_version = {vpmod.SCHEMA_VERSION}")
    done = threading.Timer(0.5, lambda: other.execute("COMMIT"))
    done.start()
    try:
        with VoiceprintStore(db, KEY) as store:
            store.add_user("alice", _emb(1), MODEL)
    finally:
        done.join()
        other.close()
    with VoiceprintStore(db, KEY) as again:
        assert [u.name for u in again.users()] == ["alice"]


def test_init_key_is_on_disk_before_it_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every voiceprint is sealed with this key right after `init-key`; a power cut before
    the file system writes it back (seconds on ext4, longer elsewhere) would leave an empty
    key file and nothing readable. The key's bytes and its directory entry are synced."""
    synced: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        synced.append((st.st_ino, st.st_size))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "voiceprint.key"
    vpmod.write_key_file(path)
    assert (path.stat().st_ino, 65) in synced  # the file, holding its 64 hex + newline
    assert tmp_path.stat().st_ino in [ino for ino, _ in synced]  # the folder's entry


def test_stores_opened_at_once_on_a_new_path_all_open_the_same_file(tmp_path: Path) -> None:
    """A new store is linked into place whole, so no opener sees it at 0 bytes (which is
    refused as a cut file) and none writes a second schema over another's."""
    import threading

    path = tmp_path / "data" / "voiceprints.db"
    errors: list[BaseException] = []
    stores: list[VoiceprintStore] = []
    start = threading.Barrier(6)

    def open_one() -> None:
        start.wait()
        try:
            stores.append(VoiceprintStore(path, KEY))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stores[0].add_user("alice", np.ones((1, 8)), "m/1")
    assert all(s.has("alice") for s in stores)
    for s in stores:
        s.close()
    assert sorted(p.name for p in path.parent.iterdir() if ".new-" in p.name) == []


def test_a_new_store_is_linked_in_already_in_wal_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen once in CI: of six openers racing on a new path, one failed with "database is
    locked". The file was linked in with a rollback journal and each opener switched it to
    WAL; a switch needs the shared lock every other opener holds while switching too, and
    SQLite may fail such a deadlock at once instead of waiting. Made in WAL mode before it is
    linked, the file needs no switch (header bytes 18-19: 2 = WAL, 1 = rollback journal)."""
    seen: list[bytes] = []
    first_open = VoiceprintStore._open

    def header_then_open(self: VoiceprintStore) -> None:
        seen.append(self.path.read_bytes()[18:20])
        first_open(self)

    monkeypatch.setattr(VoiceprintStore, "_open", header_then_open)
    VoiceprintStore(tmp_path / "voiceprints.db", KEY).close()
    assert seen == [b"\x02\x02"]


def test_a_withheld_user_is_not_found_until_erased_or_enrolled_again(tmp_path: Path) -> None:
    """A fleet erase the disk could not take (docs/fleet.md): the store hides the user from
    this process at once; the erase written, or a newer voiceprint, ends the hold."""
    with VoiceprintStore(tmp_path / "vp.db", KEY) as store:
        store.add_user("Alice", _emb(1), MODEL)
        store.add_user("Bob", _emb(2), MODEL)
        store.withhold("ALICE")
        assert store.withholds("alice")
        assert store.get("alice") is None and not store.has("alice")
        assert [v.name for v in store.all()] == ["Bob"]
        assert [v.name for v in store.readable()[0]] == ["Bob"]
        with VoiceprintStore(tmp_path / "vp.db", KEY) as other:  # only this process
            assert other.has("alice")
        assert store.erase("alice")
        assert not store.withholds("alice")
        store.add_user("Alice", _emb(3), MODEL)
        assert store.get("alice") is not None
        store.withhold("alice")
        store.replace("Alice", _emb(4), MODEL)
        assert not store.withholds("alice") and store.get("alice") is not None


def test_enrolling_a_withheld_user_says_their_erase_waits_for_the_disk(tmp_path: Path) -> None:
    """Found in review: add_user for a user whose erase waits for a full disk answered
    "already enrolled", though get and the lists no longer show them."""
    with VoiceprintStore(tmp_path / "vp.db", KEY) as store:
        store.add_user("Alice", _emb(1), MODEL)
        store.withhold("alice")
        with pytest.raises(StoreError, match="erase is waiting to be written") as err:
            store.add_user("alice", _emb(2), MODEL)
        assert "already enrolled" not in str(err.value)
        assert store.withholds("alice") and store.get("alice") is None  # nothing changed


def test_a_new_name_is_checked_before_the_takes_and_line_breaks_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check_new_name runs at an enrollment's start (MQTT enroll-start, voxgate enroll, the
    API before embedding), with the rule enrolling applies at its end. U+2028/U+2029 (line
    and paragraph separators) were allowed: a name that breaks the line in a log viewer."""
    from voxgate import voiceprints
    from voxgate.voiceprints import BadName, NameTaken

    with VoiceprintStore(tmp_path / "vp.db", KEY) as store:
        store.add_user("alice", _emb(1), MODEL)
        store.check_new_name("ALICE")  # enrolled itself: re-enrolling replaces it
        store.check_new_name("bob")
        with pytest.raises(NameTaken, match="already enrolled as 'alice'"):
            store.check_new_name("ａｌｉｃｅ")
        for name in ("bob\u2028granted", "bob\u2029smith"):
            with pytest.raises(BadName, match="line or paragraph separators"):
                store.check_new_name(name)
            for enroll in (store.add_user, store.replace):
                with pytest.raises(BadName, match="line or paragraph separators"):
                    enroll(name, _emb(2), MODEL)
        # A user enrolled before the rule keeps working: scored, re-enrolled, erased.
        monkeypatch.setattr(voiceprints, "_refuse_line_breaks", lambda name: None)
        store.add_user("old\u2028name", _emb(3), MODEL)
        monkeypatch.undo()
        store.check_new_name("old\u2028name")
        assert store.replace("old\u2028name", _emb(4), MODEL).version == 2
        assert store.get("old\u2028name") is not None and store.erase("old\u2028name")
        assert [u.name for u in store.users()] == ["alice"]


def test_a_name_that_only_looks_different_is_not_a_second_person(tmp_path: Path) -> None:
    """'ａｌｉｃｅ' (full-width), 'alice\u00a0smith' (no-break space), 'ｱﾘｽ' (half-width
    kana) matched no enrolled name, so they enrolled as second people: an erase of 'alice'
    left the other voiceprint opening the door, under a name that reads the same in logs."""
    twins = {
        "alice": ("ａｌｉｃｅ", "ＡＬＩＣＥ", "ａlice"),
        "alice smith": ("alice\u00a0smith", "alice\u3000smith", "alice  smith", "Alice\u2002Smith"),
        "アリス": ("ｱﾘｽ",),  # half-width katakana
        "ΐris": ("Ϊ\u0301ris",),  # one letter, two case-insensitive spellings
    }
    with VoiceprintStore(tmp_path / "vp.db", KEY) as store:
        for seed, (name, others) in enumerate(twins.items()):
            store.add_user(name, _emb(seed), MODEL)
            for other in others:
                for enroll in (store.add_user, store.replace):
                    with pytest.raises(StoreError, match=f"already enrolled as '{name}'"):
                        enroll(other, _emb(99), MODEL)
        assert sorted(u.name for u in store.users()) == sorted(twins)
        # The same spelling (or case) still re-enrolls; a different name still enrolls.
        assert store.replace("ALICE", _emb(7), MODEL).version == 2
        store.add_user("alicia", _emb(8), MODEL)
    # Either way round: a name enrolled in its full-width form keeps its plain twin out,
    # also when another process (another connection) enrolled it after this one looked.
    with VoiceprintStore(tmp_path / "vp2.db", KEY) as store:
        store.add_user("bob", _emb(1), MODEL)  # the names are read (and kept) here
        with VoiceprintStore(tmp_path / "vp2.db", KEY) as other:
            other.add_user("ａｌｉｃｅ", _emb(1), MODEL)
        with pytest.raises(StoreError, match="already enrolled as 'ａｌｉｃｅ'"):
            store.add_user("Alice", _emb(2), MODEL)
        # Once erased, the other spelling enrolls.
        assert store.erase("ａｌｉｃｅ")
        store.add_user("Alice", _emb(2), MODEL)
        with pytest.raises(StoreError, match="already enrolled as 'Alice'"):
            store.add_user("ａｌｉｃｅ", _emb(3), MODEL)


def test_a_wrong_key_says_where_it_was_read_from(
    tmp_path: Path, no_secret_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: with $VOXGATE_VOICEPRINT_KEY (or a systemd credential) left set to
    another door's key, `voxgate users list -c voxgate.yaml` said only "wrong voiceprint
    key (it does not open this store)", while speaker.key_file named the right key: the
    person checks that file, finds it right, and is stuck. The message now names where the
    key was read from, and that it comes before speaker.key_file."""
    from voxgate.config import VoxgateConfig

    key_file = tmp_path / "voiceprint.key"
    vpmod.write_key_file(key_file)
    cfg = VoxgateConfig(data_dir=tmp_path / "data", speaker={"key_file": key_file})
    with vpmod.open_store(cfg) as store:
        store.add_user("alice", _emb(1), MODEL)
    monkeypatch.setenv("VOXGATE_VOICEPRINT_KEY", bytes(range(32)).hex())
    with pytest.raises(vpmod.WrongKey) as refused:
        vpmod.open_store(cfg)
    assert "$VOXGATE_VOICEPRINT_KEY" in str(refused.value), refused.value
    assert str(key_file) in str(refused.value), refused.value  # the file it stood in for
    monkeypatch.delenv("VOXGATE_VOICEPRINT_KEY")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "voiceprint-key").write_text(bytes(range(32)).hex())
    (creds / "voiceprint-key").chmod(0o600)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    with pytest.raises(vpmod.WrongKey) as refused:
        vpmod.open_store(cfg)
    assert str(creds / "voiceprint-key") in str(refused.value), refused.value
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    other = tmp_path / "other.key"
    vpmod.write_key_file(other)
    cfg = VoxgateConfig(data_dir=tmp_path / "data", speaker={"key_file": other})
    with pytest.raises(vpmod.WrongKey) as refused:
        vpmod.open_store(cfg)
    assert f"the key in {other}" in str(refused.value), refused.value
