"""What the door holds about a person besides the voiceprint: `held_about` lists it for an
export (data-subject access request); `forget_on_disk` removes it after an erase, for the
processes that are not the daemon (`voxgate users erase`, the standalone `voxgate api`): the
person's lockout entry, the replay fingerprints of their answers and the kept recordings the
audit log ties to them. The daemon does the same through its own lockout book and replay
detector (service/users.py `UserServices.forget`), and also clears the retained MQTT `user`
topic. docs/speaker-verification.md lists everything held
per user and what erase does to each."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def forget_on_disk(cfg: Any, name: str) -> list[str]:
    """Drop `name`'s lockout entry, replay fingerprints and kept recordings; returns what
    was dropped."""
    from voxgate.lockout import forget_in_file
    from voxgate.replay import forget_user_in_file
    from voxgate.service.keep import erase_recordings_for

    dropped = []
    if forget_in_file(cfg.lockout.path or cfg.data_dir / "lockout.db", name):
        dropped.append("lockout entry")
    fingerprints = forget_user_in_file(cfg.data_dir / "replay.db", name)
    if fingerprints:
        dropped.append(f"{fingerprints} replay fingerprint(s)")
    removed = erase_recordings_for(cfg, name)
    if removed:
        dropped.append(f"{removed} kept recording(s)")
    if dropped:
        log.info("erased %s: also dropped %s", name, ", ".join(dropped))
    return dropped


def after_erase(cfg: Any, then: Callable[[str, str], None] | None) -> Callable[[str, str], None]:
    """An on_change hook (api.UserAdmin) that forgets the rest of an erased user, then calls
    `then` (the fleet sync agent's hook) for every change."""

    def hook(kind: str, name: str) -> None:
        if kind == "erased":
            forget_on_disk(cfg, name)
        if then is not None:
            then(kind, name)

    return hook


# What an export cannot contain, and why (for a data-subject access request).
NOT_INCLUDED = (
    "service logs (journald): lines name users at decisions, enrollments and erases; kept "
    "as long as the journal keeps them (journalctl --vacuum-time)",
    "kept recordings: listed here by file; the audio itself is encrypted with the audio key "
    "(decrypt with service.keep.AudioKeeper.load)",
    "MQTT broker: the retained `user` topic holds the last granted name; fleet sync keeps "
    "one retained message per group under the user tag listed here (`fleet`): while "
    "enrolled, the name and voiceprint sealed inside; once erased, a tombstone with no name",
    "Home Assistant keeps its own history of the `user` sensor and decision events",
)


def held_about(cfg: Any, name: str) -> dict[str, Any]:
    """Everything the door holds about `name` besides the voiceprint, for `users export`
    and the API export: lockout entry, audit events naming them, kept recordings, the
    replay fingerprints of their answers (derived from their voice) and the fleet sync
    state about them (their user tag, versions, unsent messages)."""
    from voxgate.audit import records_naming
    from voxgate.fleet import held_in_state
    from voxgate.replay import fingerprints_of
    from voxgate.service.keep import recordings_in

    audit_path = cfg.audit.path or cfg.data_dir / "audit.jsonl"
    not_included = list(NOT_INCLUDED)
    try:
        events = records_naming(audit_path, name)
    except OSError as exc:
        # The rest of the export is still owed; say what is missing and why.
        log.error("export of %s: cannot read the audit log %s: %s", name, audit_path, exc)
        events = []
        not_included.insert(
            0,
            f"audit log {audit_path}: could not be read ({exc.strerror or exc}), so the events "
            "naming the person and the kept recordings they tie to are not listed; fix "
            "audit.path and export again",
        )
    return {
        "lockout": _lockout_entry(cfg.lockout.path or cfg.data_dir / "lockout.db", name),
        "audit_events": events,
        "kept_recordings": [str(p) for p in recordings_in(events) if p.exists()],
        "replay_fingerprints": fingerprints_of(cfg.data_dir / "replay.db", name),
        "fleet": held_in_state(cfg, name),
        "not_included": not_included,
    }


def holds_anything(held: dict[str, Any]) -> bool:
    """Whether `held_about` found anything about the person."""
    fleet = held.get("fleet") or {}
    in_fleet = bool(fleet.get("applied") or fleet.get("groups") or fleet.get("outbox"))
    keys = ("lockout", "audit_events", "kept_recordings", "replay_fingerprints")
    return in_fleet or any(held.get(k) for k in keys)


def _lockout_entry(path: Path, name: str) -> dict[str, Any] | None:
    from voxgate.lockout import user_key

    if not path.is_file():
        return None
    try:
        db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return None
    try:
        row = db.execute(
            "SELECT failures, locked_until, last_failure FROM lockout WHERE key = ?",
            (user_key(name),),
        ).fetchone()
    except sqlite3.Error as exc:
        log.warning("export: cannot read lockout state %s: %s", path, exc)
        return None
    finally:
        db.close()
    if row is None:
        return None
    # The whole row: when they last failed at the door is held about them too.
    return {"failures": int(row[0]), "locked_until": row[1], "last_failure": row[2]}
