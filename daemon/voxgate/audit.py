"""The audit log: append-only, hash-chained JSON lines, with a head anchor beside it.

Every line is one JSON object with `seq` (1, 2, ...), `ts`, `event`, the event's fields,
`prev` (the previous line's hash; 64 zeros for the first) and `hash` = sha256 of the line's
canonical JSON without `hash`. Editing, inserting, removing or reordering any line breaks
the chain at that point. Cutting lines off the end leaves a valid chain, so the head (last
seq and hash) is also kept in `<log>.anchor`, rewritten atomically after every line, and
HMAC-signed when an audit key is configured. Limits (docs/service.md): without a key, anyone
who can write both files can rewrite them consistently; with a key, they can still put back
an older log together with its older anchor. The daemon also logs each head to the journal,
which lives elsewhere, so a rollback can be seen by comparing the two.

rotate() archives the log and begins it again in place with an `audit_log_rotated` line whose
seq and prev follow the archive's last line: the chain goes on across the two files, and
verify() checks the archive when it finds it.

fsync: with fsync "always" (default) a line and then the anchor are fsynced before append()
returns; with "never" the kernel writes them when it likes.

A write that fails (disk full, I/O error) is logged with the cause; the line is kept in
memory and written, in order, by the next append or flush_pending(). The daemon goes on.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import hmac
import io
import json
import logging
import math
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voxgate.logs import LogLimit
from voxgate.ownership import fsync_path

log = logging.getLogger(__name__)

GENESIS = "0" * 64
RESERVED = frozenset({"seq", "ts", "event", "prev", "hash"})
MAX_PENDING = 10000  # lines held in memory while the disk refuses writes
MAX_TORN_KEPT = 65536  # bytes of a torn last line copied into its audit_torn_tail event


class AuditError(Exception):
    pass


def _plain(value: Any) -> Any:
    """JSON-safe form of numpy scalars, paths, tuples and non-finite floats."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if hasattr(value, "item"):  # numpy scalar
        return _plain(value.item())
    return str(value)


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(
        record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def loads(raw: bytes | str) -> Any:
    """json.loads for a line or anchor someone may have edited: deep nesting ("[[[[...", a
    few kB) raised RecursionError, a traceback from `audit verify` and from the daemon's
    start, instead of a damaged line; it is a ValueError here."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("nested too deeply") from None


class _TwiceKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _TwiceKey(k)
        out[k] = v
    return out


def _twice_key(raw: bytes) -> str | None:
    """A key the line gives twice, or None. The hash covers the value json keeps (the last),
    so a value put in front of it ("user":"mallory","user":"alice") passed as intact while a
    reader that takes the first, or a person, read the other."""
    try:
        json.loads(raw, object_pairs_hook=_no_duplicates)
    except _TwiceKey as exc:
        return str(exc)
    except (ValueError, RecursionError):
        pass
    return None


def _text_hash(value: Any) -> str:
    """A line's or an anchor's `hash` as read back; ValueError for one that is not ASCII text.
    JSON's escapes give a lone surrogate ("\\ud800") from valid UTF-8: chained from, or
    signed, it could not be encoded, and the door's start and `verify` ended in a traceback."""
    text = str(value)
    if not text.isascii():
        raise ValueError("the hash is not ASCII text")
    return text


def line_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


MIN_LINE_BYTES = 129  # a chained line holds two 64-digit hashes and its newline at least


def _may_fit(fd: int, st: os.stat_result, lines: int) -> bool:
    """False only when `lines` chained lines certainly cannot be appended: fewer bytes are
    free (root's reserve counted, and the slack of the file's last block) than the least
    they take. A write it lets through may still fail; one it stops never could succeed."""
    try:
        vfs = os.fstatvfs(fd)
    except OSError:
        return True
    free = vfs.f_bfree * vfs.f_frsize + max(0, st.st_blocks * 512 - st.st_size)
    return free >= lines * MIN_LINE_BYTES


def anchor_path_for(path: Path) -> Path:
    return path.with_name(path.name + ".anchor")


def anchor_mac(key: bytes, seq: int, head: str) -> str:
    return hmac.new(key, f"voxgate-audit:{seq}:{head}".encode(), hashlib.sha256).hexdigest()


def mac_matches(mac: str, key: bytes, seq: int, head: str) -> bool:
    """Whether an anchor's `mac` signs (seq, head). compare_digest raises TypeError on a
    non-ASCII string: an anchor with one crashed verify, and the daemon's start."""
    return mac.isascii() and hmac.compare_digest(mac, anchor_mac(key, seq, head))


def write_anchor(anchor: Path, seq: int, head: str, key: bytes | None, *, fsync: bool) -> None:
    """Replace the anchor with (seq, head), signed with `key`; OSError when it cannot be
    written (no copy is left behind then)."""
    body: dict[str, Any] = {"seq": seq, "hash": head}
    if key:
        body["mac"] = anchor_mac(key, seq, head)
    # A fresh name, made new (O_EXCL, O_NOFOLLOW): at the fixed "<anchor>.tmp", a link
    # the folder's owner (the service user) left there had a root shell's `voxgate users
    # erase` truncate and overwrite the file it pointed at, /etc/shadow as well as any.
    tmp = anchor.with_name(f".{anchor.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    try:
        # 0600 like the log itself, whatever the umask of the command writing it.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with open(fd, "wb") as f:
            f.write(canonical(body) + b"\n")
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, anchor)
        if fsync:
            fsync_path(anchor.parent)
    except OSError:
        with contextlib.suppress(OSError):  # no copy left per failed write (full disk)
            tmp.unlink()
        raise


class AuditLog:
    """Appends chained lines. Several processes may append to one log (the daemon, and
    `voxgate enroll` / `voxgate users erase` run by an admin): each write takes an exclusive
    flock on the file, re-reads the head another process may have moved, and chains its
    lines from there."""

    def __init__(
        self,
        path: Path,
        *,
        fsync: bool = True,
        key: bytes | None = None,
        anchor: Path | None = None,
        anchor_fresh: bool = True,
    ) -> None:
        """`anchor_fresh`: a log still empty after the open gets its anchor at seq 0, which
        tells it from one emptied by hand (log_gone). Not for a log found lost: its first
        line records that, and were that line held (a full disk), the anchor would hide
        the loss from the next start."""
        self.path = Path(path)
        self.anchor = anchor or anchor_path_for(self.path)
        self.fsync = fsync
        self.key = key
        self._lock = threading.Lock()
        self._pending: deque[dict[str, Any]] = deque()  # bodies not yet chained and written
        self.write_errors = 0
        self.dropped = 0  # lines lost because the backlog overflowed
        self._write_log = LogLimit()  # a failed write: logged once until one works
        self._anchor_log = LogLimit()  # the same for the anchor
        self.seq, self.head = 0, GENESIS
        self._anchor_fresh = anchor_fresh
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for event, fields in self._open_checks():
            self.append(event, **fields)
        # An anchor that disagrees with the log is recorded now, not only with the next line.
        with self._lock:
            self._flush_locked()

    # -- writing ------------------------------------------------------------------------

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Add one event; returns the record as written (with seq and hash), or, while the
        disk refuses writes, as it would be written now. Never raises for I/O."""
        clash = RESERVED & fields.keys()
        if clash:
            raise ValueError(f"audit fields may not be named {sorted(clash)}")
        body = {"ts": round(time.time(), 3), "event": event, **_plain(fields)}
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                lost = self._pending.popleft()
                self.dropped += 1
                # It leaves memory, not the record: the journal (kept elsewhere) gets it
                # whole, in the form the daemon's stop uses for lines still held.
                log.error(
                    "audit backlog full: oldest unwritten line leaves memory (%d so far); "
                    "unwritten audit line: %s",
                    self.dropped,
                    json.dumps(lost, sort_keys=True),
                )
            self._pending.append(body)
            records = self._flush_locked()
            record = records[-1] if records else self._chain([body], self.seq, self.head)[0]
        log.debug("audit #%d %s %s", record["seq"], event, record["hash"])
        return record

    def flush_pending(self) -> int:
        """Retry lines a failed write left in memory, and an anchor a failed write left
        behind the log; returns how many lines are still pending."""
        with self._lock:
            if self._pending:
                self._flush_locked()
            elif self._anchor_log.active:
                self._anchor_again_locked()
            return len(self._pending)

    def _anchor_again_locked(self) -> None:
        """The anchor for the head as it is now. Without this an anchor the full disk refused
        stayed behind until the next line: on a quiet door for hours, and a power cut then
        left a log that `voxgate audit verify` reports as appended to without its anchor."""
        try:
            fd = os.open(self.path, os.O_RDONLY | _no_follow(self.path))
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # anchors follow the file's order
            self.seq, self.head = _tail_head(fd, os.fstat(fd).st_size, self.seq, self.head)
            self._write_anchor()
        finally:
            os.close(fd)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def failing(self) -> bool:
        """Lines are held in memory, or the anchor could not be written since its last write
        that worked (for the daemon's STATUS=: the log alone was not where an admin looks)."""
        return bool(self._pending) or self._anchor_log.active

    def held(self) -> list[dict[str, Any]]:
        """A copy of the lines still unwritten (without seq and hash: those are given when
        they are written), for a caller that stops and must put them somewhere else."""
        with self._lock:
            return list(self._pending)

    @staticmethod
    def _chain(bodies: list[dict[str, Any]], seq: int, head: str) -> list[dict[str, Any]]:
        out = []
        for body in bodies:
            seq += 1
            rec = {"seq": seq, **body, "prev": head}
            rec["hash"] = head = line_hash(rec)
            out.append(rec)
        return out

    def _flush_locked(self) -> list[dict[str, Any]]:
        try:
            fd = os.open(
                self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | _no_follow(self.path), 0o600
            )
        except OSError as exc:
            self._write_failed(exc)
            return []
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            size = st.st_size
            if not _may_fit(fd, st, len(self._pending)):
                # Chaining and serialising the whole backlog for a write that cannot succeed
                # cost about 130 ms of CPU per try at 10,000 held lines, once a second from the
                # daemon's housekeeping (benchmarks/audit_backlog_cost.py).
                self._write_failed(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
                return []
            self.seq, self.head = _tail_head(fd, size, self.seq, self.head)
            bodies = list(self._pending)
            # The head is read back from the file and the anchor then signed over it: a cut
            # or an edited tail found here, left unrecorded, was made good by the next line.
            # A writer without the key leaves a signed anchor to the door (_write_anchor),
            # which compares it with the log at its next line.
            keyless = not self.key and _signed(self.anchor)
            gap = None if self._anchor_log.active or keyless else self._anchor_gap()
            if gap is not None:
                bodies.insert(0, {"ts": round(time.time(), 3), "event": "audit_anchor_gap", **gap})
            if not bodies:
                if self._anchor_fresh and size == 0 and self.seq == 0 and absent(self.anchor):
                    # A log opened and not yet written to (a first start that fails after
                    # this) gets its anchor at seq 0: an empty log WITHOUT one, on a door
                    # that has run, is one emptied by hand and reads as lost (log_gone).
                    self._write_anchor()
                return []
            records = self._chain(bodies, self.seq, self.head)
            data = b"".join(canonical(r) + b"\n" for r in records)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if self.fsync:
                    os.fsync(fd)
            except OSError as exc:
                # Leave no half line behind: the held lines are written whole later.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                self._write_failed(exc)
                return []
            self.seq, self.head = records[-1]["seq"], records[-1]["hash"]
            if self._write_log.reset():
                log.warning(
                    "audit log %s: writable again; %d held line(s) written",
                    self.path,
                    len(records),
                )
            self._pending.clear()
            self._write_anchor()  # still under the flock: anchors follow the file's order
            return records
        finally:
            os.close(fd)  # also releases the flock

    def _write_failed(self, exc: OSError) -> None:
        self.write_errors += 1
        if self._write_log.allow():
            why = "disk full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
            if exc.errno == errno.ELOOP:
                why = _LINK_ADVICE
            log.error(
                "audit log %s: cannot write (%s); keeping %d line(s) in memory and going on",
                self.path,
                why,
                len(self._pending),
            )

    def _write_anchor(self) -> None:
        if not self.key and _signed(self.anchor):
            # A writer without the key (an admin's command on a door whose key comes by
            # LoadCredential=) leaves the signed anchor: the door's next line records these
            # lines as written without it (a note) and signs the new head. An unsigned one
            # in its place is what a forger writes, and reads as tampering.
            return
        try:
            write_anchor(self.anchor, self.seq, self.head, self.key, fsync=self.fsync)
        except OSError as exc:
            self.write_errors += 1
            if self._anchor_log.allow():  # once, not for every line while the disk is full
                log.error(
                    "audit anchor %s: cannot write (%s); the log is ahead of it until it can",
                    self.anchor,
                    exc,
                )
            return
        if self._anchor_log.reset():
            log.warning("audit anchor %s: written again", self.anchor)

    # -- opening ------------------------------------------------------------------------

    def _open_checks(self) -> list[tuple[str, dict[str, Any]]]:
        """Repair a torn last line and compare the anchor, under the flock; returns the
        events that record what was found."""
        events: list[tuple[str, dict[str, Any]]] = []
        for path, what in ((self.path, "the audit log"), (self.anchor, "its anchor")):
            if path.is_dir():
                # Unlike a full disk this never passes: every line would be held in memory
                # until the backlog overflows.
                raise AuditError(
                    f"{path} is a folder, not {what}: nothing could be audited. Move it aside "
                    "(look inside first) and start again"
                )
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _no_follow(self.path), 0o600)
        except OSError as exc:
            why = _LINK_ADVICE if exc.errno == errno.ELOOP else exc
            log.error("audit log %s: cannot open (%s)", self.path, why)
            return events
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            torn = _torn_tail(fd, size)
            if torn:
                log.error(
                    "audit log %s ends in a torn line (%d bytes, a crash or full disk "
                    "mid-write); removing it and recording that",
                    self.path,
                    torn,
                )
                # The bytes go into the event that records their removal: a line a crash
                # cut off, or what a card fault wrote there, is evidence, not rubbish.
                cut = os.pread(fd, min(torn, MAX_TORN_KEPT), size - torn)
                os.ftruncate(fd, size - torn)
                size -= torn
                events.append(
                    (
                        "audit_torn_tail",
                        {"dropped_bytes": torn, "dropped_b64": base64.b64encode(cut).decode()},
                    )
                )
            self.seq, self.head = _tail_head(fd, size, 0, GENESIS)
        finally:
            os.close(fd)
        return events

    def _anchor_gap(self) -> dict[str, Any] | None:
        """What the anchor says when it is not the file's head (self.seq, self.head) with a
        good signature; None when it is. The anchor naming an earlier line of this log,
        unchanged, is a line written without its anchor (a crash between the two): verify
        notes it. Any other disagreement (lines cut off, the anchored line changed, a missing,
        unreadable or wrongly signed anchor) verify reports as tampering."""
        try:
            anchored = loads(_anchor_text(self.anchor))
            a_seq, a_hash = int(anchored["seq"]), _text_hash(anchored["hash"])
            mac = anchored.get("mac")
        except FileNotFoundError:
            a_seq, a_hash, mac = (0 if self.seq <= 0 else -1), None, None
            if a_seq == 0:
                return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError):
            a_seq, a_hash, mac = -1, None, None
        signature = None
        if self.key is not None and a_seq >= 0:
            if not isinstance(mac, str):
                signature = "missing"
            elif mac_matches(mac, self.key, a_seq, a_hash or ""):
                signature = "ok"
            else:
                signature = "bad"
        if a_seq == self.seq and a_hash == self.head and signature in (None, "ok"):
            return None
        if a_seq == 0 and self.seq <= 0 and signature in (None, "ok"):
            return None
        if a_seq > self.seq:
            log.error(
                "audit log %s has %d line(s) but its anchor says %d: lines were removed",
                self.path,
                self.seq,
                a_seq,
            )
        elif a_seq == self.seq or signature in ("bad", "missing"):
            log.error(
                "audit log %s: its anchor (seq %d, signature %s) does not match the last "
                "line: the log or the anchor was changed",
                self.path,
                a_seq,
                signature or "not checked",
            )
        else:
            log.warning(
                "audit log %s is ahead of its anchor (%s vs %d); recording that and re-anchoring",
                self.path,
                a_seq if a_seq >= 0 else "missing/unreadable",
                self.seq,
            )
        return {
            "anchored_seq": a_seq,
            "anchored_hash": a_hash,
            "anchor_signature": signature,
            "log_seq": self.seq,
            "log_hash": self.head,
        }


def _no_follow(path: Path) -> int:
    """O_NOFOLLOW for a root process writing the log in a folder another user owns (a root
    shell's `voxgate users erase` in the service's data folder), else 0. That user could
    leave the log as a link to a root file, /root/.bashrc as well as any, and root appended
    its JSON lines there, one of them quoting what the anchor file (theirs too) says: a
    `$(...)` a login shell would run."""
    if os.geteuid() != 0:
        return 0
    try:
        return os.O_NOFOLLOW if os.stat(path.parent).st_uid != 0 else 0
    except OSError:
        return 0


_LINK_ADVICE = (
    "it is a symbolic link in a folder another user owns, which a root command does not "
    "write through: set audit.path to the file itself"
)


# An anchor is one line of some hundred bytes.
MAX_ANCHOR_BYTES = 64 * 1024


def _anchor_bytes(anchor: Path) -> bytes:
    """The anchor's bytes, read no further than one byte past an anchor's size. The service's
    user owns the folder: an anchor left as a link to /dev/zero had a root shell's `voxgate
    users erase` read GBs (its line then lost); a FIFO is not waited on (an empty or
    unreadable anchor)."""
    fd = os.open(anchor, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        return f.read(MAX_ANCHOR_BYTES + 1) or b""  # None: a FIFO not written to yet


def _anchor_text(anchor: Path) -> str:
    """The anchor's text (_anchor_bytes); ValueError for more than an anchor holds."""
    data = _anchor_bytes(anchor)
    if len(data) > MAX_ANCHOR_BYTES:
        raise ValueError(f"larger than {MAX_ANCHOR_BYTES // 1024} kB: not an anchor")
    return data.decode()


def _signed(anchor: Path) -> bool:
    """Whether the anchor file carries a signature."""
    try:
        body = loads(_anchor_text(anchor))
    except (OSError, ValueError):
        return False
    return isinstance(body, dict) and "mac" in body


def _read_back(fd: int, size: int, limit: int = 65536) -> bytes:
    n = min(size, limit)
    return os.pread(fd, n, size - n) if n else b""


def _torn_tail(fd: int, size: int) -> int:
    """Bytes after the last newline (a line whose write never finished)."""
    tail = _read_back(fd, size)
    if not tail or tail.endswith(b"\n"):
        return 0
    return len(tail) - (tail.rfind(b"\n") + 1)


def _tail_head(fd: int, size: int, seq: int, head: str) -> tuple[int, str]:
    """(seq, hash) of the file's last line; the given values when the file is empty or
    unreadable (a character device such as /dev/full reports size 0). A damaged last line
    is chained from by its bytes, with the seq it would have had, so verify reports that
    one line and nothing after it."""
    tail = _read_back(fd, size).rstrip(b"\n")
    if not tail:
        return seq, head
    lines = tail.split(b"\n")
    last_seq = -1
    for back, raw in enumerate(reversed(lines)):
        try:
            last_seq = int(loads(raw)["seq"]) + back
            break
        except (ValueError, KeyError, TypeError, OverflowError):  # OverflowError: 1e400
            continue
    try:
        return last_seq, _text_hash(loads(lines[-1])["hash"])
    except (ValueError, KeyError, TypeError):
        log.error("audit log: the last line is damaged; new lines chain from its bytes")
        return last_seq, hashlib.sha256(lines[-1]).hexdigest()


def records_naming(path: Path, name: str) -> list[dict[str, Any]]:
    """The log's records whose `user` or `claimed_user` is `name` (compared as the
    voiceprint store compares names); a torn or foreign line is skipped (verify reports it).
    No log yet: none."""
    from voxgate.names import fold

    want = fold(name)
    found: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    rec = loads(line)
                except ValueError:
                    continue
                if not isinstance(rec, dict):
                    continue
                who = (rec.get("user"), rec.get("claimed_user"))
                if any(isinstance(w, str) and fold(w) == want for w in who):
                    found.append(rec)
    except FileNotFoundError:
        pass
    return found


def open_log(cfg: Any, *, note_loss: bool = False, lost: list[str] | None = None) -> AuditLog:
    """The audit log a VoxgateConfig names, for the daemon and for commands that change
    users (`enrollment`, `erase` events): AuditLog(cfg...).append("erase", user=name).

    `note_loss` (the daemon's start): when neither the log nor its anchor is there but the
    door's other files show it has run, the new log begins with an `audit_log_lost` line
    naming what was found, which `verify` reports. Without it a daemon started after the
    loss began a log that verified as intact. `lost`: what loss_traces() found before a
    command changed the files it looks at (an enrollment's voiceprint, an erase's last one),
    used instead of looking now."""
    from voxgate.config.secrets import read_secret

    path = log_path(cfg)
    # Looked at before AuditLog creates the file. On a fresh door the daemon's first start
    # finds none of the traces: it makes lockout.db only after this.
    if lost is None:
        lost = loss_traces(cfg) if note_loss else []
    # A key_file that is named must be there: skipping it would leave the anchor unsigned
    # while the config says it is signed.
    key_file = cfg.audit.key_file
    audit = AuditLog(
        path,
        fsync=cfg.audit.fsync == "always",
        key=read_secret("audit-key", key_file, required=key_file is not None),
        anchor_fresh=not lost,
    )
    if lost:
        log.error(
            "audit log %s and its anchor are missing (or the log was emptied), but this door "
            "has run (%s): its history is lost (deleted or emptied, or a data folder restored "
            "without it; `voxgate audit rotate` starts a new log); the new log begins by "
            "recording that",
            path,
            "; ".join(lost),
        )
        audit.append("audit_log_lost", log=str(path), found=lost)
    return audit


def log_path(cfg: Any) -> Path:
    return Path(cfg.audit.path or cfg.data_dir / "audit.jsonl")


def loss_traces(cfg: Any) -> list[str]:
    """When neither the log nor its anchor is there (or the log is empty and its anchor
    gone, log_gone): what shows this door has run (empty when the log is there, or on a
    fresh door)."""
    path = log_path(cfg)
    return traces_of_use(path, cfg) if log_gone(path) else []


def log_gone(path: Path) -> bool:
    """Neither the log nor its anchor is there, or the log is there empty (0 bytes) without
    its anchor. Emptying the log in place and deleting its anchor was the documented way to
    start a new log, so the empty log read as a fresh one and verified as intact, even with
    an audit key: anyone who could write both files erased the history unseen. A new log is
    begun by `voxgate audit rotate` now, and a log a writer opened but did not write to yet
    has its anchor at seq 0 (AuditLog)."""
    return (absent(path) or emptied(path)) and absent(anchor_path_for(path))


def emptied(path: Path) -> bool:
    """Whether `path` is a file of 0 bytes (not a device or FIFO, which report 0 too)."""
    try:
        st = path.stat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == 0


def absent(path: Path) -> bool:
    """Whether `path` is not there. A file this user may not see (a data folder only the
    service's user can enter) is not absent: verify() then says it cannot be read, where
    Path.exists() raised PermissionError."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


def traces_of_use(log: Path, cfg: Any) -> list[str]:
    """What shows the door has written audit lines before: each of these files is made only
    by something that is audited (a signed decision, the daemon's start, an enrollment).
    `cfg` None (a FILE given without -c): the files beside the log, by their default names."""
    from voxgate.voiceprints import sealed_count

    data = Path(cfg.data_dir) if cfg is not None else log.parent
    seq_file = data / "decision-seq.json"
    lockout = Path(cfg.lockout.path or data / "lockout.db") if cfg else data / "lockout.db"
    prints = (
        Path(cfg.speaker.database or data / "voiceprints.db") if cfg else data / "voiceprints.db"
    )
    found = []
    try:
        seq = loads(seq_file.read_text(encoding="utf-8")).get("seq")
    except (OSError, ValueError, AttributeError):
        seq = None
    if isinstance(seq, int) and seq > 0:
        found.append(f"{seq_file} shows signed decisions (seq {seq})")
    if not absent(lockout):
        found.append(f"{lockout} exists (made at the daemon's start)")
    count = sealed_count(prints)
    if count:
        found.append(f"{prints} holds {count} voiceprint(s)")
    return found


@dataclass
class VerifyReport:
    lines: int = 0
    head_seq: int = 0
    head: str = GENESIS
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rotated: dict[str, Any] | None = None  # the log's first line, when it continues an archive

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(
    path: Path,
    anchor: Path | None = None,
    key: bytes | None = None,
    *,
    use_anchor: bool = True,
    archive_dir: Path | None = None,
    archives: bool = True,
) -> VerifyReport:
    """Check the chain line by line and the head against the anchor. A log that begins with
    `audit_log_rotated` continues the archive it names: found beside the log or in
    `archive_dir`, that archive is checked too (`archives`), else a note says so."""
    path = Path(path)
    rep = VerifyReport()
    hashes: dict[int, str] = {0: GENESIS}
    try:
        # Line by line: read whole (and split), a year's log of a busy door (117 MB) took
        # 359 MB, more than a Pi Zero 2 W has free beside the daemon.
        with open(path, "rb") as f:
            _check_lines(f, rep, hashes)
    except FileNotFoundError:
        rep.notes.append(f"{path}: no such file (an empty log)")
    except OSError as exc:
        rep.problems.append(f"{path}: cannot read: {exc}")
        return rep
    if use_anchor:
        _check_head(rep, anchor or anchor_path_for(path), key, hashes)
    if rep.rotated is not None and archives:
        _check_archive(rep, path, archive_dir, key)
    return rep


def _as_recorded(arc: VerifyReport, rec: dict[str, Any]) -> bool:
    """The archive has the problems the rotation found in it: as many, or (checked without
    the key that changed then) as many less a wrong signature, which is not checked now."""
    recorded = rec.get("previous_problems")
    if type(recorded) is not int:
        return False
    changed = rec.get("key_changed") is True
    return len(arc.problems) == recorded or (changed and len(arc.problems) == recorded - 1)


ROTATED = "audit_log_rotated"
_HEX = frozenset("0123456789abcdef")


def _rotation_start(rec: dict[str, Any]) -> tuple[int, str] | None:
    """(previous_seq, previous_hash) an audit_log_rotated line continues from; None when
    it does not carry them in a usable form."""
    p_seq, p_hash = rec.get("previous_seq"), rec.get("previous_hash")
    if type(p_seq) is not int or p_seq < 0 or not isinstance(rec.get("archive"), str):
        return None
    if not isinstance(p_hash, str) or len(p_hash) != 64 or not set(p_hash) <= _HEX:
        return None
    return p_seq, p_hash


def _check_archive(
    rep: VerifyReport, path: Path, archive_dir: Path | None, key: bytes | None
) -> None:
    """The archive a rotated log continues: it must verify and end at the head the rotation
    line recorded. Not found is a note: archives are moved off the door."""
    rec = rep.rotated or {}
    name = Path(str(rec.get("archive", ""))).name  # its name only: the line picks no path
    folders = [path.parent] + ([Path(archive_dir)] if archive_dir else [])
    found = next((f / name for f in folders if name and not absent(f / name)), None)
    if found is None:
        rep.notes.append(
            f"line 1: this log continues the archive {name} (seq {rec.get('previous_seq')}), "
            f"not found in {', '.join(map(str, folders))}: not checked (give --archive-dir "
            "where it is kept to check it)"
        )
        return
    try:
        regular = stat.S_ISREG(found.stat().st_mode)
    except OSError as exc:
        rep.problems.append(f"the archive {found}: cannot read: {exc.strerror or exc}")
        return
    if not regular:
        rep.problems.append(f"the archive {found} is not a file")
        return
    # A key changed at the rotation signs the new log only: the archive's anchor has the old.
    changed = rec.get("key_changed") is True
    arc = verify(found, key=None if changed else key, archives=False)
    want = (rec.get("previous_seq"), rec.get("previous_hash"))
    if (arc.head_seq, arc.head) != want:
        rep.problems.append(
            f"the archive {found} ends at seq {arc.head_seq} {arc.head}, but the rotation "
            f"recorded seq {want[0]} {want[1]}: the archive was changed after the rotation"
        )
    elif arc.problems and rec.get("previous_verified") is False and _as_recorded(arc, rec):
        rep.notes.append(
            f"the archive {found} was already NOT intact when it was rotated "
            f"({len(arc.problems)} problem(s), kept as evidence): voxgate audit verify {found}"
        )
    elif arc.problems:
        rep.problems.extend(f"the archive {found}: {p}" for p in arc.problems)
    else:
        rep.notes.append(f"the archive {found} is intact and ends where this log begins")
    rep.notes.extend(f"the archive {found}: {n}" for n in arc.notes)


def _check_lines(
    lines: Iterable[bytes], rep: VerifyReport, hashes: dict[int, str], *, resume: bool = False
) -> None:
    """The chain of `lines` (each with its newline); the problems, the head and each seq's
    hash go into `rep` and `hashes`. `resume`: the lines follow those already checked into
    `rep` (rotate(): a prefix checked without the lock, the rest under it), chained from its
    head and numbered on; the same report as one call over all of them."""
    prev, seq = (rep.head, rep.head_seq) if resume else (GENESIS, 0)
    # A torn last line is listed first, as when the whole file is checked at once.
    first = 0 if resume else len(rep.problems)
    line = b""
    for n, line in enumerate(lines, start=rep.lines + 1 if resume else 1):
        raw = line[:-1] if line.endswith(b"\n") else line
        rep.lines = n
        try:
            rec = loads(raw)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
            got_hash, got_prev, got_seq = rec["hash"], rec["prev"], rec["seq"]
            if isinstance(got_hash, str):
                _text_hash(got_hash)  # the door chains from its bytes instead: so does verify
            # ValueError from canonical(): a number JSON cannot hold (1e400 reads as inf).
            want_hash = line_hash(rec)
        except (ValueError, KeyError) as exc:
            rep.problems.append(f"line {n}: not an audit record ({exc})")
            prev, seq = hashlib.sha256(raw).hexdigest(), seq + 1
            continue
        if rec.get("event") == ROTATED:
            if n > 1:
                rep.problems.append(
                    f"line {n} (seq {got_seq}): an {ROTATED} line, which only ever begins a log "
                    "(lines were put in front of it)"
                )
            elif (start := _rotation_start(rec)) is None:
                rep.problems.append(
                    f"line 1: an {ROTATED} line without the previous_seq, previous_hash and "
                    f"archive it must name: {raw.decode()}"
                )
            elif (got_seq, got_prev) != (start[0] + 1, start[1]):
                rep.problems.append(
                    f"line 1 (seq {got_seq!r}): an {ROTATED} line that does not continue the "
                    f"log it names (previous seq {start[0]}, hash {start[1]}; its own prev "
                    f"{got_prev!r}): edited or forged"
                )
                prev, seq = got_prev, got_seq - 1 if type(got_seq) is int else 0
            else:
                # The chain goes on across files: this line's seq and prev follow the
                # archive's last line, where a new log would start at 1 and 64 zeros.
                prev, seq = start[1], start[0]
                hashes[seq] = prev
                rep.rotated = rec
                if rec.get("previous_verified") is not True:
                    rep.notes.append(
                        f"line 1: the log before this rotation was NOT intact when it was "
                        f"archived ({rec.get('previous_problems')} problem(s)): "
                        f"{rec.get('archive')} keeps the evidence"
                    )
        if want_hash != got_hash:
            rep.problems.append(f"line {n} (seq {got_seq}): edited (its hash does not match)")
        # The daemon writes each line in canonical form: only another one can give a key twice.
        elif raw != canonical(rec) and (twice := _twice_key(raw)) is not None:
            rep.problems.append(
                f"line {n} (seq {got_seq}): edited (the key {twice!r} appears twice: a value "
                "was added in front of the one its hash covers)"
            )
        if got_prev != prev:
            rep.problems.append(
                f"line {n} (seq {got_seq}): chain broken (a line before it was removed, "
                "inserted or reordered)"
            )
        # type(): true == 1, and "5" printed as 5 read "seq 5 where 5 was expected".
        if type(got_seq) is not int or got_seq != seq + 1:
            rep.problems.append(f"line {n}: seq {got_seq!r} where {seq + 1} was expected")
        if rec.get("event") == "audit_anchor_gap" and (why := _gap_problem(rec, hashes)):
            rep.problems.append(f"line {n}: the writer found {why}: {raw.decode()}")
        elif rec.get("event") == "audit_log_lost":
            # The log was begun again: what came before it cannot be checked, ever.
            rep.problems.append(
                f"line {n}: a writer (the daemon, voxgate api, a command) found the audit log "
                f"and its anchor missing (or the log emptied) on a door that had run; the "
                f"history before this line is lost: {raw.decode()}"
            )
        elif rec.get("event") in ("audit_anchor_gap", "audit_torn_tail"):
            rep.notes.append(f"line {n}: the daemon recorded {rec['event']}: {raw.decode()}")
        prev, seq = got_hash, got_seq if type(got_seq) is int else seq + 1
        hashes[seq] = prev
    if line and not line.endswith(b"\n"):
        rep.problems.insert(first, f"line {rep.lines}: torn (no newline at the end)")
    rep.head_seq, rep.head = seq, prev


def _gap_problem(rec: dict[str, Any], hashes: dict[int, str]) -> str | None:
    """Why an audit_anchor_gap line records tampering (the writer re-anchored after it, so
    the anchor check alone no longer sees it), or None for a line written without its anchor
    (the anchor named an earlier line, still there unchanged)."""
    a_seq, l_seq = rec.get("anchored_seq"), rec.get("log_seq")
    if not isinstance(a_seq, int) or not isinstance(l_seq, int):
        return "an anchor it could not compare"
    if a_seq < 0:
        return "the anchor missing or unreadable (lines may have been cut off)"
    if a_seq > l_seq:
        return f"{a_seq - l_seq} line(s) removed from the end (anchor seq {a_seq}, log seq {l_seq})"
    if rec.get("anchor_signature") in ("bad", "missing"):
        return f"an anchor whose signature is {rec['anchor_signature']} (a forged anchor)"
    a_hash = rec.get("anchored_hash", hashes.get(a_seq))  # older lines do not carry it
    if hashes.get(a_seq) != a_hash:
        return f"line seq {a_seq} changed after it was anchored"
    return None


def _check_head(rep: VerifyReport, anchor: Path, key: bytes | None, hashes: dict[int, str]) -> None:
    try:
        body = loads(_anchor_text(anchor))
        a_seq, a_hash = int(body["seq"]), _text_hash(body["hash"])
    except FileNotFoundError:
        if rep.lines:
            rep.problems.append(
                f"{anchor}: anchor missing (cannot tell whether lines were cut off)"
            )
        return
    except (OSError, ValueError, KeyError, TypeError, OverflowError) as exc:
        rep.problems.append(f"{anchor}: unreadable anchor ({exc})")
        return
    if key is not None:
        mac = body.get("mac")
        if mac is None:
            # Said apart from a wrong key: a door without the audit key writes it so, and a
            # removed signature looks the same; "wrong key" sent people looking at the key.
            rep.problems.append(
                f"{anchor}: the anchor is not signed, but a key was given (the door wrote it "
                "without the audit key, or its signature was removed)"
            )
        elif not isinstance(mac, str) or not mac_matches(mac, key, a_seq, a_hash):
            rep.problems.append(f"{anchor}: signature does not match (wrong key or forged anchor)")
    elif "mac" in body:
        rep.notes.append("the anchor is signed; pass the audit key to check the signature")
    if a_seq > rep.head_seq:
        rep.problems.append(
            f"truncated: the anchor records {a_seq} line(s), the log ends at seq {rep.head_seq}"
        )
    elif hashes.get(a_seq) != a_hash:
        rep.problems.append(f"line seq {a_seq} is not the one the anchor records")
    elif a_seq < rep.head_seq:
        rep.problems.append(
            f"{rep.head_seq - a_seq} line(s) after the anchored head (seq {a_seq}) were "
            "appended without updating the anchor"
        )


class RotateError(AuditError):
    """Rotation refused or failed. `kind`: "absent" (no log, or an empty one), "key" (the
    anchor is signed and no key was given), "read" (the log cannot be read), "archive"
    (cannot be written): nothing was changed; "write": the log was archived but its first
    line could not be written."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Rotation:
    archive: Path
    archive_anchor: Path | None  # None: the log had no anchor to keep
    previous: VerifyReport
    record: dict[str, Any]  # the new log's first line
    anchor_error: str | None = None  # the new anchor could not be written


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "disk full"
    if exc.errno == errno.ELOOP:
        return _LINK_ADVICE
    return exc.strerror or str(exc)


def rotate(
    path: Path,
    *,
    key: bytes | None,
    new_key: bytes | None = None,
    archive_dir: Path | None = None,
    fields: dict[str, Any] | None = None,
    now: float | None = None,
) -> Rotation:
    """Archive the log and its anchor, then begin the log again, in place, with an
    `audit_log_rotated` line that continues the chain (seq and prev follow the archived
    head) and an anchor signed with `new_key` (default `key`).

    The long part, checking and copying the log as it is at the start, runs without the
    lock, so the daemon's writes go on meanwhile (_copy_prefix). Under the log's flock it
    then makes sure the file was only appended to since (same bytes up to where the copy
    ends), checks and copies the lines added since, and does the rest: a writer waits that
    long, then reads the new head from the file's tail and chains after the rotation line.
    A log changed otherwise meanwhile (cut, rewritten, rotated by another command) is
    checked and copied again, whole, under the lock, as if there had been no copy. In place
    (the same inode truncated), so a writer that opened the file before the rotation and
    takes the flock after it still writes to the log, not to the archive. The log is
    truncated only once the archive is on disk (fsynced, with its folder): a RotateError
    before that changed nothing. The log is checked (verify, with `key`) and rotated even
    when it is not intact: the archive keeps the evidence, and the new first line records
    the result."""
    path = Path(path)
    anchor = anchor_path_for(path)
    folder = Path(archive_dir) if archive_dir else path.parent
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | _no_follow(path))
    except FileNotFoundError:
        raise RotateError(
            f"{path}: no such file: there is no audit log to rotate", "absent"
        ) from None
    except OSError as exc:
        raise RotateError(f"{path}: cannot open the audit log ({_why(exc)})", "read") from None
    prefix: _Prefix | None = None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RotateError(f"{path} is not a file: not an audit log", "read")
        prefix = _copy_prefix(fd, path, folder, keyless=key is None and new_key is None)
        if prefix is not None and _after_prefix is not None:
            _after_prefix()
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size  # after the flock: a writer may have just added a line
        if size == 0:
            raise RotateError(f"{path} is empty: nothing to archive", "absent")
        if key is None and new_key is None and _signed(anchor):
            raise RotateError(
                f"{anchor} is signed, but no audit key was given: the new anchor would be "
                "unsigned and read as forged. Give the key (audit.key_file in -c CONFIG, "
                "--key-file, or $VOXGATE_AUDIT_KEY)",
                "key",
            )
        if prefix is not None and _finish_prefix(fd, size, prefix):
            rep, hashes = prefix.rep, prefix.hashes
        else:
            # No copy, or the log changed in a way an append does not: all of it, now.
            if prefix is not None:
                prefix.discard()
                prefix = None
            rep = VerifyReport()
            hashes = {0: GENESIS}
            try:
                with open(os.dup(fd), "rb") as f:
                    _check_lines(f, rep, hashes)
            except OSError as exc:
                raise RotateError(
                    f"{path}: cannot read the audit log ({_why(exc)})", "read"
                ) from None
        _check_head(rep, anchor, key, hashes)
        try:
            kept = _anchor_bytes(anchor)
        except FileNotFoundError:
            kept = None  # the archive has none either: verify reports it missing there
        except OSError as exc:
            kept = None
            rep.problems.append(f"{anchor}: cannot read: {_why(exc)}")
        when = time.gmtime(time.time() if now is None else now)
        name = f"{path.stem}-{time.strftime('%Y%m%dT%H%M%SZ', when)}-seq{rep.head_seq}"
        archive = folder / f"{name}{path.suffix or '.jsonl'}"
        archive_anchor = anchor_path_for(archive) if kept is not None else None
        _write_archive(
            fd,
            size,
            archive,
            archive_anchor,
            kept or b"",
            copied=prefix.tmp if prefix is not None else None,
            copied_fd=prefix.out if prefix is not None else -1,
        )
        body: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "event": ROTATED,
            "archive": str(archive),
            "previous_seq": rep.head_seq,
            "previous_hash": rep.head,
            "previous_lines": rep.lines,
            "previous_verified": rep.ok,
            "previous_problems": len(rep.problems),
            "key_changed": new_key is not None and new_key != key,
            **_plain(fields or {}),
        }
        record = AuditLog._chain([body], rep.head_seq, rep.head)[0]
        try:
            os.ftruncate(fd, 0)
            os.write(fd, canonical(record) + b"\n")  # one short line: written whole or not
            os.fsync(fd)
        except OSError as exc:
            raise RotateError(
                f"{path}: archived to {archive}, but the new log's first line could not be "
                f"written ({_why(exc)}); the log may be empty now: the next writer records "
                "its anchor as ahead of it",
                "write",
            ) from None
        anchor_error = None
        try:
            write_anchor(anchor, record["seq"], record["hash"], new_key or key, fsync=True)
        except OSError as exc:
            anchor_error = _why(exc)
        return Rotation(archive, archive_anchor, rep, record, anchor_error)
    finally:
        if prefix is not None:
            prefix.discard()
        os.close(fd)  # also releases the flock


# Called by rotate() once the prefix is checked, copied and fsynced, before it takes the
# lock: a test holds the rotation there to write to the log beside it. None otherwise.
_after_prefix: Callable[[], None] | None = None


@dataclass
class _Prefix:
    """The start of the log as rotate() checked and copied it without the lock: `size` bytes
    of whole lines with their sha256 (`digest`), copied to `tmp` (open as `out`), a hidden
    file beside where the archive goes; and the report and hashes of their check."""

    tmp: Path
    out: int
    size: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    rep: VerifyReport = field(default_factory=VerifyReport)
    hashes: dict[int, str] = field(default_factory=lambda: {0: GENESIS})
    closed: bool = False

    def discard(self) -> None:
        """Close and remove the copy (once linked as the archive, the archive stays)."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                os.close(self.out)
            with contextlib.suppress(OSError):
                self.tmp.unlink()


def _copy_prefix(fd: int, path: Path, folder: Path, *, keyless: bool) -> _Prefix | None:
    """Check and copy the log's whole lines as they are now, without the lock: read once
    (1.6 s for 100k lines on an x86 test machine, benchmarks/rotate_lock_wait.py) while the
    door's writes go on. None when there is nothing to copy or it cannot be done here (a log refused
    below, an archive folder missing or full, a read error): rotate() then does all of it
    under the lock, as before, and says what is wrong as before."""
    try:
        size = os.fstat(fd).st_size
    except OSError:
        return None
    if size == 0 or (keyless and _signed(anchor_path_for(path))):
        return None  # refused under the lock; a copy would be wasted
    tmp = folder / f".{path.stem}-rotating-{os.getpid()}-{os.urandom(4).hex()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        out = os.open(tmp, flags, 0o600)
    except OSError:
        return None
    prefix = _Prefix(tmp, out)
    try:
        _check_lines(_copied_lines(fd, 0, size, prefix, torn=False), prefix.rep, prefix.hashes)
        os.fsync(out)
    except OSError:
        prefix.discard()
        return None
    except BaseException:
        prefix.discard()  # Ctrl-C in the long read: rotate() has no prefix to remove yet
        raise
    if prefix.size == 0:  # no whole line yet
        prefix.discard()
        return None
    return prefix


def _finish_prefix(fd: int, size: int, prefix: _Prefix) -> bool:
    """Under the flock: whether the log (`size` bytes now) still begins with the bytes
    copied, i.e. was only appended to since; if so, the lines appended since are checked
    on from the prefix's head and added to the copy, fsynced. False (nothing to keep) when
    the log was cut, rewritten or rotated meanwhile, or on any error: the caller then
    checks and copies the whole log again. The same fd throughout, so the same inode."""
    if size < prefix.size:
        return False
    try:
        # Re-read and compared by hash, not size alone: a cut and regrown log (a writer's
        # failed write undone, another rotation) can be as long again with other bytes.
        digest = hashlib.sha256()
        done = 0
        while done < prefix.size:
            chunk = os.pread(fd, min(1 << 20, prefix.size - done), done)
            if not chunk:
                return False
            digest.update(chunk)
            done += len(chunk)
        if digest.digest() != prefix.digest.digest():
            return False
        tail = _copied_lines(fd, prefix.size, size, prefix, torn=True)
        _check_lines(tail, prefix.rep, prefix.hashes, resume=True)
        os.fsync(prefix.out)
    except OSError:
        return False
    return prefix.size == size  # the copy is the whole log, as the archive must be


def _copied_lines(fd: int, start: int, end: int, prefix: _Prefix, *, torn: bool) -> Iterator[bytes]:
    """The log's lines in [start, end), each with its newline, written to the prefix's copy
    (and hashed into its digest while the copy is the prefix, start 0) before they are
    given out: the bytes checked are the bytes archived. Whole lines only; `torn`: the bytes
    after the last newline too, as a last line (a torn line, seen under the lock)."""
    rest = b""
    off = start
    while off < end:
        chunk = os.pread(fd, min(1 << 20, end - off), off)
        if not chunk:
            raise OSError(errno.EIO, "the log ended early while it was copied")
        off += len(chunk)
        data = rest + chunk
        cut = data.rfind(b"\n") + 1
        whole, rest = data[:cut], data[cut:]
        if whole:
            _write_all(prefix.out, whole)
            if start == 0:
                prefix.digest.update(whole)
            prefix.size += len(whole)
            yield from io.BytesIO(whole)
    if torn and rest:
        _write_all(prefix.out, rest)
        prefix.size += len(rest)
        yield rest


def _write_archive(
    fd: int,
    size: int,
    archive: Path,
    archive_anchor: Path | None,
    anchor_bytes: bytes,
    *,
    copied: Path | None = None,
    copied_fd: int = -1,
) -> None:
    """Copy `size` bytes of the log (fd) to `archive`, and the anchor's bytes beside it; both
    made new (O_EXCL, 0600), fsynced, then their folder. On failure neither is left.
    `copied`: a file beside it already holding those bytes, fsynced (rotate()'s copy made
    without the lock, open as `copied_fd`), linked as the archive instead when that name
    is still that file; where links are refused (a FAT backup drive) the log is copied as
    without it."""
    made: list[Path] = []
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        for target in (archive, archive_anchor):
            if target is None:
                continue
            if target == archive and copied is not None:
                try:
                    os.link(copied, archive)  # fails on an existing name, as O_EXCL does
                except OSError as exc:
                    if exc.errno == errno.EEXIST:
                        raise OSError(errno.EEXIST, exc.strerror, str(archive)) from None
                else:
                    made.append(archive)
                    if _same_file(archive, copied_fd):
                        with contextlib.suppress(OSError):
                            copied.unlink()
                        continue
                    # Not the copy made: its name, in a folder others may write to, was
                    # given to another file or a symlink meanwhile. Copied anew instead.
                    made.remove(archive)
                    archive.unlink()
            out = os.open(target, flags, 0o600)
            made.append(target)
            try:
                if target == archive:
                    done = 0
                    while done < size:
                        chunk = os.pread(fd, min(1 << 20, size - done), done)
                        if not chunk:
                            raise OSError(errno.EIO, "the log ended early while it was copied")
                        _write_all(out, chunk)
                        done += len(chunk)
                else:
                    _write_all(out, anchor_bytes)
                os.fsync(out)
            finally:
                os.close(out)
        fsync_path(archive.parent)
    except OSError as exc:
        for target in made:
            with contextlib.suppress(OSError):
                target.unlink()
        where = archive.parent
        if exc.errno == errno.EEXIST:
            raise RotateError(
                f"{exc.filename} exists already; nothing was changed", "archive"
            ) from None
        raise RotateError(
            f"cannot write the archive in {where} ({_why(exc)}); nothing was changed", "archive"
        ) from None


def _same_file(path: Path, fd: int) -> bool:
    """Whether `path` (not followed if a symlink) is the file open as `fd`."""
    try:
        a, b = os.stat(path, follow_symlinks=False), os.fstat(fd)
    except OSError:
        return False
    return stat.S_ISREG(a.st_mode) and (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
