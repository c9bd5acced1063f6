"""What the fleet sync agent refuses: keys and settings, and messages."""

from __future__ import annotations

import logging
from collections.abc import Callable


class FleetError(Exception):
    """Keys or settings the sync agent cannot use; str() is meant for the user. `temporary`:
    the cause may pass by itself (a full disk), so a restart may help."""

    def __init__(self, message: str, *, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


class MessageError(Exception):
    """A fleet message that is refused (bad signature, unknown signer, damaged, ...)."""


def tell_fleet(send: Callable[[str, str], None], kind: str, name: str, log: logging.Logger) -> None:
    """Hand a local change (`kind` of user `name`) to the sync agent through `send`. The
    local change stands whatever happens here, so nothing is raised: a FleetError (e.g. a
    receive-only door, no signing key) is a warning, anything else is logged with its
    traceback and the agent's outbox keeps what could not be sent. `log` is the caller's
    logger, so the lines name the part that made the change."""
    try:
        send(kind, name)
    except FleetError as exc:
        log.warning("fleet sync: %s of %s stays on this door: %s", kind, name, exc)
    except Exception:
        log.exception("could not hand %s of %s to the fleet sync", kind, name)
