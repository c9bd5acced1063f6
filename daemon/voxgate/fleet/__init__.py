"""Fleet sync: one enrollment reaches every door allowed for the person, and only those.

How it works (docs/fleet.md has the full design and the broker ACL):
- Doors are in groups (fleet.groups); fleet.access says which users each group lets in.
- After an enrollment, the door publishes the voiceprint once per group that allows the user,
  retained, on  <prefix>/_fleet/<site>/<group>/<user tag>. The user tag is a keyed hash of the
  name, so topic names do not reveal who is enrolled. The broker ACL lets a door read only its
  own groups' topics, so a door outside those groups never even receives the ciphertext.
- Each message is encrypted with the site's fleet key (AES-256-GCM; the header is the
  associated data) and signed with the enrolling door's Ed25519 key (fleet.signers lists the
  public keys doors trust).
- Erase and revoke are retained tombstones on the same topics. They name the user only by
  the topic's user tag, never by name: a tombstone stays retained for good, and every door
  holds the fleet key. A door finds the row to erase by the tag. Every message carries a
  per-user version (milliseconds, always above the last one seen); a door applies a message
  only if it is newer than what it already has for that user, so an erase wins over any older
  voiceprint, including one replayed later. Equal versions (two doors in the same millisecond,
  or skewed clocks) are ordered by a tie-break every door computes alike from the message:
  erase before revoke before voiceprint, then the signer's id, then a keyed digest of the body.
- A door that was offline gets the retained messages when it reconnects and catches up. Its
  own outgoing changes wait in an outbox (in the sync state file) until the broker has them.

The package, by concern: errors.py (what is refused), keys.py (the keys), wire.py (the
message format and the order of changes), state.py (the sync state file), agent.py (the
MQTT agent that applies and publishes changes), status.py (`voxgate fleet status`).
Everything is importable from `voxgate.fleet` as it was from the single module before.
"""

from __future__ import annotations

from voxgate.fleet.agent import FleetSync, allows, topic_root
from voxgate.fleet.errors import FleetError, MessageError, tell_fleet
from voxgate.fleet.keys import FleetKeys, parse_key32, public_key_hex
from voxgate.fleet.state import SyncState, held_in_state, state_path
from voxgate.fleet.wire import (
    KIND_RANK,
    KINDS,
    MAX_MESSAGE_BYTES,
    MAX_SKEW_S,
    MAX_VERSION,
    WIRE_VERSION,
    Codec,
    Order,
    Update,
    newer,
)

__all__ = [
    "KINDS",
    "KIND_RANK",
    "MAX_MESSAGE_BYTES",
    "MAX_SKEW_S",
    "MAX_VERSION",
    "WIRE_VERSION",
    "Codec",
    "FleetError",
    "FleetKeys",
    "FleetSync",
    "MessageError",
    "Order",
    "SyncState",
    "Update",
    "allows",
    "held_in_state",
    "newer",
    "parse_key32",
    "public_key_hex",
    "state_path",
    "tell_fleet",
    "topic_root",
]
