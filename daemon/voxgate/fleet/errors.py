"""What the fleet sync agent refuses: keys and settings, and messages."""

from __future__ import annotations


class FleetError(Exception):
    """Keys or settings the sync agent cannot use; str() is meant for the user. `temporary`:
    the cause may pass by itself (a full disk), so a restart may help."""

    def __init__(self, message: str, *, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


class MessageError(Exception):
    """A fleet message that is refused (bad signature, unknown signer, damaged, ...)."""
