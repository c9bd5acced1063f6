"""voxgate users list|erase|export|init-key: manage enrolled voiceprints and their key."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any

from voxgate.commands.common import (
    add_config_option,
    add_parser,
    audit_from_command,
    config_from_args,
    print_unaudited,
)
from voxgate.commands.speaker_common import CommandError, fail, open_store, record_change
from voxgate.ownership import fsync_path


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub,
        "users",
        help="list, erase or export enrolled users; create or change the voiceprint key",
        description="Voiceprints live in an encrypted SQLite file (speaker.database). "
        "'erase' removes a user's bytes from the file and its journal, their lockout entry, "
        "replay fingerprints and kept recordings (for deletion requests; the audit log keeps "
        "its lines, see "
        "docs/speaker-verification.md); 'export' prints everything held about a user as JSON; "
        "'rekey' seals every voiceprint with a new key.",
        examples="""
        voxgate users init-key /etc/voxgate/voiceprint.key
        voxgate users list -c /etc/voxgate/voxgate.yaml
        voxgate users export alice > alice.json
        voxgate users erase alice
        voxgate users rekey /etc/voxgate/voiceprint.key.new
        """,
    )
    add_config_option(p)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = add_parser(
        actions,
        "list",
        help="enrolled users, their model and dates",
        description="List enrolled users, their model and dates. Exit status: 0; 1 when the "
        "store cannot be opened, or when some voiceprints cannot be read (the others are "
        "listed, the unreadable ones counted). --json gives one object for scripts: users "
        "(name, model, takes, enrolled and updated as UTC ISO 8601, version) and unreadable "
        "(how many voiceprints cannot be read).",
        examples="voxgate users list\nvoxgate users list -c /etc/voxgate/voxgate.yaml\n"
        "voxgate users list --json | jq -r '.users[].name'",
    )
    add_config_option(ls, again=True)
    ls.add_argument("--json", action="store_true", help="print the list as JSON")
    ls.set_defaults(func=run_list)
    er = add_parser(
        actions,
        "erase",
        help="delete a user's voiceprint (file and journal), lockout entry, replay "
        "fingerprints and kept recordings",
        description="Delete NAME's voiceprint (from the file and its journal), lockout entry, "
        "the replay fingerprints of their answers and their kept recordings; the audit log "
        "keeps its lines. Exit status: 0 erased, 1 no such user or an error.",
        examples="voxgate users erase alice\n"
        "voxgate users erase alice -c /etc/voxgate/voxgate.yaml",
    )
    er.add_argument("name", metavar="NAME")
    add_config_option(er, again=True)
    er.set_defaults(func=run_erase)
    ex = add_parser(
        actions,
        "export",
        help="print everything held about a user as JSON (voiceprint, lockout, audit lines, "
        "kept recordings, replay fingerprints, fleet state)",
        description="Print everything held about NAME as JSON (voiceprint, lockout entry, "
        "audit lines, kept recordings, replay fingerprints, fleet state; each field is "
        "described in docs/speaker-verification.md, Export), also for someone no longer "
        "enrolled ('enrolled': false). "
        "Exit status: 0 exported, 1 nothing at all is held about NAME or an error.",
        examples="voxgate users export alice > alice.json\n"
        "voxgate users export alice -o alice.json",
    )
    ex.add_argument("name", metavar="NAME")
    ex.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    add_config_option(ex, again=True)
    ex.set_defaults(func=run_export)
    ik = add_parser(
        actions,
        "init-key",
        help="create a new random voiceprint key (mode 0600)",
        examples="voxgate users init-key /etc/voxgate/voiceprint.key",
    )
    ik.add_argument("file", metavar="FILE", type=Path)
    ik.set_defaults(func=run_init_key)
    rk = add_parser(
        actions,
        "rekey",
        help="seal every voiceprint with a new key (then destroy the old key)",
        description="Seal every voiceprint with the key in NEW_KEY_FILE (made by init-key), "
        "keeping names, takes, times and versions; nobody enrolls again. Old copies of the "
        "data (a flash card's spare blocks, backups of voiceprints.db) stay sealed with the "
        "old key, so destroying it retires them: do this after an erase for a deletion "
        "request, or when the key may have leaked. Stop the daemon first; afterwards point "
        "speaker.key_file (or the voiceprint-key credential) at the new key, start the "
        "daemon, and shred the old key file. The file is replaced in one step: on any "
        "error nothing is changed. Exit status: 0 re-keyed, 1 an error.",
        examples="voxgate users init-key /etc/voxgate/voiceprint.key.new\n"
        "systemctl stop voxgate\n"
        "voxgate users rekey /etc/voxgate/voiceprint.key.new -c /etc/voxgate/voxgate.yaml",
    )
    rk.add_argument("new_key", metavar="NEW_KEY_FILE", type=Path)
    rk.add_argument(
        "--drop-unreadable",
        action="store_true",
        help="leave out rows the current key cannot open (damaged); their owners enroll again",
    )
    add_config_option(rk, again=True)
    rk.set_defaults(func=run_rekey)


def _cells(text: str) -> int:
    """Terminal cells `text` takes: East Asian wide and full-width characters two, combining
    marks and zero width joiners none."""
    return sum(
        0
        if unicodedata.combining(c) or unicodedata.category(c) == "Cf"
        else 2
        if unicodedata.east_asian_width(c) in "WF"
        else 1
        for c in text
    )


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _cells(text))


# A JSON array of numbers only, as json.dumps(indent=2) lays it out: one number a line. A
# newline inside a JSON string is escaped, so only the layout's own newlines can match.
_NUMBER_ARRAY = re.compile(r"\[\n\s*(-?[0-9][0-9.eE+-]*(?:,\n\s*-?[0-9][0-9.eE+-]*)*)\n\s*\]")


def _export_text(doc: dict[str, Any]) -> str:
    """The export as indented JSON with each vector on one line: one number a line made a
    10-take voiceprint 2,800 lines long, the rest of the document lost among them."""
    text = json.dumps(doc, indent=2)
    one_line = _NUMBER_ARRAY.sub(
        lambda m: f"[{', '.join(n.strip() for n in m[1].split(','))}]", text
    )
    return one_line + "\n"


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def run_list(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if cfg is None:
        return 1
    from voxgate.voiceprints import StoreError

    try:
        with open_store(cfg, read_only=True) as store:
            prints, damaged = store.readable()
    except (CommandError, StoreError) as exc:  # StoreError: no voiceprint opens
        return fail(str(exc))
    users = [store.info(vp) for vp in prints]
    if args.json:
        doc = {"users": [_as_json(u) for u in users], "unreadable": damaged}
        print(json.dumps(doc, ensure_ascii=False, indent=2))
        if damaged:  # the same exit status as the table's, and the same words on stderr
            print(f"error: {_unreadable(damaged, store.path)}", file=sys.stderr)
        return 1 if damaged else 0
    if not users and not damaged:
        print("no users enrolled")
        return 0
    # Columns as wide as their longest entry on screen: names are up to 64 characters, CJK
    # ones take two cells each, and the fp16 model id is 34; fixed widths of 20 and 32 left
    # every later column out of line for them.
    name_w = max(_cells(t) for t in ["name", *(u.name for u in users)])
    model_w = max(_cells(t) for t in ["model", *(u.model_id for u in users)])
    print(
        f"{_pad('name', name_w)} {_pad('model', model_w)} {'takes':>5s}  {'enrolled':16s}  "
        f"{'updated':16s}  ver"
    )
    for u in users:
        print(
            f"{_pad(u.name, name_w)} {_pad(u.model_id, model_w)} {u.takes:5d}  "
            f"{_when(u.created_at):16s}  {_when(u.updated_at):16s}  {u.version}"
        )
    if damaged:
        # Listed as far as possible, but an exit status that scripts and Ansible notice.
        return fail(_unreadable(damaged, store.path))
    return 0


def _unreadable(damaged: int, path: Any) -> str:
    return (
        f"{damaged} more voiceprint(s) in {path} cannot be read (damaged, or sealed with "
        "another key); their users are not recognised until re-enrolled"
    )


def _as_json(u: Any) -> dict[str, Any]:
    def iso(t: float) -> str:  # UTC, whatever the door's time zone: scripts compare them
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

    return {
        "name": u.name,
        "model": u.model_id,
        "takes": u.takes,
        "enrolled": iso(u.created_at),
        "updated": iso(u.updated_at),
        "version": u.version,
    }


def run_erase(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if cfg is None:
        return 1
    from voxgate.audit import loss_traces
    from voxgate.erasure import forget_on_disk
    from voxgate.voiceprints import StoreError, normalize_name, not_enrolled_text

    dropped: list[str] = []
    twin = None
    try:
        with open_store(cfg) as store:
            shown = store.enrolled_name(args.name) or normalize_name(args.name)
            lost = loss_traces(cfg)  # before the erase, which may remove the last trace
            gone = store.erase(args.name)
            if gone:
                # Before the fleet session (up to 5 s): a running daemon checks every 5 s and
                # would otherwise often drop these first, and this command report nothing.
                dropped = forget_on_disk(cfg, args.name)
                record_change(cfg, store, "erased", shown, None, lost=lost)
            else:
                twin = store.reads_as(args.name)
    except (CommandError, StoreError) as exc:
        return fail(str(exc))
    if not gone:
        return fail(not_enrolled_text(args.name, twin))
    print(f"erased {shown}")  # as enrolled, as the daemon's log and the API name them
    # A running daemon drops its copy of the lockout entry, and the retained `user` topic
    # naming them, within seconds.
    for what in dropped:
        print(f"also dropped: {what}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if cfg is None:
        return 1
    from voxgate.erasure import held_about, holds_anything
    from voxgate.voiceprints import StoreError, normalize_name, not_enrolled_text

    twin = None
    try:
        name = normalize_name(args.name)
        with open_store(cfg, read_only=True) as store:
            doc = store.export(name) if store.has(name) else None
            if doc is None:
                twin = store.reads_as(name)
    except (CommandError, StoreError) as exc:
        return fail(str(exc))
    if doc is None:
        if twin is not None:
            # Not "nothing else is held about them": the person is enrolled under the
            # spelling that reads the same, and the request meant them.
            return fail(not_enrolled_text(name, twin))
        # Erased (or never enrolled here): the audit log still names them, and the fleet
        # state and replay store may hold more; an access request must get that too.
        held = held_about(cfg, name)
        if not holds_anything(held):
            return fail(f"no user '{name}' enrolled, and nothing else is held about them")
        print(
            f"note: {name} is not enrolled here; exporting what is still held about them",
            file=sys.stderr,
        )
        doc = {
            "format": "voxgate-voiceprint-export/1",
            "name": name,
            "enrolled": False,
            "stored": "no voiceprint: not enrolled on this door (erased, or never enrolled)",
        }
        doc["also_held"] = held
    else:
        doc["enrolled"] = True
        doc["also_held"] = held_about(cfg, doc["name"])
    text = _export_text(doc)
    if args.output:
        try:
            _write_new(Path(args.output), text)
        except OSError as exc:
            return fail(f"{args.output}: cannot write the export ({exc.strerror})")
        print(f"wrote {args.output}")
    else:
        try:
            _to_stdout(text)
        except OSError as exc:  # `> alice.json` on a full disk, a closed pipe
            return fail(f"cannot write the export to standard output ({exc.strerror})")
    _audit_export(cfg, str(doc["name"]))
    return 0


def _audit_export(cfg: Any, name: str) -> None:
    """An access to biometric data goes in the audit log as the API's does (`admin_export`),
    after the export was given: a log that cannot be written (read-only, full disk) must not
    keep a person from their data; the line is printed to add by hand instead."""
    fields: dict[str, Any] = {"user": name, "via": "cli"}
    if audit_from_command(cfg, "admin_export", what="export", **fields) is None:
        line = {"ts": round(time.time(), 3), "event": "admin_export", **fields}
        where = str(cfg.audit.path or cfg.data_dir / "audit.jsonl")
        print_unaudited(where, "export", [line], "could not be written")


def _to_stdout(text: str) -> None:
    """All of `text` on standard output, or OSError. Python's buffered stdout drops the rest
    of a short write (a disk filling up under `> alice.json`): the export was cut, exit 0.
    So the bytes go to the descriptor, until all are written."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError):  # not a file (captured output)
        sys.stdout.write(text)
        return
    sys.stdout.flush()
    data = memoryview(text.encode())
    while data:
        data = data[os.write(fd, data) :]


def _write_new(path: Path, text: str) -> None:
    """Write an export (biometric data: mode 0600). A new or regular file is written whole to
    a temporary file of a fresh name beside it (O_EXCL: a link left at a fixed name had the
    export written into the file it pointed at), synced, then renamed over the target: a full
    disk or a power cut leaves the old file or the whole export, never half of one. Anything
    else (a symlink, /dev/stdout, a pipe) is written through as given."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, and a Ctrl-C: no copy of the export left behind
        tmp.unlink(missing_ok=True)
        raise
    # The new name on disk too; some file systems cannot sync a folder (the export is written).
    with contextlib.suppress(OSError):
        fsync_path(path.parent)


def run_init_key(args: argparse.Namespace) -> int:
    from voxgate.voiceprints import StoreError, write_key_file

    try:
        write_key_file(args.file)
    except StoreError as exc:
        return fail(str(exc))
    print(f"wrote a new voiceprint key to {args.file} (mode 0600); set speaker.key_file to it")
    return 0


def run_rekey(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if cfg is None:
        return 1
    from voxgate.config.secrets import override_source
    from voxgate.rekey import rekey
    from voxgate.voiceprints import StoreError, load_key, parse_key, store_path

    path = store_path(cfg)
    try:
        old_key = load_key(cfg.speaker)
        try:
            new_key = parse_key(args.new_key.read_bytes())
        except OSError as exc:
            raise StoreError(
                f"{args.new_key}: cannot read the new key ({exc.strerror}); create it with: "
                f"voxgate users init-key {args.new_key}"
            ) from None
        done = rekey(path, old_key, new_key, drop_unreadable=args.drop_unreadable)
    except StoreError as exc:
        return fail(str(exc))
    audit_from_command(
        cfg, "voiceprints_rekeyed", what="re-key", count=done.moved, dropped=done.dropped
    )
    old = override_source("voiceprint-key") or str(cfg.speaker.key_file)
    print(f"sealed {done.moved} voiceprint(s) in {path} with the key in {args.new_key}")
    if done.dropped:
        print(f"left out {done.dropped} unreadable row(s): their owners enroll again")
    print(
        "the old key no longer opens it. Next:\n"
        f"  1. point speaker.key_file at {args.new_key} (or put it in the voiceprint-key "
        "credential)\n"
        "  2. start the daemon (systemctl start voxgate)\n"
        f"  3. destroy the old key, {old} (shred -u FILE): that retires every old copy"
    )
    return 0
