"""Signed commands to a device (`<prefix>/<device>/cmd/<name>`) and their signed replies.

A command is the same envelope as a decision (decision.seal), signed with the device's
*command key* under the domain "voxgate.command.v1". The broker ACL decides who may publish
on cmd/#; the signature decides whether the device obeys. A command is accepted once: its
nonce is kept on disk (mqtt.nonces.UsedCommands) until the senders' own clocks show it
expired, so neither a restart nor the door's clock set back makes it fresh again (its nonce
used to be forgotten once the door's clock passed expires_at: a clock set back then took a
copy). A command issued before the daemon started is refused too. That start follows clock steps
(see CommandGate.start_in): a door that booted with its clock ahead refused every command,
erase-user included, as "replayed" for as long as the clock had been ahead, after NTP set it
right.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from voxgate.decision import MAX_TTL_S, DecisionError, is_finite_number, open_sealed, seal
from voxgate.mqtt.nonces import UsedCommands

COMMAND_DOMAIN = b"voxgate.command.v1\n"
REPLY_DOMAIN = b"voxgate.reply.v1\n"
NONCE_RE = re.compile(r"^[0-9a-f]{16,64}$")

# Every code a refused command's reply carries (here and in mqtt/client.py); the refusal
# metric's label values, a bounded set: the code comes from the door, not the sender.
REFUSAL_CODES = frozenset(
    {
        "oversized",
        "unknown-command",
        "unauthorized",
        "malformed",
        "wrong-device",
        "bad-args",
        "bad-validity",
        "expired",
        "not-yet-valid",
        "replayed",
        "retained",
        "busy",
    }
)

# Each command's (required, optional) arguments; all are strings.
ARGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "attempt": ((), ("user",)),  # start an attempt; with user: verify that claimed user
    "enroll-start": (("user",), ("prompted",)),  # prompted: "yes" | "no"
    "enroll-finish": (("user",), ()),
    "reload": ((), ()),
    "erase-user": (("user",), ()),
}


class CommandError(Exception):
    """A command refused before its handler ran; `code` goes into the error reply."""

    def __init__(self, code: str, detail: str = "") -> None:
        self.code = code
        self.detail = detail
        # The refused command's nonce, once its signature checked out and the nonce has its
        # form: the reply carries it so the sender can match it. None for anything unsigned.
        self.nonce: str | None = None
        super().__init__(f"{code}: {detail}" if detail else code)


@dataclass(frozen=True)
class Command:
    name: str
    args: dict[str, str]
    nonce: str
    issued_at: float
    expires_at: float


def make_command(
    key: bytes,
    device: str,
    name: str,
    args: Mapping[str, str] | None = None,
    *,
    now: float,
    ttl_s: float = 30.0,
    nonce: str | None = None,
) -> bytes:
    """The payload an operator tool publishes to `<prefix>/<device>/cmd/<name>`."""
    body = {
        "v": 1,
        "device": device,
        "cmd": name,
        "args": dict(args or {}),
        "issued_at": round(now, 3),
        "expires_at": round(now + ttl_s, 3),
        "nonce": nonce or secrets.token_hex(16),
    }
    return seal(body, key, COMMAND_DOMAIN)


@dataclass
class CommandGate:
    """Checks incoming commands for one device: signature, shape, freshness, single use."""

    device: str
    key: bytes | None = field(repr=False)  # a traceback or log line must not show it
    started_at: float  # wall clock
    max_bytes: int = 4096
    max_skew_s: float = 5.0
    # A clock that is never stepped (clocks.elapsed), read at the start and at each check:
    # the start then follows clock steps. None: started_at is taken as it is.
    elapsed: Callable[[], float] | None = None
    # The nonces of commands run (on disk in the daemon); default: in memory only.
    used: UsedCommands = field(default_factory=lambda: UsedCommands(None))
    _started_elapsed: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if self.elapsed is not None:
            self._started_elapsed = self.elapsed()

    def start_in(self, now: float) -> float:
        """When this gate started, in the terms of the wall clock that reads `now`: the time
        passed since, taken back from `now`. A step of the wall clock since the start
        (NTP setting back a clock that was ahead at boot, an admin) moves it with the clock."""
        if self.elapsed is None:
            return self.started_at
        return now - (self.elapsed() - self._started_elapsed)

    def check(self, name: str, payload: bytes, now: float) -> Command:
        if len(payload) > self.max_bytes:
            raise CommandError("oversized", f"{len(payload)} bytes > {self.max_bytes}")
        if name not in ARGS:
            # The name is a topic level (up to 64 kB); the log line and reply quote its start.
            raise CommandError("unknown-command", f"{name[:64]!r} is not one of {', '.join(ARGS)}")
        if self.key is None:
            raise CommandError("unauthorized", "this device has no command key configured")
        try:
            body = open_sealed(payload, self.key, COMMAND_DOMAIN, self.max_bytes)
        except DecisionError as exc:
            code = "unauthorized" if exc.reason == "bad-signature" else exc.reason
            raise CommandError(code, exc.detail) from None
        try:
            return self._check_body(name, body, now)
        except CommandError as exc:
            nonce = body.get("nonce") if isinstance(body, dict) else None
            if isinstance(nonce, str) and NONCE_RE.match(nonce):
                exc.nonce = nonce
            raise

    def _check_body(self, name: str, body: Any, now: float) -> Command:
        """The signed body: shape, arguments, freshness, single use."""
        if not isinstance(body, dict) or body.get("v") != 1:
            raise CommandError("malformed", "body must be an object with v=1")
        if body.get("device") != self.device:
            raise CommandError("wrong-device", f"addressed to {body.get('device')!r}")
        if body.get("cmd") != name:
            raise CommandError("malformed", "cmd in the body does not match the topic")
        args = body.get("args")
        required, optional = ARGS[name]
        if (
            not isinstance(args, dict)
            or not set(required) <= set(args)
            or not set(args) <= set(required) | set(optional)
        ):
            wants = ", ".join([*required, *(f"[{o}]" for o in optional)]) or "nothing"
            raise CommandError("bad-args", f"{name} takes: {wants}")
        for k, v in args.items():
            if not isinstance(v, str):
                raise CommandError("bad-args", f"{k} must be a string")
            why = _user_name_problem(v) if k == "user" else None
            if why is not None:
                # Why, not the name: it may hold control characters meant for the log.
                raise CommandError("bad-args", f"invalid user: {why}")
            if k == "prompted" and v not in ("yes", "no"):
                # An argument the handler would refuse is bad-args here, before the nonce
                # is spent: it came back as `failed`, a valid command the door could not do.
                raise CommandError("bad-args", "prompted must be 'yes' or 'no'")
        nonce = body.get("nonce")
        if not isinstance(nonce, str) or not NONCE_RE.match(nonce):
            raise CommandError("malformed", "nonce must be 16-64 lowercase hex digits")
        issued, expires = body.get("issued_at"), body.get("expires_at")
        if not (is_finite_number(issued) and is_finite_number(expires)):
            raise CommandError("malformed", "issued_at and expires_at must be numbers")
        if not 0 < expires - issued <= MAX_TTL_S:
            raise CommandError("bad-validity", f"validity must be in (0, {MAX_TTL_S:g}] s")
        if now >= expires:
            raise CommandError("expired", f"expired {now - expires:.1f} s ago")
        if issued > now + self.max_skew_s:
            raise CommandError("not-yet-valid", "issued in the future")
        # No clock allowance here: the link starts a fresh session, so nothing sent before
        # this process started is delivered to it, except a copy someone sends again. With
        # the max_skew_s allowance, a command captured and sent again just after a restart
        # (its nonce forgotten) ran a second time.
        if issued < self.start_in(now):
            raise CommandError("replayed", "issued before this daemon started")
        why = self.used.use(nonce, float(issued), float(expires), self.max_skew_s)
        if why is not None:
            raise CommandError("replayed", why)
        return Command(name, dict(args), nonce, float(issued), float(expires))


def _user_name_problem(name: str) -> str | None:
    """What keeps `name` from being a name the voiceprint store accepts (as the CLI and the
    API do), without path separators; None when it is one. An ASCII-only pattern refused
    'José' and "O'Brien", so users enrolled with the CLI or the API could not be erased,
    enrolled or claimed over MQTT."""
    from voxgate.voiceprints import StoreError, normalize_name  # numpy: not for the actuator

    try:
        normalize_name(name)
    except StoreError as exc:
        return str(exc)
    if "/" in name or "\\" in name:
        return "user name must not contain / or \\"
    return None


def make_reply(
    key: bytes,
    device: str,
    name: str,
    *,
    nonce: str | None,
    ok: bool,
    now: float,
    result: Mapping[str, Any] | None = None,
    error: str | None = None,
    detail: str | None = None,
) -> bytes:
    """A reply on cmd/<name>/result, signed with the decision key so the sender can trust it."""
    body = {
        "v": 1,
        "device": device,
        "cmd": name,
        "nonce": nonce,
        "ok": ok,
        "error": error,
        "detail": detail,
        "result": dict(result or {}),
        "at": round(now, 3),
    }
    return seal(body, key, REPLY_DOMAIN)


def read_reply(payload: bytes, key: bytes) -> dict[str, Any]:
    body = open_sealed(payload, key, REPLY_DOMAIN)
    if not isinstance(body, dict):
        raise DecisionError("malformed", "reply body is not an object")
    return body
