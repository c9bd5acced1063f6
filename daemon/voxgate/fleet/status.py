"""`voxgate fleet status`: what a door's fleet sync state says, read without changing it.

The sync state (`fleet.db`) knows users only by their user tag (a keyed hash of the name),
so the report puts beside each tag the name of the voiceprint this door holds under it, when
the fleet key and the voiceprint store can be read; a user the door does not hold (an erase
applied here, say) stays a tag. The outbox lists the changes this door made that the broker
has not acknowledged yet: until it is empty, the rest of the fleet has not heard of them.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Pending:
    """One message in the outbox."""

    topic: str
    group: str
    tag: str
    kind: str  # voiceprint | erase | revoke (from the message's clear-text header)
    version: int


@dataclass
class UserRow:
    """The newest change applied here for one user tag."""

    tag: str
    kind: str
    version: int
    held: bool
    name: str | None = None  # the voiceprint this door holds under the tag, if any

    @property
    def state(self) -> str:
        """What the row means at this door, in words."""
        if self.kind == "voiceprint":
            return "stored here" if self.held else "voiceprint (not held)"
        if self.held:  # an erase or revoke recorded while unreadable rows may hold the user
            return f"{self.kind} unverified"
        return {"erase": "erased", "revoke": "revoked"}.get(self.kind, self.kind)


@dataclass
class Report:
    state_file: Path
    exists: bool
    outbox: list[Pending] = field(default_factory=list)
    users: list[UserRow] = field(default_factory=list)
    names_note: str | None = None  # why tags are shown without names, if they are


def state_file(cfg: Any) -> Path:
    from voxgate.fleet import state_path

    return state_path(cfg)


def read(cfg: Any) -> Report:
    """The report for a device config. Raises sqlite3.Error or OSError when the state
    cannot be read."""
    path = state_file(cfg)
    if not path.is_file():
        return Report(path, exists=False)
    if path.stat().st_size == 0:  # made whole, so an empty one was cut (fleet.SyncState)
        raise sqlite3.DatabaseError("it is empty (0 bytes), so it was cut; docs/fleet.md, Versions")
    db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=5.0)
    try:
        outbox = db.execute("SELECT topic, payload, version FROM outbox ORDER BY rowid").fetchall()
        users = db.execute(
            "SELECT tag, kind, version, held FROM users ORDER BY version DESC, tag"
        ).fetchall()
    finally:
        db.close()
    report = Report(path, exists=True)
    for topic, payload, version in outbox:
        parts = str(topic).split("/")
        report.outbox.append(
            Pending(str(topic), parts[-2], parts[-1], _kind(bytes(payload)), int(version))
        )
    report.users = [UserRow(str(t), str(k), int(v), bool(h)) for t, k, v, h in users]
    names, report.names_note = _names_by_tag(cfg)
    for row in report.users:
        row.name = names.get(row.tag)
    return report


def _kind(payload: bytes) -> str:
    """The kind from a sealed message's header, which is not encrypted."""
    try:
        kind = json.loads(payload).get("kind")
    except (ValueError, AttributeError):
        return "?"
    return kind if isinstance(kind, str) else "?"


def _names_by_tag(cfg: Any) -> tuple[dict[str, str], str | None]:
    """User tag -> name for the voiceprints this door holds; and why not, when it cannot."""
    from voxgate.fleet import Codec, FleetKeys
    from voxgate.voiceprints import open_store

    try:
        codec = Codec(FleetKeys.load(cfg.fleet), cfg.fleet.site, cfg.device_id)
    except Exception as exc:  # FleetError, SecretError: no key, no tags to compute
        return {}, f"names not shown: the user tags need the fleet key ({exc})"
    try:
        with open_store(cfg, read_only=True) as store:
            prints, damaged = store.readable()
    except Exception as exc:  # StoreError and friends: the state is still worth showing
        return {}, f"names not shown: cannot read the voiceprint store ({exc})"
    names = {codec.user_tag(vp.name): vp.name for vp in prints}
    note = (
        f"{damaged} voiceprint row(s) cannot be read; their tags show no name" if damaged else None
    )
    return names, note


def _when(version: int) -> str:
    """A version is the sending door's clock in ms (or one above the last seen)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(version / 1000))


def render(report: Report) -> str:
    lines = [f"fleet sync state: {report.state_file}"]
    if not report.exists:
        lines.append("not there yet: fleet sync has not run on this door")
        return "\n".join(lines) + "\n"
    if report.outbox:
        lines.append(
            f"outbox: {len(report.outbox)} message(s) not yet acknowledged by the broker "
            "(the daemon sends them every 5 s while connected)"
        )
        lines.append(f"  {'kind':10s} {'group':16s} {'user tag':32s}  {'made at':19s}")
        for p in report.outbox:
            lines.append(f"  {p.kind:10s} {p.group:16s} {p.tag:32s}  {_when(p.version)}")
    else:
        lines.append("outbox: empty (the broker has every change made here)")
    lines.append(f"users: {len(report.users)}")
    if report.users:
        lines.append(f"  {'user tag':32s}  {'name':20s} {'state':22s} {'changed at':19s}")
        for u in report.users:
            lines.append(f"  {u.tag:32s}  {u.name or '-':20s} {u.state:22s} {_when(u.version)}")
    if report.names_note:
        lines.append(report.names_note)
    return "\n".join(line.rstrip() for line in lines) + "\n"


def as_json(report: Report) -> dict[str, Any]:
    return {
        "state_file": str(report.state_file),
        "exists": report.exists,
        "outbox": [
            {"kind": p.kind, "group": p.group, "user_tag": p.tag, "version": p.version}
            for p in report.outbox
        ],
        "users": [
            {
                "user_tag": u.tag,
                "name": u.name,
                "kind": u.kind,
                "version": u.version,
                "held": u.held,
                "state": u.state,
            }
            for u in report.users
        ],
        "names_note": report.names_note,
    }
