"""`voxgate audit rotate` holds the log's lock only briefly: it checks and copies the log as
it is at the start without the lock, while the door goes on writing, then under the lock
takes the lines added since. A log changed meanwhile in any other way (cut and regrown,
edited in place, rotated by another command) is checked and copied again, whole, under the
lock. Real files, real flock; the writers are separate processes."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

import voxgate.audit as audit_mod
from tests.unit.test_audit import cli
from tests.unit.test_audit_rotate import KEY, archives, door, records
from voxgate.audit import AuditLog, rotate, verify

REPO = Path(__file__).resolve().parents[2]

WRITER = """
import sys
from pathlib import Path
from voxgate.audit import AuditLog
log = AuditLog(Path(sys.argv[1]), key=bytes.fromhex(sys.argv[2]) or None)
for i in range(int(sys.argv[3])):
    log.append("decision", outcome="granted", user=f"{sys.argv[4]}{i}")
"""


def write_lines(log: Path, count: int, who: str, key: bytes | None = KEY) -> None:
    """`count` lines appended by another process, as the daemon writes them (flock and all).
    The timeout only keeps a rotation that wrongly holds the lock from hanging the run."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
    done = subprocess.run(
        [sys.executable, "-c", WRITER, str(log), (key or b"").hex(), str(count), who],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def lock_is_free(log: Path) -> bool:
    """Whether a writer could take the log's flock now (a separate open: flock is per open
    file, so this process's own rotation holding it counts)."""
    with open(log, "rb") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return True


def assert_one_chain(*files: Path) -> list[dict[str, Any]]:
    """The lines of the files, in order, are one chain: seq 1, 2, ... and each prev the hash
    of the line before."""
    lines = [r for f in files for r in records(f)]
    assert [r["seq"] for r in lines] == list(range(1, len(lines) + 1))
    for before, after in pairwise(lines):
        assert after["prev"] == before["hash"], after
    return lines


def test_a_door_write_during_a_rotation_does_not_wait_for_the_log_to_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the whole log to check it took ~1.85 s per 100k lines under the lock, while
    the door's next decision waited to write its line. Held at the start of that check, the
    rotation must leave the lock free: a writer process appends lines and finishes; every
    line ends up in the archive or the new log, in one chain."""
    cfg = door(tmp_path, KEY)
    log = tmp_path / "audit.jsonl"
    free: list[bool] = []
    check_lines = audit_mod._check_lines

    def checking(lines: Iterable[bytes], *args: Any, **kwargs: Any) -> None:
        if not free:  # the rotation's first look at the log's lines
            free.append(lock_is_free(log))
            if free[0]:  # else a blocking write would wait for this very rotation forever
                write_lines(log, 5, "during")
        check_lines(lines, *args, **kwargs)

    monkeypatch.setattr(audit_mod, "_check_lines", checking)
    done = rotate(log, key=KEY)
    monkeypatch.undo()
    assert free == [True], "the rotation held the log's lock while it read the log"

    assert done.previous.ok, done.previous.problems
    assert [r.get("user") for r in records(done.archive)] == [
        "alice",
        "bob",
        "carol",
        *(f"during{i}" for i in range(5)),
    ]
    (first,) = records(log)
    assert (first["previous_seq"], first["previous_lines"], first["previous_verified"]) == (
        8,
        8,
        True,
    )
    write_lines(log, 2, "after")
    assert len(assert_one_chain(done.archive, log)) == 8 + 1 + 2
    checked = cli("verify", "-c", str(cfg), "--archive-dir", str(tmp_path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "is intact and ends where this log begins" in checked.stdout


def hold_after_prefix(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> list[int]:
    """Run `action` where rotate() has checked and copied the log without the lock and has
    not taken it yet; returns a list that records that it ran."""
    ran: list[int] = []

    def hook() -> None:
        ran.append(1)
        action()

    monkeypatch.setattr(audit_mod, "_after_prefix", hook, raising=False)
    return ran


def test_lines_appended_after_the_copy_are_checked_and_archived_under_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = door(tmp_path, KEY)
    log = tmp_path / "audit.jsonl"
    ran = hold_after_prefix(monkeypatch, lambda: write_lines(log, 3, "late"))
    done = rotate(log, key=KEY, archive_dir=tmp_path)
    assert ran == [1]
    assert [r["user"] for r in records(done.archive)][-3:] == ["late0", "late1", "late2"]
    assert records(log)[0]["previous_seq"] == 6 and done.previous.ok
    assert done.archive.name.endswith("-seq6.jsonl")
    assert len(assert_one_chain(done.archive, log)) == 7
    # The copy made without the lock is the archive now: no other file is left behind.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert cli("verify", "-c", str(cfg)).returncode == 0


def _cut_and_regrow(log: Path) -> None:
    """Cut back to its first line and written on past the old length: as long as before (or
    longer), with other bytes (what a writer's failed write, undone, then redone looks like
    from outside, or someone rewriting it)."""
    size = log.stat().st_size
    first = log.read_bytes().splitlines(keepends=True)[0]
    with open(log, "r+b") as f:
        f.truncate(len(first))
    while log.stat().st_size <= size:
        write_lines(log, 1, "regrown")


def _edit_in_place(log: Path) -> None:
    """The same length, one name changed: an append check by size alone passes it."""
    data = log.read_bytes()
    with open(log, "r+b") as f:
        f.write(data.replace(b'"user":"bob"', b'"user":"bub"'))


def _rotate_meanwhile(log: Path) -> None:
    done = cli("rotate", "-c", str(log.parent / "voxgate.yaml"))
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "change",
    [_cut_and_regrow, _edit_in_place, _rotate_meanwhile],
    ids=["cut-and-regrown", "edited-in-place", "rotated-meanwhile"],
)
def test_a_log_changed_other_than_by_appending_meanwhile_is_archived_as_it_is_under_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: Callable[[Path], None]
) -> None:
    """The copy made without the lock no longer matches the log's start: it is dropped, and
    the log as it is under the lock is checked and archived whole, as before the change."""
    door(tmp_path, KEY)
    log = tmp_path / "audit.jsonl"
    seen: list[bytes] = []

    def act() -> None:
        change(log)
        seen.append(log.read_bytes())  # what the rotation finds under the lock

    hold_after_prefix(monkeypatch, act)
    done = rotate(log, key=KEY)
    (kept,) = seen
    assert done.archive.read_bytes() == kept
    (first,) = records(log)
    want = verify(done.archive, key=KEY, archives=False)
    assert first["previous_lines"] == kept.count(b"\n")
    assert (first["previous_seq"], first["previous_hash"]) == (want.head_seq, want.head)
    assert first["previous_verified"] is want.ok is done.previous.ok
    assert first["previous_problems"] == len(want.problems)
    if change is _rotate_meanwhile:
        assert done.previous.ok, done.previous.problems
    else:
        assert not done.previous.ok  # the change is seen and recorded, not the copy's bytes
    assert verify(log, key=KEY).ok
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    if change is _rotate_meanwhile:
        assert len(archives(tmp_path)) == 2
        assert records(done.archive)[0]["event"] == "audit_log_rotated"
        assert len(assert_one_chain(*archives(tmp_path), log)) == 3 + 1 + 1


def test_the_anchor_a_writer_signs_meanwhile_is_the_one_archived(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The anchor is read under the lock: the archive's anchor names the archive's last line
    (a copy of the anchor from before the writes would read as lines cut off)."""
    door(tmp_path, KEY)
    log = tmp_path / "audit.jsonl"
    hold_after_prefix(monkeypatch, lambda: write_lines(log, 2, "late"))
    done = rotate(log, key=KEY)
    assert done.archive_anchor is not None
    assert json.loads(done.archive_anchor.read_text())["seq"] == 5
    assert verify(done.archive, key=KEY, archives=False).ok
    AuditLog(log, key=KEY).append("decision", outcome="denied", user="dave")
    assert verify(log, key=KEY, archive_dir=tmp_path).ok


def test_a_torn_line_appended_meanwhile_is_archived_and_reported_as_a_whole_check_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked in two parts (the copy, then the rest under the lock), the log gets the same
    report as when it is checked at once: the same problems in the same order, the torn
    last line first."""
    door(tmp_path, KEY)
    log = tmp_path / "audit.jsonl"
    _edit_in_place(log)  # a problem in the part copied first, too

    def damage() -> None:
        write_lines(log, 2, "late")
        with open(log, "ab") as f:
            f.write(b'{"seq": 6, "event": "decis')  # a write cut off by a power cut

    hold_after_prefix(monkeypatch, damage)
    done = rotate(log, key=KEY)
    whole = verify(done.archive, key=KEY, archives=False)
    assert done.archive.read_bytes().endswith(b'"event": "decis')
    assert done.previous.problems == whole.problems and whole.problems
    assert whole.problems[0].startswith("line 6: torn"), whole.problems
    assert "line 2 (seq 2): edited" in whole.problems[1], whole.problems
    (first,) = records(log)
    assert (first["previous_lines"], first["previous_problems"]) == (6, len(whole.problems))
    assert first["previous_verified"] is False


def test_an_archive_name_taken_meanwhile_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy becomes the archive by a link, which like the copy made new (O_EXCL) never
    replaces a file of that name: refused, the log, its anchor and the folder as they were."""
    from voxgate.audit import RotateError, anchor_path_for

    door(tmp_path, KEY)
    log = tmp_path / "audit.jsonl"
    now = 1.8e9
    taken = tmp_path / "audit-20270115T080000Z-seq3.jsonl"

    def take() -> None:
        taken.write_bytes(b"someone else's\n")

    hold_after_prefix(monkeypatch, take)
    before = (log.read_bytes(), anchor_path_for(log).read_bytes())
    with pytest.raises(RotateError) as refused:
        rotate(log, key=KEY, now=now)
    assert refused.value.kind == "archive" and "exists already" in str(refused.value)
    assert str(taken) in str(refused.value)
    assert (log.read_bytes(), anchor_path_for(log).read_bytes()) == before
    assert taken.read_bytes() == b"someone else's\n"
    assert archives(tmp_path) == [taken] and not anchor_path_for(taken).exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_rotation_interrupted_while_it_copies_the_log_leaves_no_copy_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during the long read without the lock (1.6 s for 100k lines): the hidden copy,
    up to the log's size, was left in the archive folder for good (only an OSError removed
    it). Interrupted there, nothing is changed and nothing is left."""
    door(tmp_path, KEY)
    log = tmp_path / "audit.jsonl"
    check_lines = audit_mod._check_lines

    def interrupted(lines: Iterable[bytes], *args: Any, **kwargs: Any) -> None:
        for n, _ in enumerate(lines):
            if n == 1:  # the copy has begun
                raise KeyboardInterrupt
        check_lines(lines, *args, **kwargs)

    monkeypatch.setattr(audit_mod, "_check_lines", interrupted)
    before = log.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        rotate(log, key=KEY)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert log.read_bytes() == before and archives(tmp_path) == []


def test_a_link_put_in_place_of_the_copy_meanwhile_is_not_archived(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hidden copy sits in the archive folder while the lock is not held; whoever can
    write there (the data folder's owner, when root rotates) can put a symlink in its place.
    The archive was linked to whatever had the name then: the symlink itself, so the
    archive named another file and the log's bytes were not archived. The archive must be
    the rotation's own copy of the log, or the log copied anew."""
    door(tmp_path, KEY)
    log = tmp_path / "audit.jsonl"
    other = tmp_path / "elsewhere"
    other.mkdir()
    secret = other / "secret"
    secret.write_bytes(b"not the audit log\n")

    def swap() -> None:
        (tmp,) = [p for p in tmp_path.iterdir() if p.name.startswith(".audit-rotating-")]
        tmp.unlink()
        tmp.symlink_to(secret)

    hold_after_prefix(monkeypatch, swap)
    before = log.read_bytes()
    done = rotate(log, key=KEY)
    assert not done.archive.is_symlink()
    assert done.archive.read_bytes() == before
    assert secret.read_bytes() == b"not the audit log\n" and secret.stat().st_nlink == 1
    assert verify(done.archive, key=KEY, archives=False).ok
