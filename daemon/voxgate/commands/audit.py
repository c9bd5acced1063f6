"""voxgate audit: check the hash chain of the audit log, or show its last lines."""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from pathlib import Path

from voxgate.commands.common import add_config_option, add_parser, ascii_int, config_from_args


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
        """,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    v = add_parser(
        actions,
        "verify",
        help="check every line and the anchor; exit 0 intact, 1 tampered or damaged",
        description="Check the hash chain of every line and that the log ends where its "
        "anchor (FILE.anchor) says. Exit 0 intact, 1 tampered or damaged (each problem is "
        "printed with its line). With neither log nor anchor: exit 1 if the door's other "
        "files show it has run (the log is lost), 0 for a fresh door (nothing to verify).",
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
    v.set_defaults(func=verify_command)
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
    from voxgate.audit import absent, anchor_path_for, verify
    from voxgate.config.secrets import SecretError, read_secret

    path = _log_path(args)
    if path is None:
        return 78
    key = None
    try:
        if args.key_file:
            key = read_secret("audit-key", Path(args.key_file))
        elif args.config or not args.file:
            # The key the door signs its anchor with, as open_log reads it (audit.key_file,
            # the credential, $VOXGATE_AUDIT_KEY): with -c naming it, the signature was left
            # unchecked and a rebuilt log with a forged anchor verified as intact.
            cfg = config_from_args(args)
            key_file = cfg.audit.key_file if cfg is not None else None
            key = read_secret("audit-key", key_file, required=key_file is not None)
    except (SecretError, OSError) as exc:
        print(f"voxgate audit verify: {exc}", file=sys.stderr)
        return 2
    anchor = Path(args.anchor) if args.anchor else None
    if absent(path) and (args.no_anchor or absent(anchor or anchor_path_for(path))):
        return _no_log(path, args)
    rep = verify(path, anchor, key, use_anchor=not args.no_anchor)
    for note in rep.notes:
        print(f"note: {note}")
    if rep.ok:
        print(f"{path}: intact, {rep.lines} line(s), head seq {rep.head_seq} {rep.head}")
        return 0
    print(f"{path}: NOT intact ({len(rep.problems)} problem(s)):", file=sys.stderr)
    for problem in rep.problems:
        print(f"  - {problem}", file=sys.stderr)
    return 1


def _no_log(path: Path, args: argparse.Namespace) -> int:
    """Neither the log nor its anchor: a fresh door, or a door whose log was deleted. It
    said "intact, 0 line(s)" for both; the door's other files tell them apart."""
    from voxgate.audit import traces_of_use

    traces = traces_of_use(path, config_from_args(args) if args.config or not args.file else None)
    if not traces:
        print(
            f"{path}: no audit log yet, nothing to verify (a fresh door: the daemon and the "
            "commands that change users create it with their first line)"
        )
        return 0
    print(
        f"{path}: NOT intact: the audit log and its anchor are missing, but this door has "
        f"run: {'; '.join(traces)}. The log was deleted or lost (a data folder restored "
        "without it?); there is no record of what the door did",
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
            print(f"{rec['seq']:>6} {rec['ts']:.3f} {rec['event']:<14} {json.dumps(extra)}")
        except (ValueError, KeyError, TypeError, RecursionError):
            print(f"  (damaged) {raw[:120]!r}")
    return 0
