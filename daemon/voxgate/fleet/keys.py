"""The site's fleet key, a door's Ed25519 signing key and the trusted signers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from voxgate.config.fleet import FleetConfig
from voxgate.fleet.errors import FleetError

# --- keys --------------------------------------------------------------------------------------


def parse_key32(raw: bytes, what: str) -> bytes:
    """32 bytes from 64 hex characters or 32 raw bytes (as stored: a raw key may start or
    end with a whitespace byte)."""
    text = raw.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    if len(raw) == 32:
        return bytes(raw)
    if len(text) == 32:  # raw bytes and a newline, as read before
        return text
    raise FleetError(f"{what} must be 64 hex characters or 32 raw bytes (got {len(text)} bytes)")


def _derive(key: bytes, purpose: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(hashes.SHA256(), 32, salt=None, info=b"voxgate fleet " + purpose).derive(key)


@dataclass(frozen=True)
class FleetKeys:
    """The site key (encryption, user tags), this door's signing key, the trusted signers."""

    # repr=False: a traceback or log line that shows the keys object must not show them
    fleet_key: bytes = dataclasses.field(repr=False)
    signing_key: bytes | None = dataclasses.field(repr=False)  # None: this door only receives
    signers: dict[str, bytes]  # device_id -> Ed25519 public key

    @classmethod
    def load(cls, cfg: FleetConfig) -> FleetKeys:
        from voxgate.config.secrets import SecretError, read_secret

        try:
            raw = read_secret("fleet-key", cfg.key_file, strip=False)
        except SecretError as exc:
            raise FleetError(f"fleet sync: {exc}") from None
        assert raw is not None
        signing = read_secret(
            "fleet-signing-key", cfg.signing_key_file, required=False, strip=False
        )
        return cls(
            fleet_key=parse_key32(raw, "fleet key"),
            signing_key=parse_key32(signing, "fleet signing key") if signing else None,
            signers={d: bytes.fromhex(k) for d, k in cfg.signers.items()},
        )


def public_key_hex(signing_key: bytes) -> str:
    """The public half of an Ed25519 private key (what goes into fleet.signers)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pub = Ed25519PrivateKey.from_private_bytes(signing_key).public_key()
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
