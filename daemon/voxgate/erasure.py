"""What an erase removes besides the voiceprint, for the processes that are not the daemon
(`voxgate users erase`, the standalone `voxgate api`): the person's lockout entry and the
kept recordings the audit log ties to them. The daemon does the same through its own lockout
book (service/users.py `UserServices.forget`), and also clears the retained MQTT `user` topic.
docs/speaker-verification.md lists everything held per user and what erase does to each."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def forget_on_disk(cfg: Any, name: str) -> list[str]:
    """Drop `name`'s lockout entry and kept recordings; returns what was dropped."""
    from voxgate.lockout import forget_in_file
    from voxgate.service.keep import erase_recordings_for

    dropped = []
    if forget_in_file(cfg.lockout.path or cfg.data_dir / "lockout.db", name):
        dropped.append("lockout entry")
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
