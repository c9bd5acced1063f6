"""The lock's report of a decision it refused, on `<prefix>/<device>/decision/refused`.

Without it a lock's refusal (a wrong key, a clock off, a rewound sequence) was only in the
lock's own log: the door logged "granted" and the person stood at a shut door. The lock
(voxgate actuator) publishes one small JSON object per refusal, sealed with the door's
decision key like a decision (its own domain, so a report can never pass for a decision);
the door logs it as an ERROR and counts it. It used to be unsigned: whoever could publish
on the topic made the door log an ERROR with wrong advice ("give both the same key"), or
used up the log lines of real refusals. A report the door cannot verify (an older lock's,
or a stranger's) is a WARNING, not a refusal. No user name in it (the decision topic
carries the name; this one need not).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from voxgate.decision import Decision, DecisionError, is_finite_number, open_sealed, seal

VERSION = 1
REFUSAL_DOMAIN = b"voxgate.refusal.v1\n"
# The envelope carries the body as an escaped JSON string: a detail of 300 control
# characters (\\u0001 in the envelope) is about 2.1 kB, well under this.
MAX_BYTES = 4096
MAX_DETAIL = 300
_REASON = re.compile(r"^[a-z][a-z0-9-]{0,39}$")

# What the door's administrator can do about each reason (the lock's log has the rest).
ADVICE = {
    "bad-signature": "the lock holds another decision key for this door than the door's "
    "mqtt.hmac_key_file: give both the same key",
    "expired": "the door's and the lock's clocks differ, or the decision was held up on the "
    "way: check NTP on both",
    "not-yet-valid": "the door's clock is ahead of the lock's: check NTP on both",
    "bad-validity": "mqtt.decision_ttl_s must be at most 60 s",
    "replayed": "the lock already accepted a higher sequence number from this door (data "
    "folder restored? see 'Sequence numbers and restored doors' in docs/mqtt.md)",
    "wrong-device": "a decision signed for another door arrived on this door's topic: two "
    "doors share a decision key, or someone re-publishes decisions",
    "malformed": "the lock cannot read this door's decisions: compare the voxgate versions",
    "unsupported-version": "the lock cannot read this door's decisions: compare the voxgate "
    "versions",
    "oversized": "the message was larger than a lock accepts (8 kB): not this door's decision",
    "not-a-decision": "something other than this door published on its decision topic (the "
    "detail shows what): let only the door's account write there (broker ACL)",
    "busy": "the lock's action queue was full",
    "state-write-failed": "the lock cannot write its state file",
    "action-failed": "the lock's action (relay or program) failed",
}


@dataclass(frozen=True)
class Refusal:
    device: str
    reason: str
    detail: str
    seq: int | None  # None: the message was not an authentic decision
    outcome: str | None
    at: float | None


def refusal_payload(
    device: str, reason: str, detail: str, decision: Decision | None, now: float, key: bytes
) -> bytes:
    """What the lock publishes, sealed with the door's decision key. seq and outcome only
    when the decision was authentic."""
    if not key:
        raise ValueError("empty signing key")
    body: dict[str, Any] = {
        "v": VERSION,
        "device": device,
        "reason": reason,
        # ASCII (non-ASCII as \\x.. escapes): a few bytes a character at most in the envelope,
        # so any detail fits MAX_BYTES (an emoji would take 14).
        "detail": detail[:MAX_DETAIL].encode("ascii", "backslashreplace").decode()[:MAX_DETAIL],
        "seq": None if decision is None else decision.seq,
        "outcome": None if decision is None else decision.outcome,
        "at": round(now, 3),
    }
    return seal(body, key, REFUSAL_DOMAIN)


class RefusalError(ValueError):
    """A payload on the refusal topic that is not a refusal report."""


class UnsignedReport(RefusalError):
    """A report not sealed with the door's key: an older lock's unsigned one, one signed
    with another key, or a stranger's. `claimed`: the reason it gives, when readable."""

    def __init__(self, other_key: bool, claimed: str | None = None) -> None:
        self.other_key = other_key  # a seal made with another key, else none at all
        self.claimed = claimed
        super().__init__("signed with another key" if other_key else "not signed")


def parse_refusal(payload: bytes, key: bytes) -> Refusal:
    """Check a report's seal with the door's decision key and its form (raises
    UnsignedReport, or RefusalError for bytes that are no report); the text fields are
    cleaned for a log."""
    try:
        body = open_sealed(payload, key, REFUSAL_DOMAIN, max_size=MAX_BYTES)
    except DecisionError as exc:
        if exc.reason == "bad-signature":
            raise UnsignedReport(True, _claimed(payload)) from None
        if exc.signed:
            raise RefusalError(f"signed, but {exc.detail}") from None
        if exc.reason == "oversized":
            raise RefusalError(exc.detail) from None
        # No envelope: the bare report of a lock from before the seal, or one forged.
        try:
            bare = _read(json.loads(payload.decode("utf-8")))
        except RefusalError as bad:
            raise RefusalError(str(bad)) from None
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise RefusalError("not JSON") from None
        raise UnsignedReport(False, bare.reason) from None
    return _read(body)


def _claimed(payload: bytes) -> str | None:
    """The reason a report sealed with another key gives (read, not believed): a lock
    holding another key for this door says "bad-signature"."""
    try:
        return _read(json.loads(json.loads(payload)["body"])).reason
    except (ValueError, RecursionError, TypeError, KeyError):  # RefusalError is a ValueError
        return None


def _read(body: Any) -> Refusal:
    if not isinstance(body, dict) or body.get("v") != VERSION:
        raise RefusalError("not a version 1 refusal report")
    reason, device = body.get("reason"), body.get("device")
    if not isinstance(reason, str) or not _REASON.match(reason):
        raise RefusalError("reason must be a short lowercase code")
    if not isinstance(device, str):
        raise RefusalError("device must be a string")
    seq = body.get("seq")
    if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool) or seq < 0):
        raise RefusalError("seq must be a non-negative integer or null")
    outcome = body.get("outcome")
    if outcome is not None and not isinstance(outcome, str):
        raise RefusalError("outcome must be a string or null")
    detail = body.get("detail")
    at = body.get("at")
    return Refusal(
        device=_clean(device, 64),
        reason=reason,
        detail=_clean(detail, MAX_DETAIL) if isinstance(detail, str) else "",
        seq=seq,
        outcome=_clean(outcome, 16) if outcome is not None else None,
        at=float(at) if is_finite_number(at) else None,
    )


def _clean(text: str, limit: int) -> str:
    # The report goes into the door's log: no control characters (forged log lines).
    return "".join(c if c.isprintable() else "?" for c in text[:limit])
