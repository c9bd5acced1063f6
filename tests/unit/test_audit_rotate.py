"""`voxgate audit rotate`: the log is archived and begun again with a line that continues its
chain, while writers keep writing; `verify` checks the rotation line and the archive it names.
And the hole it closes: a log emptied by hand (with its anchor deleted) on a door that has run
is a lost log, no longer a fresh one. Real files, real flock, the CLI as a process."""

from __future__ import annotations

import fcntl
import json
import re
import subprocess
import types
from pathlib import Path

import pytest

import voxgate.audit as audit_mod
from tests.unit.test_audit import cli
from voxgate.audit import AuditLog, anchor_path_for, canonical, line_hash, verify

REPO = Path(__file__).resolve().parents[2]
KEY = b"k" * 32
NEW_KEY = b"n" * 32


def door(tmp_path: Path, key: bytes | None = None) -> Path:
    """A door config (with audit.key_file holding `key`) and a log of three lines."""
    cfg = tmp_path / "voxgate.yaml"
    text = f"data_dir: {tmp_path}\n"
    if key is not None:
        key_file = tmp_path / "audit-key"
        key_file.write_bytes(key)
        key_file.chmod(0o600)
        text += f"audit:\n  key_file: {key_file}\n"
    cfg.write_text(text)
    log = AuditLog(tmp_path / "audit.jsonl", key=key)
    for user in ("alice", "bob", "carol"):
        log.append("decision", outcome="granted", user=user)
    return cfg


def records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def archives(folder: Path) -> list[Path]:
    return sorted(folder.glob("audit-*-seq*.jsonl"))


@pytest.mark.parametrize("key", [None, KEY], ids=["no-key", "key"])
def test_rotate_archives_the_log_and_the_new_log_continues_its_chain(
    tmp_path: Path, key: bytes | None
) -> None:
    cfg = door(tmp_path, key)
    log = tmp_path / "audit.jsonl"
    before = log.read_bytes()
    head = records(log)[-1]

    done = cli("rotate", "-c", str(cfg))
    assert done.returncode == 0, done.stdout + done.stderr
    (archive,) = archives(tmp_path)
    assert re.fullmatch(r"audit-\d{8}T\d{6}Z-seq3\.jsonl", archive.name), archive.name
    assert str(archive) in done.stdout
    assert archive.read_bytes() == before
    assert anchor_path_for(archive).exists()
    for f in (archive, anchor_path_for(archive)):
        assert oct(f.stat().st_mode & 0o777) == "0o600"

    (first,) = records(log)
    assert first["event"] == "audit_log_rotated"
    assert (first["seq"], first["prev"]) == (4, head["hash"])
    assert (first["previous_seq"], first["previous_hash"]) == (3, head["hash"])
    assert first["previous_verified"] is True and first["previous_problems"] == 0
    assert first["archive"] == str(archive) and first["via"] == "cli" and first["by"]

    # The door goes on writing after it, and both files verify (the archive by itself too).
    AuditLog(log, key=key).append("decision", outcome="denied", user="dave")
    checked = cli("verify", "-c", str(cfg))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "intact, 2 line(s), head seq 5" in checked.stdout
    assert "is intact and ends where this log begins" in checked.stdout
    alone = cli("verify", str(archive), *(["--key-file", str(tmp_path / "audit-key")] * bool(key)))
    assert alone.returncode == 0, alone.stdout + alone.stderr
    shown = cli("show", "-c", str(cfg))
    assert f"continues {archive} (up to seq 3, intact when archived)" in shown.stdout


def test_a_writer_that_opened_the_log_before_the_rotation_writes_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon opens the log by path for each write and then waits for the flock: the
    rotation runs (another process) between its open and its flock. Its line must follow
    the rotation line in the log, not land in the archive (a renamed inode)."""
    cfg = door(tmp_path, KEY)
    log = tmp_path / "audit.jsonl"
    writer = AuditLog(log, key=KEY)
    rotated: list[subprocess.CompletedProcess[str]] = []

    def flock(fd: int, op: int) -> None:
        if not rotated and op == fcntl.LOCK_EX:
            rotated.append(cli("rotate", "-c", str(cfg)))  # the file is open, not yet locked
        fcntl.flock(fd, op)

    monkeypatch.setattr(
        audit_mod, "fcntl", types.SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX)
    )
    writer.append("decision", outcome="granted", user="erin")
    monkeypatch.undo()
    assert rotated and rotated[0].returncode == 0, rotated[0].stderr
    assert [r["event"] for r in records(log)] == ["audit_log_rotated", "decision"]
    assert [r["seq"] for r in records(log)] == [4, 5]
    (archive,) = archives(tmp_path)
    assert [r["user"] for r in records(archive)] == ["alice", "bob", "carol"]
    checked = cli("verify", "-c", str(cfg))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_audit_key_is_changed_by_rotating_with_the_new_key(tmp_path: Path) -> None:
    cfg = door(tmp_path, KEY)
    log = tmp_path / "audit.jsonl"
    new_key = tmp_path / "audit-key.new"
    new_key.write_bytes(NEW_KEY)
    new_key.chmod(0o600)
    done = cli("rotate", "-c", str(cfg), "--new-key-file", str(new_key))
    assert done.returncode == 0, done.stdout + done.stderr
    assert records(log)[0]["key_changed"] is True
    (tmp_path / "audit-key").write_bytes(NEW_KEY)  # installed where the config names it

    from voxgate.audit import open_log
    from voxgate.config import load_config

    open_log(load_config(cfg), note_loss=True).append("service_start")
    assert [r["event"] for r in records(log)] == ["audit_log_rotated", "service_start"]
    checked = cli("verify", "-c", str(cfg))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (archive,) = archives(tmp_path)
    old_key = tmp_path / "old-key"
    old_key.write_bytes(KEY)
    assert cli("verify", str(archive), "--key-file", str(old_key)).returncode == 0


def test_an_archive_changed_after_the_rotation_is_reported(tmp_path: Path) -> None:
    cfg = door(tmp_path)
    assert cli("rotate", "-c", str(cfg)).returncode == 0
    (archive,) = archives(tmp_path)
    kept, kept_anchor = archive.read_bytes(), anchor_path_for(archive).read_bytes()
    archive.write_bytes(kept.replace(b'"user":"bob"', b'"user":"mallory"'))
    edited = cli("verify", "-c", str(cfg))
    assert edited.returncode == 1, edited.stdout + edited.stderr
    assert f"the archive {archive}: line 2 (seq 2): edited" in edited.stderr

    # Rebuilt without its last line, consistently (no key): it no longer ends where the
    # rotation recorded.
    shorter = kept.splitlines(keepends=True)[:2]
    archive.write_bytes(b"".join(shorter))
    last = json.loads(shorter[-1])
    anchor_path_for(archive).write_text(json.dumps({"seq": 2, "hash": last["hash"]}))
    assert verify(archive).ok
    cut = cli("verify", "-c", str(cfg))
    assert cut.returncode == 1, cut.stdout + cut.stderr
    assert "changed after the rotation" in cut.stderr

    # Moved offsite: a note, and --archive-dir finds it where it went.
    elsewhere = tmp_path / "offsite"
    elsewhere.mkdir()
    archive.write_bytes(kept)
    anchor_path_for(archive).write_bytes(kept_anchor)
    anchor_path_for(archive).rename(anchor_path_for(elsewhere / archive.name))
    archive.rename(elsewhere / archive.name)
    away = cli("verify", "-c", str(cfg))
    assert away.returncode == 0 and "not found" in away.stdout, away.stdout + away.stderr
    found = cli("verify", "-c", str(cfg), "--archive-dir", str(elsewhere))
    assert found.returncode == 0 and "is intact and ends where" in found.stdout, found.stdout


def _reseal(log: Path, change: dict) -> None:
    """Rewrite the log's only line with `change`, its hash and the anchor recomputed (what
    anyone can do without a key)."""
    (rec,) = records(log)
    rec.update(change)
    rec["hash"] = line_hash(rec)
    log.write_bytes(canonical(rec) + b"\n")
    anchor_path_for(log).write_text(json.dumps({"seq": rec["seq"], "hash": rec["hash"]}))


def test_a_rotation_line_that_does_not_continue_what_it_names_is_damage(tmp_path: Path) -> None:
    cfg = door(tmp_path)
    log = tmp_path / "audit.jsonl"
    assert cli("rotate", "-c", str(cfg)).returncode == 0
    first = records(log)[0]
    _reseal(log, {"previous_seq": 1})  # claims seq 1 was the last, but is seq 4
    bad = cli("verify", "-c", str(cfg))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "does not continue the log it names" in bad.stderr

    _reseal(log, {"previous_seq": first["previous_seq"], "previous_hash": None})
    bad = cli("verify", "-c", str(cfg))
    assert bad.returncode == 1 and "without the previous_seq" in bad.stderr, bad.stderr

    # A rotation line further down: lines were put in front of it.
    other = tmp_path / "other.jsonl"
    AuditLog(other).append("decision", outcome="granted", user="alice")
    AuditLog(other).append(
        "audit_log_rotated", **{k: first[k] for k in ("archive", "previous_seq", "previous_hash")}
    )
    rep = verify(other)
    assert not rep.ok and "only ever begins a log" in rep.problems[0], rep.problems


def test_an_emptied_log_without_its_anchor_on_a_door_that_has_run_is_lost(tmp_path: Path) -> None:
    """The documented way to start a new log was to empty it in place and delete the anchor;
    the empty log then read as a fresh one and verified as intact, even with a key, so anyone
    who could write both files erased the history. It is a lost log now, for verify and for
    every writer's start (open_log); rotate is the way to begin again."""
    from voxgate.audit import open_log
    from voxgate.config import load_config
    from voxgate.config.service import LockoutConfig
    from voxgate.lockout import LockoutBook

    cfg_file = door(tmp_path, KEY)
    LockoutBook(tmp_path / "lockout.db", LockoutConfig()).close()  # the door has run
    log = tmp_path / "audit.jsonl"
    log.write_bytes(b"")
    anchor_path_for(log).unlink()
    lost = cli("verify", "-c", str(cfg_file))
    assert lost.returncode == 1, lost.stdout + lost.stderr
    assert "the audit log is empty and its anchor missing" in lost.stderr, lost.stderr
    assert "lockout.db" in lost.stderr

    open_log(load_config(cfg_file), note_loss=True).append("service_start")
    events = records(log)
    assert [e["event"] for e in events] == ["audit_log_lost", "service_start"]
    rep = verify(log, key=KEY)
    assert not rep.ok and "history before this line is lost" in rep.problems[0], rep.problems


def test_a_fresh_door_with_an_empty_log_is_still_fine(tmp_path: Path) -> None:
    from voxgate.audit import open_log
    from voxgate.config import load_config
    from voxgate.config.service import LockoutConfig
    from voxgate.lockout import LockoutBook

    cfg_file = tmp_path / "voxgate.yaml"
    cfg_file.write_text(f"data_dir: {tmp_path}\n")
    log = tmp_path / "audit.jsonl"
    log.write_bytes(b"")
    fresh = cli("verify", "-c", str(cfg_file))
    assert fresh.returncode == 0 and "no audit log yet" in fresh.stdout, fresh.stderr

    # A first start that fails after opening the log (and after making lockout.db) leaves
    # the log empty with its anchor at seq 0: the next start is no lost log.
    open_log(load_config(cfg_file), note_loss=True)
    assert log.read_bytes() == b""
    assert json.loads(anchor_path_for(log).read_text())["seq"] == 0
    LockoutBook(tmp_path / "lockout.db", LockoutConfig()).close()
    assert cli("verify", "-c", str(cfg_file)).returncode == 0
    open_log(load_config(cfg_file), note_loss=True).append("service_start")
    assert [e["event"] for e in records(log)] == ["service_start"]
    assert verify(log).ok


def test_a_not_intact_log_is_rotated_all_the_same_and_said_loudly(tmp_path: Path) -> None:
    cfg = door(tmp_path)
    log = tmp_path / "audit.jsonl"
    log.write_bytes(log.read_bytes().replace(b'"user":"bob"', b'"user":"mallory"'))
    kept = log.read_bytes()
    done = cli("rotate", "-c", str(cfg))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "NOT intact" in done.stderr and "line 2 (seq 2): edited" in done.stderr
    (archive,) = archives(tmp_path)
    assert archive.read_bytes() == kept  # the evidence, as it was
    (first,) = records(log)
    assert first["previous_verified"] is False and first["previous_problems"] == 1
    checked = cli("verify", "-c", str(cfg))
    assert checked.returncode == 0, checked.stderr
    assert "was already NOT intact when it was rotated" in checked.stdout


def test_rotate_refuses_without_changing_anything(tmp_path: Path) -> None:
    cfg = tmp_path / "voxgate.yaml"
    cfg.write_text(f"data_dir: {tmp_path}\n")
    none = cli("rotate", "-c", str(cfg))
    assert none.returncode == 1 and "no audit log to rotate" in none.stderr, none.stderr
    assert len(none.stderr.strip().splitlines()) == 1

    door(tmp_path, KEY)
    log = tmp_path / "audit.jsonl"
    before = (log.read_bytes(), anchor_path_for(log).read_bytes())
    cfg.write_text(f"data_dir: {tmp_path}\n")  # the key not named: the anchor is signed
    unsigned = cli("rotate", "-c", str(cfg))
    assert unsigned.returncode == 2 and "no audit key was given" in unsigned.stderr
    for folder in (tmp_path / "no-such-folder", tmp_path / "voxgate.yaml"):
        refused = cli(
            "rotate",
            "-c",
            str(cfg),
            "--key-file",
            str(tmp_path / "audit-key"),
            "--archive-dir",
            str(folder),
        )
        assert refused.returncode == 73, refused.stderr
        assert "nothing was changed" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert (log.read_bytes(), anchor_path_for(log).read_bytes()) == before
    assert archives(tmp_path) == []
