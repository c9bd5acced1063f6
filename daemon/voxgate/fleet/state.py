"""The sync state file: versions applied per user and group, and the outbox."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from voxgate.fleet.errors import FleetError
from voxgate.fleet.keys import FleetKeys
from voxgate.fleet.wire import Codec, Order, newer
from voxgate.ownership import create_whole, disk_is_full

log = logging.getLogger("voxgate.fleet")  # one logger name for the whole package


# --- sync state: versions, tombstones, outbox ------------------------------------------------


def _sync_schema(db: sqlite3.Connection) -> None:
    """The sync state's tables, made or brought up to date."""
    # The outbox holds sealed voiceprints until the broker has them: a sent or replaced one
    # is zeroed, not left in a free page (and `sent` empties the WAL).
    db.execute("PRAGMA secure_delete = ON")
    db.execute("PRAGMA journal_mode = WAL")
    db.executescript(
        """
        CREATE TABLE IF NOT EXISTS users (
            tag TEXT PRIMARY KEY, version INTEGER NOT NULL, kind TEXT NOT NULL,
            held INTEGER NOT NULL, tiebreak TEXT NOT NULL DEFAULT '');
        CREATE TABLE IF NOT EXISTS grants (
            tag TEXT NOT NULL, grp TEXT NOT NULL, version INTEGER NOT NULL,
            kind TEXT NOT NULL, tiebreak TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (tag, grp));
        CREATE TABLE IF NOT EXISTS outbox (
            topic TEXT PRIMARY KEY, payload BLOB NOT NULL, version INTEGER NOT NULL,
            tiebreak TEXT NOT NULL DEFAULT '');
        """
    )
    # State files written before tie-breaks: their rows keep '' (see Order).
    for table in ("users", "grants", "outbox"):
        cols = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        if "tiebreak" not in cols:
            db.execute(f"ALTER TABLE {table} ADD COLUMN tiebreak TEXT NOT NULL DEFAULT ''")


def _stamp(path: Path) -> tuple[tuple[int, int, int] | None, ...]:
    """What changes when the state file (or its -wal) is written."""
    stamps: list[tuple[int, int, int] | None] = []
    for p in (path, path.with_name(path.name + "-wal")):
        try:
            st = p.stat()
        except OSError:
            stamps.append(None)
        else:
            stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamps)


# Each table's key columns and its other columns (version and tiebreak among them).
_MERGED = {
    "users": (("tag",), ("version", "kind", "held", "tiebreak")),
    "grants": (("tag", "grp"), ("version", "kind", "tiebreak")),
    "outbox": (("topic",), ("payload", "version", "tiebreak")),
}


def _merge_newer(src: sqlite3.Connection, dst: sqlite3.Connection) -> None:
    """Copy into `dst` each row of `src` that `dst` lacks or holds an older change of
    (by `newer`, as messages are ordered), in one transaction. Rows only `dst` holds stay."""
    dst.execute("BEGIN IMMEDIATE")
    try:
        for table, (keys, rest) in _MERGED.items():
            cols = (*keys, *rest)
            where = " AND ".join(f"{k} = ?" for k in keys)
            for row in src.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall():
                got = dict(zip(cols, row, strict=True))
                have = dst.execute(
                    f"SELECT version, tiebreak FROM {table} WHERE {where}",
                    [got[k] for k in keys],
                ).fetchone()
                if have is None or newer((got["version"], got["tiebreak"]), tuple(have)):
                    dst.execute(
                        f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) "
                        f"VALUES ({', '.join('?' * len(cols))})",
                        row,
                    )
        dst.execute("COMMIT")
    except BaseException:
        # SQLite may have rolled back by itself (a full disk): the error to show is the cause.
        with contextlib.suppress(sqlite3.Error):
            dst.execute("ROLLBACK")
        raise


class SyncState:
    """What this door has applied per user (by tag) and per group, plus unsent messages."""

    def __init__(self, path: Path, *, memory_when_full: bool = False) -> None:
        """memory_when_full=True (the daemon): an existing file the full disk keeps from
        being opened for writing is read into memory instead, and written back once there
        is room (write_back). Otherwise that raises FleetError(temporary=True)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.in_memory = False
        try:
            self._open()
        except FleetError as exc:
            if not (exc.temporary and memory_when_full and self.path.is_file()):
                raise
            self._read_as = _stamp(self.path)  # before reading: a later write shows
            self._db = self._read_into_memory(exc)
            self.in_memory = True
            log.error(
                "%s; running on a copy in memory: the door comes online and applies the "
                "fleet's changes, and the copy is written back to the file once there is "
                "room (tried at the fleet agent's retries and before each fleet message); "
                "a stop before then loses what was applied meanwhile (the fleet sends it "
                "again at the next connect, except what this door had queued to send)",
                exc,
            )

    def _open(self) -> None:
        db: sqlite3.Connection | None = None
        try:
            if self.path.is_file() and self.path.stat().st_size == 0:
                raise FleetError(self._empty_message())
            if not self.path.exists():
                self._create()
            db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            _sync_schema(db)
            self._db = db
        except sqlite3.DatabaseError as exc:
            if db is not None:
                db.close()
            # A full disk says "disk I/O error" (SQLite cannot size the -shm); stopping as
            # for a damaged file (exit 78, not restarted) kept the door shut after space
            # was freed. Damage (malformed, not a database) is a plain DatabaseError.
            if isinstance(exc, sqlite3.OperationalError) and disk_is_full(self.path):
                raise FleetError(self._full_message(exc), temporary=True) from None
            raise FleetError(f"{self.path}: unusable fleet sync state ({exc})") from None
        except OSError as exc:
            if db is not None:
                db.close()
            if exc.errno == errno.ENOSPC or disk_is_full(self.path):
                raise FleetError(self._full_message(exc), temporary=True) from None
            raise FleetError(f"{self.path}: cannot open the fleet sync state ({exc})") from None
        os.chmod(self.path, 0o600)

    def _read_into_memory(self, why: FleetError) -> sqlite3.Connection:
        """The file copied into an in-memory database. Read-only first (a -shm that exists
        may be usable); without one SQLite cannot read a WAL database on a full disk, so the
        file is then read as it is (immutable), which is all of it only while its -wal is
        empty (after a clean stop): pending changes are never skipped silently."""
        uri = f"{self.path.absolute().as_uri()}?mode=ro"
        wal = self.path.with_name(self.path.name + "-wal")
        mem = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        try:
            try:
                self._copy(uri, mem)
            except sqlite3.OperationalError:
                if wal.is_file() and wal.stat().st_size > 0:
                    raise FleetError(
                        f"{why}; its -wal holds changes not yet in the file, which cannot "
                        "be read without room for a -shm",
                        temporary=True,
                    ) from None
                self._copy(uri + "&immutable=1", mem)
            _sync_schema(mem)
        except sqlite3.DatabaseError as exc:
            mem.close()
            raise FleetError(f"{self.path}: unusable fleet sync state ({exc})") from None
        except BaseException:
            mem.close()
            raise
        return mem

    @staticmethod
    def _copy(uri: str, mem: sqlite3.Connection) -> None:
        src = sqlite3.connect(uri, uri=True, timeout=5.0)
        try:
            src.backup(mem)
        finally:
            src.close()

    def write_back(self) -> bool:
        """While in memory: once the disk has room, write the copy to the file and use the
        file again. Returns whether it is on the file now."""
        with self._lock:
            if not self.in_memory:
                return True
            if disk_is_full(self.path):
                return False
            disk: sqlite3.Connection | None = None
            # Written meanwhile by another process (`voxgate fleet erase`, `voxgate enroll`
            # once there was room): copying the memory over the file lost that write (an
            # erase never sent to the fleet), so then only the newer rows are merged in.
            merge = _stamp(self.path) != self._read_as
            try:
                disk = sqlite3.connect(
                    str(self.path), timeout=5.0, isolation_level=None, check_same_thread=False
                )
                if merge:
                    _sync_schema(disk)
                    _merge_newer(self._db, disk)
                else:
                    self._db.backup(disk)
                    _sync_schema(disk)
            except (sqlite3.Error, OSError) as exc:  # still no room: the next try
                if disk is not None:
                    disk.close()
                log.debug(
                    "%s: writing the in-memory fleet sync state back failed: %s", self.path, exc
                )
                return False
            self._db.close()
            self._db = disk
            self.in_memory = False
            with contextlib.suppress(OSError):  # made anew if it was removed meanwhile
                os.chmod(self.path, 0o600)
        log.warning(
            "%s: the fleet sync state held in memory (the disk was full) is written back%s; "
            "using the file again",
            self.path,
            " (the file was changed meanwhile by another process: per user, group and "
            "unsent message, the newer of the two is kept)"
            if merge
            else "",
        )
        return True

    def _full_message(self, exc: Exception) -> str:
        return (
            f"{self.path}: cannot open the fleet sync state ({exc}); the disk is full: free "
            f"space on {self.path.parent} (old recordings, rotated logs, copies left there); "
            "the file is left untouched"
        )

    def _empty_message(self) -> str:
        # Created whole (_create), so an empty file was cut: a power cut while it was
        # written, a failed restore. Opened as new, the changes made here and not yet sent
        # (an erase among them) were dropped without a word, and the retained voiceprint of
        # a person erased here but not yet told to the fleet was stored again at the next
        # connect: the erase undone.
        return (
            f"{self.path}: the fleet sync state is empty (0 bytes), so it was cut (a power "
            "cut while it was written, a failed copy or restore); left untouched. Restore it "
            "from a backup; or delete it (with any -wal and -shm file beside it): the door then "
            "takes the fleet's retained messages again at the next connect, but what this door "
            "had not sent yet is lost: erase again here any user erased since the last "
            "successful send (voxgate users erase NAME, or voxgate fleet erase NAME when no "
            "longer enrolled) and resend enrollments (voxgate fleet resend NAME)"
        )

    def _create(self) -> None:
        """A new state file with its schema, built under a temporary name and linked into
        place: a state file that exists is never empty (an empty one is damage), also
        while another process (the daemon, `voxgate enroll`) creates it."""
        create_whole(self.path, _sync_schema)

    def user(self, tag: str) -> tuple[int, str, bool, str] | None:
        """(version, kind, held, tie-break) of the newest change applied for the user."""
        with self._lock:
            row = self._db.execute(
                "SELECT version, kind, held, tiebreak FROM users WHERE tag = ?", (tag,)
            ).fetchone()
        return (int(row[0]), str(row[1]), bool(row[2]), str(row[3])) if row else None

    def set_user(self, tag: str, order: Order, kind: str, held: bool) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO users (tag, version, kind, held, tiebreak) "
                "VALUES (?, ?, ?, ?, ?)",
                (tag, order[0], kind, int(held), order[1]),
            )

    def grant(self, tag: str, group: str) -> tuple[int, str, str] | None:
        """(version, kind, tie-break) of the newest change applied from the group's topic."""
        with self._lock:
            row = self._db.execute(
                "SELECT version, kind, tiebreak FROM grants WHERE tag = ? AND grp = ?",
                (tag, group),
            ).fetchone()
        return (int(row[0]), str(row[1]), str(row[2])) if row else None

    def set_grant(self, tag: str, group: str, order: Order, kind: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO grants (tag, grp, version, kind, tiebreak) "
                "VALUES (?, ?, ?, ?, ?)",
                (tag, group, order[0], kind, order[1]),
            )

    def drop_grants(self, tag: str) -> None:
        """Mark the user's voiceprint grants as dropped by this door's config."""
        with self._lock:
            self._db.execute(
                "UPDATE grants SET kind = 'dropped' WHERE tag = ? AND kind = 'voiceprint'", (tag,)
            )

    def granting_groups(self, tag: str) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT grp FROM grants WHERE tag = ? AND kind = 'voiceprint'", (tag,)
            ).fetchall()
        return [r[0] for r in rows]

    def queue(self, topic: str, payload: bytes, order: Order) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO outbox (topic, payload, version, tiebreak) "
                "VALUES (?, ?, ?, ?)",
                (topic, payload, order[0], order[1]),
            )

    def outbox(self) -> list[tuple[str, bytes, Order]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT topic, payload, version, tiebreak FROM outbox ORDER BY rowid"
            ).fetchall()
        return [(r[0], bytes(r[1]), (int(r[2]), str(r[3]))) for r in rows]

    def sent(self, topic: str, order: Order) -> None:
        with self._lock:
            self._db.execute(
                "DELETE FROM outbox WHERE topic = ? AND version = ? AND tiebreak = ?",
                (topic, order[0], order[1]),
            )
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # e.g. a reader in another process: next time
                log.debug("%s: WAL checkpoint after a send failed: %s", self.path, exc)

    def close(self) -> None:
        with self._lock:
            if self.in_memory:
                log.error(
                    "%s: stopping with the fleet sync state still in memory (the disk is "
                    "full): what was applied since the start is not in the file",
                    self.path,
                )
            self._db.close()


def state_path(cfg: Any) -> Path:
    """The sync state file: fleet.state_file or <data_dir>/fleet.db."""
    return Path(cfg.fleet.state_file or Path(cfg.data_dir) / "fleet.db")


def held_in_state(cfg: Any, name: str) -> dict[str, Any] | None:
    """What the sync state file holds about `name`, for an export: the user tag, the newest
    change applied here, the change applied per group, and the messages about them still
    waiting to be sent (sealed: the voiceprint or the tombstone). None without a state file
    (fleet sync never ran here)."""
    path = state_path(cfg)
    if not path.is_file():
        return None
    try:
        tag = Codec(FleetKeys.load(cfg.fleet), cfg.fleet.site, cfg.device_id).user_tag(name)
    except Exception as exc:  # FleetError, SecretError: no key, no tag to look for
        return {"state_file": str(path), "error": f"the user tag needs the fleet key: {exc}"}
    try:
        db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=5.0)
        try:
            user = db.execute(
                "SELECT version, kind, held FROM users WHERE tag = ?", (tag,)
            ).fetchone()
            groups = db.execute(
                "SELECT grp, version, kind FROM grants WHERE tag = ? ORDER BY grp", (tag,)
            ).fetchall()
            outbox = db.execute(
                "SELECT topic, version FROM outbox WHERE topic LIKE ? ORDER BY rowid",
                (f"%/{tag}",),
            ).fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        return {"state_file": str(path), "user_tag": tag, "error": f"cannot read it: {exc}"}
    return {
        "state_file": str(path),
        "user_tag": tag,
        "applied": None
        if user is None
        else {"version": int(user[0]), "kind": str(user[1]), "held": bool(user[2])},
        "groups": [{"group": g, "version": int(v), "kind": str(k)} for g, v, k in groups],
        "outbox": [{"topic": t, "version": int(v)} for t, v in outbox],
    }
