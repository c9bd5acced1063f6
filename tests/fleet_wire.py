"""The fleet wire format as a holder of the fleet key sees it, written from docs/fleet.md
rather than taken from voxgate.fleet: opening any message's body (what every door can do),
and the tombstones doors running older code send (the name sealed inside)."""

from __future__ import annotations

import base64
import json
import os
from typing import Any


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _seal_key(fleet_key: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(hashes.SHA256(), 32, salt=None, info=b"voxgate fleet seal v1").derive(fleet_key)


def open_body(fleet_key: bytes, payload: bytes) -> bytes:
    """The decrypted body of a fleet message (AES-256-GCM, the header as associated data)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    msg = json.loads(payload)
    header = {k: v for k, v in msg.items() if k not in ("nonce", "ct", "sig")}
    nonce, ct = base64.b64decode(msg["nonce"]), base64.b64decode(msg["ct"])
    return AESGCM(_seal_key(fleet_key)).decrypt(nonce, ct, _canonical(header))


def old_tombstone(
    fleet_key: bytes,
    signing_key: bytes,
    *,
    kind: str,
    site: str,
    group: str,
    tag: str,
    name: str,
    version: int,
    signer: str,
    issued_at: float,
) -> bytes:
    """An erase or revoke as sent by doors before tombstones lost the name."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    header = {
        "v": 1,
        "kind": kind,
        "site": site,
        "group": group,
        "tag": tag,
        "version": version,
        "signer": signer,
        "issued_at": round(issued_at, 3),
    }
    nonce = os.urandom(12)
    ct = AESGCM(_seal_key(fleet_key)).encrypt(nonce, _canonical({"name": name}), _canonical(header))
    msg: dict[str, Any] = {
        **header,
        "nonce": base64.b64encode(nonce).decode(),
        "ct": base64.b64encode(ct).decode(),
    }
    sig = Ed25519PrivateKey.from_private_bytes(signing_key).sign(_canonical(msg))
    msg["sig"] = base64.b64encode(sig).decode()
    return _canonical(msg)
