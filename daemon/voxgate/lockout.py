"""Lockout: back-off after repeated failures, per claimed user and per door, kept on disk.

After `max_failures` consecutive failures a user is locked for `initial_s`; each further
failure (once the lock has passed) doubles the period, up to `max_s` (NIST SP 800-63B
5.2.2 rate limiting). The user's own success resets their count.

The door has two limits, and backs off at either: `device_max_failures` consecutive failures
(any claimed name, identify mode; anyone's success starts it over), and
`device_window_failures` failures within `device_window_s`, which no success clears (they
leave as they age). The consecutive count alone gave a stranger at a busy door
device_max_failures - 1 free guesses per legitimate entry, without limit over a day; the
window alone would give a quiet door (a few entries a day) more than it had
(benchmarks/bench_lockout.py). A lock's period doubles with the count over its limit,
whichever count is further over.

State lives in a small SQLite file so a restart (or a crash loop an attacker provokes) does
not clear it; the door's failure times are in their own table (`door_failures`), which the
previous release ignores (the file stays `user_version` 1, see docs/service.md).

End times are wall clock (they must survive a reboot, and MQTT shows them), but a lock lasts
its period of real time whatever the clock does: a Raspberry Pi has no RTC, boots with
fake-hwclock's saved time and NTP steps it forward, sometimes by hours, and admins step
clocks back. Within a process the book compares the wall clock with one that is never
stepped and runs through a suspend (clocks.elapsed: CLOCK_BOOTTIME; the monotonic clock
stops while a Jetson sleeps, so a wake-up looked like a step) at every call; a jump between
them is a step, and every end time moves with it (and is written back), so a lock keeps the
time it had left. A lock read back from the file at a start never
has more left than its own period (a file written before the clock was set back, or by a
clock ahead); one written by a clock that was behind, read after the clock was set right
while the daemon was stopped, ends early (nothing on disk tells that apart from time passed).

The in-memory table is the truth the daemon acts on; the file is written through. A write
that fails (disk full, read-only) is logged and the daemon keeps enforcing from memory.

An admin lifts a lock from another process (`voxgate lockout clear`): `clear_in_file`
deletes the key's rows and queues the clear in the file's `clears` table, and the daemon,
which checks the file every second (`take_clears`, cheap: `PRAGMA data_version` tells
whether another process wrote it), clears its memory, writes through and removes the request.
Deleting the rows alone would not do: the daemon writes its own copy back at the next
failure, and enforces it until then.

A user's entry goes once it can no longer matter (`expire`): no lock in force and its last
failure older than max(max_s, device_window_s). Every claimed name that failed (one not
enrolled too: anyone can type one) got an entry, and entries stayed for ever, a row per name
in the file. The last failure's time is a column the previous release leaves NULL (it names
its columns); such a row counts from the start that reads it.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from voxgate.clocks import elapsed
from voxgate.config.service import LockoutConfig
from voxgate.logs import LogLimit
from voxgate.names import person_key
from voxgate.policy import LockoutState

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1  # door_failures was added without a bump: the previous release ignores it
# A wall-clock jump relative to clocks.elapsed larger than this, between two calls, is a
# step (settimeofday, NTP's step); slewing moves the clocks apart by at most 0.5 ms/s.
STEP_S = 2.0
DEVICE_KEY = "device"
# Users' entries checked for expiry per call of expire(): the daemon calls it every second.
EXPIRE_BATCH = 64


def user_key(user: str) -> str:
    # One key per person: a lock on "alice" must also hold an attempt claiming "ALICE", or
    # "al<ZWNJ>ice" (an invisible joiner: names.person_key).
    return f"user:{person_key(user)}"


@dataclass(frozen=True)
class Entry:
    key: str  # "device" or "user:<name>"
    failures: int  # consecutive
    locked_until: float | None  # wall clock; None when not locked
    last_failure: float | None = None  # wall clock; users' entries expire by it

    def locked(self, now: float) -> bool:
        return self.locked_until is not None and now < self.locked_until


@dataclass(frozen=True)
class RecordResult:
    state: LockoutState  # after this attempt
    new_locks: tuple[Entry, ...]  # keys this failure has just locked (for metrics, MQTT, audit)


@dataclass(frozen=True)
class Cleared:
    """A clear the daemon applied: the entry as it was, the door's window count before."""

    entry: Entry
    window_failures: int | None  # the door only
    requested_at: float
    by: str


class LockoutError(Exception):
    """The lockout file cannot be read or changed by a command. `kind`: "absent" (never
    created), "damaged" (not a lockout file, unreadable) or "io" (permissions, read-only or
    full disk, busy)."""

    def __init__(self, message: str, *, kind: Literal["absent", "damaged", "io"] = "io") -> None:
        super().__init__(message)
        self.kind = kind


class LockoutBook:
    def __init__(
        self,
        path: Path,
        cfg: LockoutConfig,
        *,
        wall: Callable[[], float] | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        """`wall`, `monotonic`: the clocks the book watches for steps (injected by tests; by
        default time.time and clocks.elapsed, which runs through a suspend); the `now` the
        methods take is the wall clock's time of the call."""
        self.path = Path(path)
        self.cfg = cfg
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        # Wall times of the door's counted failures, oldest first; those older than
        # device_window_s no longer count (pruned at the next failure).
        self._door: list[float] = []
        self._wall = wall or time.time
        self._monotonic = monotonic or elapsed
        self._offset = self._wall() - self._monotonic()
        # Keys changed in memory but not yet in the file (a write failed, or the file could
        # not be opened for writing): saved with the next write that works.
        self._dirty: set[str] = set()
        self._save_log = LogLimit()  # a failed save: logged once until one works
        self._reopen = False  # the file could not be opened for writing: try again later
        self._data_version: int | None = None  # the file's, when take_clears last read it
        self._clears_log = LogLimit()
        self._sweep: list[str] = []  # users' keys expire() has still to look at this round
        self._db = self._open()
        if self._db is not None:
            self._load(self._db)
        self._bound_loaded()
        with self._lock:
            self._expire(self._wall(), None)

    # -- public -------------------------------------------------------------------------

    def state(self, user: str | None, now: float | None = None) -> LockoutState:
        now = self._wall() if now is None else now
        with self._lock:
            self._follow_steps()
            return self._state(user, now)

    def record(self, user: str | None, ok: bool, now: float | None = None) -> RecordResult:
        """Count one attempt's result for the claimed user (None: identify) and the door."""
        now = self._wall() if now is None else now
        keys = [DEVICE_KEY] + ([user_key(user)] if user else [])
        new_locks: list[Entry] = []
        with self._lock:
            self._follow_steps()
            for key in keys:
                if ok:  # the door's failure times stay: they leave with the window
                    entry = Entry(key, 0, None)
                else:
                    entry = self._fail(key, now)
                    if entry.locked_until is not None and entry.locked(now):
                        new_locks.append(entry)
                self._entries[key] = entry
                self._write(entry)
            self._expire(now, EXPIRE_BATCH)
            return RecordResult(self._state(user, now), tuple(new_locks))

    def reset(self, user: str | None) -> None:
        """Clear a user's counter (an admin unlock, or the user was erased); None: the door."""
        key = user_key(user) if user else DEVICE_KEY
        with self._lock:
            self._reset(key)

    def take_clears(self) -> list[Cleared]:
        """Apply the clears another process queued in the file (`voxgate lockout clear`):
        each key's lock and counts go from memory and the file, and the request is removed.
        Called every second by the daemon; reads the table only after another connection
        changed the file."""
        with self._lock:
            # Opened read-only at the start (a read-only disk, since made writable): the
            # command could write its clear, so the daemon can open the file again too.
            if self._db is None and not self._try_reopen():
                return []
            assert self._db is not None
            try:
                version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
                if version == self._data_version:
                    return []
                rows = self._db.execute("SELECT id, key, at, by FROM clears ORDER BY id").fetchall()
            except sqlite3.Error as exc:
                if self._clears_log.allow():
                    log.error("cannot read lockout clear requests from %s: %s", self.path, exc)
                return []
            done: list[Cleared] = []
            for rid, key, at, by in rows:
                key = str(key)
                if key != DEVICE_KEY and not key.startswith("user:"):
                    log.warning("lockout clear request for an unknown key %r ignored", key)
                else:
                    old = self._entries.get(key, Entry(key, 0, None))
                    window = len(self._door) if key == DEVICE_KEY else None
                    self._reset(key)
                    done.append(Cleared(old, window, float(at), str(by)))
                try:
                    self._db.execute("DELETE FROM clears WHERE id = ?", (rid,))
                except sqlite3.Error as exc:  # applied again next time: a clear is idempotent
                    log.error("cannot remove a lockout clear request from %s: %s", self.path, exc)
            # Our own writes do not change data_version: read it after them.
            with contextlib.suppress(sqlite3.Error):
                self._data_version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
            return done

    def forget(self, user: str) -> bool:
        """Drop everything held about an erased user: the entry goes from memory and from the
        file, and the file's free pages and WAL no longer hold the name (secure_delete, then a
        checkpoint). True if there was an entry. Unlike reset(), no row is left behind."""
        key = user_key(user)
        with self._lock:
            had = self._entries.pop(key, None) is not None
            if self._db is None and not self._try_reopen():
                self._dirty.add(key)  # dropped from the file once it can be written
                return had
            assert self._db is not None
            try:
                had = _drop(self._db, key) or had
            except sqlite3.Error as exc:
                log.error("cannot drop an erased user's lockout entry from %s: %s", self.path, exc)
                self._dirty.add(key)
            return had

    def expire(self, now: float | None = None, limit: int = EXPIRE_BATCH) -> int:
        """Drop users' entries that can no longer matter (no lock in force, last failure
        older than max(max_s, device_window_s)), looking at `limit` entries a call, in
        turn; the number dropped. Also done at a start (every entry) and by record(); the
        daemon calls it every second for a door nobody uses."""
        now = self._wall() if now is None else now
        with self._lock:
            self._follow_steps()
            return self._expire(now, limit)

    def users(self) -> list[str]:
        """The (case-folded) names that have an entry: what the book holds about people."""
        with self._lock:
            return sorted(k[5:] for k in self._entries if k.startswith("user:"))

    def entry(self, user: str) -> Entry | None:
        with self._lock:
            return self._entries.get(user_key(user))

    def locked(self, now: float | None = None) -> list[Entry]:
        """Every key locked now (published on MQTT, shown in metrics)."""
        now = self._wall() if now is None else now
        with self._lock:
            self._follow_steps()
            return sorted((e for e in self._entries.values() if e.locked(now)), key=lambda e: e.key)

    def reconfigure(self, cfg: LockoutConfig) -> None:
        """New settings apply from the next failure; running locks keep their end time."""
        with self._lock:
            self.cfg = cfg

    @property
    def unsaved(self) -> bool:
        """Changes held in memory only: a save failed (a full or read-only disk)."""
        return bool(self._dirty)

    def save_held(self) -> None:
        """Save what a failed save left in memory, without a new change: a quiet door's lock
        set while the disk was full otherwise waited for the next attempt, and a restart
        before it cleared the lock. The daemon calls this every second; a no-op when all
        is saved."""
        with self._lock:
            if self._dirty:
                self._save_dirty()

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- internals ----------------------------------------------------------------------

    def _reset(self, key: str) -> None:
        if key == DEVICE_KEY:
            self._door = []
        self._entries[key] = Entry(key, 0, None)
        self._write(self._entries[key])

    def _expire(self, now: float, limit: int | None) -> int:
        """See expire(); `limit` None: every entry. Call with _lock held."""
        if not self._sweep:
            self._sweep = [k for k in self._entries if k != DEVICE_KEY]
        todo = self._sweep[-(limit or len(self._sweep)) :]
        del self._sweep[len(self._sweep) - len(todo) :]
        quiet_s = max(self.cfg.max_s, self.cfg.device_window_s)
        gone = []
        for key in todo:
            e = self._entries.get(key)
            if e is None or e.locked(now):
                continue
            # No last failure: a success's zero count, in memory only (not in the file);
            # it tells the daemon who was seen enrolled (UserServices.check_erased).
            if e.last_failure is not None and e.last_failure <= now - quiet_s:
                del self._entries[key]
                gone.append(key)
        if not gone:
            return 0
        log.info(
            "lockout: %d entry(ies) expired (no lock, no failure for %g s)", len(gone), quiet_s
        )
        self._dirty.update(gone)  # held is None: deleted with the next write that works
        if self._db is None and not self._try_reopen():
            return len(gone)
        assert self._db is not None
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM lockout WHERE key = ?", [(k,) for k in gone])
            self._db.execute("COMMIT")
            # The rows are zeroed (secure_delete) once written back from the WAL; its frames
            # still hold the names until it is emptied.
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            if self._save_log.allow():
                log.error("cannot drop expired lockout entries from %s: %s", self.path, exc)
            return len(gone)
        self._dirty.difference_update(gone)
        return len(gone)

    def _over(self, key: str, failures: int, now: float | None) -> int:
        """How far `failures` consecutive failures (and for the door, its failures within the
        window at `now`) are over their limit; >= 0: locked. `now` None: the door's failures
        as they were at its last one (the times kept are those then within the window)."""
        if key != DEVICE_KEY:
            return failures - self.cfg.max_failures
        window = len(self._door) if now is None else self._door_count(now)
        return max(
            failures - self.cfg.device_max_failures,
            window - self.cfg.device_window_failures,
        )

    def _period(self, over: int) -> float:
        """The lock a count `over` past its limit gives (0: the first lock)."""
        return min(self.cfg.max_s, self.cfg.initial_s * 2.0 ** min(max(0, over), 30))

    def _door_count(self, now: float) -> int:
        return sum(1 for t in self._door if t > now - self.cfg.device_window_s)

    def _keep(self) -> int:
        # Only the newest times matter: 30 past the limit the period is at its cap.
        return self.cfg.device_window_failures + 31

    def _fail(self, key: str, now: float) -> Entry:
        old = self._entries.get(key, Entry(key, 0, None))
        failures = old.failures + 1
        if key == DEVICE_KEY:
            recent = [t for t in self._door if t > now - self.cfg.device_window_s]
            self._door = [*recent, now][-self._keep() :]
        over = self._over(key, failures, now)
        if over < 0:
            return Entry(key, failures, old.locked_until, now)
        return Entry(key, failures, now + self._period(over), now)

    def _follow_steps(self) -> None:
        """Move every end time with a wall-clock step since the last call, so a lock keeps
        the real time it had left (and one that ended stays ended). Call with _lock held."""
        offset = self._wall() - self._monotonic()
        step, self._offset = offset - self._offset, offset
        if abs(step) <= STEP_S:
            return
        moved = [e for e in self._entries.values() if e.locked_until is not None]
        # A user's quiet time is real time too (NTP stepping forward must not expire a count).
        for e in list(self._entries.values()):
            if e.last_failure is not None:
                self._entries[e.key] = Entry(
                    e.key, e.failures, e.locked_until, e.last_failure + step
                )
        self._write_many("UPDATE lockout SET last_failure = last_failure + ?", (step,))
        log.warning(
            "lockout: the wall clock stepped %+.0f s (NTP, fake-hwclock, an admin); %d lock "
            "end time(s) and %d door failure time(s) moved with it, so each lock keeps the "
            "time it had left and each failure counts as long as it would have",
            step,
            len(moved),
            len(self._door),
        )
        for e in moved:
            assert e.locked_until is not None
            e = self._entries[e.key]
            assert e.locked_until is not None
            self._entries[e.key] = Entry(e.key, e.failures, e.locked_until + step, e.last_failure)
            self._write(self._entries[e.key])
        if self._door:
            self._door = [t + step for t in self._door]
            self._write(self._entries.get(DEVICE_KEY, Entry(DEVICE_KEY, 0, None)))

    def _bound_loaded(self) -> None:
        """A lock read from the file ends within its own period from now: the file may have
        been written before the clock was set back (fake-hwclock after a power cut), or by a
        clock that was ahead, and the lock then lasted hours, or for good."""
        now = self._wall()
        if any(t > now for t in self._door):  # counted from now: a full window, no longer
            self._door = [min(t, now) for t in self._door]
            self._write(self._entries.get(DEVICE_KEY, Entry(DEVICE_KEY, 0, None)))
        for e in list(self._entries.values()):
            if e.last_failure is not None and e.last_failure > now:
                self._entries[e.key] = e = Entry(e.key, e.failures, e.locked_until, now)
        self._write_many("UPDATE lockout SET last_failure = ? WHERE last_failure > ?", (now, now))
        for e in list(self._entries.values()):
            if e.locked_until is None:
                continue
            # The period the lock was set with: failures that left the window since (while
            # the lock ran, or the daemon was down) must not shorten it at a restart.
            period = self._period(self._over(e.key, e.failures, None))
            if e.locked_until - now <= period:
                continue
            log.warning(
                "lockout: %s ends %.0f s from now by %s, longer than its %g s period: the "
                "clock was set back since it was written (or was ahead then); it ends in %g s",
                e.key,
                e.locked_until - now,
                self.path,
                period,
                period,
            )
            self._entries[e.key] = Entry(e.key, e.failures, now + period, e.last_failure)
            self._write(self._entries[e.key])

    def _state(self, user: str | None, now: float) -> LockoutState:
        dev = self._entries.get(DEVICE_KEY, Entry(DEVICE_KEY, 0, None))
        usr = self._entries.get(user_key(user)) if user else None
        usr = usr or Entry(user_key(user or ""), 0, None)
        dev_locked, usr_locked = dev.locked(now), usr.locked(now)
        # locked() implies locked_until is set; the second test only narrows the type.
        ends = [
            e.locked_until
            for e, on in ((dev, dev_locked), (usr, usr_locked))
            if on and e.locked_until is not None
        ]
        scope: Literal["user", "device", "both"] | None = (
            "both"
            if dev_locked and usr_locked
            else "device"
            if dev_locked
            else "user"
            if usr_locked
            else None
        )
        return LockoutState(
            locked=bool(ends),
            until=max(ends) if ends else None,
            user_failures=usr.failures,
            device_failures=dev.failures,
            device_window_failures=self._door_count(now),
            scope=scope,
        )

    def _open(self) -> sqlite3.Connection | None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            if self.path.is_file() and self.path.stat().st_size == 0:
                # Cut (a power cut, a failed restore; or a first start on a full disk, by
                # a version that made the file before its schema): nothing left to keep,
                # and the door must not stop over it, as for a damaged file; but not
                # without a word.
                log.error(
                    "lockout state %s is empty (0 bytes: cut by a power cut or a failed "
                    "restore, or left by a start on a full disk); starting with no lockouts",
                    self.path,
                )
        try:
            return self._connect()
        except _NotCreated as exc:
            log.error(
                "cannot create lockout state %s (%s); nothing was left behind, lockouts are "
                "kept in memory and the file is made once it can be written",
                self.path,
                exc,
            )
            self._reopen = True
            return None
        except sqlite3.OperationalError as exc:
            # Not damage: a read-only or full disk, a busy file. Moving the file aside here
            # cleared every running lock at a restart; enforce what it holds from memory.
            log.error(
                "cannot open lockout state %s for writing (%s); enforcing the lockouts it "
                "holds from memory, changes are saved once it can be written again",
                self.path,
                exc,
            )
            self._load_read_only()
            self._reopen = True
            return None
        except sqlite3.DatabaseError as exc:
            # A damaged file must not stop the door; keep it for inspection and start over.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error(
                "lockout state %s is unreadable (%s); moved to %s, starting with no lockouts",
                self.path,
                exc,
                aside,
            )
            with contextlib.suppress(OSError):
                self.path.rename(aside)
            try:
                return self._connect()
            except sqlite3.DatabaseError as exc2:
                log.error(
                    "cannot create lockout state %s: %s; keeping it in memory", self.path, exc2
                )
                return None

    def _connect(self) -> sqlite3.Connection:
        from voxgate.ownership import create_private, create_whole

        if not self.path.exists():
            # Built under a temporary name and linked into place: made in place, a first
            # start on a full disk left a 0-byte file (SQLite makes the file, then cannot
            # write the schema), which the next start took for one cut by a power cut.
            try:
                create_whole(self.path, _new_file)
            except (OSError, sqlite3.Error) as exc:  # a full disk, a read-only folder
                raise _NotCreated(getattr(exc, "strerror", None) or str(exc)) from None
        create_private(self.path)  # keys name users (and one made by an older version)
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            # Keys name users: a deleted row is zeroed, not left readable in a free page.
            db.execute("PRAGMA secure_delete=ON")
            db.execute("PRAGMA journal_mode=WAL")
            _schema(db)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {version}, expected {SCHEMA_VERSION}")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _load_read_only(self) -> None:
        # immutable=1: a read-only file system cannot hold the WAL's shared-memory file.
        for query in ("mode=ro", "immutable=1"):
            try:
                db = sqlite3.connect(f"{self.path.absolute().as_uri()}?{query}", uri=True)
            except sqlite3.Error:
                continue
            try:
                if self._load(db, writable=False):
                    return
            finally:
                db.close()
        log.error("cannot read lockout state %s either; starting with no lockouts", self.path)

    def _load(self, db: sqlite3.Connection, writable: bool = True) -> bool:
        try:
            rows = _rows(db)
        except sqlite3.DatabaseError as exc:
            if writable:  # read-only tries say it once they have all failed
                log.error(
                    "cannot read lockout state %s: %s; starting with no lockouts", self.path, exc
                )
            return False
        renamed: list[tuple[str, str]] = []
        start = self._wall()
        for stored, failures, until, last in rows:
            # No time (the previous release wrote it, or one before this column): from now.
            last = start if last is None else float(last)
            key = str(stored)
            if key.startswith("user:"):  # a file from before names were folded
                key = user_key(key[5:])
                if key != stored:
                    renamed.append((str(stored), key))
            old = self._entries.get(key)
            if old is not None:  # spellings of one user: keep the stricter of the two
                failures = max(int(failures), old.failures)
                until = max((t for t in (until, old.locked_until) if t is not None), default=None)
                last = max(last, old.last_failure or last)
            self._entries[key] = Entry(key, int(failures), until, last)
        for stored, key in renamed if writable else ():  # one row per user from now on
            try:
                db.execute("DELETE FROM lockout WHERE key = ?", (stored,))
            except sqlite3.Error as exc:
                log.error("cannot rename lockout key %s in %s: %s", stored, self.path, exc)
            self._write(self._entries[key])
        if writable:
            try:
                db.execute(
                    "UPDATE lockout SET last_failure = ? WHERE last_failure IS NULL", (start,)
                )
            except sqlite3.Error as exc:
                log.error("cannot date the lockout entries in %s: %s", self.path, exc)
        self._load_door(db)
        if rows:
            log.info("lockout state: %d key(s) loaded from %s", len(rows), self.path)
        return True

    def _load_door(self, db: sqlite3.Connection) -> None:
        """Read the door's failure times. Failures the previous release counted while it ran
        (rolled back to, then forward again) are in the `device` row's consecutive count
        only: they are not in the window."""
        try:
            times = [float(r[0]) for r in db.execute("SELECT at FROM door_failures ORDER BY at")]
        except sqlite3.DatabaseError:  # a file from before, opened read-only: none yet
            times = []
        self._door = times[-self._keep() :]

    def _write(self, entry: Entry) -> None:
        """Save `entry`, and any change an earlier failure left only in memory: a lock set
        while the disk was full must reach the file once it has room, or the next restart
        clears it."""
        self._dirty.add(entry.key)
        self._save_dirty()

    def _save_dirty(self) -> None:
        if self._db is None and not self._try_reopen():
            return
        assert self._db is not None
        for key in sorted(self._dirty):
            held = self._entries.get(key)
            try:
                if key == DEVICE_KEY:
                    self._write_door(self._db, held)
                elif held is None:  # forgotten (an erased user) while the file was not writable
                    _drop(self._db, key)
                elif held.failures == 0 and held.locked_until is None:
                    self._db.execute("DELETE FROM lockout WHERE key = ?", (key,))
                else:
                    self._db.execute(
                        "INSERT OR REPLACE INTO lockout (key, failures, locked_until, "
                        "last_failure) VALUES (?, ?, ?, ?)",
                        (key, held.failures, held.locked_until, held.last_failure),
                    )
            except sqlite3.Error as exc:
                if self._save_log.allow():
                    log.error(
                        "cannot save lockout state for %s to %s: %s (enforced from memory; "
                        "saved once the file can be written)",
                        key,
                        self.path,
                        exc,
                    )
                return
            self._dirty.discard(key)
        if self._save_log.reset():
            log.warning("lockout state %s: writable again, held changes saved", self.path)

    def _write_door(self, db: sqlite3.Connection, held: Entry | None) -> None:
        """The `device` row (the consecutive count, as the previous release reads it) and
        the door's failure times, in one transaction."""
        held = held or Entry(DEVICE_KEY, 0, None)
        db.execute("BEGIN IMMEDIATE")
        try:
            if held.failures == 0 and held.locked_until is None:
                db.execute("DELETE FROM lockout WHERE key = ?", (DEVICE_KEY,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO lockout (key, failures, locked_until) VALUES (?, ?, ?)",
                    (DEVICE_KEY, held.failures, held.locked_until),
                )
            db.execute("DELETE FROM door_failures")
            db.executemany("INSERT INTO door_failures (at) VALUES (?)", [(t,) for t in self._door])
            db.execute("COMMIT")
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def _write_many(self, sql: str, args: tuple[float, ...]) -> None:
        """One statement over many users' rows (a clock step moves every last failure);
        if it fails, every entry is saved with the next write that works."""
        if self._db is None and not self._try_reopen():
            self._dirty.update(self._entries)
            return
        assert self._db is not None
        try:
            self._db.execute(sql, args)
        except sqlite3.Error as exc:
            if self._save_log.allow():
                log.error("cannot save lockout state to %s: %s", self.path, exc)
            self._dirty.update(self._entries)

    def _try_reopen(self) -> bool:
        """Open the file for writing again after it could not be at start (a full disk);
        True when it is open now."""
        if not self._reopen:
            return False
        try:
            db = self._connect()
        except sqlite3.Error:
            return False
        self._db, self._reopen = db, False
        self._save_log.allow()  # the open failed (logged then): the save that follows says so
        # The file may hold keys memory has dropped since (expired into a success, erased).
        try:
            stored = {str(r[0]) for r in db.execute("SELECT key FROM lockout")}
        except sqlite3.Error:
            stored = set()
        self._dirty |= set(self._entries) | (stored - set(self._entries))
        return True


def forget_in_file(path: Path, user: str) -> bool:
    """Drop an erased user's entry from a lockout file another process (the daemon) may have
    open; for `voxgate users erase`. False when the file or the entry is not there."""
    if not Path(path).is_file():
        return False
    try:
        db = sqlite3.connect(str(path), timeout=5.0, isolation_level=None)
    except sqlite3.Error as exc:
        log.error("cannot open lockout state %s: %s", path, exc)
        return False
    try:
        db.execute("PRAGMA secure_delete=ON")
        return _drop(db, user_key(user))
    except sqlite3.Error as exc:
        log.error("cannot drop the lockout entry of %s from %s: %s", user, path, exc)
        return False
    finally:
        db.close()


def _rows(db: sqlite3.Connection) -> list[tuple[str, int, float | None, float | None]]:
    """The lockout table's rows, with NULL for the last failure where the file has no such
    column (a file from before, opened read-only)."""
    columns = {r[1] for r in db.execute("PRAGMA table_info(lockout)")}
    last = "last_failure" if "last_failure" in columns else "NULL"
    return db.execute(f"SELECT key, failures, locked_until, {last} FROM lockout").fetchall()


def _drop(db: sqlite3.Connection, key: str) -> bool:
    """Delete one key so its name is gone from the file's bytes: zeroed (secure_delete), the
    WAL emptied, and VACUUM rewrites pages that older versions (written before
    secure_delete was on) left behind. The file holds a few rows: this takes milliseconds."""
    gone = db.execute("DELETE FROM lockout WHERE key = ?", (key,)).rowcount > 0
    if _has_table(db, "clears"):  # a clear still queued names them too
        db.execute("DELETE FROM clears WHERE key = ?", (key,))
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("VACUUM")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return gone


class _NotCreated(sqlite3.OperationalError):
    """The lockout file is missing and cannot be made (a full disk, a read-only folder):
    an OperationalError, so callers treat it as a disk that may have room later."""


def _schema(db: sqlite3.Connection) -> None:
    """The tables a lockout file holds, made where missing (a new file, or one from before)."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS lockout (key TEXT PRIMARY KEY, "
        "failures INTEGER NOT NULL, locked_until REAL)"
    )
    # Added in place (a file from before gets it here); the previous release opens the file
    # as before and never reads it.
    db.execute("CREATE TABLE IF NOT EXISTS door_failures (at REAL NOT NULL)")
    _create_clears(db)
    # Also in place: the previous release names the columns it writes (NULL here).
    columns = {r[1] for r in db.execute("PRAGMA table_info(lockout)")}
    if "last_failure" not in columns:
        db.execute("ALTER TABLE lockout ADD COLUMN last_failure REAL")


def _new_file(db: sqlite3.Connection) -> None:
    _schema(db)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _create_clears(db: sqlite3.Connection) -> None:
    # Clears queued by `voxgate lockout clear` for the daemon; the previous release never
    # reads this table (the file stays user_version 1).
    db.execute(
        "CREATE TABLE IF NOT EXISTS clears (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "key TEXT NOT NULL, at REAL NOT NULL, by TEXT NOT NULL)"
    )


@dataclass(frozen=True)
class Snapshot:
    """What a lockout file holds, read by another process than the daemon."""

    entries: tuple[Entry, ...]  # sorted by key
    door_failures: tuple[float, ...]  # wall times of the door's failures, oldest first
    pending: tuple[tuple[str, float, str], ...]  # clears not yet taken: key, at, by

    def window_failures(self, now: float, window_s: float) -> int:
        return sum(1 for t in self.door_failures if t > now - window_s)


# The file is the service user's, mode 0600.
_AS_OWNER = " (run it as root or the service's user; a read-only or full disk must be fixed first)"


def _damaged(path: Path, exc: Exception) -> LockoutError:
    return LockoutError(
        f"lockout state {path} is damaged or not a lockout file ({exc}); it is left as it is. "
        "The daemon moves it aside at its next start (lockout.db.corrupt-<time>) and starts "
        "with no lockouts: restart it to lift every lock",
        kind="damaged",
    )


def _open_for_command(path: Path, *, write: bool) -> sqlite3.Connection:
    """Open an existing lockout file (never create one: a wrong data_dir must not get a
    new empty file) and check it is one. Raises LockoutError."""
    path = Path(path)
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise LockoutError(
            f"no lockout state at {path}: the daemon creates it at its first start "
            "(nothing has been counted there yet; check -c and data_dir)",
            kind="absent",
        ) from None
    except OSError as exc:  # a data_dir closed to this user: not "nothing counted"
        raise LockoutError(f"cannot read lockout state {path}: {exc}{_AS_OWNER}") from None
    if not stat.S_ISREG(st.st_mode):
        raise _damaged(path, OSError("not a regular file"))
    # Reading: a read-only disk cannot hold the WAL's shared-memory file, so mode=ro fails
    # there; immutable=1 reads the file as it stands (as the daemon's start does).
    queries = ["mode=rw"] if write else ["mode=ro", "immutable=1"]
    for n, query in enumerate(queries, 1):
        try:
            return _check_lockout_file(path, query)
        except LockoutError as exc:
            if exc.kind == "damaged" or n == len(queries):
                raise
    raise AssertionError("unreachable")


def _check_lockout_file(path: Path, query: str) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(
            f"{path.absolute().as_uri()}?{query}", uri=True, timeout=5.0, isolation_level=None
        )
    except sqlite3.Error as exc:
        raise LockoutError(f"cannot open lockout state {path}: {exc}{_AS_OWNER}") from None
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        db.execute("SELECT key, failures, locked_until FROM lockout LIMIT 1").fetchall()
    except sqlite3.OperationalError as exc:
        db.close()
        if "no such table" in str(exc):
            raise _damaged(path, exc) from None
        raise LockoutError(f"cannot read lockout state {path}: {exc}{_AS_OWNER}") from None
    except sqlite3.DatabaseError as exc:
        db.close()
        raise _damaged(path, exc) from None
    if version not in (0, SCHEMA_VERSION):
        db.close()
        raise _damaged(path, sqlite3.DatabaseError(f"schema version {version}"))
    return db


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    row = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,))
    return row.fetchone() is not None


def read_file(path: Path) -> Snapshot:
    """The lockout file as it stands (the running daemon writes every change through).
    Raises LockoutError."""
    db = _open_for_command(path, write=False)
    try:
        rows = db.execute("SELECT key, failures, locked_until FROM lockout ORDER BY key")
        entries = tuple(Entry(str(k), int(f), None if u is None else float(u)) for k, f, u in rows)
        times: tuple[float, ...] = ()
        if _has_table(db, "door_failures"):
            q = db.execute("SELECT at FROM door_failures ORDER BY at")
            times = tuple(float(r[0]) for r in q)
        pending: tuple[tuple[str, float, str], ...] = ()
        if _has_table(db, "clears"):
            q = db.execute("SELECT key, at, by FROM clears ORDER BY id")
            pending = tuple((str(k), float(a), str(b)) for k, a, b in q)
    except sqlite3.DatabaseError as exc:
        raise _damaged(Path(path), exc) from None
    finally:
        db.close()
    return Snapshot(entries, times, pending)


@dataclass(frozen=True)
class ClearRequest:
    """A clear written to the file: what the key held, and the request's id in `clears`."""

    entry: Entry
    door_failures: tuple[float, ...]  # the door's failure times it held (the door only)
    request: int


def clear_in_file(path: Path, user: str | None, by: str, now: float) -> ClearRequest | None:
    """Clear `user`'s lock and counts (None: the door's, with its window failures) in the
    file, and queue the clear for a running daemon (which takes it within a second or so,
    see LockoutBook.take_clears). None when the file holds nothing for the key: an unknown
    user, or a door with no failure counted. Raises LockoutError."""
    key = user_key(user) if user else DEVICE_KEY
    db = _open_for_command(path, write=True)
    try:
        db.execute("PRAGMA secure_delete=ON")  # keys name users, as the daemon's writes
        db.execute("BEGIN IMMEDIATE")
        row = db.execute(
            "SELECT failures, locked_until FROM lockout WHERE key = ?", (key,)
        ).fetchone()
        times: tuple[float, ...] = ()
        if key == DEVICE_KEY and _has_table(db, "door_failures"):
            times = tuple(float(r[0]) for r in db.execute("SELECT at FROM door_failures"))
        if row is None and not times:
            db.execute("ROLLBACK")
            return None
        entry = Entry(key, int(row[0]), row[1]) if row is not None else Entry(key, 0, None)
        db.execute("DELETE FROM lockout WHERE key = ?", (key,))
        if key == DEVICE_KEY and times:
            db.execute("DELETE FROM door_failures")
        _create_clears(db)
        cur = db.execute("INSERT INTO clears (key, at, by) VALUES (?, ?, ?)", (key, now, by))
        request = int(cur.lastrowid or 0)
        db.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise LockoutError(f"cannot write lockout state {path}: {exc}{_AS_OWNER}") from None
    except sqlite3.DatabaseError as exc:
        raise _damaged(Path(path), exc) from None
    finally:
        db.close()
    return ClearRequest(entry, times, request)


def clear_taken(path: Path, request: int) -> bool:
    """Whether the daemon has taken (applied and removed) clear request `request`."""
    try:
        db = _open_for_command(path, write=False)
    except LockoutError:
        return False
    try:
        return db.execute("SELECT 1 FROM clears WHERE id = ?", (request,)).fetchone() is None
    except sqlite3.Error:
        return False
    finally:
        db.close()
