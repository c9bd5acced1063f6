"""Voiceprint store: one SQLite file (WAL, versioned schema), every voiceprint sealed with AES-GCM.

What a stolen SD card reveals (the threat this layout is built for):
- The number of enrolled users (one row each) and the file's timestamps.
- Nothing else without the key: user names are stored only as a keyed hash (HMAC-SHA256 under a
  key derived from the voiceprint key), and the name, model id and file sha256, embeddings,
  mean, times and metadata live inside one AES-256-GCM sealed blob per user, padded to a 4 KiB
  bucket so its size does not tell how many takes were enrolled. The row id is the blob's
  associated data, so a blob cannot be moved onto another user's row.
Erasing a user deletes the row with `secure_delete` on, checkpoints the WAL (TRUNCATE) and
VACUUMs, so the bytes are gone from the file and its WAL, not just unlinked from the b-tree.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shlex
import sqlite3
import threading
import time
import unicodedata
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from voxgate.names import name_problem
from voxgate.ownership import create_whole, disk_hint, disk_is_full, is_read_only

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
APPLICATION_ID = 0x56584750  # "VXGP" in the SQLite header: marks the file as ours
SQLITE_MAGIC = b"SQLite format 3\x00"
KEY_BYTES = 32
PAD_BUCKET = 4096
KEY_CHECK = b"voxgate voiceprint key check v1"
MAX_NAME_LEN = 64
# Read from a full disk, a reopen for writing that failed (another process held the file
# locked) is tried again by a read only after this pause; writes always try.
REOPEN_PAUSE_S = 10.0


class StoreError(Exception):
    """A voiceprint file or key that cannot be used; str() is meant for the user."""


class WrongKey(StoreError):
    """The key does not open this store (it was sealed with another one)."""


class KeyMissing(StoreError):
    """No voiceprint key was given (no file, credential or variable); str() names where it
    was looked for and what to do."""


class Damaged(StoreError):
    """The file is not a voiceprint store this build can use (not SQLite, damaged, another
    program's database, a newer schema, a folder): restarting cannot fix it, an admin must."""


class EmptyFile(Damaged):
    """A voiceprint file of 0 bytes; str() already says what to do."""


class ModelMismatch(StoreError):
    """The voiceprint was made by another speaker model; scores across models mean nothing."""


@dataclass(frozen=True)
class Voiceprint:
    name: str
    model_id: str
    embeddings: np.ndarray  # (k, dim) float32, each L2-normalized
    mean: np.ndarray  # (dim,) float32, L2-normalized mean of the embeddings
    created_at: float
    updated_at: float
    version: int  # 1 at enrollment, +1 for each re-enrollment
    meta: dict[str, Any] = field(default_factory=dict)
    # sha256 of the model file that made the embeddings (its card's): a file swapped in
    # under the same card id gives other embeddings. None for voiceprints stored before it
    # was recorded (they are scored as before: which file made them cannot be told).
    model_sha256: str | None = None


@dataclass(frozen=True)
class UserInfo:
    name: str
    model_id: str
    takes: int
    created_at: float
    updated_at: float
    version: int


def model_mismatch(
    made_by: tuple[str | None, str | None], model_id: str, model_sha256: str | None = None
) -> str | None:
    """Why embeddings made by (model id, file sha256) must not be scored by the loaded
    model (another card id, or another file under the same id), or None when they may be.
    An unknown sha256 on either side passes: which file it was cannot be told."""
    made_id, made_sha = made_by
    if made_id != model_id:
        return f"was enrolled with model {made_id}, but {model_id} is loaded"
    if model_sha256 and made_sha and made_sha != model_sha256:
        return (
            f"was enrolled with another file of model {model_id} (sha256 "
            f"{made_sha[:12]}, loaded {model_sha256[:12]})"
        )
    return None


# --- keys -------------------------------------------------------------------------------------


def parse_key(raw: bytes) -> bytes:
    """A 32-byte key from 64 hex characters (what init-key writes) or 32 raw bytes, as
    stored: a raw key may start or end with a whitespace byte."""
    text = raw.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            # Not "create one": a new key would not open the voiceprints sealed with this one.
            raise StoreError(
                "voiceprint key has 64 characters, but not all are hex digits (0-9, a-f); "
                "is the key file mistyped?"
            ) from None
    if len(raw) == KEY_BYTES:
        return bytes(raw)
    if len(text) == KEY_BYTES:  # raw bytes and a newline, as read before
        return text
    raise StoreError(
        f"voiceprint key must be 64 hex characters or 32 raw bytes (got {len(text)} bytes); "
        "if users are enrolled, restore the key from its backup (a new key does not open "
        "their voiceprints), else create one with: voxgate users init-key FILE"
    )


# A key of 32 hex digits is read as 32 raw bytes (the characters): a door may use such a
# key on purpose, so it is not refused, but a wrong key that looks like this is most likely
# init-key's 64 hex digits cut short, or a 16-byte key written in hex. The fleet and audio
# key readers read such keys the same way and use the same hint.
def hex_text_hint(key: str = "The key", written_by: str | None = "`voxgate users init-key`") -> str:
    """What a wrong-key message adds when `key` was 32 hex digits (looks_hex_text)."""
    made = f", as {written_by} writes it" if written_by else ""
    return (
        f". {key} is 32 hex digits, which are read as 32 raw bytes (the characters "
        "themselves), not decoded: a key written in hex must be all 64 hex digits of the "
        f"32-byte key{made} (a newline after it is fine); check that it was not cut short"
    )


HEX_TEXT_KEY_HINT = hex_text_hint()


def looks_hex_text(key: bytes) -> bool:
    """Are these 32 key bytes all ASCII hex digits (hex text read as a raw key)?"""
    return len(key) == KEY_BYTES and all(c in b"0123456789abcdefABCDEF" for c in key)


def sealed_count(store: Path | None) -> int:
    """How many voiceprints `store` holds (read-only, no key needed); 0 when there is no
    such file or it cannot be read (the store's own open then says what is wrong)."""
    for query in ("mode=ro", "immutable=1"):  # immutable: a read-only folder (no -shm)
        try:
            if store is None or not store.is_file():
                return 0
            con = sqlite3.connect(f"{store.resolve().as_uri()}?{query}", uri=True)
            try:
                return int(con.execute("SELECT COUNT(*) FROM voiceprints").fetchone()[0])
            finally:
                con.close()
        except (sqlite3.Error, OSError, ValueError):
            continue
    return 0


def load_key(speaker_cfg: Any, store: Path | None = None) -> bytes:
    """The voiceprint key from $VOXGATE_VOICEPRINT_KEY, a systemd credential or cfg.key_file.
    `store`: the voiceprint file the key is for, so that a key lost beside stored
    voiceprints is answered with "restore it", not with "create one" (which opens none)."""
    from voxgate.config.secrets import (
        SecretError,
        SecretUnreadable,
        override_source,
        read_secret,
    )

    try:
        raw = read_secret("voiceprint-key", speaker_cfg.key_file, strip=False)
    except SecretUnreadable as exc:  # a new key would not open the stored voiceprints
        raise StoreError(str(exc)) from None
    except SecretError as exc:
        held = sealed_count(store)
        if held:
            hint = (
                f"{store} holds {held} voiceprint(s) sealed with that key: restore the key "
                "from its backup (a new key opens none of them; without the key everyone "
                f"must enroll again, after moving {store} aside)"
            )
        elif speaker_cfg.key_file is not None:
            hint = f"create it with: voxgate users init-key {speaker_cfg.key_file}"
        else:  # init-key alone is not enough: nothing tells the config where the key is
            hint = (
                "create a key with: voxgate users init-key FILE, then set speaker.key_file: "
                "FILE in the config"
            )
        raise KeyMissing(f"{exc}; {hint}") from None
    assert raw is not None
    try:
        return parse_key(raw)
    except StoreError as exc:  # a damaged or mistyped key: say which one
        where = override_source("voiceprint-key") or str(speaker_cfg.key_file)
        raise StoreError(f"{where}: {exc}") from None


def write_key_file(path: Path) -> None:
    """Create a new random key in `path` (mode 0600). Refuses to overwrite an existing file."""
    from voxgate.config.secrets import PartialWrite, write_new_secret

    if Path(path).is_dir():  # else "already exists; not overwriting a key", as if a key
        raise StoreError(
            f"{path} is a folder; give the key's file name, e.g. {Path(path) / 'voiceprint.key'}"
        )
    try:
        write_new_secret(path, os.urandom(KEY_BYTES).hex() + "\n")
    except FileNotFoundError:  # was the raw "[Errno 2] No such file or directory: '...'"
        raise StoreError(
            f"{path}: cannot create the key file: the folder {Path(path).parent} does not "
            "exist; create it first"
        ) from None
    except FileExistsError:
        raise StoreError(
            f"{path} already exists; not overwriting a key (voiceprints sealed with it "
            "would become unreadable)"
        ) from None
    except PartialWrite as exc:
        msg = f"{path}: cannot write the key ({exc.strerror}); nothing written"
        raise StoreError(msg) from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot create key file: {exc}") from None


def _subkey(key: bytes, purpose: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(hashes.SHA256(), 32, salt=None, info=b"voxgate voiceprints " + purpose).derive(key)


class BadName(StoreError):
    """A name the store refuses for a new user (enrolled users keep theirs)."""


class NameTaken(BadName):
    """A new name that reads the same as an enrolled one (names.look_alike)."""


def normalize_name(name: str) -> str:
    """Check a user name; returns it NFC-normalized and stripped."""
    clean = unicodedata.normalize("NFC", name).strip()
    if not clean or len(clean) > MAX_NAME_LEN:
        # " " is one character: said, or "must be 1-64 characters" read as false.
        raise StoreError(
            f"user name must be 1-{MAX_NAME_LEN} characters, not counting spaces around it"
        )
    if (problem := name_problem(clean)) is not None:
        raise StoreError(problem)
    return clean


def _refuse_line_breaks(name: str) -> None:
    """New names only: users enrolled with one before this check still open and erase."""
    if any(unicodedata.category(c) in ("Zl", "Zp") for c in name):
        raise BadName("user name must not contain line or paragraph separators")


def enrolled_text(name: str, enrolled: str | None) -> str:
    """'user NAME is already enrolled', naming the stored spelling when it differs: names
    match without case, and "'NICO' is already enrolled" read as if someone else were."""
    shown = f" as '{enrolled}'" if enrolled is not None and enrolled != name else ""
    return f"user '{name}' is already enrolled{shown}"


def not_enrolled_text(name: str, twin: str | None) -> str:
    """'no user NAME enrolled', naming the enrolled user whose name reads the same when there
    is one (VoiceprintStore.reads_as): a name typed with two spaces, or pasted with a no-break
    space, did not open 'Ann Marie', and an export or erase for a data request answered that
    nobody of that name was held."""
    said = f"no user '{name}' enrolled"
    if twin is None:
        return said
    return (
        f"{said}, but '{twin}' is, a name that reads the same (in other characters: "
        f"full-width letters, a ligature, another space, an invisible joiner): give it as "
        f"'{twin}'"
    )


def _name_taken_text(name: str, twin: str) -> str:
    return (
        f"user '{name}' is already enrolled as '{twin}' (the same name in other characters: "
        "full-width letters, a ligature, another space, an invisible joiner); re-enroll "
        f"'{twin}' to replace it, or choose a name that differs"
    )


# --- store ------------------------------------------------------------------------------------


def _file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path` now; None when there is none."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _check_header(path: Path) -> None:
    """Refuse files that are not SQLite before SQLite touches them."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        # This build creates the file whole (_create_file), and SQLite writes its header as
        # soon as the WAL is switched on, so a 0-byte file was cut: a power cut while it was
        # rewritten, a restore that copied nothing. Opened as new, the door would forget
        # everyone and write a fresh schema over what is left to recover.
        raise EmptyFile(
            f"{path}: the file is empty (0 bytes), so it was cut (a power cut while it was "
            "written, a failed copy or restore); left untouched. Restore it from a backup; or, "
            "if nobody is to stay enrolled, delete it (with any -wal and -shm file beside it) "
            "and the next start creates an empty store"
        )
    with open(path, "rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if head != SQLITE_MAGIC:
        # Either speaker.database names another file, or the store's header was overwritten.
        raise Damaged(
            f"{path}: not a voxgate voiceprint database (not SQLite); left untouched. If "
            "speaker.database names the wrong file, point it at the voiceprint store; if this "
            "is the store, it is damaged: restore it from a backup, or move it aside (with any "
            "-wal and -shm file beside it) and enroll everyone again"
        )


def _open_error(path: Path, exc: sqlite3.DatabaseError) -> StoreError:
    """What an SQLite error while opening means: a damaged file (malformed, not a database)
    stays damaged; an OperationalError (locked, cannot open, I/O) may pass."""
    kind = StoreError if isinstance(exc, sqlite3.OperationalError) else Damaged
    return kind(
        f"{path}: cannot use the voiceprint database ({exc}){_damage_hint(exc)}{disk_hint(path)}"
    )


DAMAGED_HINT = (
    "; the file is damaged and left untouched. Restore it from a backup; or move it aside "
    "(with any -wal and -shm file beside it) and enroll everyone again"
)


def _damage_hint(exc: sqlite3.DatabaseError) -> str:
    """What to do about SQLite's "database disk image is malformed" / "file is not a
    database" (plain DatabaseError; locked, I/O and full disks are OperationalError)."""
    return DAMAGED_HINT if type(exc) is sqlite3.DatabaseError else ""


def _writable_folder(path: Path) -> bool:
    """Whether SQLite may create files beside `path`, or the folder for it (access() also
    reports a read-only mount or an immutable folder, even to root)."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return os.access(folder, os.W_OK)


def _wal_size(path: Path) -> int:
    try:
        return path.with_name(path.name + "-wal").stat().st_size
    except OSError:
        return 0


def _snapshot(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, _wal_size(path)


class VoiceprintStore:
    """Encrypted voiceprints in one SQLite file. Thread-safe (one connection, one lock).

    read_only=True (listing, export): on a folder that cannot be written (a read-only mount,
    a snapshot) the file is opened read-only and nothing is created; elsewhere it is opened
    as usual. read_when_full=True (the daemon): a file that cannot be opened for writing
    because the disk is full is read instead, and opened for writing again once there is
    room (writes meanwhile raise StoreError saying the disk is full)."""

    _db: sqlite3.Connection
    _file_id: tuple[int, int] | None  # the file opened (device, inode); None: unknown

    def __init__(
        self, path: Path, key: bytes, *, read_only: bool = False, read_when_full: bool = False
    ) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if len(key) != KEY_BYTES:
            raise StoreError(f"voiceprint key must be {KEY_BYTES} bytes, not {len(key)}")
        self.path = Path(path)
        self._hex_text_key = looks_hex_text(key)  # for the wrong-key message; not the key
        self._aead = AESGCM(_subkey(key, b"seal v1"))
        self._name_key = _subkey(key, b"name v1")
        self._lock = threading.Lock()
        self._read_only = read_only and not _writable_folder(self.path)
        self._unchanged: tuple[int, int, int] | None = None  # read without locks: must hold
        self._read_when_full = read_when_full
        self._full = False  # read-only for now: the disk was full when it was opened
        self._reopen_after = 0.0  # time.monotonic() before which a read does not try again
        # Users whose erase could not be written (a full disk): this process no longer finds
        # them (get, has, all, readable) until the erase or a new voiceprint is written.
        self._withheld: set[bytes] = set()
        # names.look_alike of each enrolled name -> (row id, name), for _look_alike, with the
        # connection and PRAGMA data_version it was read at (other processes' commits change
        # it, this one's do not: _put and erase keep it up to date). A pass over every row
        # for each new user made a fleet catch-up of 300 users 3 times slower.
        self._alikes: tuple[sqlite3.Connection, int, dict[str, tuple[bytes, str]]] | None = None
        self._connect()

    def _connect(self) -> None:
        """Open (or create) the file; StoreError says what is wrong with it."""
        if self._read_only:
            self._connect_read_only()
            return
        try:
            self._connect_writable()
        except StoreError as exc:
            # Only a full disk (not damage, a wrong key, a missing file): stopping the daemon
            # here (exit 69, restarted until someone freed space) kept a door whose SD card
            # filled up and that then rebooted shut for everyone.
            full = type(exc) is StoreError and self.path.is_file() and disk_is_full(self.path)
            if not (self._read_when_full and full):
                raise
            if is_read_only(self.path):
                # Full and read-only (a card the kernel remounted after errors): freeing
                # space cannot be done, so "until there is room" had nothing to wait for.
                why = "the file system is read-only"
                log.error(
                    "%s; reading it: enrolled users are verified as usual, enrolling and "
                    "erasing fail (saying so). A read-only file system does not pass by "
                    "itself: once it is writable again and has room, the store is opened for "
                    "writing without a restart",
                    exc,
                )
            else:
                why = "the disk is full"
                log.error(
                    "%s; reading it: enrolled users are verified as usual, enrolling and "
                    "erasing fail (saying so) until there is room, and it is opened for "
                    "writing again then, without a restart",
                    exc,
                )
            self._read_only = self._full = True
            try:
                self._connect_read_only(why)
            finally:
                self._read_only = False

    def _leave_full(self, writing: bool) -> None:
        """Under the lock, while read from a full disk: open it for writing once there is
        room, and read it again when another process changed it (an erase must count)."""
        if not self._full:
            return
        room = not disk_is_full(self.path)
        changed = self._unchanged is not None and self._unchanged != self._snapshot()
        if not (room or changed):
            return
        if not (changed or writing) and time.monotonic() < self._reopen_after:
            return  # a reopen just failed: a read does not wait the busy timeout again
        # The read-only connection is closed only once another one is open: a reopen that
        # fails (another process holds the file locked) left the store closed, and every
        # verification failed until one worked.
        old_db, old_unchanged, old_file_id = self._db, self._unchanged, self._file_id
        self._full = False
        self._unchanged = None
        try:
            self._connect()  # read-only again (self._full) while the disk is still full
        except BaseException as exc:
            if self._db is not old_db:  # one the failed open left behind
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
            self._db, self._unchanged, self._file_id = old_db, old_unchanged, old_file_id
            self._full = True
            if changed or not isinstance(exc, StoreError):
                raise  # what was read is out of date: it must not be served
            # Each try waits the 5 s busy timeout while another process holds the file: at
            # every verification that would slow the door by 5 s and repeat this line.
            self._reopen_after = time.monotonic() + REOPEN_PAUSE_S
            log.warning(
                "%s; reading it as before (the file is unchanged); trying to open it for "
                "writing again in %.0f s, or at the next enrollment or erase",
                exc,
                REOPEN_PAUSE_S,
            )
            return
        with contextlib.suppress(sqlite3.Error):
            old_db.close()
        if not self._full:
            log.warning("%s: opened for writing again (the disk has room)", self.path)

    def _snapshot(self) -> tuple[int, int, int]:
        """The file's size and times now, to tell whether it changed while read without
        locks; StoreError (not OSError, which the daemon's loop does not catch) when it is
        gone or cannot be read. The connection is left as it is: the file may come back."""
        try:
            return _snapshot(self.path)
        except FileNotFoundError:
            raise StoreError(
                f"{self.path}: the voiceprint database was moved or deleted while it was "
                "read from a full disk; put it back (nobody is verified until then)"
            ) from None
        except OSError as exc:
            raise StoreError(
                f"{self.path}: cannot read the voiceprint database ({exc.strerror})"
            ) from None

    def _connect_writable(self) -> None:
        try:
            _check_header(self.path)
            if not self.path.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._create_file()
        except sqlite3.DatabaseError as exc:
            raise _open_error(self.path, exc) from None
        except OSError as exc:  # a directory where the file should be, no permission, full disk
            # A full disk may pass; a folder in the file's place or a permission does not.
            kind = Damaged if exc.errno in (errno.EISDIR, errno.EACCES, errno.EPERM) else StoreError
            why = f"cannot open the voiceprint database ({exc.strerror})"
            raise kind(f"{self.path}: {why}") from None
        try:
            self._db = sqlite3.connect(
                str(self.path), timeout=5.0, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA secure_delete = ON")
        except sqlite3.DatabaseError as exc:
            raise _open_error(self.path, exc) from None
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise _open_error(self.path, exc) from None
        except StoreError:
            self._db.close()
            raise
        self._file_id = _file_id(self.path)

    def _create_file(self) -> None:
        """A new store at self.path, schema included, in one step: built under a temporary
        name and linked into place. So a voiceprints.db that exists is never empty (an empty
        one is damage, _check_header), also while another process creates it; when two
        create it at once, the second opens the first's."""

        def build(db: sqlite3.Connection) -> None:
            # WAL before it is linked in: openers racing on a new file each switched it from
            # a rollback journal, and two such switches at once can fail without waiting
            # ("database is locked": each holds the shared lock the other's switch needs).
            db.execute("PRAGMA journal_mode = WAL")
            self._db = db
            self._create()

        create_whole(self.path, build)

    def _connect_read_only(self, why: str = "the folder is read-only") -> None:
        """Read a store in a folder that cannot be written. SQLite needs <db>-shm beside a
        WAL database; it can use one that exists, but cannot make one. Without it, the file is
        read as it is ('immutable', no locks), which is the whole store only while <db>-wal
        is empty: changes in it are never skipped silently."""
        self._unchanged = None
        try:
            _check_header(self.path)
            if not self.path.is_file():
                raise StoreError(
                    f"{self.path}: no voiceprint database here, and the folder is read-only "
                    "(nothing enrolled yet, or speaker.database points elsewhere)"
                )
            before = _snapshot(self.path)
        except OSError as exc:
            raise StoreError(
                f"{self.path}: cannot open the voiceprint database ({exc.strerror})"
            ) from None
        uri = "file:" + urllib.parse.quote(str(self.path)) + "?mode=ro"
        try:
            try:
                self._open_uri(uri)
            except sqlite3.OperationalError as exc:
                # SQLITE_CANTOPEN (its name is on the exception only from Python 3.11); on a
                # full disk "disk I/O error": the -shm is there but cannot be sized.
                if "unable to open" not in str(exc) and not self._full:
                    raise
                if _wal_size(self.path):
                    raise StoreError(self._pending_wal_message(why)) from None
                self._unchanged = before
                self._open_uri(uri + "&immutable=1")
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{self.path}: cannot use the voiceprint database ({exc}){_damage_hint(exc)}"
            ) from None
        self._file_id = _file_id(self.path)

    def _open_uri(self, uri: str) -> None:
        self._db = sqlite3.connect(
            uri, uri=True, timeout=5.0, isolation_level=None, check_same_thread=False
        )
        try:
            self._open()
        except BaseException:
            self._db.close()
            raise

    def _pending_wal_message(self, why: str) -> str:
        name = self.path.name
        return (
            f"{self.path}: {why} and {name}-wal holds changes not yet "
            f"merged into the database file; SQLite reads them only with a {name}-shm, which "
            "it cannot create here, and the file alone would leave them out. Run this where "
            "the folder is writable (on the door, as root or the service's user), or copy "
            f"{name} and {name}-wal to a writable folder and point speaker.database at the copy"
        )

    def _follow_file(self) -> None:
        """Under the lock: a file deleted or replaced since it was opened is opened again
        (a deleted one as a new empty store, as at start), so reads see what is on disk and
        writes never go to an unlinked file that is lost at the next start."""
        if self._file_id is not None and _file_id(self.path) == self._file_id:
            return
        log.warning("%s was deleted or replaced while open; opening it again", self.path)
        self._file_id = None  # stays unknown (tried again next time) until an open succeeds
        # Empty the WAL into the old file first: left behind, its frames would be applied to
        # the new file of the same name and make it look damaged.
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()
        self._connect()

    @contextlib.contextmanager
    def _using(self, doing: str) -> Iterator[None]:
        """One operation on the file, under the lock; SQLite errors (a damaged file, a full
        disk) become StoreError naming the file."""
        with self._lock:
            try:
                self._leave_full(writing=doing != "read")
                self._follow_file()
                yield
            except sqlite3.DatabaseError as exc:
                raise StoreError(
                    f"{self.path}: cannot {doing} the voiceprint database ({exc})"
                    f"{_damage_hint(exc)}{disk_hint(self.path)}"
                ) from None
            if self._unchanged is not None and self._unchanged != self._snapshot():
                # Read without locks: someone wrote it meanwhile, so what was read may mix
                # two versions.
                raise StoreError(f"{self.path}: changed while it was read; run this again")

    # -- opening, schema, migrations

    def _open(self) -> None:
        db = self._db
        # One snapshot: another process (the daemon, a second command) may be creating this
        # file right now; read apart, its header and tables could look like a foreign file.
        db.execute("BEGIN")
        try:
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            # Every page once: a damaged page past the schema (a card fault in the middle
            # of the file) opened without a word, and the door then denied everyone as
            # store_unreadable. A few pages a user: milliseconds, at open only.
            check = [r[0] for r in db.execute("PRAGMA quick_check(3)").fetchall()]
        except BaseException:
            # A failed read ends the transaction: COMMIT here raised "cannot commit - no
            # transaction is active" and hid the cause (a full disk: "disk I/O error").
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        if check != ["ok"]:
            found = " ".join(" ".join(check).replace("*** in database main ***", "").split())
            raise Damaged(f"{self.path}: SQLite finds it damaged ({found[:200]}){DAMAGED_HINT}")
        new = app_id == 0 and tables == 0
        if not new and app_id != APPLICATION_ID:
            raise Damaged(
                f"{self.path}: a SQLite database that is not a voxgate voiceprint store; "
                "left untouched (point speaker.database elsewhere)"
            )
        if version > SCHEMA_VERSION:
            raise Damaged(
                f"{self.path}: written by a newer voxgate (schema {version}, this build "
                f"reads up to {SCHEMA_VERSION}); upgrade voxgate, the file is left untouched"
            )
        if self._read_only:  # nothing may be written: no journal mode, schema or migration
            if new:
                raise StoreError(f"{self.path}: an empty voiceprint database (nobody enrolled)")
            self._check_key()
            if version < SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema {version} needs an upgrade, which needs a writable "
                    "folder; run voxgate once where it is writable"
                )
            return
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            log.warning("%s: journal_mode is %s, not WAL", self.path, mode)
        if new and not self._create():
            self._open()  # another process created it since the snapshot: open what it made
        elif not new:
            self._check_key()
            self._migrate(version)

    def _create(self) -> bool:
        """Create the schema in an empty file; False when another process got there first."""
        now = time.time()
        with self._tx():
            if self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                return False
            self._db.execute("CREATE TABLE meta (k TEXT PRIMARY KEY, v BLOB NOT NULL)")
            self._db.execute("CREATE TABLE voiceprints (id BLOB PRIMARY KEY, sealed BLOB NOT NULL)")
            self._db.execute(
                "INSERT INTO meta VALUES ('key_check', ?)", (self._seal(KEY_CHECK, b"key"),)
            )
            self._db.execute("INSERT INTO meta VALUES ('created_at', ?)", (str(int(now)),))
            self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        log.info("created voiceprint store %s (schema %d)", self.path, SCHEMA_VERSION)
        return True

    # Each entry upgrades the schema from version i+1 to i+2; none yet beyond version 1.
    MIGRATIONS: tuple[str, ...] = ()

    def _migrate(self, version: int) -> None:
        if version < 1:
            raise Damaged(f"{self.path}: voiceprint store without a schema version; damaged?")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self._tx():
                # Another process may have migrated it since `version` was read.
                if self._db.execute("PRAGMA user_version").fetchone()[0] >= target:
                    continue
                # Statement by statement: executescript() COMMITs the open transaction
                # first, so a migration and its version bump would not be one step.
                for statement in _statements(self.MIGRATIONS[target - 2]):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {target}")
            log.info("%s: migrated voiceprint schema to %d", self.path, target)

    def _check_key(self) -> None:
        try:
            row = self._db.execute("SELECT v FROM meta WHERE k = 'key_check'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise Damaged(
                f"{self.path}: damaged voiceprint store ({exc}){_damage_hint(exc)}"
            ) from None
        if row is None:
            raise Damaged(f"{self.path}: voiceprint store has no key check; damaged?")
        try:
            ok = self._unseal(row[0], b"key") == KEY_CHECK
        except StoreError:
            ok = False
        if not ok:
            hint = HEX_TEXT_KEY_HINT if self._hex_text_key else ""
            raise WrongKey(
                f"{self.path}: wrong voiceprint key (it does not open this store); "
                f"nothing was changed{hint}"
            )

    # -- sealing

    def _seal(self, plain: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plain, b"voxgate-vp-v1|" + aad)

    def _unseal(self, sealed: bytes, aad: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], b"voxgate-vp-v1|" + aad)
        except (InvalidTag, ValueError):
            raise StoreError(f"{self.path}: a voiceprint fails authentication") from None

    def _user_id(self, name: str) -> bytes:
        import hashlib
        import hmac

        return hmac.new(self._name_key, name.casefold().encode(), hashlib.sha256).digest()

    @staticmethod
    def _pack(vp: Voiceprint) -> bytes:
        doc = {
            "name": vp.name,
            "model_id": vp.model_id,
            "dim": int(vp.mean.shape[0]),
            "embeddings": vp.embeddings.astype("<f4").tobytes().hex(),
            "created_at": vp.created_at,
            "updated_at": vp.updated_at,
            "version": vp.version,
            "meta": vp.meta,
        }
        if vp.model_sha256 is not None:
            doc["model_sha256"] = vp.model_sha256
        raw = json.dumps(doc, separators=(",", ":")).encode()
        # Pad with spaces (valid JSON whitespace) to hide the number of takes.
        return raw + b" " * (-len(raw) % PAD_BUCKET)

    @staticmethod
    def _unpack(raw: bytes) -> Voiceprint:
        doc = json.loads(raw)
        emb = np.frombuffer(bytes.fromhex(doc["embeddings"]), dtype="<f4").astype(np.float32)
        emb = emb.reshape(-1, int(doc["dim"]))
        return Voiceprint(
            name=doc["name"],
            model_id=doc["model_id"],
            embeddings=emb,
            mean=mean_embedding(emb),
            created_at=float(doc["created_at"]),
            updated_at=float(doc["updated_at"]),
            version=int(doc["version"]),
            meta=dict(doc.get("meta") or {}),
            model_sha256=sha256_or_none(doc.get("model_sha256")),
        )

    # -- transactions

    def _tx(self) -> _Tx:
        return _Tx(self._db)

    # -- public API

    def withhold(self, name: str) -> None:
        """Stop finding `name` in this process at once, for an erase that could not be
        written yet (the row stays in the file until `erase` succeeds)."""
        uid = self._user_id(normalize_name(name))
        with self._lock:
            self._withheld.add(uid)

    def withholds(self, name: str) -> bool:
        """Whether `name` is withheld (an erase of theirs waits to be written)."""
        uid = self._user_id(normalize_name(name))
        with self._lock:
            return uid in self._withheld

    def add_user(
        self,
        name: str,
        embeddings: np.ndarray,
        model_id: str,
        meta: dict[str, Any] | None = None,
        model_sha256: str | None = None,
    ) -> Voiceprint:
        """Enroll a new user; StoreError if the name is taken."""
        return self._put(name, embeddings, model_id, meta, model_sha256, allow_existing=False)

    def replace(
        self,
        name: str,
        embeddings: np.ndarray,
        model_id: str,
        meta: dict[str, Any] | None = None,
        model_sha256: str | None = None,
    ) -> Voiceprint:
        """Enroll or re-enroll: the old voiceprint is replaced, created_at kept, version +1."""
        return self._put(name, embeddings, model_id, meta, model_sha256, allow_existing=True)

    def _put(
        self,
        name: str,
        embeddings: np.ndarray,
        model_id: str,
        meta: dict[str, Any] | None,
        model_sha256: str | None,
        allow_existing: bool,
    ) -> Voiceprint:
        name = normalize_name(name)
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] < 1 or emb.shape[1] < 1:
            raise StoreError(f"embeddings must be a (takes, dim) array, got shape {emb.shape}")
        if not np.all(np.isfinite(emb)):
            raise StoreError("embeddings contain NaN or infinity")
        emb = l2_normalize(emb)
        uid = self._user_id(name)
        now = time.time()
        with self._using("write to"):
            with self._tx():
                row = self._db.execute(
                    "SELECT sealed FROM voiceprints WHERE id = ?", (uid,)
                ).fetchone()
                if row is not None and not allow_existing and uid in self._withheld:
                    # Not "already enrolled": get and the lists no longer show them.
                    raise StoreError(
                        f"user '{name}' cannot be enrolled yet: their erase is waiting to be "
                        "written (the disk is full); enroll them once it is written"
                    )
                if row is not None and not allow_existing:
                    raise StoreError(f"user '{name}' is already enrolled (re-enroll to replace)")
                if row is None:
                    _refuse_line_breaks(name)
                    if (twin := self._look_alike(name)) is not None:
                        raise NameTaken(_name_taken_text(name, twin))
                old = self._old_row(row[0], uid, name) if row is not None else None
                vp = Voiceprint(
                    name=name,
                    model_id=model_id,
                    embeddings=emb,
                    mean=mean_embedding(emb),
                    created_at=old.created_at if old else now,
                    updated_at=now,
                    version=old.version + 1 if old else 1,
                    meta=dict(meta or {}),
                    model_sha256=sha256_or_none(model_sha256),
                )
                sealed = self._seal(self._pack(vp), uid)
                self._db.execute("INSERT OR REPLACE INTO voiceprints VALUES (?, ?)", (uid, sealed))
            if self._alikes is not None:  # committed: this process's own write
                from voxgate.names import look_alike

                self._alikes[2][look_alike(name)] = (uid, name)
            # Committed, and still under the lock (the set is shared with withhold and the
            # readers): written after the erase, the new voiceprint counts.
            self._withheld.discard(uid)
        log.info("voiceprint for %s stored (version %d, %d takes)", name, vp.version, len(emb))
        return vp

    def _look_alike(self, name: str) -> str | None:
        """The enrolled name `name` reads the same as (names.look_alike) though it is not
        the same user, if any; inside _put's transaction."""
        from voxgate.names import look_alike

        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if self._alikes is None or self._alikes[0] is not self._db or self._alikes[1] != version:
            table: dict[str, tuple[bytes, str]] = {}
            for uid, sealed in self._db.execute("SELECT id, sealed FROM voiceprints"):
                # Only the name: decoding the embeddings too tripled the cost of a row.
                try:
                    enrolled = json.loads(self._unseal(sealed, uid))["name"]
                except (StoreError, ValueError, KeyError, TypeError):
                    continue  # a damaged row names nobody
                if isinstance(enrolled, str):
                    table[look_alike(enrolled)] = (uid, enrolled)
            self._alikes = (self._db, version, table)
        hit = self._alikes[2].get(look_alike(name))
        return hit[1] if hit is not None and hit[0] not in self._withheld else None

    def _old_row(self, sealed: bytes, uid: bytes, name: str) -> Voiceprint | None:
        """The voiceprint a re-enrollment replaces; None when its row is damaged (re-enrolling
        is how a damaged row is repaired, so it must not be refused)."""
        vp = self._try_open(sealed, uid)
        if vp is None:
            log.warning("the stored voiceprint of %s cannot be read (damaged); replacing it", name)
        return vp

    def _try_open(self, sealed: bytes, uid: bytes) -> Voiceprint | None:
        """The row's voiceprint, or None when it fails authentication (damaged, another key)
        or is authentic but not a voiceprint."""
        try:
            return self._unpack(self._unseal(sealed, uid))
        except (StoreError, ValueError, KeyError, TypeError):
            return None

    def get(
        self, name: str, model_id: str | None = None, model_sha256: str | None = None
    ) -> Voiceprint | None:
        """The user's voiceprint, or None. With model_id (and the loaded file's sha256),
        ModelMismatch if made by another model or another file of it."""
        name = normalize_name(name)
        uid = self._user_id(name)
        with self._using("read"):
            row = self._db.execute("SELECT sealed FROM voiceprints WHERE id = ?", (uid,)).fetchone()
            withheld = uid in self._withheld
        if row is None or withheld:
            return None
        try:
            vp = self._unpack(self._unseal(row[0], uid))
        except StoreError as exc:  # the row is damaged: say whose and what mends it
            raise StoreError(
                f"{exc} (the voiceprint of '{name}'); enroll again to replace it: "
                f"voxgate enroll {shlex.quote(name)} --replace"
            ) from None
        made_by = (vp.model_id, vp.model_sha256)
        why = model_mismatch(made_by, model_id, model_sha256) if model_id is not None else None
        if why is not None:
            raise ModelMismatch(
                f"user '{vp.name}' {why}; re-enroll: voxgate enroll {shlex.quote(vp.name)} "
                "--replace"
            )
        return vp

    def enrolled_name(self, name: str) -> str | None:
        """The name as it was enrolled (its stored spelling) of the user `name` matches, for
        logs and replies; None when there is no such user or the row cannot be read."""
        try:
            vp = self.get(name)
        except StoreError:
            return None
        return vp.name if vp is not None else None

    def check_new_name(self, name: str) -> None:
        """Before an enrollment's takes: NameTaken if `name` is not enrolled itself but reads
        the same as someone who is (the check enrolling runs again at the end), or BadName
        if it holds a line or paragraph separator (a line break in many log viewers). A name
        enrolled itself passes: enrolling it again replaces it."""
        name = normalize_name(name)
        uid = self._user_id(name)
        with self._using("read"):
            if self._db.execute("SELECT 1 FROM voiceprints WHERE id = ?", (uid,)).fetchone():
                return
            _refuse_line_breaks(name)
            if (twin := self._look_alike(name)) is not None:
                raise NameTaken(_name_taken_text(name, twin))

    def reads_as(self, name: str) -> str | None:
        """The enrolled name that reads the same as `name` (names.look_alike) when `name`
        itself is not enrolled; None otherwise. For a "no user" answer to point at it."""
        name = normalize_name(name)
        uid = self._user_id(name)
        with self._using("read"):
            if self._db.execute("SELECT 1 FROM voiceprints WHERE id = ?", (uid,)).fetchone():
                return None
            return self._look_alike(name)

    def has(self, name: str) -> bool:
        """Whether the user has a row, readable or not (a damaged row counts)."""
        uid = self._user_id(normalize_name(name))
        with self._using("read"):
            row = self._db.execute("SELECT 1 FROM voiceprints WHERE id = ?", (uid,)).fetchone()
            return row is not None and uid not in self._withheld

    def all(self) -> list[Voiceprint]:
        """Every voiceprint; StoreError if any one cannot be read."""
        out = [self._unpack(self._unseal(sealed, uid)) for uid, sealed in self._rows()]
        return sorted(out, key=lambda v: v.name.casefold())

    def readable(self) -> tuple[list[Voiceprint], int]:
        """The voiceprints that open, and how many rows do not (damaged, or sealed with
        another key). StoreError when there are rows and none opens: then the store as a
        whole is unreadable (a wrong key or a damaged file), not one row."""
        rows = self._rows()
        out = [vp for uid, sealed in rows if (vp := self._try_open(sealed, uid)) is not None]
        if rows and not out:
            raise StoreError(
                f"{self.path}: none of its {len(rows)} voiceprint(s) can be read: each fails "
                "authentication or is not a voiceprint (a damaged file, or another key)"
            )
        return sorted(out, key=lambda v: v.name.casefold()), len(rows) - len(out)

    def _rows(self) -> list[tuple[bytes, bytes]]:
        with self._using("read"):
            rows = self._db.execute("SELECT id, sealed FROM voiceprints").fetchall()
            return [(uid, sealed) for uid, sealed in rows if uid not in self._withheld]

    def users(self) -> list[UserInfo]:
        return [self.info(v) for v in self.all()]

    @staticmethod
    def info(v: Voiceprint) -> UserInfo:
        return UserInfo(
            v.name, v.model_id, len(v.embeddings), v.created_at, v.updated_at, v.version
        )

    def erase(self, name: str) -> bool:
        """Delete a user so the bytes are gone from the file and the WAL. False if unknown."""
        name = normalize_name(name)
        uid = self._user_id(name)
        with self._using("erase from"):
            with self._tx():
                cur = self._db.execute("DELETE FROM voiceprints WHERE id = ?", (uid,))
            self._alikes = None  # read again at the next new user
            self._withheld.discard(uid)  # the erase is written: nothing left to withhold
            if cur.rowcount == 0:
                if _wal_size(self.path):
                    # An earlier erase whose clean-up a reader blocked left old pages in the
                    # file: erasing again, as its warning says, finishes it.
                    with contextlib.suppress(sqlite3.DatabaseError):
                        self._scrub(name)
                return False
            try:
                self._scrub(name)
            except sqlite3.DatabaseError as exc:
                # The DELETE is committed (and its cells zeroed by secure_delete): the erase
                # happened and must be reported as done, or it is never audited nor sent to
                # the fleet, and a second try only answers "no user". E.g. a full disk: the
                # VACUUM needs room for a copy of the file.
                log.error(
                    "%s: %s erased, but the clean-up after it failed (%s); old copies of its "
                    "pages may stay in the file until the next erase",
                    self.path,
                    name,
                    exc,
                )
                return True
        log.info("voiceprint for %s erased", name)
        return True

    def _scrub(self, name: str) -> None:
        db = self._db
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("VACUUM")
        busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        if busy:
            # Another connection holds a read snapshot: the file keeps the old pages (the
            # erased voiceprint's among them) until a checkpoint can copy the new ones over.
            log.warning(
                "%s: the clean-up after erasing %s was blocked by another connection reading "
                "the file (a sqlite3 shell, a backup?), so old copies of its pages stay in it; "
                "when that reader is done, erase %s again (voxgate users erase %s): it answers "
                "that nobody of that name is enrolled, and finishes the clean-up",
                self.path,
                name,
                name,
                shlex.quote(name),
            )

    def export(self, name: str) -> dict[str, Any]:
        """Everything stored about a user, as JSON-ready data (for data-subject requests)."""
        vp = self.get(name)
        if vp is None:
            raise StoreError(f"no user '{normalize_name(name)}' enrolled")
        return {
            "format": "voxgate-voiceprint-export/1",
            "name": vp.name,
            "model_id": vp.model_id,
            "model_sha256": vp.model_sha256,
            "created_at": vp.created_at,
            "updated_at": vp.updated_at,
            "version": vp.version,
            "meta": vp.meta,
            "embeddings": [[round(float(x), 7) for x in e] for e in vp.embeddings],
            "mean": [round(float(x), 7) for x in vp.mean],
            "stored": "name, model id and model file sha256, times, enrollment metadata, one "
            "embedding per accepted take (no audio). Encrypted with AES-256-GCM; the name is "
            "indexed by a keyed hash.",
        }

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> VoiceprintStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error (the connection is in autocommit)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def _statements(script: str) -> list[str]:
    """The statements of an SQL script, in order (a `;` inside a trigger body or a string
    does not end one: sqlite3.complete_statement decides)."""
    out: list[str] = []
    part = ""
    for piece in script.split(";"):
        part += piece + ";"
        if sqlite3.complete_statement(part):
            if part.strip(" \t\r\n;"):
                out.append(part)
            part = ""
    if part.strip(" \t\r\n;"):
        out.append(part)  # incomplete: execute() says what is wrong with it
    return out


def sha256_or_none(value: Any) -> str | None:
    """A model file sha256 as recorded (64 hex digits), or None for anything else."""
    ok = isinstance(value, str) and len(value) == 64
    return value if ok and all(c in "0123456789abcdef" for c in value) else None


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def mean_embedding(embeddings: np.ndarray) -> np.ndarray:
    return l2_normalize(l2_normalize(embeddings).mean(axis=0))


def store_path(cfg: Any) -> Path:
    """The configured voiceprint file: speaker.database or <data_dir>/voiceprints.db."""
    return Path(cfg.speaker.database or Path(cfg.data_dir) / "voiceprints.db")


def open_store(cfg: Any, *, read_only: bool = False) -> VoiceprintStore:
    """The device's store, with its key (StoreError with a message for each problem)."""
    path = store_path(cfg)
    key = load_key(cfg.speaker, path)
    try:
        return VoiceprintStore(path, key, read_only=read_only)
    except WrongKey as exc:
        raise WrongKey(f"{exc}{key_source(cfg.speaker)}") from None


def key_source(speaker_cfg: Any) -> str:
    """Where the key that did not open the store came from: a variable or credential left
    set to another door's key hides a right speaker.key_file, and the store's message alone
    sent the person to check that file."""
    from voxgate.config.secrets import override_source

    file = speaker_cfg.key_file
    src = override_source("voiceprint-key")
    if src is None:
        return f" (the key in {file}, speaker.key_file)"
    if file is None:
        return f" (the key came from {src})"
    return f" (the key came from {src}, which is read before speaker.key_file {file})"
