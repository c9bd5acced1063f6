"""The signed, versioned decision message that door locks act on.

Wire format (see docs/mqtt.md for the full description and a test vector):

    {"alg":"HMAC-SHA256","body":"<canonical JSON of the decision>","sig":"<64 hex>"}

`sig` = HMAC-SHA256(key, "voxgate.decision.v1\\n" + body), where body is sent as a string so a
verifier in any language checks the exact bytes it received and never has to re-serialize
JSON. The body itself is canonical (sorted keys, no spaces, ASCII) so the same decision always
gives the same bytes, which is what makes a fixed test vector possible.

A verifier must check, in this order: signature, version, device, freshness (issued_at /
expires_at), then the sequence number against the last one it accepted from that device.
`ReplayGuard` keeps that last sequence in a small state file so a lock restart does not reopen
the replay window; `SequenceCounter` is the publisher side of the same idea.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from voxgate.logs import LogLimit
from voxgate.ownership import what_to_do
from voxgate.policy import Verdict

log = logging.getLogger(__name__)

VERSION = 1
ALG = "HMAC-SHA256"
DECISION_DOMAIN = b"voxgate.decision.v1\n"
OUTCOMES = ("granted", "denied", "retry")
# A decision is a few hundred bytes; anything much bigger is not ours.
MAX_PAYLOAD = 8192
# Longest validity a verifier accepts, whatever the message claims.
MAX_TTL_S = 60.0
DEVICE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
SIG_RE = re.compile(r"[0-9a-fA-F]{64}")


class DecisionError(Exception):
    """A decision that must not be acted on; `reason` is a short stable code for logs."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        # The authentic decision refused (stale, replayed, ...), set by verify(); None when
        # the message was not one (forged, malformed): a lock's refusal report names its seq.
        self.decision: Decision | None = None
        # The signature matched (set by open_sealed and verify): the sender holds the key,
        # so a body it cannot read is another version's, not a stranger's bytes.
        self.signed = False
        # Unsigned, but a voxgate envelope (string alg, body and sig) with an algorithm this
        # build does not know: another version's signature scheme, not a stranger's bytes.
        self.envelope = False
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class Decision:
    device: str
    outcome: str  # "granted" | "denied" | "retry"
    user: str | None
    issued_at: float  # unix seconds
    expires_at: float
    nonce: str  # 32 hex chars
    seq: int  # strictly increasing per device
    speaker_score: float | None = None
    speaker_threshold: float | None = None
    liveness_ok: bool | None = None  # None: liveness was not checked
    liveness_score: float | None = None
    liveness_threshold: float | None = None
    reasons: tuple[str, ...] = ()
    version: int = VERSION

    def to_body(self) -> dict[str, Any]:
        return {
            "v": self.version,
            "device": self.device,
            "outcome": self.outcome,
            "user": self.user,
            "scores": {
                "speaker": _num(self.speaker_score),
                "speaker_threshold": _num(self.speaker_threshold),
                "liveness": _num(self.liveness_score),
                "liveness_threshold": _num(self.liveness_threshold),
            },
            "liveness": self.liveness_ok,
            "reasons": list(self.reasons),
            "issued_at": round(self.issued_at, 3),
            "expires_at": round(self.expires_at, 3),
            "nonce": self.nonce,
            "seq": self.seq,
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Decision:
        """Build from a parsed body, checking every field's type (raises DecisionError)."""
        if not isinstance(body, Mapping):
            raise DecisionError("malformed", "body is not a JSON object")
        version = body.get("v")
        if version != VERSION:
            raise DecisionError("unsupported-version", f"v={version!r}, this build reads v=1")
        expected = {"v", "device", "outcome", "user", "scores", "liveness", "reasons"}
        expected |= {"issued_at", "expires_at", "nonce", "seq"}
        missing = expected - set(body)
        if missing:
            raise DecisionError("malformed", f"missing fields: {', '.join(sorted(missing))}")
        device = _typed(body, "device", str)
        if not DEVICE_RE.match(device):
            raise DecisionError("malformed", "device id has an invalid form")
        outcome = _typed(body, "outcome", str)
        if outcome not in OUTCOMES:
            raise DecisionError("malformed", f"outcome {outcome!r} is not one of {OUTCOMES}")
        user = body["user"]
        if user is not None and not isinstance(user, str):
            raise DecisionError("malformed", "user must be a string or null")
        scores = body["scores"]
        if not isinstance(scores, Mapping):
            raise DecisionError("malformed", "scores must be an object")
        liveness = body["liveness"]
        if liveness is not None and not isinstance(liveness, bool):
            raise DecisionError("malformed", "liveness must be true, false or null")
        reasons = body["reasons"]
        if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
            raise DecisionError("malformed", "reasons must be a list of strings")
        nonce = _typed(body, "nonce", str)
        seq = body["seq"]
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise DecisionError("malformed", "seq must be a non-negative integer")
        return cls(
            device=device,
            outcome=outcome,
            user=user,
            issued_at=_number(body, "issued_at"),
            expires_at=_number(body, "expires_at"),
            nonce=nonce,
            seq=seq,
            speaker_score=_opt_number(scores, "speaker"),
            speaker_threshold=_opt_number(scores, "speaker_threshold"),
            liveness_ok=liveness,
            liveness_score=_opt_number(scores, "liveness"),
            liveness_threshold=_opt_number(scores, "liveness_threshold"),
            reasons=tuple(reasons),
        )


def _num(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def _typed(body: Mapping[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if not isinstance(value, kind):
        raise DecisionError("malformed", f"{name} must be a {kind.__name__}")
    return value


def is_finite_number(x: object) -> TypeGuard[float]:
    """A JSON number usable as a float: not a bool, NaN or infinity, nor an integer too big
    for a float (math.isfinite raised OverflowError on 10**400: a traceback, not a refusal)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def _number(body: Mapping[str, Any], name: str) -> float:
    value = body.get(name)
    if not is_finite_number(value):
        raise DecisionError("malformed", f"{name} must be a finite number")
    return float(value)


def _opt_number(body: Mapping[str, Any], name: str) -> float | None:
    return None if body.get(name) is None else _number(body, name)


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, ASCII only: one decision, one byte string."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def mac(key: bytes, domain: bytes, body: str) -> str:
    return hmac.new(key, domain + body.encode("ascii"), hashlib.sha256).hexdigest()


def seal(body: Mapping[str, Any], key: bytes, domain: bytes) -> bytes:
    """The signed envelope for `body` (also used for commands and replies, with their domain)."""
    text = canonical_json(body)
    return canonical_json({"alg": ALG, "body": text, "sig": mac(key, domain, text)}).encode()


def open_sealed(payload: bytes, key: bytes, domain: bytes, max_size: int = MAX_PAYLOAD) -> Any:
    """Check an envelope's signature and return its parsed body (raises DecisionError)."""
    if len(payload) > max_size:
        raise DecisionError("oversized", f"{len(payload)} bytes > {max_size}")
    try:
        env = json.loads(payload.decode("utf-8"))
    # RecursionError: deep nesting ("[[[[..." fits in a few kB); it was a traceback.
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DecisionError("malformed", f"not JSON ({exc.__class__.__name__})") from None
    if not isinstance(env, dict):
        raise DecisionError("malformed", "envelope is not a JSON object")
    alg, body, sig = env.get("alg"), env.get("body"), env.get("sig")
    if alg != ALG:
        other = DecisionError("malformed", f"alg must be {ALG}")
        if isinstance(alg, str) and isinstance(body, str) and isinstance(sig, str):
            other = DecisionError(
                "malformed", f"alg {alg[:40]!r} is not {ALG}, the one this build knows"
            )
            other.envelope = True
        raise other
    if not isinstance(body, str) or not isinstance(sig, str):
        raise DecisionError("malformed", "envelope needs string 'body' and 'sig'")
    if not SIG_RE.fullmatch(sig):
        # compare_digest raises TypeError on a non-ASCII string: a traceback, and no reply
        # to the command, instead of a refusal.
        raise DecisionError("bad-signature", "sig is not 64 hex digits")
    try:
        body.encode("ascii")
    except UnicodeEncodeError:
        raise DecisionError("malformed", "body must be ASCII (canonical JSON)") from None
    if not hmac.compare_digest(mac(key, domain, body), sig.lower()):
        raise DecisionError("bad-signature", "HMAC does not match")
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        unread = DecisionError("malformed", "body is not JSON")
        unread.signed = True
        raise unread from None


def sign(decision: Decision, key: bytes) -> bytes:
    """The MQTT payload for `decision`."""
    if not key:
        raise ValueError("empty signing key")
    return seal(decision.to_body(), key, DECISION_DOMAIN)


def verify(
    payload: bytes,
    key: bytes,
    now: float,
    replay_guard: ReplayGuard | None,
    *,
    device: str | None = None,
    max_skew_s: float = 2.0,
) -> Decision:
    """Return the decision if it is authentic, fresh and new; raise DecisionError otherwise.

    `device`: the device the message claims to be from must be this one (e.g. taken from
    the topic). `max_skew_s`: how far in the future issued_at may be (clock differences).
    The replay guard is updated only when every other check passed.
    """
    body = open_sealed(payload, key, DECISION_DOMAIN)
    try:
        d = Decision.from_body(body)
    except DecisionError as exc:
        exc.signed = True
        raise
    try:
        _check(d, now, replay_guard, device, max_skew_s)
    except DecisionError as exc:
        exc.signed = True
        exc.decision = d
        raise
    return d


def _check(
    d: Decision, now: float, replay_guard: ReplayGuard | None, device: str | None, max_skew_s: float
) -> None:
    if device is not None and d.device != device:
        raise DecisionError("wrong-device", f"signed for {d.device!r}, arrived for {device!r}")
    if d.expires_at <= d.issued_at or d.expires_at - d.issued_at > MAX_TTL_S:
        raise DecisionError("bad-validity", f"validity {d.expires_at - d.issued_at:.3f} s")
    if now >= d.expires_at:
        raise DecisionError("expired", f"expired {now - d.expires_at:.3f} s ago")
    if d.issued_at > now + max_skew_s:
        raise DecisionError("not-yet-valid", f"issued {d.issued_at - now:.3f} s in the future")
    if replay_guard is not None:
        replay_guard.check_and_record(d)


class _JsonState:
    """A tiny JSON file written atomically (temp file + fsync + rename)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # Refusing to start beats silently forgetting the last sequence (which would
            # reopen the replay window).
            raise DecisionError("state-unreadable", f"{self.path}: {exc}") from None
        except RecursionError:  # "[[[[...": a traceback at the lock's and the door's start
            raise DecisionError("state-unreadable", f"{self.path}: nested too deeply") from None
        if not isinstance(data, dict):
            raise DecisionError("state-unreadable", f"{self.path}: not a JSON object")
        return data

    def save(
        self, data: dict[str, Any], like: os.stat_result | None = None, sync_dir: bool = False
    ) -> None:
        """`like`: give the new file that owner and mode (an admin's edit as root must leave
        a file the service's own user can still read). `sync_dir`: also sync the folder, so
        the rename itself survives a power cut (the file's fsync alone does not make it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".")
        try:
            if like is not None:
                os.fchmod(fd, like.st_mode & 0o7777)
                if os.geteuid() == 0:
                    os.fchown(fd, like.st_uid, like.st_gid)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if sync_dir:
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)


class SequenceRewound(DecisionError):
    """A refusal of a decision that is *newer* than the last one accepted from its device (a
    later issued_at) but carries a lower sequence number: the device's counter went backwards
    (its data restored from a backup, re-imaged, the counter file lost), which is not what a
    replay looks like. Still refused: the lock cannot tell the device's new numbers from
    old ones it already used."""

    def __init__(self, device: str, seq: int, last: int, later_s: float) -> None:
        self.device, self.seq, self.last, self.later_s = device, seq, last, later_s
        self.behind = last - seq
        super().__init__(
            "replayed",
            f"seq {seq} is {self.how_far} the last accepted {last}, in a decision issued "
            f"{later_s:.3f} s after that one: the sequence went backwards",
        )

    @property
    def how_far(self) -> str:
        return f"{self.behind} below" if self.behind else "equal to"


class ReplayGuard:
    """Verifier side: remembers the last accepted sequence number per device, on disk.

    With it, the issued_at of that decision ("last_issued_at"): only used to tell a device
    whose sequence went backwards (SequenceRewound) from a replay; a lock of an older version
    reads the file and ignores it.
    """

    def __init__(self, path: Path) -> None:
        self._state = _JsonState(path)
        data = self._state.load()
        raw = data.get("last_seq", {})
        # A damaged record must stop the start, like an unparsable file: int() of a string or
        # null was a traceback, and a record that was not a map was silently dropped, which
        # reopened the replay window for every grant ever issued.
        if not isinstance(raw, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in raw.values()
        ):
            raise DecisionError(
                "state-unreadable", f"{path}: 'last_seq' is not a map of device to sequence number"
            )
        self._last = {str(k): v for k, v in raw.items()}
        times = data.get("last_issued_at", {})
        # Diagnostics only: a damaged map is dropped, never a reason to keep the door shut.
        self._issued = (
            {str(k): float(v) for k, v in times.items() if is_finite_number(v)}
            if isinstance(times, dict)
            else {}
        )
        # Other keys (the "forgotten" history `voxgate actuator --forget` leaves) are kept as
        # they are: this class only rewrites its own two maps.
        self._other = {k: v for k, v in data.items() if k not in ("last_seq", "last_issued_at")}
        self._lock = threading.Lock()

    def last(self, device: str) -> int | None:
        return self._last.get(device)

    def devices(self) -> list[str]:
        """The devices this guard holds a sequence number for."""
        with self._lock:
            return sorted(self._last)

    def forget(self, device: str, now: float | None = None) -> tuple[int, float | None] | None:
        """Drop `device`'s record, so its next signed decision is accepted whatever its number
        (a door whose sequence went backwards); None when there is none. What was removed goes
        to the file's "forgotten" list (the last 20, with `now`), the file keeps its owner and
        mode. Returns the removed (seq, issued_at). Raises OSError when the file cannot be
        written (memory then still agrees with the disk)."""
        with self._lock:
            if device not in self._last:
                return None
            seqs, issued = dict(self._last), dict(self._issued)
            last, when = seqs.pop(device), issued.pop(device, None)
            history = self._other.get("forgotten")
            history = list(history)[-19:] if isinstance(history, list) else []
            at = time.time() if now is None else now
            history.append({"device": device, "last_seq": last, "last_issued_at": when, "at": at})
            other = {**self._other, "forgotten": history}
            try:
                like: os.stat_result | None = self._state.path.stat()
            except FileNotFoundError:
                like = None
            self._state.save({**other, "last_seq": seqs, "last_issued_at": issued}, like=like)
            self._last, self._issued, self._other = seqs, issued, other
            return last, when

    def check_and_record(self, d: Decision) -> None:
        with self._lock:
            last = self._last.get(d.device)
            if last is not None and d.seq <= last:
                before = self._issued.get(d.device)
                # The same bytes again (a QoS 1 duplicate, a replay) or an older message
                # carry an issued_at at or before it; only the device makes a later one.
                if before is not None and d.issued_at > before:
                    raise SequenceRewound(d.device, d.seq, last, d.issued_at - before)
                raise DecisionError("replayed", f"seq {d.seq} <= last accepted {last}")
            # Persist first: if the write fails the decision is refused (by the exception)
            # and memory still agrees with the disk. With the folder synced: a rename lost to
            # a power cut would bring back the old seq, and a grant acted on would be taken
            # again while still valid.
            updated = {**self._last, d.device: d.seq}
            issued = {**self._issued, d.device: d.issued_at}
            state = {**self._other, "last_seq": updated, "last_issued_at": issued}
            self._state.save(state, sync_dir=True)
            self._last, self._issued = updated, issued


class SequenceCounter:
    """Publisher side: strictly increasing sequence numbers that survive restarts.

    The next number is the larger of (last + 1) and a floor read from the wall clock (Unix
    time in milliseconds). The file alone could be rewound (a data folder restored from a
    backup, an SD card re-imaged, the file lost), and the lock, which remembers the highest
    number it accepted, then refused every decision as a replay until someone edited its
    state by hand; with the floor the door's numbers are back above anything it sent before
    as soon as its clock has passed the time of its last decision. A clock that is behind (a
    Pi without RTC before NTP) still gets last + 1.

    The file holds a ceiling: every number handed out is <= it, and a restart continues above
    it. Raising the ceiling `reserve` numbers at a time keeps the fsync off a run of decisions
    counted from the file; a crash only skips numbers, it never repeats one (a lock would
    refuse a repeat as a replay). Numbers taken from the clock usually pass the ceiling, so
    then each decision raises it (one small fsync).
    """

    def __init__(
        self, path: Path, reserve: int = 100, clock: Callable[[], float] | None = time.time
    ) -> None:
        if reserve < 1:
            raise ValueError("reserve must be >= 1")
        self._state = _JsonState(path)
        try:
            stored = self._state.load().get("seq", 0)
        except DecisionError as exc:
            raise DecisionError("state-unreadable", f"{exc.detail}; {_SEQ_FILE_ADVICE}") from None
        if not isinstance(stored, int) or isinstance(stored, bool) or stored < 0:
            raise DecisionError(
                "state-unreadable", f"{path}: 'seq' is not a counter; {_SEQ_FILE_ADVICE}"
            )
        self._seq = self._ceiling = stored
        self._reserve = reserve
        self._clock = clock
        self._lock = threading.Lock()
        self._unsaved = False  # the ceiling in memory is above the file's (a failed write)
        self._save_log = LogLimit()  # the failed save: logged once until one works

    @property
    def last(self) -> int:
        return self._seq

    @property
    def unsaved(self) -> bool:
        """The ceiling in memory is above the file's: a save failed (a full or read-only
        disk). A restart now would number from the file's, below numbers already sent."""
        return self._unsaved

    def save_held(self) -> None:
        """Save a ceiling a failed save left in memory, without a new decision: a quiet door
        restarted after space came back numbered from the old ceiling, and with its clock
        behind (no RTC, before NTP) the lock refused every decision as replayed. The
        daemon calls this every second and at its stop; a no-op when all is saved."""
        with self._lock:
            if self._unsaved:
                self._save()

    def next(self) -> int:
        """The next number. A ceiling that cannot be saved (disk full, read-only, I/O
        error) is logged and held in memory, and saved again with the next number or by
        save_held(): the decision still goes out. A lost save only risks numbers a restart
        repeats when the clock is also behind, which the lock refuses as replays (it fails
        closed); refusing the decision here would keep every door shut until the disk is
        fixed."""
        with self._lock:
            self._seq = max(self._seq + 1, clock_floor(self._clock))
            if self._seq > self._ceiling:
                self._ceiling = self._seq + self._reserve - 1
                self._unsaved = True
            if self._unsaved:
                self._save()
            return self._seq

    def _save(self) -> None:
        try:
            self._state.save({"seq": self._ceiling})
        except OSError as exc:
            if self._save_log.allow():
                log.error(
                    "decision sequence %s: cannot save (%s); numbering goes on from memory "
                    "and is saved again once the file can be written; %s",
                    self._state.path,
                    "disk full" if exc.errno == errno.ENOSPC else exc.strerror or exc,
                    what_to_do(self._state.path),
                )
            return
        if self._save_log.reset():
            log.warning("decision sequence %s: saved again", self._state.path)
        self._unsaved = False


_SEQ_FILE_ADVICE = (
    "delete the file: the door's sequence then continues from its clock (keep the clock on NTP)"
)
# The floor stays an integer a double holds exactly (2**53): a lock written in a language
# that reads JSON numbers as doubles compares the numbers it is sent exactly.
MAX_CLOCK_SEQ = 2**53 - 1


def clock_floor(clock: Callable[[], float] | None) -> int:
    """The wall clock in Unix milliseconds, the lowest next sequence number; 0 for no clock
    or one that reads nonsense (NaN, before 1970, beyond MAX_CLOCK_SEQ)."""
    if clock is None:
        return 0
    try:
        ms = clock() * 1000.0
    except (OSError, OverflowError, ValueError):
        return 0
    if not math.isfinite(ms) or not 0 < ms <= MAX_CLOCK_SEQ:
        return 0
    return int(ms)


def _score(result: Any, name: str) -> float | None:
    """A stage's score for the message: null when there is none. The scorer reports "no
    voiceprint to compare with" (nobody enrolled, unknown claimed user, other model) as -inf;
    the wire format has no infinity, and a denial must still reach the lock signed."""
    value = getattr(result, name, None)
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class Issuer:
    """Makes decisions for one device: fills nonce, sequence and validity window."""

    def __init__(self, device: str, seq: SequenceCounter, ttl_s: float) -> None:
        if not DEVICE_RE.match(device):
            raise ValueError(f"invalid device id {device!r}")
        if not 0 < ttl_s <= MAX_TTL_S:
            raise ValueError(f"ttl_s must be in (0, {MAX_TTL_S}]")
        self.device = device
        self.seq = seq
        self.ttl_s = ttl_s

    def issue(
        self,
        outcome: str,
        user: str | None,
        now: float,
        *,
        reasons: tuple[str, ...] | list[str] = (),
        speaker: Any = None,
        liveness: Any = None,
    ) -> Decision:
        """`speaker`: a scoring.SpeakerResult (uses .score/.threshold) or None;
        `liveness`: an stt LivenessResult (uses .ok/.score/.threshold) or None."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}")
        now = round(now, 3)  # the wire precision, so the object equals what is signed
        return Decision(
            device=self.device,
            outcome=outcome,
            user=user,
            issued_at=now,
            expires_at=round(now + self.ttl_s, 3),
            nonce=secrets.token_hex(16),
            seq=self.seq.next(),
            speaker_score=_score(speaker, "score"),
            speaker_threshold=_score(speaker, "threshold"),
            liveness_ok=getattr(liveness, "ok", None),
            liveness_score=_score(liveness, "score"),
            liveness_threshold=_score(liveness, "threshold"),
            reasons=tuple(reasons),
        )

    def from_attempt(self, result: Any) -> Decision:
        """The decision for a finished attempt (service.stages.AttemptResult, duck-typed:
        .verdict.outcome/.user/.reasons, .speaker, .liveness, .issued_at)."""
        v = result.verdict
        if "locked_out" in v.reasons:
            # Not counted by the lockout, so it must tell nothing: with scores and the other
            # checks' reasons, anyone reading decisions (Home Assistant, the lock) could tune
            # a voice or an answer for free while the lock lasts. The audit log keeps them.
            return self.issue(v.outcome, v.user, float(result.issued_at), reasons=("locked_out",))
        counted = Verdict(v.outcome, v.user, tuple(v.reasons)).counts_as_failure
        if v.outcome != "granted" and not counted:
            # A retry (too little speech, noise, an answer that could not be judged) or a
            # late answer alone is not counted either: with its scores a stranger could keep
            # every attempt just under the quality gate and read how close the voice came,
            # for free. The reasons stay (the person needs to know to speak longer).
            return self.issue(v.outcome, v.user, float(result.issued_at), reasons=tuple(v.reasons))
        return self.issue(
            v.outcome,
            v.user,
            float(result.issued_at),
            reasons=tuple(v.reasons),
            speaker=result.speaker,
            liveness=result.liveness,
        )
