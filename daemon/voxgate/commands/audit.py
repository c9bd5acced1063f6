"""voxgate audit: check the hash chain of the audit log, or show its last lines."""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from pathlib import Path

from voxgate.commands.common import (
    add_config_option,
    add_parser,
    ascii_int,
    config_from_args,
    operator,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub,
        "audit",
        help="verify or show the audit log",
        description="The audit log is append-only, hash-chained JSON lines (one per decision, "
        "enrollment, erase and config reload) with its head kept in FILE.anchor.",
        examples="""
            voxgate audit verify                          # the log the default config names
            voxgate audit verify /var/lib/voxgate/audit.jsonl
            voxgate audit verify -c /etc/voxgate/voxgate.yaml --key-file /root/audit-key
            voxgate audit show -n 20 /var/lib/voxgate/audit.jsonl
            voxgate audit rotate -c /etc/voxgate/voxgate.yaml --archive-dir /var/backups/voxgate
        """,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    v = add_parser(
        actions,
        "verify",
        help="check every line and the anchor; exit 0 intact, 1 tampered or damaged",
        description="Check the hash chain of every line and that the log ends where its "
        "anchor (FILE.anchor) says. Exit 0 intact, 1 tampered or damaged (each problem is "
        "printed with its line). With neither log nor anchor (or the log empty and its anchor "
        "gone): exit 1 if the door's other files show it has run (the log is lost), 0 for a "
        "fresh door (nothing to verify). A log begun by `audit rotate` continues the archive "
        "it names: found beside the log or in --archive-dir, that is checked too.",
        examples="""
            voxgate audit verify                          # the log the default config names
            voxgate audit verify -c /etc/voxgate/voxgate.yaml
            voxgate audit verify /var/lib/voxgate/audit.jsonl --key-file /root/audit-key
        """,
    )
    add_config_option(v)
    v.add_argument("file", nargs="?", metavar="FILE", help="log file (default: from config)")
    v.add_argument("--anchor", metavar="FILE", help="anchor file (default: FILE.anchor)")
    v.add_argument("--no-anchor", action="store_true", help="check the chain only")
    v.add_argument(
        "--key-file",
        metavar="FILE",
        help="audit key, to check the anchor's signature (default: the key the config names)",
    )
    v.add_argument(
        "--archive-dir",
        metavar="DIR",
        help="where the archive a rotated log continues is kept, to check it too (it is "
        "looked for beside the log as well)",
    )
    v.set_defaults(func=verify_command)
    r = add_parser(
        actions,
        "rotate",
        help="archive the log and its anchor, and continue the chain in a new log",
        description="Check the log (as verify does), copy it and its anchor to an archive "
        "named by time and last seq (LOG-YYYYMMDDTHHMMSSZ-seqN.jsonl and .anchor, mode 0600), "
        "then begin the log again with an audit_log_rotated line that continues the hash chain "
        "(its seq and prev follow the archive's last line) and a new anchor. The daemon may "
        "keep running: rotation holds the log's lock, and its next line follows the rotation "
        "line. A log that is not intact is rotated all the same (the archive keeps the "
        "evidence; the new first line records it). This is the way to start a new log "
        "(retention, or after tampering) and to change the audit key (--new-key-file); "
        "emptying the log by hand reads as a lost log. Exit 0 done; 1 done, but the log was "
        "NOT intact (listed), or there was no log (or an empty one); 2 a key file cannot be "
        "read, or the anchor is signed and no key was given; 73 the archive cannot be written "
        "(full disk, folder not writable); 74 the log cannot be read. Nothing is changed "
        "then: the log is emptied only once its archive is on disk (the one exception, said "
        "so with 74: archived, but the new first line could not be written).",
        examples="""
            voxgate audit rotate -c /etc/voxgate/voxgate.yaml     # archive beside the log
            voxgate audit rotate -c /etc/voxgate/voxgate.yaml --archive-dir /var/backups/voxgate
            # change the audit key: stop the daemon, rotate with the new key, install it, start
            systemctl stop voxgate
            voxgate audit rotate -c /etc/voxgate/voxgate.yaml \\
                --key-file /etc/voxgate/credentials/audit-key --new-key-file /root/audit-key.new
            install -m 0600 /root/audit-key.new /etc/voxgate/credentials/audit-key
            systemctl start voxgate
            voxgate audit verify -c /etc/voxgate/voxgate.yaml --archive-dir /var/backups/voxgate
        """,
    )
    add_config_option(r)
    r.add_argument(
        "--archive-dir",
        metavar="DIR",
        help="folder for the archive (default: the log's folder); it must exist",
    )
    r.add_argument(
        "--key-file",
        metavar="FILE",
        help="the current audit key (default: the key the config names)",
    )
    r.add_argument(
        "--new-key-file",
        metavar="FILE",
        help="sign the new log's anchor with this key instead (changing the audit key)",
    )
    r.set_defaults(func=rotate_command)
    s = add_parser(
        actions,
        "show",
        help="print the last lines",
        description="Print the last lines of the audit log: sequence number, time, event and "
        "its fields.",
        examples="""
            voxgate audit show -c /etc/voxgate/voxgate.yaml
            voxgate audit show -n 20 /var/lib/voxgate/audit.jsonl
        """,
    )
    add_config_option(s)
    s.add_argument("file", nargs="?", metavar="FILE", help="log file (default: from config)")
    s.add_argument("-n", "--lines", type=ascii_int, default=10, help="how many (default 10)")
    s.set_defaults(func=show_command)


def _log_path(args: argparse.Namespace) -> Path | None:
    if args.file:
        return Path(args.file)
    cfg = config_from_args(args)
    if cfg is None:
        return None
    return cfg.audit.path or cfg.data_dir / "audit.jsonl"


def verify_command(args: argparse.Namespace) -> int:
    from voxgate.audit import absent, anchor_path_for, emptied, verify
    from voxgate.config.secrets import SecretError

    path = _log_path(args)
    if path is None:
        return 78
    try:
        key = _key(args)
    except (SecretError, OSError) as exc:
        print(f"voxgate audit verify: {exc}", file=sys.stderr)
        return 2
    anchor = Path(args.anchor) if args.anchor else None
    no_anchor = absent(anchor or anchor_path_for(path))
    # Emptied in place with its anchor deleted: how a new log used to be started, and how
    # anyone who could write both files erased the history unseen (audit.log_gone).
    if (absent(path) and (args.no_anchor or no_anchor)) or (emptied(path) and no_anchor):
        return _no_log(path, args)
    archive_dir = Path(args.archive_dir) if args.archive_dir else None
    rep = verify(path, anchor, key, use_anchor=not args.no_anchor, archive_dir=archive_dir)
    for note in rep.notes:
        print(f"note: {note}")
    if rep.ok:
        since = ""
        if rep.rotated is not None:
            since = f", continuing {Path(str(rep.rotated['archive'])).name}"
        print(f"{path}: intact, {rep.lines} line(s), head seq {rep.head_seq} {rep.head}{since}")
        return 0
    print(f"{path}: NOT intact ({len(rep.problems)} problem(s)):", file=sys.stderr)
    for problem in rep.problems:
        print(f"  - {problem}", file=sys.stderr)
    return 1


def _key(args: argparse.Namespace) -> bytes | None:
    """--key-file, else the key the door signs its anchor with, as open_log reads it
    (audit.key_file, the credential, $VOXGATE_AUDIT_KEY): with -c naming it, the signature
    was left unchecked and a rebuilt log with a forged anchor verified as intact. Given a
    FILE and no -c (verify), only --key-file gives a key."""
    from voxgate.config.secrets import read_secret

    if args.key_file:
        return read_secret("audit-key", Path(args.key_file))
    if args.config or not getattr(args, "file", None):
        cfg = config_from_args(args)
        key_file = cfg.audit.key_file if cfg is not None else None
        return read_secret("audit-key", key_file, required=key_file is not None)
    return None


def rotate_command(args: argparse.Namespace) -> int:
    from voxgate.audit import RotateError, rotate
    from voxgate.config.secrets import SecretError, read_secret

    cfg = config_from_args(args)
    if cfg is None:
        return 78
    path = cfg.audit.path or cfg.data_dir / "audit.jsonl"
    try:
        key = _key(args)
        new_key = read_secret("audit-key", Path(args.new_key_file)) if args.new_key_file else None
    except (SecretError, OSError) as exc:
        print(f"voxgate audit rotate: {exc}", file=sys.stderr)
        return 2
    if args.new_key_file and not new_key:
        print(f"voxgate audit rotate: {args.new_key_file} is empty: no new key", file=sys.stderr)
        return 2
    archive_dir = Path(args.archive_dir) if args.archive_dir else None
    try:
        done = rotate(
            path,
            key=key,
            new_key=new_key,
            archive_dir=archive_dir,
            fields={"by": operator(), "via": "cli"},
        )
    except RotateError as exc:
        print(f"voxgate audit rotate: {exc}", file=sys.stderr)
        return {"absent": 1, "key": 2, "archive": 73}.get(exc.kind, 74)
    prev = done.previous
    if not prev.ok:
        print(
            f"WARNING: {path} was NOT intact ({len(prev.problems)} problem(s)); rotated all the "
            "same, the archive keeps the evidence and the new log's first line records it:",
            file=sys.stderr,
        )
        for problem in prev.problems:
            print(f"  - {problem}", file=sys.stderr)
    rec = done.record
    print(f"archived {path} ({prev.lines} line(s), head seq {prev.head_seq}) to {done.archive}")
    if done.archive_anchor is not None:
        print(f"archived its anchor to {done.archive_anchor}")
    else:
        print(f"note: {path} had no anchor; the archive has none either")
    signed = "with the new key" if new_key else ("signed" if key else "unsigned (no audit key)")
    print(
        f"{path} begins again at seq {rec['seq']} ({rec['event']}, prev {rec['prev']}); "
        f"anchor {signed}"
    )
    if done.anchor_error:
        print(
            f"warning: the new anchor could not be written ({done.anchor_error}); the next "
            "line the door writes records that and renews it",
            file=sys.stderr,
        )
    if new_key:
        print(
            "now install the new key where the door reads it (audit.key_file or the "
            "audit-key credential) and restart the daemon"
        )
    return 0 if prev.ok else 1


def _no_log(path: Path, args: argparse.Namespace) -> int:
    """Neither the log nor its anchor: a fresh door, or a door whose log was deleted. It
    said "intact, 0 line(s)" for both; the door's other files tell them apart."""
    from voxgate.audit import absent, traces_of_use

    traces = traces_of_use(path, config_from_args(args) if args.config or not args.file else None)
    if not traces:
        print(
            f"{path}: no audit log yet, nothing to verify (a fresh door: the daemon and the "
            "commands that change users create it with their first line)"
        )
        return 0
    what = (
        "the audit log and its anchor are missing"
        if absent(path)
        else "the audit log is empty and its anchor missing"
    )
    print(
        f"{path}: NOT intact: {what}, but this door has run: {'; '.join(traces)}. The log "
        "was deleted, emptied or lost (a data folder restored without it?); there is no "
        "record of what the door did (a new log is started with `voxgate audit rotate`)",
        file=sys.stderr,
    )
    return 1


def show_command(args: argparse.Namespace) -> int:
    path = _log_path(args)
    if path is None:
        return 78
    try:
        with open(path, "rb") as f:
            last = deque(f, maxlen=max(1, args.lines))
    except FileNotFoundError:
        print(
            f"voxgate audit show: {path}: no such file. The daemon (voxgate run) creates it "
            "with its first audited event (a decision, an enrollment, an erase, a reload); "
            "until then there is nothing to show. Elsewhere? Give the file, or the config "
            "that names it (audit.path, default <data_dir>/audit.jsonl) with -c",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        print(f"voxgate audit show: {path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for raw in last:
        try:
            rec = json.loads(raw)
            extra = {
                k: v for k, v in rec.items() if k not in ("seq", "ts", "event", "prev", "hash")
            }
            if rec["event"] == "audit_log_rotated":
                verified = "intact" if rec.get("previous_verified") is True else "NOT intact"
                extra = {
                    k: v
                    for k, v in extra.items()
                    if k not in ("archive", "previous_seq", "previous_hash")
                }
                print(
                    f"{rec['seq']:>6} {rec['ts']:.3f} {rec['event']:<14} continues "
                    f"{rec.get('archive')} (up to seq {rec.get('previous_seq')}, {verified} "
                    f"when archived) {json.dumps(extra)}"
                )
                continue
            print(f"{rec['seq']:>6} {rec['ts']:.3f} {rec['event']:<14} {json.dumps(extra)}")
        except (ValueError, KeyError, TypeError, RecursionError):
            print(f"  (damaged) {raw[:120]!r}")
    return 0
