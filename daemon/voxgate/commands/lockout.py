"""voxgate lockout list|clear: see and lift back-offs, also on a running daemon.

The daemon enforces the lockouts it holds in memory and writes them through to
<data_dir>/lockout.db; `clear` removes the key's rows there and queues the clear in the same
file, and a running daemon applies it to its memory within about a second (it checks the
file in its housekeeping, as it checks the voiceprint store for `users erase`). A file
is used rather than the admin API because the API is optional (api.enabled, a token,
the flask extra) and a locked-out door must be clearable on every install.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any

from voxgate.commands.common import (
    add_config_option,
    add_parser,
    ascii_seconds,
    audit_from_command,
    config_from_args,
    operator,
)

log = logging.getLogger(__name__)

EX_CONFIG = 78  # invalid config, or a damaged lockout file (as `voxgate run`, docs/service.md)
EX_CANTCREAT = 73  # the lockout file cannot be read or written (permissions, read-only disk)
WAIT_S = 5.0  # the daemon checks every second; on a Pi busy with an attempt, a few more


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub,
        "lockout",
        help="list lockouts and failure counts; clear a user's or the door's back-off",
        description="After repeated failures the door backs off, per claimed user and door-wide "
        "(see the lockout section of docs/service.md). 'list' shows what is counted and locked; "
        "'clear' lifts one user's lock and counts, or the door's (with its failures within "
        "lockout.device_window_s). A running daemon applies a clear within about a second, "
        "without a restart; every clear goes to the audit log (event lockout-clear).",
        examples="""
        voxgate lockout list -c /etc/voxgate/voxgate.yaml
        voxgate lockout list --json
        voxgate lockout clear alice --reason "cold, checked by phone"
        voxgate lockout clear --door -c /etc/voxgate/voxgate.yaml
        """,
    )
    add_config_option(p)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = add_parser(
        actions,
        "list",
        help="locked keys, until when, failure counts and the door's window count",
        examples="voxgate lockout list\nvoxgate lockout list --json | jq '.keys[]'",
    )
    ls.add_argument("--json", action="store_true", help="print one JSON object")
    add_config_option(ls, again=True)
    ls.set_defaults(func=run_list)
    cl = add_parser(
        actions,
        "clear",
        help="lift USER's lock and counts, or with --door the door's",
        description="Lift USER's lock and clear their failure count (names match as the "
        "voiceprint store matches them: ALICE is alice), or with --door the door's lock, "
        "consecutive count and failures within lockout.device_window_s. Other keys keep "
        "theirs. Exit 1 when nothing is held for USER.",
        examples="voxgate lockout clear alice\n"
        'voxgate lockout clear "Anna Berg" --reason "locked out with a cold"\n'
        "voxgate lockout clear --door -c /etc/voxgate/voxgate.yaml",
    )
    who = cl.add_mutually_exclusive_group(required=True)
    who.add_argument("user", nargs="?", metavar="USER", help="the claimed name to clear")
    who.add_argument("--door", action="store_true", help="clear the door-wide back-off")
    cl.add_argument("--reason", metavar="TEXT", help="why, for the audit log")
    cl.add_argument(
        "--wait",
        type=ascii_seconds,
        default=WAIT_S,
        metavar="SECONDS",
        help=f"how long to wait for a running daemon to apply it (default {WAIT_S:g})",
    )
    add_config_option(cl, again=True)
    cl.set_defaults(func=run_clear)


def _path(cfg: Any) -> Path:
    return Path(cfg.lockout.path or cfg.data_dir / "lockout.db")


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _error(exc: Exception) -> int:
    from voxgate.lockout import LockoutError

    print(f"error: {exc}", file=sys.stderr)
    log.info("lockout command failed: %s", exc)
    kind = exc.kind if isinstance(exc, LockoutError) else "io"
    return {"absent": 1, "damaged": EX_CONFIG}.get(kind, EX_CANTCREAT)


def run_list(args: argparse.Namespace) -> int:
    from voxgate.lockout import DEVICE_KEY, LockoutError, read_file

    cfg = config_from_args(args)
    if cfg is None:
        return EX_CONFIG
    path = _path(cfg)
    now = time.time()
    try:
        snap = read_file(path)
    except LockoutError as exc:
        if exc.kind != "absent":
            return _error(exc)
        # Nothing was ever counted here; said on stderr so a wrong -c is noticed.
        print(f"note: no lockout state at {path} yet: nothing is counted", file=sys.stderr)
        snap = None
    lc = cfg.lockout
    window = snap.window_failures(now, lc.device_window_s) if snap else 0
    entries = snap.entries if snap else ()
    keys: list[dict[str, Any]] = [
        {
            "key": e.key,
            "user": None if e.key == DEVICE_KEY else e.key[5:],
            "failures": e.failures,
            "locked": e.locked(now),
            "until": e.locked_until if e.locked(now) else None,
        }
        for e in entries
    ]
    door = {
        "consecutive_failures": next((k["failures"] for k in keys if k["key"] == DEVICE_KEY), 0),
        "window_failures": window,
        "device_max_failures": lc.device_max_failures,
        "device_window_failures": lc.device_window_failures,
        "device_window_s": lc.device_window_s,
    }
    pending: list[dict[str, Any]] = [
        {"key": k, "at": a, "by": b} for k, a, b in (snap.pending if snap else ())
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "file": str(path),
                    "now": now,
                    "keys": keys,
                    "door": door,
                    "pending_clears": pending,
                },
                indent=2,
            )
        )
        return 0
    if not entries:
        print("no failures counted, nothing locked")
    else:
        print(f"{'KEY':<28} {'FAILURES':>8}  LOCKED UNTIL")
        for e in entries:
            until = _when(e.locked_until) if e.locked(now) else "not locked"
            print(f"{e.key:<28} {e.failures:>8}  {until}")
    print(
        f"door: {door['consecutive_failures']} consecutive failure(s) of "
        f"{lc.device_max_failures}; {window} of {lc.device_window_failures} within the last "
        f"{lc.device_window_s:g} s"
    )
    for p in pending:
        print(f"clear of {p['key']} by {p['by']} at {_when(p['at'])}: not yet taken by the daemon")
    return 0


def run_clear(args: argparse.Namespace) -> int:
    from voxgate.lockout import DEVICE_KEY, LockoutError, clear_in_file, clear_taken, read_file
    from voxgate.names import name_problem, person_key

    cfg = config_from_args(args)
    if cfg is None:
        return EX_CONFIG
    path = _path(cfg)
    user = None if args.door else args.user
    if user is not None and not user.strip():
        print("error: USER is empty", file=sys.stderr)
        return 2
    if user is not None and (problem := name_problem(unicodedata.normalize("NFC", user).strip())):
        # Bytes the terminal's encoding does not read (argv holds them as surrogates) were a
        # UnicodeEncodeError traceback from SQLite; no name with them, or with a control
        # character, can be counted: a claimed name must be one the store could enroll.
        print(
            f"error: USER {user!r} holds characters no user name has ({problem}; or bytes "
            "that are not UTF-8 text: check the terminal's encoding)",
            file=sys.stderr,
        )
        return 2
    by = operator()
    now = time.time()
    try:
        req = clear_in_file(path, user, by, now)
        if req is None:
            if user is None:
                print("the door has no failures counted: nothing to clear")
                return 0
            held = [e.key[5:] for e in read_file(path).entries if e.key != DEVICE_KEY]
            print(
                f"error: no lockout entry for {user!r} (as stored: {person_key(user)!r}): nothing "
                f"to clear. Users with failures counted: {', '.join(held) or 'none'}",
                file=sys.stderr,
            )
            log.info("lockout clear: no entry for %s", person_key(user))
            return 1
    except LockoutError as exc:
        return _error(exc)
    e = req.entry
    what = "the door" if e.key == DEVICE_KEY else repr(e.key[5:])
    log.warning("lockout: %s cleared by %s (voxgate lockout clear)", e.key, by)
    fields: dict[str, Any] = {
        "key": e.key,
        "user": None if e.key == DEVICE_KEY else e.key[5:],
        "by": by,
        "via": "cli",
        "failures": e.failures,
        "until": e.locked_until,
    }
    if e.key == DEVICE_KEY:
        fields["window_failures"] = sum(
            1 for t in req.door_failures if t > now - cfg.lockout.device_window_s
        )
    if args.reason:
        fields["reason"] = args.reason
    _audit(cfg, fields)
    locked = e.locked_until is not None and e.locked_until > now
    print(
        f"cleared {what}: {e.failures} consecutive failure(s)"
        + (
            f", {fields['window_failures']} within the window"
            if "window_failures" in fields
            else ""
        )
        + (f", was locked until {_when(e.locked_until)}" if locked else ", was not locked")
    )
    if e.key != DEVICE_KEY:
        _door_note(path, now)
    from voxgate.service.datadir import data_dir_held

    if data_dir_held(Path(cfg.data_dir)) is False:
        # It used to wait --wait seconds for a daemon that was not there, then ask.
        print(
            f"no daemon is running on {cfg.data_dir}: the file is cleared, and the "
            "daemon applies the queued clear when it starts"
        )
        return 0
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        if clear_taken(path, req.request):
            print("the running daemon has applied it")
            return 0
        time.sleep(0.2)
    print(
        f"no running daemon applied it within {args.wait:g} s (is it stopped?): the file is "
        "cleared, and a daemon applies the queued clear when it (re)starts"
    )
    return 0


def _door_note(path: Path, now: float) -> None:
    """A user's failures count for the door too (with the defaults, 5 in a row lock both):
    with the door still locked, the user cleared is refused all the same."""
    from voxgate.lockout import DEVICE_KEY, LockoutError, read_file

    try:
        door = [e for e in read_file(path).entries if e.key == DEVICE_KEY and e.locked(now)]
    except LockoutError:
        return
    for e in door:
        print(
            f"note: the door itself is locked until {_when(e.locked_until)} (everyone is "
            "refused; the failures counted there include this user's): if that is to go too, "
            "voxgate lockout clear --door"
        )


def _audit(cfg: Any, fields: dict[str, Any]) -> None:
    """As `users erase` does: the clear stands whatever happens here; a line the log
    cannot take is printed, to be added by hand."""
    audit_from_command(cfg, "lockout-clear", **fields)
