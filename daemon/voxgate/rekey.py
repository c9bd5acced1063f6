"""Seal every voiceprint under a new key (`voxgate users rekey`).

Why: erasing a user removes their bytes from the database file, but a flash card's
controller may keep old copies of blocks in its spare area, and a copied or backed-up
`voiceprints.db` keeps everything. Those copies are sealed with the key; a new key for the
live file, and the old key destroyed, retires them all at once, without re-enrolling
anyone. Also the remedy when a key may have leaked.

How: the new file is built beside the old one and renamed over it in one step, while the
old file is held with a write lock; a failure anywhere leaves the old file as it was. The
daemon must be stopped: it keeps the old key, and a store it has open would be replaced
under it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from voxgate.ownership import disk_hint, fsync_path
from voxgate.voiceprints import StoreError, VoiceprintStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rekeyed:
    moved: int  # voiceprints now sealed with the new key
    dropped: int  # unreadable rows left out (drop_unreadable)


def rekey(path: Path, old_key: bytes, new_key: bytes, *, drop_unreadable: bool = False) -> Rekeyed:
    """Re-seal the store at `path` from `old_key` to `new_key`. StoreError (WrongKey for a
    wrong old key) with nothing changed when it cannot."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no voiceprint database here; nothing to re-key")
    if new_key == old_key:
        raise StoreError(
            "the new key is the key in use; create a new one with: voxgate users init-key FILE"
        )
    holders = opened_by_others(path)
    if holders:
        pids = ", ".join(str(p) for p in holders)
        raise StoreError(
            f"{path} is open in process {pids} (the daemon?); it would keep the old key and "
            "write to the replaced file: stop it first (systemctl stop voxgate); nothing "
            "was changed"
        )
    old = VoiceprintStore(path, old_key)  # WrongKey when old_key does not open it
    tmp = path.with_name(f".{path.name}.rekey-{os.getpid()}")
    try:
        with old._lock:
            # A write lock for the whole copy and the rename: another command's enrollment
            # or erase waits, and is never written to the file about to be replaced.
            old._db.execute("BEGIN IMMEDIATE")
            try:
                result = _copy(old, tmp, new_key, drop_unreadable)
                _take_owner(path, tmp)
                os.replace(tmp, path)
                fsync_path(path.parent)
            finally:
                old._db.execute("ROLLBACK")
    except sqlite3.DatabaseError as exc:
        hint = disk_hint(path)  # a read-only card is not called full
        raise StoreError(f"{path}: cannot re-key ({exc}){hint}; nothing was changed") from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot re-key ({exc.strerror}); nothing was changed") from None
    finally:
        old.close()
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                tmp.with_name(tmp.name + suffix).unlink()
    log.info("%s: %d voiceprint(s) sealed with a new key", path, result.moved)
    return result


def _copy(old: VoiceprintStore, tmp: Path, new_key: bytes, drop_unreadable: bool) -> Rekeyed:
    rows = old._db.execute("SELECT id, sealed FROM voiceprints").fetchall()
    meta = old._db.execute("SELECT k, v FROM meta WHERE k != 'key_check'").fetchall()
    voiceprints = [vp for uid, sealed in rows if (vp := old._try_open(sealed, uid)) is not None]
    unreadable = len(rows) - len(voiceprints)
    if unreadable and not drop_unreadable:
        raise StoreError(
            f"{old.path}: {unreadable} of {len(rows)} voiceprint(s) cannot be read with the "
            "current key (damaged rows); nothing was changed. Run again with "
            "--drop-unreadable to leave them out (their owners enroll again)"
        )
    for each in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            each.unlink()  # left by a run that was killed
    new = VoiceprintStore(tmp, new_key)
    try:
        with new._lock, new._tx():
            # Kept as they were (created_at, version): the fleet compares versions.
            new._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta)
            for vp in voiceprints:
                uid = new._user_id(vp.name)
                sealed = new._seal(new._pack(vp), uid)
                new._db.execute("INSERT INTO voiceprints VALUES (?, ?)", (uid, sealed))
        new._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        new.close()
    fsync_path(tmp)
    return Rekeyed(moved=len(voiceprints), dropped=unreadable)


def _take_owner(path: Path, tmp: Path) -> None:
    """The new file gets the old one's owner (run as root for a service user's file)."""
    st = path.stat()
    if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
        os.chown(tmp, st.st_uid, st.st_gid)
    os.chmod(tmp, 0o600)


def opened_by_others(path: Path) -> list[int]:
    """Processes other than this one that have `path` open, from /proc (Linux). A process
    of another user is seen only by root, and by that user; only they can write the file."""
    try:
        target = os.stat(path)
        entries = list(os.scandir("/proc"))
    except OSError:
        return []
    found = []
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fds = list(os.scandir(f"/proc/{entry.name}/fd"))
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(fd.path)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                found.append(int(entry.name))
                break
    return found
