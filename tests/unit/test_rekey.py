"""`voxgate users rekey`: every voiceprint sealed with a new key, nothing else changed, and
on any failure the old file left exactly as it was."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from voxgate.rekey import opened_by_others, rekey
from voxgate.voiceprints import StoreError, Voiceprint, VoiceprintStore, WrongKey

REPO = Path(__file__).resolve().parents[2]
OLD = bytes(range(32))
NEW = bytes(range(100, 132))
MODEL = "test-model/float"


def _emb(seed: int, k: int = 3, dim: int = 16) -> np.ndarray:
    e = np.random.default_rng(seed).normal(size=(k, dim)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def _store_with_two(db: Path) -> dict[str, Voiceprint]:
    with VoiceprintStore(db, OLD) as store:
        store.add_user("Alice", _emb(1), MODEL, {"takes": 3})
        store.replace("Alice", _emb(2), MODEL, {"takes": 3})  # version 2
        store.add_user("Bob", _emb(3), MODEL, model_sha256="c" * 64)
        return {v.name: v for v in store.all()}


def _sealed_blobs(db: Path) -> list[bytes]:
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT sealed FROM voiceprints").fetchall()
        rows += con.execute("SELECT v FROM meta WHERE k = 'key_check'").fetchall()
        return [bytes(r[0]) for r in rows]
    finally:
        con.close()


def test_rekey_seals_every_voiceprint_with_the_new_key_and_keeps_them_as_they_were(
    tmp_path: Path,
) -> None:
    db = tmp_path / "voiceprints.db"
    before = _store_with_two(db)
    old_blobs = _sealed_blobs(db)
    done = rekey(db, OLD, NEW)
    assert (done.moved, done.dropped) == (2, 0)
    with pytest.raises(WrongKey):
        VoiceprintStore(db, OLD)
    with VoiceprintStore(db, NEW) as store:
        after = {v.name: v for v in store.all()}
        assert store.get("alice") is not None  # found by name under the new key's index
    assert sorted(after) == ["Alice", "Bob"]
    for name, vp in before.items():
        got = after[name]
        np.testing.assert_array_equal(got.embeddings, vp.embeddings)
        kept = (got.created_at, got.updated_at, got.version, got.meta, got.model_id)
        assert kept == (vp.created_at, vp.updated_at, vp.version, vp.meta, vp.model_id)
        assert got.model_sha256 == vp.model_sha256 == ("c" * 64 if name == "Bob" else None)
    raw = db.read_bytes()
    assert not any(blob in raw for blob in old_blobs)  # no old ciphertext in the new file
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["voiceprints.db"]  # no leftovers


def test_a_wrong_old_key_or_the_same_key_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "voiceprints.db"
    _store_with_two(db)
    raw = db.read_bytes()
    with pytest.raises(WrongKey):
        rekey(db, NEW, bytes(range(200, 232)))
    with pytest.raises(StoreError, match="the key in use"):
        rekey(db, OLD, OLD)
    assert db.read_bytes() == raw
    with pytest.raises(StoreError, match="no voiceprint database here"):
        rekey(tmp_path / "missing.db", OLD, NEW)
    assert not (tmp_path / "missing.db").exists()


def test_a_damaged_row_stops_the_rekey_unless_told_to_leave_it_out(tmp_path: Path) -> None:
    db = tmp_path / "voiceprints.db"
    _store_with_two(db)
    con = sqlite3.connect(db)
    uid, sealed = con.execute("SELECT id, sealed FROM voiceprints LIMIT 1").fetchone()
    damaged = bytes(sealed[:-1]) + bytes([sealed[-1] ^ 1])
    con.execute("UPDATE voiceprints SET sealed = ? WHERE id = ?", (damaged, uid))
    con.commit()
    con.close()
    with pytest.raises(StoreError, match=r"1 of 2 voiceprint\(s\) cannot be read"):
        rekey(db, OLD, NEW)
    with VoiceprintStore(db, OLD) as store:  # untouched: still the old key
        assert len(store.readable()[0]) == 1
    done = rekey(db, OLD, NEW, drop_unreadable=True)
    assert (done.moved, done.dropped) == (1, 1)
    with VoiceprintStore(db, NEW) as store:
        readable, unreadable = store.readable()
        assert unreadable == 0 and len(readable) == 1


def test_a_store_another_process_has_open_is_not_rekeyed(tmp_path: Path) -> None:
    """A running daemon keeps the old key and would write to the replaced file."""
    db = tmp_path / "voiceprints.db"
    _store_with_two(db)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); "
            "c.execute('SELECT 1 FROM voiceprints').fetchall(); print('open', flush=True); "
            "time.sleep(60)",
            str(db),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        assert opened_by_others(db) == [holder.pid]
        raw = db.read_bytes()
        with pytest.raises(StoreError, match=rf"open in process {holder.pid} .*stop it first"):
            rekey(db, OLD, NEW)
        assert db.read_bytes() == raw
    finally:
        holder.kill()
        holder.wait()
    assert opened_by_others(db) == []
    assert rekey(db, OLD, NEW).moved == 2


def test_a_failure_while_building_the_new_file_leaves_the_old_one(tmp_path: Path) -> None:
    """Here a folder stands where the new file is built (mode bits would not stop root),
    so it cannot be made."""
    db = tmp_path / "voiceprints.db"
    _store_with_two(db)
    raw = db.read_bytes()
    blocker = tmp_path / f".voiceprints.db.rekey-{os.getpid()}"
    blocker.mkdir()  # a folder where the new file should go
    (blocker / "x").write_text("keep me")
    with pytest.raises(StoreError, match="nothing was changed"):
        rekey(db, OLD, NEW)
    assert db.read_bytes() == raw
    with VoiceprintStore(db, OLD) as store:
        assert len(store.all()) == 2


def _cli(tmp_path: Path, *args: str, config: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env.pop("CREDENTIALS_DIRECTORY", None)
    env["PYTHONPATH"] = str(REPO / "daemon")
    cmd = [sys.executable, "-m", "voxgate", "users", *args]
    if config:
        cmd += ["-c", str(tmp_path / "voxgate.yaml")]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


def test_the_rekey_command_says_what_to_do_next_and_audits_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    old_key = tmp_path / "vp.key"
    old_key.write_text(OLD.hex() + "\n")
    old_key.chmod(0o600)
    cfg = {"device_id": "door-1", "data_dir": str(data), "speaker": {"key_file": str(old_key)}}
    (tmp_path / "voxgate.yaml").write_text(yaml.safe_dump(cfg))
    _store_with_two(data / "voiceprints.db")
    new_key = tmp_path / "vp.key.new"
    missing = _cli(tmp_path, "rekey", str(new_key))
    assert missing.returncode == 1
    assert f"voxgate users init-key {new_key}" in missing.stderr
    assert _cli(tmp_path, "init-key", str(new_key), config=False).returncode == 0
    run = _cli(tmp_path, "rekey", str(new_key))
    assert run.returncode == 0, run.stderr
    assert "sealed 2 voiceprint(s)" in run.stdout
    assert f"point speaker.key_file at {new_key}" in run.stdout
    assert f"destroy the old key, {old_key}" in run.stdout
    # The door's config, pointed at the new key, lists the same people.
    cfg["speaker"] = {"key_file": str(new_key)}
    (tmp_path / "voxgate.yaml").write_text(yaml.safe_dump(cfg))
    listed = _cli(tmp_path, "list")
    assert listed.returncode == 0, listed.stderr
    assert "Alice" in listed.stdout and "Bob" in listed.stdout
    lines = [json.loads(x) for x in (data / "audit.jsonl").read_text().splitlines()]
    rekeyed = [x for x in lines if x.get("event") == "voiceprints_rekeyed"]
    assert len(rekeyed) == 1 and rekeyed[0]["count"] == 2 and rekeyed[0]["dropped"] == 0
    # Run again with the key now in use: refused, nothing changed.
    raw = (data / "voiceprints.db").read_bytes()
    again = _cli(tmp_path, "rekey", str(new_key))
    assert again.returncode == 1 and "the key in use" in again.stderr
    assert (data / "voiceprints.db").read_bytes() == raw
