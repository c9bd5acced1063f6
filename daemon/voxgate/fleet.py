"""Fleet sync: one enrollment reaches every door allowed for the person, and only those.

How it works (docs/fleet.md has the full design and the broker ACL):
- Doors are in groups (fleet.groups); fleet.access says which users each group lets in.
- After an enrollment, the door publishes the voiceprint once per group that allows the user,
  retained, on  <prefix>/_fleet/<site>/<group>/<user tag>. The user tag is a keyed hash of the
  name, so topic names do not reveal who is enrolled. The broker ACL lets a door read only its
  own groups' topics, so a door outside those groups never even receives the ciphertext.
- Each message is encrypted with the site's fleet key (AES-256-GCM; the header is the
  associated data) and signed with the enrolling door's Ed25519 key (fleet.signers lists the
  public keys doors trust).
- Erase and revoke are retained tombstones on the same topics. They name the user only by
  the topic's user tag, never by name: a tombstone stays retained for good, and every door
  holds the fleet key. A door finds the row to erase by the tag. Every message carries a
  per-user version (milliseconds, always above the last one seen); a door applies a message
  only if it is newer than what it already has for that user, so an erase wins over any older
  voiceprint, including one replayed later. Equal versions (two doors in the same millisecond,
  or skewed clocks) are ordered by a tie-break every door computes alike from the message:
  erase before revoke before voiceprint, then the signer's id, then a keyed digest of the body.
- A door that was offline gets the retained messages when it reconnects and catches up. Its
  own outgoing changes wait in an outbox (in the sync state file) until the broker has them.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import hashlib
import hmac
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voxgate.config.fleet import ALL_USERS, FleetConfig
from voxgate.names import fold
from voxgate.ownership import create_whole, disk_is_full
from voxgate.voiceprints import (
    BadName,
    StoreError,
    VoiceprintStore,
    hex_text_hint,
    looks_hex_text,
    model_mismatch,
    normalize_name,
    sha256_or_none,
)

log = logging.getLogger(__name__)

WIRE_VERSION = 1
KINDS = ("voiceprint", "erase", "revoke")
MAX_MESSAGE_BYTES = 1024 * 1024
MAX_VERSION = 2**63 - 1
MAX_SKEW_S = 24 * 3600  # refuse messages claiming to be from the far future (clock bugs)
# At equal versions, removing wins over enrolling: the conservative side for a tie.
KIND_RANK = {"voiceprint": "0", "revoke": "1", "erase": "2"}

# (version, tie-break): how changes to one user are ordered. A tie-break of "" is a row
# written before tie-breaks existed; it ties with every message of its version, as it did.
Order = tuple[int, str]


def newer(a: Order, b: Order) -> bool:
    """Whether change `a` comes after change `b` (the same answer on every door)."""
    if a[0] != b[0]:
        return a[0] > b[0]
    return bool(a[1] and b[1]) and a[1] > b[1]


class FleetError(Exception):
    """Keys or settings the sync agent cannot use; str() is meant for the user. `temporary`:
    the cause may pass by itself (a full disk), so a restart may help."""

    def __init__(self, message: str, *, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


class MessageError(Exception):
    """A fleet message that is refused (bad signature, unknown signer, damaged, ...)."""


class _Withheld(Exception):
    """An erase or revoke the store could not write: the user is withheld in memory."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


# --- keys --------------------------------------------------------------------------------------


def parse_key32(raw: bytes, what: str) -> bytes:
    """32 bytes from 64 hex characters or 32 raw bytes (as stored: a raw key may start or
    end with a whitespace byte)."""
    text = raw.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    if len(raw) == 32:
        return bytes(raw)
    if len(text) == 32:  # raw bytes and a newline, as read before
        return text
    raise FleetError(f"{what} must be 64 hex characters or 32 raw bytes (got {len(text)} bytes)")


def _derive(key: bytes, purpose: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(hashes.SHA256(), 32, salt=None, info=b"voxgate fleet " + purpose).derive(key)


@dataclass(frozen=True)
class FleetKeys:
    """The site key (encryption, user tags), this door's signing key, the trusted signers."""

    # repr=False: a traceback or log line that shows the keys object must not show them
    fleet_key: bytes = dataclasses.field(repr=False)
    signing_key: bytes | None = dataclasses.field(repr=False)  # None: this door only receives
    signers: dict[str, bytes]  # device_id -> Ed25519 public key

    @classmethod
    def load(cls, cfg: FleetConfig) -> FleetKeys:
        from voxgate.config.secrets import SecretError, read_secret

        try:
            raw = read_secret("fleet-key", cfg.key_file, strip=False)
        except SecretError as exc:
            raise FleetError(f"fleet sync: {exc}") from None
        assert raw is not None
        signing = read_secret(
            "fleet-signing-key", cfg.signing_key_file, required=False, strip=False
        )
        return cls(
            fleet_key=parse_key32(raw, "fleet key"),
            signing_key=parse_key32(signing, "fleet signing key") if signing else None,
            signers={d: bytes.fromhex(k) for d, k in cfg.signers.items()},
        )


def public_key_hex(signing_key: bytes) -> str:
    """The public half of an Ed25519 private key (what goes into fleet.signers)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pub = Ed25519PrivateKey.from_private_bytes(signing_key).public_key()
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


# --- the wire format ---------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise MessageError("expected base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise MessageError("bad base64") from None


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Update:
    """One decoded, verified fleet message."""

    kind: str  # voiceprint | erase | revoke
    site: str
    group: str
    tag: str
    name: str | None  # None: a tombstone (they carry no name; older versions sent one)
    version: int
    signer: str
    issued_at: float
    model_id: str | None = None
    embeddings: np.ndarray | None = None
    meta: dict[str, Any] | None = None
    tiebreak: str = ""
    model_sha256: str | None = None  # None from doors that did not send it

    @property
    def order(self) -> Order:
        return (self.version, self.tiebreak)


class Codec:
    """Encrypts, signs, verifies and decrypts fleet messages for one site."""

    def __init__(self, keys: FleetKeys, site: str, device_id: str) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.keys = keys
        self.site = site
        self.device_id = device_id
        self._aead = AESGCM(_derive(keys.fleet_key, b"seal v1"))
        self._tag_key = _derive(keys.fleet_key, b"user tag v1")
        self._order_key = _derive(keys.fleet_key, b"order v1")
        # For the messages of a decrypt or signature failure this door's key can cause; only
        # whether the key is hex text is kept here, not the key.
        self._hex_fleet_key = looks_hex_text(keys.fleet_key)
        self._hex_signing_key = keys.signing_key is not None and looks_hex_text(keys.signing_key)

    def user_tag(self, name: str) -> str:
        """The name's topic level: a keyed hash, the same on every door of the site."""
        digest = hmac.new(self._tag_key, fold(normalize_name(name)).encode(), hashlib.sha256)
        return digest.hexdigest()[:32]

    def _is_tag_of(self, name: Any, tag: str) -> bool:
        try:
            return isinstance(name, str) and self.user_tag(name) == tag
        except StoreError:  # not a name the store could hold
            return False

    def tiebreak(self, kind: str, signer: str, body: bytes) -> str:
        """What orders two changes to one user with the same version: kind, signer, then a
        digest of the sealed body (the same for the copies sent to each group). Keyed, so the
        sync state file does not hold a plain hash of a name."""
        digest = hmac.new(self._order_key, body, hashlib.sha256).hexdigest()[:16]
        return f"{KIND_RANK[kind]}:{signer}:{digest}"

    def body(
        self,
        kind: str,
        name: str,
        *,
        model_id: str | None = None,
        embeddings: np.ndarray | None = None,
        meta: dict[str, Any] | None = None,
        model_sha256: str | None = None,
    ) -> bytes:
        """The plaintext that is sealed into a message (canonical JSON)."""
        # A tombstone carries no name: it stays retained after the person is gone, readable
        # by every door of the site. The tag in the (signed) header says whose it is.
        body: dict[str, Any] = {}
        if kind == "voiceprint":
            body["name"] = normalize_name(name)
            assert embeddings is not None and model_id is not None
            emb = np.asarray(embeddings, dtype="<f4")
            body.update(
                model_id=model_id,
                dim=int(emb.shape[1]),
                embeddings=emb.tobytes().hex(),
                meta=meta or {},
            )
            if model_sha256 is not None:  # a new key: older doors ignore it
                body["model_sha256"] = model_sha256
        return _canonical(body)

    def encode(
        self,
        kind: str,
        group: str,
        name: str,
        version: int,
        *,
        model_id: str | None = None,
        embeddings: np.ndarray | None = None,
        meta: dict[str, Any] | None = None,
        model_sha256: str | None = None,
        now: float | None = None,
    ) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        if self.keys.signing_key is None:
            raise FleetError(
                "this door has no fleet signing key (fleet.signing_key_file or the credential "
                "'fleet-signing-key'), so it cannot publish enrollments"
            )
        body = self.body(
            kind,
            name,
            model_id=model_id,
            embeddings=embeddings,
            meta=meta,
            model_sha256=model_sha256,
        )
        header = {
            "v": WIRE_VERSION,
            "kind": kind,
            "site": self.site,
            "group": group,
            "tag": self.user_tag(name),
            "version": int(version),
            "signer": self.device_id,
            "issued_at": round(time.time() if now is None else now, 3),
        }
        nonce = os.urandom(12)
        ct = self._aead.encrypt(nonce, body, _canonical(header))
        msg = {**header, "nonce": _b64(nonce), "ct": _b64(ct)}
        signer = Ed25519PrivateKey.from_private_bytes(self.keys.signing_key)
        msg["sig"] = _b64(signer.sign(_canonical(msg)))
        return _canonical(msg)

    def decode(self, topic_group: str, topic_tag: str, payload: bytes, now: float) -> Update:
        """Verify and decrypt; raises MessageError saying why a message is refused."""
        from cryptography.exceptions import InvalidSignature, InvalidTag
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        if len(payload) > MAX_MESSAGE_BYTES:
            raise MessageError(f"message of {len(payload)} bytes is too large")
        try:
            msg = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise MessageError("not JSON") from None
        except RecursionError:  # "[[[[..." well under the size limit; it was a traceback
            raise MessageError("JSON nested too deeply") from None
        if not isinstance(msg, dict):
            raise MessageError("not a JSON object")
        if msg.get("v") != WIRE_VERSION:
            raise MessageError(f"unknown wire version {msg.get('v')!r}")
        fields = ("kind", "site", "group", "tag", "version", "signer", "issued_at", "nonce", "ct")
        missing = [f for f in (*fields, "sig") if f not in msg]
        if missing:
            raise MessageError(f"missing fields {missing}")
        if msg["kind"] not in KINDS:
            raise MessageError(f"unknown kind {msg['kind']!r}")
        if not isinstance(msg["version"], int) or not isinstance(msg["issued_at"], (int, float)):
            raise MessageError("version/issued_at have the wrong type")
        # SQLite holds 64-bit integers: a larger version stored the voiceprint, then failed
        # (a traceback) before the sync state recorded it.
        if not 0 <= msg["version"] <= MAX_VERSION:
            raise MessageError(f"version {msg['version']} out of range")
        # The topic is not signed, so the signed header must name the same place.
        if (msg["site"], msg["group"], msg["tag"]) != (self.site, topic_group, topic_tag):
            raise MessageError("header does not match the topic it came on")
        signer = msg["signer"]
        pub = self.keys.signers.get(signer) if isinstance(signer, str) else None
        if pub is None:
            raise MessageError(f"signer {signer!r} is not in fleet.signers")
        signed = {k: v for k, v in msg.items() if k != "sig"}
        try:
            Ed25519PublicKey.from_public_bytes(pub).verify(_unb64(msg["sig"]), _canonical(signed))
        except (InvalidSignature, ValueError):
            # Its own message (a door reads its groups' topics): this door's key may be why.
            hint = (
                hex_text_hint("This door's fleet signing key", "`voxgate fleet keygen`")
                if signer == self.device_id and self._hex_signing_key
                else ""
            )
            raise MessageError(f"bad signature (claimed signer {signer}){hint}") from None
        if msg["issued_at"] > now + MAX_SKEW_S:
            raise MessageError("issued in the future; check the clocks")
        header = {k: msg[k] for k in fields if k not in ("nonce", "ct")}
        header["v"] = WIRE_VERSION
        try:
            plain = self._aead.decrypt(_unb64(msg["nonce"]), _unb64(msg["ct"]), _canonical(header))
        except (InvalidTag, ValueError):
            hint = hex_text_hint("This door's fleet key", None) if self._hex_fleet_key else ""
            raise MessageError(f"cannot decrypt (another site's fleet key?){hint}") from None
        try:
            body = json.loads(plain)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise MessageError("damaged body") from None
        if not isinstance(body, dict):
            raise MessageError("damaged body")
        name = body.get("name")
        # Tombstones have no name; those from doors running older code still carry one.
        if (name is not None or msg["kind"] == "voiceprint") and not self._is_tag_of(
            name, msg["tag"]
        ):
            raise MessageError("the user inside does not match the topic's user tag")
        update = Update(
            kind=msg["kind"],
            site=msg["site"],
            group=msg["group"],
            tag=msg["tag"],
            name=name,
            version=msg["version"],
            signer=signer,
            issued_at=float(msg["issued_at"]),
            tiebreak=self.tiebreak(msg["kind"], signer, plain),
        )
        if update.kind != "voiceprint":
            return update
        try:
            dim = int(body["dim"])
            emb = np.frombuffer(bytes.fromhex(body["embeddings"]), dtype="<f4")
            emb = emb.astype(np.float32).reshape(-1, dim)
        except (KeyError, ValueError, TypeError):
            raise MessageError("damaged voiceprint body") from None
        # Checked here, not left to the store: its refusal was a traceback per message.
        if emb.shape[0] < 1 or not np.all(np.isfinite(emb)):
            raise MessageError("voiceprint body without usable embeddings (none, NaN or inf)")
        meta = body.get("meta") or {}
        if not isinstance(meta, dict):
            raise MessageError("voiceprint meta is not a JSON object")
        sha = body.get("model_sha256")
        if sha is not None and sha256_or_none(sha) is None:
            raise MessageError("voiceprint model_sha256 is not 64 hex digits")
        return dataclasses.replace(
            update,
            model_id=str(body.get("model_id")),
            embeddings=emb,
            meta=dict(meta),
            model_sha256=sha,
        )


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


# --- the agent -------------------------------------------------------------------------------


def _shown(text: str, limit: int = 200) -> str:
    """A topic (or a level of it) from the broker for a log or audit line: a level can be
    64 kB, and each refused message wrote it whole (the audit log is append-only and
    fsynced); control characters, which some brokers pass, are shown escaped."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return shown if len(text) <= limit else f"{shown}... ({len(text)} characters)"


def topic_root(prefix: str, site: str) -> str:
    # "_fleet" cannot be a device_id (those start with a letter or digit), so the fleet tree
    # never collides with a device's own topics.
    return f"{prefix}/_fleet/{site}"


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


def _who(upd: Update) -> str:
    """The user a message is about, for log lines: a tombstone may only have the tag."""
    return upd.name if upd.name is not None else f"user tag {upd.tag}"


def allows(access: dict[str, list[str]], group: str, name: str) -> bool:
    users = access.get(group, [])
    # Compared as the store compares names (names.fold): 'Alice' opens the 'alice' voiceprint.
    return ALL_USERS in users or fold(name) in {fold(u) for u in users}


class FleetSync:
    """The sync agent of one door: publishes local changes, applies the fleet's.

    Thread-safe: publish_* may be called from API threads while MQTT callbacks run on
    paho's loop thread.
    """

    def __init__(
        self,
        cfg: FleetConfig,
        mqtt_cfg: Any,
        device_id: str,
        store: VoiceprintStore,
        state_path: Path,
        *,
        keys: FleetKeys | None = None,
        model_id: str | None = None,
        model_sha256: str | None = None,
        clock: Callable[[], float] = time.time,
        client_id: str | None = None,
        audit_event: Callable[..., Any] | None = None,
        withheld_retry_s: float = 10.0,
        state_in_memory_when_full: bool = False,
    ) -> None:
        self.cfg = cfg
        self.mqtt_cfg = mqtt_cfg
        self.device_id = device_id
        self.store = store
        self.model_id = model_id
        self.model_sha256 = model_sha256
        self.clock = clock
        self.keys = keys or FleetKeys.load(cfg)
        self.codec = Codec(self.keys, cfg.site, device_id)
        self.state = SyncState(state_path, memory_when_full=state_in_memory_when_full)
        self.root = topic_root(mqtt_cfg.topic_prefix, cfg.site)
        self._apply_lock = threading.Lock()
        self._inflight: dict[int, tuple[str, Order]] = {}
        self._acked: set[int] = set()
        self._refused: set[int] = set()  # failed PUBACKs that arrived before _send recorded them
        self._sent: dict[str, Order] = {}  # topic -> what this connection published there
        self._inflight_lock = threading.Lock()
        # Held while reading the outbox and publishing from it, and while queueing and
        # publishing a local change: a topic's newer version must never go out before an
        # older one read a moment earlier (retained, so the last to arrive is what stays).
        self._send_lock = threading.RLock()
        self.connected = threading.Event()
        self.stats = {
            "applied": 0,
            "ignored_old": 0,
            "refused": 0,
            "not_allowed": 0,
            "sent": 0,
            "refused_by_broker": 0,
            "store_failed": 0,
            "restored": 0,
            "erase_unverified": 0,
            "revoke_unverified": 0,
            "withheld": 0,
        }
        # Erases and revokes the store could not write (a full disk), by user tag: the store
        # withholds the user in memory at once, and they are written again every
        # `withheld_retry_s` and before each message, until the store takes them.
        self._withheld: dict[str, Update] = {}
        # Users the config no longer allows whose erase the store could not write (tag: name).
        self._not_allowed: dict[str, str] = {}
        self.withheld_retry_s = withheld_retry_s
        self._stopping = threading.Event()
        self._retrier: threading.Thread | None = None
        # (kind, tag, group, order) of the unverified tombstones already named at ERROR and in
        # the audit log by this process: their retained copies come back at each connect.
        self._unverified_told: set[tuple[str, str, str, Order]] = set()
        self._client: Any = None
        # Why the last connect failed (the exception paho caught, or the broker's refusal),
        # None once connected: the commands' short sessions say what went wrong.
        self._connect_failure: BaseException | str | None = None
        self._ever_connected = False
        # Its own MQTT session, apart from the daemon's MqttLink (whose id it must not reuse).
        self.client_id = client_id or f"voxgate-{device_id}-fleet"
        # e.g. the daemon's AuditLog.append: every voiceprint change the fleet makes is audited.
        self.audit_event = audit_event
        # Called with the name after each erase this agent makes (the daemon drops the
        # person's lockout entry and retained name too).
        self.on_erased: Callable[[str], None] | None = None

    # -- which users and groups

    def allowed_here(self, name: str) -> bool:
        """May this door hold `name`'s voiceprint? (its groups' access, then allowed_users)"""
        if self.cfg.allowed_users is not None:
            allowed = {fold(u) for u in self.cfg.allowed_users}
            if fold(name) not in allowed:
                return False
        return any(allows(self.cfg.access, g, name) for g in self.cfg.groups)

    def groups_for(self, name: str) -> list[str]:
        """Every group whose doors let `name` in: where an enrollment is sent."""
        return [g for g in self.cfg.access if allows(self.cfg.access, g, name)]

    def topic(self, group: str, name: str) -> str:
        return f"{self.root}/{group}/{self.codec.user_tag(name)}"

    # -- connection

    def broker_client(self) -> Any:
        """A client with this agent's broker credentials and TLS files read, not connected
        (raises MqttSetupError, SecretError): what start() connects."""
        from voxgate.mqtt.client import build_client

        return build_client(self.mqtt_cfg, self.client_id)

    def start(self, client: Any = None) -> None:
        """Connect `client` (by default a new broker_client()) in the background (never
        raises for an unreachable broker)."""
        from voxgate.mqtt.client import connect_async

        self.enforce_access()
        client = client or self.broker_client()
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.max_inflight_messages_set(100)
        self._client = client
        # A voiceprint message is at most MAX_MESSAGE_BYTES; its topic up to 64 kB.
        connect_async(client, self.mqtt_cfg, max_packet=MAX_MESSAGE_BYTES + 128 * 1024)
        client.loop_start()
        self._stopping.clear()
        self._retrier = threading.Thread(
            target=self._retry_loop, name="fleet-withheld", daemon=True
        )
        self._retrier.start()
        log.info(
            "fleet sync: site %s, groups %s, broker %s:%d",
            self.cfg.site,
            ",".join(self.cfg.groups) or "(none)",
            self.mqtt_cfg.host,
            self.mqtt_cfg.port,
        )

    @classmethod
    def from_config(
        cls, cfg: Any, store: VoiceprintStore, model_id: str | None = None, **kwargs: Any
    ) -> FleetSync:
        """The agent for a whole device config (raises FleetError for missing keys). An erase
        it applies also drops the rest of the user from disk (lockout entry, replay
        fingerprints, kept recordings); the daemon replaces the hook with its own, which
        also clears what it holds in memory. Without `audit_event`, what it applies goes to
        the config's audit log: the command-line agents apply the fleet's retained messages
        and mark them seen in the shared sync state, so the daemon's agent never audits them."""
        if kwargs.get("audit_event") is None:
            from voxgate.audit import open_log
            from voxgate.config.secrets import SecretError

            try:
                kwargs["audit_event"] = open_log(cfg).append
            except (SecretError, OSError) as exc:  # the change itself still applies
                log.error("fleet sync: cannot open the audit log: %s; changes not audited", exc)
        agent = cls(
            cfg.fleet, cfg.mqtt, cfg.device_id, store, state_path(cfg), model_id=model_id, **kwargs
        )

        def forget(name: str) -> None:
            from voxgate.erasure import forget_on_disk

            forget_on_disk(cfg, name)

        agent.on_erased = forget
        return agent

    def wait_sent(self, timeout: float) -> bool:
        """Wait until the broker has acknowledged every queued update."""
        deadline = time.monotonic() + timeout
        while self.state.outbox():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def why_unsent(self, waited: float) -> str:
        """Why the outbox is still not empty after waiting `waited` s, and what to do: for
        the commands that open a short session (`voxgate enroll`, `users erase`, `fleet`).
        A refused connection was reported as "not reachable within 5 s", which sent people
        to the network when mosquitto was simply not running."""
        import socket
        import ssl

        where = f"{self.mqtt_cfg.host}:{self.mqtt_cfg.port}"
        err = self._connect_failure
        if isinstance(err, str):  # a CONNACK with a failure code
            return (
                f"the broker at {where} refused the connection ({err}): check mqtt.username "
                "and the MQTT password (docs/mqtt.md)"
            )
        if isinstance(err, ConnectionRefusedError):
            return (
                f"connection refused by {where}: is mosquitto running there? (`systemctl "
                "status mosquitto` on the broker's host; mqtt.host and mqtt.port say where "
                "this door looks)"
            )
        if isinstance(err, socket.gaierror):
            return f"cannot resolve the broker's host name {self.mqtt_cfg.host!r}: check mqtt.host"
        if isinstance(err, ssl.SSLError):
            return f"TLS with the broker at {where} failed: {err}; check tls.ca_file and the host"
        if isinstance(err, OSError) and not isinstance(err, TimeoutError):
            return f"cannot reach the broker at {where}: {err.strerror or err}"
        if self._ever_connected:
            return (
                f"connected to the broker at {where}, but it did not acknowledge the update "
                f"within {waited:g} s (a slow link, or an ACL that denies the fleet topics)"
            )
        return (
            f"no answer from the broker at {where} within {waited:g} s: check the network and "
            "firewall between this door and the broker, and mqtt.host, mqtt.port and mqtt.tls "
            "(a TLS port spoken to in plain MQTT, or the other way round, stays silent)"
        )

    def stop(self) -> None:
        self._stopping.set()
        if self._retrier is not None:
            self._retrier.join(timeout=5)
            self._retrier = None
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
        self.connected.clear()
        self.state.close()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            log.error("fleet sync: broker refused the connection: %s", rc)
            self._connect_failure = str(rc)
            return
        self._connect_failure, self._ever_connected = None, True
        subs = [(f"{self.root}/{g}/+", 1) for g in self.cfg.groups]
        if subs:
            client.subscribe(subs)
        with self._send_lock:
            # paho would re-send what the broker had not acknowledged after this returns, i.e.
            # after the outbox, and a voiceprint erased meanwhile would come back as the
            # retained message. The outbox holds the newest version of every unacknowledged
            # topic, so paho's copies are dropped and the outbox alone is sent.
            client.drop_out_messages()
            with self._inflight_lock:
                self._inflight.clear()
                self._acked.clear()
                self._refused.clear()
            self._sent.clear()
            self.connected.set()
            pending = self.state.outbox()
            if pending:
                log.info("fleet sync: connected; sending %d queued update(s)", len(pending))
            for topic, payload, order in pending:
                self._send(topic, payload, order)

    def flush_outbox(self) -> int:
        """Send what waits in the outbox and is not already on its way; returns how many.

        Another process sharing the state file (`voxgate enroll`, `voxgate users erase` while
        the broker was unreachable) leaves its changes there; the daemon calls this now and
        then so they go out without waiting for a reconnect. A duplicate is harmless: the
        message is retained and versioned, and receivers skip a version they have.
        """
        if self._client is None or not self.connected.is_set():
            return 0
        with self._send_lock:
            with self._inflight_lock:
                busy = set(self._inflight.values())
            todo = [(t, p, o) for t, p, o in self.state.outbox() if (t, o) not in busy]
            for topic, payload, order in todo:
                self._send(topic, payload, order)
        return len(todo)

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        # paho calls this inside its `except OSError`, without passing the exception.
        import sys

        self._connect_failure = sys.exc_info()[1]
        log.debug("fleet sync: cannot connect: %s", self._connect_failure)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connected.clear()
        if rc.is_failure:
            log.warning("fleet sync: lost the broker (%s); retrying", rc)

    def _send(self, topic: str, payload: bytes, order: Order) -> None:
        client = self._client
        if client is None or not self.connected.is_set():
            return  # stays in the outbox until the next connect
        info = client.publish(topic, payload, qos=1, retain=True)
        self._sent[topic] = order
        # The PUBACK can beat us here (paho's loop thread): then on_publish left the mid in
        # _acked. No lock is held around publish() itself, which takes paho's own locks.
        with self._inflight_lock:
            done = info.mid in self._acked
            if done:
                self._acked.discard(info.mid)
            elif info.mid in self._refused:
                self._refused.discard(info.mid)  # stays in the outbox
            else:
                self._inflight[info.mid] = (topic, order)
        if done:
            self._delivered(topic, order)

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        if getattr(rc, "is_failure", False):
            # An MQTT 5 broker answers a publish its ACL forbids with a failed PUBACK: the
            # update did not go out, so it stays in the outbox (flush_outbox tries again).
            with self._inflight_lock:
                item = self._inflight.pop(mid, None)
                if item is None:
                    self._refused.add(mid)  # beat _send: it must not wait for this one
            self.stats["refused_by_broker"] += 1
            log.error(
                "fleet sync: the broker refused an update on %s (%s); kept in the outbox; "
                "check the broker ACL for this door",
                item[0] if item else f"mid {mid}",
                rc,
            )
            return
        with self._inflight_lock:
            item = self._inflight.pop(mid, None)
            if item is None:
                self._acked.add(mid)
        if item is not None:
            self._delivered(*item)

    def _delivered(self, topic: str, order: Order) -> None:
        self.state.sent(topic, order)
        self.stats["sent"] += 1

    # -- publishing local changes

    def _next_version(self, tag: str) -> int:
        known = self.state.user(tag)
        now_ms = int(self.clock() * 1000)
        return max(now_ms, known[0] + 1 if known else 0)

    def _publish(self, kind: str, name: str, groups: list[str], **body: Any) -> Order:
        tag = self.codec.user_tag(name)
        tiebreak = self.codec.tiebreak(kind, self.device_id, self.codec.body(kind, name, **body))
        with self._send_lock:
            order = (self._next_version(tag), tiebreak)
            for group in groups:
                payload = self.codec.encode(kind, group, name, order[0], now=self.clock(), **body)
                topic = f"{self.root}/{group}/{tag}"
                self.state.queue(topic, payload, order)
                self._send(topic, payload, order)
        return order

    def publish_enrollment(self, name: str) -> list[str]:
        """Send the stored voiceprint of `name` to every group allowed for it."""
        vp = self.store.get(name)
        if vp is None:
            raise FleetError(f"no voiceprint for '{name}' in the local store")
        groups = self.groups_for(vp.name)
        if not groups:
            log.warning("fleet sync: no group in fleet.access allows %s; kept on this door", name)
            return []
        with self._apply_lock:
            order = self._publish(
                "voiceprint",
                vp.name,
                groups,
                model_id=vp.model_id,
                model_sha256=vp.model_sha256,
                embeddings=vp.embeddings,
                meta={**vp.meta, "enrolled_at": vp.updated_at, "enrolled_by": self.device_id},
            )
            tag = self.codec.user_tag(vp.name)
            self.state.set_user(tag, order, "voiceprint", held=True)
            for g in groups:
                self.state.set_grant(tag, g, order, "voiceprint")
        log.info("fleet sync: %s (version %d) sent to %s", vp.name, order[0], ",".join(groups))
        return groups

    def publish_erase(self, name: str) -> None:
        """Tell every group (every group, since access may have changed) to erase `name`."""
        with self._apply_lock:
            order = self._publish("erase", name, list(self.cfg.access))
            self.state.set_user(self.codec.user_tag(name), order, "erase", held=False)
        log.info("fleet sync: erase of %s (version %d) sent to every group", name, order[0])

    def publish_revoke(self, name: str, groups: list[str]) -> None:
        """Withdraw `name` from some groups; doors left with no granting group erase it."""
        unknown = [g for g in groups if g not in self.cfg.access]
        if unknown:
            raise FleetError(f"unknown groups {unknown} (not in fleet.access)")
        with self._apply_lock:
            order = self._publish("revoke", name, groups)
            tag = self.codec.user_tag(name)
            for g in groups:
                self.state.set_grant(tag, g, order, "revoke")
        log.info("fleet sync: revoke of %s from %s (version %d)", name, ",".join(groups), order[0])

    def on_local_change(self, kind: str, name: str) -> None:
        """Hook for voxgate.api.UserAdmin(on_change=...): 'enrolled' or 'erased'."""
        if kind == "enrolled":
            self.publish_enrollment(name)
        elif kind == "erased":
            self.publish_erase(name)

    # -- applying the fleet's changes

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            self.handle(msg.topic, bytes(msg.payload))
        except Exception:
            # Whatever a message does, the agent keeps running.
            log.exception("fleet sync: failed to handle a message on %s", msg.topic)

    def handle(self, topic: str, payload: bytes) -> str:
        """Apply one message; returns what happened (for logs and tests)."""
        if not payload:
            return "empty"  # a cleared retained message
        parts = topic.split("/")
        if topic.rsplit("/", 2)[0] != self.root or len(parts) < 2:
            return "foreign"
        group, tag = parts[-2], parts[-1]
        if group not in self.cfg.groups:
            log.warning(
                "fleet sync: message for group %s, which this door is not in", _shown(group)
            )
            self.stats["not_allowed"] += 1
            return "not_my_group"
        try:
            upd = self.codec.decode(group, tag, payload, self.clock())
        except MessageError as exc:
            log.warning("fleet sync: refused message on %s: %s", _shown(topic), exc)
            self.stats["refused"] += 1
            self._audit("fleet_refused", topic=_shown(topic), reason=str(exc))
            return "refused"
        self._restore_newer(topic, payload, upd.order)
        self.retry_withheld()  # an older erase waiting for room goes first
        try:
            with self._apply_lock:
                outcome = self._apply(upd)
        except _Withheld as held:
            return held.outcome
        except BadName as exc:
            # A look-alike of a user enrolled here, or a name from before a naming rule: not a
            # disk fault, so not counted as one. Not recorded either: renamed and re-enrolled
            # at its door, the user arrives as a new change.
            log.error("fleet sync: %s of %s not stored at this door: %s", upd.kind, _who(upd), exc)
            self.stats["refused"] += 1
            return "name_refused"
        except StoreError as exc:
            # e.g. a read-only or full disk: nothing recorded in the sync state either, so the
            # retained message is applied again after the next connect.
            log.error("fleet sync: could not apply %s of %s: %s", upd.kind, _who(upd), exc)
            self.stats["store_failed"] += 1
            return "store_failed"
        return outcome

    def _done(self, outcome: str, upd: Update, **extra: Any) -> str:
        """Audit a change `_apply` made (or refused to make); returns the outcome."""
        # A tombstone for a user this door did not hold has no name to record.
        who = {"user": upd.name} if upd.name is not None else {"user_tag": upd.tag}
        self._audit(
            "fleet_" + outcome,
            **who,
            version=upd.version,
            signer=upd.signer,
            group=upd.group,
            **extra,
        )
        return outcome

    def _restore_newer(self, topic: str, payload: bytes, order: Order) -> None:
        """Make a newer message the retained one again after this door sent an older one.

        A door back online sends its outbox right after subscribing; if another door changed
        the same user meanwhile (e.g. erased them), the older message replaced the newer one
        as the retained message, and a door syncing later applied it (an erased user came
        back). The newer one arrives here (retained, or live when the two crossed) before our
        own message comes back: it is sent again as received (signed by its author), through
        the outbox so it is not lost. Once our own message has come back, a newer one is an
        ordinary later change, which the broker keeps by itself.
        """
        with self._send_lock:
            mine = self._sent.get(topic)
            if mine is None or newer(mine, order):
                return
            del self._sent[topic]
            if not newer(order, mine):
                return  # our own message came back first: the broker keeps what came later
            self.state.queue(topic, payload, order)
            self._send(topic, payload, order)
        self.stats["restored"] += 1
        log.info(
            "fleet sync: version %d (%s) on %s is newer than the %d (%s) sent from here; "
            "sent it again",
            order[0],
            order[1],
            topic,
            mine[0],
            mine[1],
        )

    # -- erases the store could not write

    def withheld(self) -> list[str]:
        """The users withheld in memory, their erase or revoke waiting for the store."""
        with self._apply_lock:
            return sorted(str(u.name) for u in self._withheld.values())

    def _erase_or_withhold(self, upd: Update) -> bool:
        """store.erase; when the store cannot write it (a full disk), the user is withheld at
        once (the scorer, identify and the API no longer find them in this process) and
        _Withheld is raised: nothing is recorded in the sync state, and the erase is tried
        again by retry_withheld. Named at ERROR and audited once per change."""
        assert upd.name is not None
        try:
            return self.store.erase(upd.name)
        except StoreError as exc:
            self.store.withhold(upd.name)
            first = self._withheld.get(upd.tag) != upd
            self._withheld[upd.tag] = upd
            if first:
                self.stats["withheld"] += 1
            log.log(
                logging.ERROR if first else logging.DEBUG,
                "fleet sync: %s of %s (version %d, by %s, via %s) cannot be written (%s); %s "
                "is no longer recognised at this door from now on, and the %s is written as "
                "soon as the store takes it (tried every %g s)",
                upd.kind,
                upd.name,
                upd.version,
                upd.signer,
                upd.group,
                exc,
                upd.name,
                upd.kind,
                self.withheld_retry_s,
            )
            outcome = f"{upd.kind}_withheld"
            if first:
                self._done(outcome, upd, error=str(exc))
            raise _Withheld(outcome) from None

    def retry_withheld(self) -> None:
        """Apply again each withheld erase or revoke; a hold ends once the store no longer
        withholds the user (the erase written, or a newer voiceprint stored)."""
        self.state.write_back()  # the sync state first, so what follows lands in the file
        with self._apply_lock:
            for tag, name in list(self._not_allowed.items()):
                try:
                    self._drop_not_allowed(tag, name)
                except Exception as exc:  # e.g. the sync state: the erase itself may be done
                    log.error("fleet sync: withheld erase of %s (config): %s", name, exc)
            for tag, upd in list(self._withheld.items()):
                assert upd.name is not None
                try:
                    outcome = self._apply(upd)
                except _Withheld:
                    continue
                except Exception as exc:  # e.g. the sync state: the erase itself may be done
                    log.error("fleet sync: withheld %s of %s: %s", upd.kind, upd.name, exc)
                    outcome = "failed"
                if not self.store.withholds(upd.name):
                    del self._withheld[tag]
                    log.warning(
                        "fleet sync: the withheld %s of %s is done (%s)",
                        upd.kind,
                        upd.name,
                        outcome,
                    )

    def _retry_loop(self) -> None:
        while not self._stopping.wait(self.withheld_retry_s):
            if not (self._withheld or self._not_allowed or self.state.in_memory):
                continue
            try:
                self.retry_withheld()
            except Exception:  # the loop keeps going whatever one attempt does
                log.exception("fleet sync: retrying withheld erases failed")

    def _erased(self, name: str) -> None:
        if self.on_erased is None:
            return
        try:
            self.on_erased(name)
        except Exception:  # the erase stands whatever the hook does
            log.exception("fleet sync: after erasing %s, the on_erased hook failed", name)

    def _audit(self, event: str, **fields: Any) -> None:
        if self.audit_event is None:
            return
        try:
            self.audit_event(event, **fields)
        except Exception:
            log.exception("fleet sync: could not write audit event %s", event)

    def _name_for(self, upd: Update) -> tuple[Update, int]:
        """A tombstone with the name of the user it is about, when this door holds them, and
        how many voiceprint rows could not be read to check (0 when the name was found).

        Tombstones carry only the user tag; the name is found among this door's voiceprints
        (the store keys rows by name, under its own key). StoreError when the store cannot be
        read: then nothing is recorded and the retained tombstone is applied on a later connect.
        """
        if upd.name is not None:
            return upd, 0
        held = self._withheld.get(upd.tag)
        if held is not None:  # the store no longer lists them, but the row is still there
            return dataclasses.replace(upd, name=held.name), 0
        if upd.tag in self._not_allowed:  # likewise (enforce_access)
            return dataclasses.replace(upd, name=self._not_allowed[upd.tag]), 0
        prints, damaged = self.store.readable()
        for vp in prints:
            if self.codec.user_tag(vp.name) == upd.tag:
                return dataclasses.replace(upd, name=vp.name), 0
        return upd, damaged

    def _unverified(self, upd: Update, damaged: int, order: Order) -> str:
        """An erase or revoke for a user this door could not find while some rows cannot be
        read: one of them may be that user's (and a revoke would leave their access in
        place once the row reads again, e.g. the file restored from a backup). It is
        recorded (older voiceprints stay ignored) with `held` set, meaning "this door may
        still hold them", so the retained tombstone is applied again at each connect until
        the user is found or no unreadable row is left. Named at ERROR and audited once per
        tombstone and group in this process; the retries after that log at DEBUG."""
        self.state.set_user(upd.tag, order, upd.kind, held=True)
        self.state.set_grant(upd.tag, upd.group, upd.order, upd.kind)
        outcome = f"{upd.kind}_unverified"
        self.stats[outcome] += 1
        told = (upd.kind, upd.tag, upd.group, upd.order)
        first = told not in self._unverified_told
        self._unverified_told.add(told)
        log.log(
            logging.ERROR if first else logging.DEBUG,
            "fleet sync: %s of user tag %s (version %d, by %s, via %s) may be incomplete: %d "
            "voiceprint row(s) here cannot be read and may be that user's (`voxgate users "
            "list` counts them); erase or re-enroll them by name (`voxgate users erase NAME`), "
            "the %s is tried again at each connect",
            upd.kind,
            upd.tag,
            upd.version,
            upd.signer,
            upd.group,
            damaged,
            upd.kind,
        )
        if not first:
            return outcome
        return self._done(outcome, upd, unreadable=damaged)

    def _apply(self, upd: Update) -> str:
        hold = self._withheld.get(upd.tag)
        if hold is not None and upd.kind == "voiceprint" and not newer(upd.order, hold.order):
            # The withheld erase is in no record yet (the sync state is written with the
            # store): an older voiceprint would count as new, and storing it ended the hold.
            return self._ignored(upd, hold.order)
        row = self.state.user(upd.tag)
        known: Order | None = (row[0], row[3]) if row else None
        held = bool(row and row[2])
        # An erase or revoke recorded while unreadable rows might have held the user: its
        # retained copy is applied again (see _unverified).
        retry = bool(row and row[1] == upd.kind and held and upd.kind in ("erase", "revoke"))
        retry = retry and upd.order == known
        if row and known and row[1] == "erase" and not newer(upd.order, known) and not retry:
            return self._ignored(upd, known)  # erased later than this message was made
        grant_row = self.state.grant(upd.tag, upd.group)
        if grant_row is not None:
            grant = (grant_row[0], grant_row[2])
            # A grant dropped by config takes its own version again (older ones stay ignored).
            redo = grant_row[1] == "dropped" and not newer(grant, upd.order)
            if not newer(upd.order, grant) and not redo and not retry:
                return self._ignored(upd, grant)
        if upd.kind == "erase":
            if known is not None and not newer(upd.order, known) and not retry:
                # Older than what this door has, e.g. the erase still retained on another
                # group's topic after the user was enrolled again: the newer change stands.
                return self._ignored(upd, known)
            upd, unreadable = self._name_for(upd)
            if upd.name is None and unreadable:
                return self._unverified(upd, unreadable, upd.order)
            erased = False
            if upd.name is not None:  # else: not held here; the version is what matters
                erased = self._erase_or_withhold(upd)
                self._erased(upd.name)
            self.state.set_user(upd.tag, upd.order, "erase", held=False)
            self.state.set_grant(upd.tag, upd.group, upd.order, "erase")
            log.info(
                "fleet sync: %s erased (version %d, by %s)", _who(upd), upd.version, upd.signer
            )
            self.stats["applied"] += 1
            return self._done("erased" if erased else "erased_absent", upd)
        if upd.kind == "revoke":
            others = [
                g
                for g in self.state.granting_groups(upd.tag)
                if g != upd.group and g in self.cfg.groups
            ]
            if others:
                self.state.set_grant(upd.tag, upd.group, upd.order, "revoke")
                return "revoked_group"  # another of this door's groups still lets them in
            # State is written after the store changed, so a failure here means the retained
            # message is applied again on the next connect rather than skipped.
            upd, unreadable = self._name_for(upd)
            top = known if known is not None and newer(known, upd.order) else upd.order
            if upd.name is None and unreadable:
                return self._unverified(upd, unreadable, top)
            if upd.name is not None:
                self._erase_or_withhold(upd)
                self._erased(upd.name)
            self.state.set_grant(upd.tag, upd.group, upd.order, "revoke")
            self.state.set_user(upd.tag, top, "revoke", held=False)
            log.info("fleet sync: %s revoked here (version %d)", _who(upd), upd.version)
            self.stats["applied"] += 1
            return self._done("revoked", upd)
        # A voiceprint (decode made sure it has a name).
        assert upd.name is not None
        if not self.allowed_here(upd.name):
            # Defence in depth: the ACL should have kept it away; never store it.
            log.warning("fleet sync: %s is not allowed at this door; not stored", upd.name)
            self.stats["not_allowed"] += 1
            return self._done("not_allowed", upd)
        made_by = (upd.model_id, upd.model_sha256)
        why = model_mismatch(made_by, self.model_id, self.model_sha256) if self.model_id else None
        if why is not None:
            log.error("fleet sync: %s %s here; not stored", upd.name, why)
            self.stats["refused"] += 1
            return "model_mismatch"
        if held and row and row[1] == "voiceprint" and known and not newer(upd.order, known):
            self.state.set_grant(upd.tag, upd.group, upd.order, "voiceprint")
            return "already_have"  # the same enrollment, through another group
        assert upd.embeddings is not None and upd.model_id is not None
        meta = {**(upd.meta or {}), "fleet_version": upd.version, "fleet_signer": upd.signer}
        self.store.replace(upd.name, upd.embeddings, upd.model_id, meta, upd.model_sha256)
        self.state.set_grant(upd.tag, upd.group, upd.order, "voiceprint")
        self.state.set_user(upd.tag, upd.order, "voiceprint", held=True)
        log.info(
            "fleet sync: %s stored (version %d, from %s via %s)",
            upd.name,
            upd.version,
            upd.signer,
            upd.group,
        )
        self.stats["applied"] += 1
        return self._done("stored", upd)

    def _ignored(self, upd: Update, have: Order) -> str:
        self.stats["ignored_old"] += 1
        if newer(have, upd.order):
            # The same change again is the retained copy after a reconnect; an older one is a
            # replay, a message that crossed a newer change, or the loser of a tie (same
            # version): worth a line, never applied.
            log.info(
                "fleet sync: ignored %s of %s (version %d, by %s, via %s): version %d%s is newer",
                upd.kind,
                _who(upd),
                upd.version,
                upd.signer,
                upd.group,
                have[0],
                f" ({have[1]}, the tie-break)" if have[0] == upd.version else "",
            )
        return "ignored_old"

    def enforce_access(self) -> list[str]:
        """Erase voiceprints received from the fleet that this door's config no longer allows.

        Run at start, so shrinking fleet.access / fleet.groups (an Ansible run) revokes
        access even for doors that were offline when it changed.
        """
        dropped: list[str] = []
        # Which voiceprints came from the fleet is read off the voiceprints themselves
        # (`fleet_version`), not off the sync state's held tags: after `fleet.db` was deleted
        # or the fleet key replaced (every tag changes), no tag matched and a user the config
        # no longer allows stayed enrolled here.
        try:
            prints, damaged = self.store.readable()
        except StoreError as exc:
            # The door still starts (its attempts are denied as store_unreadable); access is
            # checked again at the next start.
            log.error("fleet sync: cannot check access at start: %s", exc)
            return dropped
        if damaged:
            log.error("fleet sync: %d unreadable voiceprint(s) not checked against access", damaged)
        for vp in prints:
            if "fleet_version" in vp.meta and not self.allowed_here(vp.name):
                tag = self.codec.user_tag(vp.name)
                self._drop_not_allowed(tag, vp.name)
                dropped.append(vp.name)
        return dropped

    def _drop_not_allowed(self, tag: str, name: str) -> bool:
        """Erase a user the config no longer allows; whether it is written. On a full disk
        (raising stopped the start) they are withheld at once and tried again with the
        withheld retries (retry_withheld); _name_for still finds them meanwhile, so a fleet
        erase of theirs is not taken for one of a user this door does not hold."""
        try:
            gone = self.store.erase(name)
        except StoreError as exc:
            self.store.withhold(name)
            if self._not_allowed.get(tag) != name:
                self._not_allowed[tag] = name
                log.error(
                    "fleet sync: %s is no longer allowed here (config), but the erase cannot "
                    "be written (%s); %s is not recognised from now on, and is erased once "
                    "the store can write (tried every %g s)",
                    name,
                    exc,
                    name,
                    self.withheld_retry_s,
                )
            return False
        if self._not_allowed.pop(tag, None) is not None and not gone:
            return True  # erased meanwhile (a fleet erase of theirs): its record stands
        self._erased(name)
        known = self.state.user(tag)
        order = (known[0], known[3]) if known else (0, "")
        self.state.set_user(tag, order, "revoke", held=False)
        # Not a tombstone: if the config allows them again, the retained voiceprint
        # (same version) must be applied, not skipped as one already seen.
        self.state.drop_grants(tag)
        log.info("fleet sync: %s no longer allowed here (config); erased", name)
        # A voiceprint change like any other the agent makes: on the door's record.
        self._audit("fleet_dropped_by_config", user=name, groups=list(self.cfg.groups))
        return True
