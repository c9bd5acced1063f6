"""The wire format: versions and their order, sealed and signed messages."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from voxgate.fleet.errors import FleetError, MessageError
from voxgate.fleet.keys import FleetKeys, _derive
from voxgate.names import fold
from voxgate.voiceprints import (
    StoreError,
    hex_text_hint,
    looks_hex_text,
    normalize_name,
    sha256_or_none,
)

WIRE_VERSION = 1
KINDS = ("voiceprint", "erase", "revoke")
MAX_MESSAGE_BYTES = 1024 * 1024
MAX_VERSION = 2**63 - 1
MAX_SKEW_S = 24 * 3600  # refuse messages claiming to be from the far future (clock bugs)
# At equal versions, removing wins over enrolling: the conservative side for a tie.
KIND_RANK = {"voiceprint": "0", "revoke": "1", "erase": "2"}

# (version, tie-break): how changes to one user are ordered. A tie-break of "" is a row
# written before tie-breaks existed; it ties with every message of its version, as it did.
Order = tuple[int, str]


def newer(a: Order, b: Order) -> bool:
    """Whether change `a` comes after change `b` (the same answer on every door)."""
    if a[0] != b[0]:
        return a[0] > b[0]
    return bool(a[1] and b[1]) and a[1] > b[1]


# --- the wire format ---------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise MessageError("expected base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise MessageError("bad base64") from None


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Update:
    """One decoded, verified fleet message."""

    kind: str  # voiceprint | erase | revoke
    site: str
    group: str
    tag: str
    name: str | None  # None: a tombstone (they carry no name; older versions sent one)
    version: int
    signer: str
    issued_at: float
    model_id: str | None = None
    embeddings: np.ndarray | None = None
    meta: dict[str, Any] | None = None
    tiebreak: str = ""
    model_sha256: str | None = None  # None from doors that did not send it

    @property
    def order(self) -> Order:
        return (self.version, self.tiebreak)


class Codec:
    """Encrypts, signs, verifies and decrypts fleet messages for one site."""

    def __init__(self, keys: FleetKeys, site: str, device_id: str) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.keys = keys
        self.site = site
        self.device_id = device_id
        self._aead = AESGCM(_derive(keys.fleet_key, b"seal v1"))
        self._tag_key = _derive(keys.fleet_key, b"user tag v1")
        self._order_key = _derive(keys.fleet_key, b"order v1")
        # For the messages of a decrypt or signature failure this door's key can cause; only
        # whether the key is hex text is kept here, not the key.
        self._hex_fleet_key = looks_hex_text(keys.fleet_key)
        self._hex_signing_key = keys.signing_key is not None and looks_hex_text(keys.signing_key)

    def user_tag(self, name: str) -> str:
        """The name's topic level: a keyed hash, the same on every door of the site."""
        digest = hmac.new(self._tag_key, fold(normalize_name(name)).encode(), hashlib.sha256)
        return digest.hexdigest()[:32]

    def _is_tag_of(self, name: Any, tag: str) -> bool:
        try:
            return isinstance(name, str) and self.user_tag(name) == tag
        except StoreError:  # not a name the store could hold
            return False

    def tiebreak(self, kind: str, signer: str, body: bytes) -> str:
        """What orders two changes to one user with the same version: kind, signer, then a
        digest of the sealed body (the same for the copies sent to each group). Keyed, so the
        sync state file does not hold a plain hash of a name."""
        digest = hmac.new(self._order_key, body, hashlib.sha256).hexdigest()[:16]
        return f"{KIND_RANK[kind]}:{signer}:{digest}"

    def body(
        self,
        kind: str,
        name: str,
        *,
        model_id: str | None = None,
        embeddings: np.ndarray | None = None,
        meta: dict[str, Any] | None = None,
        model_sha256: str | None = None,
    ) -> bytes:
        """The plaintext that is sealed into a message (canonical JSON)."""
        # A tombstone carries no name: it stays retained after the person is gone, readable
        # by every door of the site. The tag in the (signed) header says whose it is.
        body: dict[str, Any] = {}
        if kind == "voiceprint":
            body["name"] = normalize_name(name)
            assert embeddings is not None and model_id is not None
            emb = np.asarray(embeddings, dtype="<f4")
            body.update(
                model_id=model_id,
                dim=int(emb.shape[1]),
                embeddings=emb.tobytes().hex(),
                meta=meta or {},
            )
            if model_sha256 is not None:  # a new key: older doors ignore it
                body["model_sha256"] = model_sha256
        return _canonical(body)

    def encode(
        self,
        kind: str,
        group: str,
        name: str,
        version: int,
        *,
        model_id: str | None = None,
        embeddings: np.ndarray | None = None,
        meta: dict[str, Any] | None = None,
        model_sha256: str | None = None,
        now: float | None = None,
    ) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        if self.keys.signing_key is None:
            raise FleetError(
                "this door has no fleet signing key (fleet.signing_key_file or the credential "
                "'fleet-signing-key'), so it cannot publish enrollments"
            )
        body = self.body(
            kind,
            name,
            model_id=model_id,
            embeddings=embeddings,
            meta=meta,
            model_sha256=model_sha256,
        )
        header = {
            "v": WIRE_VERSION,
            "kind": kind,
            "site": self.site,
            "group": group,
            "tag": self.user_tag(name),
            "version": int(version),
            "signer": self.device_id,
            "issued_at": round(time.time() if now is None else now, 3),
        }
        nonce = os.urandom(12)
        ct = self._aead.encrypt(nonce, body, _canonical(header))
        msg = {**header, "nonce": _b64(nonce), "ct": _b64(ct)}
        signer = Ed25519PrivateKey.from_private_bytes(self.keys.signing_key)
        msg["sig"] = _b64(signer.sign(_canonical(msg)))
        return _canonical(msg)

    def decode(self, topic_group: str, topic_tag: str, payload: bytes, now: float) -> Update:
        """Verify and decrypt; raises MessageError saying why a message is refused."""
        from cryptography.exceptions import InvalidSignature, InvalidTag
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        if len(payload) > MAX_MESSAGE_BYTES:
            raise MessageError(f"message of {len(payload)} bytes is too large")
        try:
            msg = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise MessageError("not JSON") from None
        except RecursionError:  # "[[[[..." well under the size limit; it was a traceback
            raise MessageError("JSON nested too deeply") from None
        if not isinstance(msg, dict):
            raise MessageError("not a JSON object")
        if msg.get("v") != WIRE_VERSION:
            raise MessageError(f"unknown wire version {msg.get('v')!r}")
        fields = ("kind", "site", "group", "tag", "version", "signer", "issued_at", "nonce", "ct")
        missing = [f for f in (*fields, "sig") if f not in msg]
        if missing:
            raise MessageError(f"missing fields {missing}")
        if msg["kind"] not in KINDS:
            raise MessageError(f"unknown kind {msg['kind']!r}")
        if not isinstance(msg["version"], int) or not isinstance(msg["issued_at"], (int, float)):
            raise MessageError("version/issued_at have the wrong type")
        # SQLite holds 64-bit integers: a larger version stored the voiceprint, then failed
        # (a traceback) before the sync state recorded it.
        if not 0 <= msg["version"] <= MAX_VERSION:
            raise MessageError(f"version {msg['version']} out of range")
        # The topic is not signed, so the signed header must name the same place.
        if (msg["site"], msg["group"], msg["tag"]) != (self.site, topic_group, topic_tag):
            raise MessageError("header does not match the topic it came on")
        signer = msg["signer"]
        pub = self.keys.signers.get(signer) if isinstance(signer, str) else None
        if pub is None:
            raise MessageError(f"signer {signer!r} is not in fleet.signers")
        signed = {k: v for k, v in msg.items() if k != "sig"}
        try:
            Ed25519PublicKey.from_public_bytes(pub).verify(_unb64(msg["sig"]), _canonical(signed))
        except (InvalidSignature, ValueError):
            # Its own message (a door reads its groups' topics): this door's key may be why.
            hint = (
                hex_text_hint("This door's fleet signing key", "`voxgate fleet keygen`")
                if signer == self.device_id and self._hex_signing_key
                else ""
            )
            raise MessageError(f"bad signature (claimed signer {signer}){hint}") from None
        if msg["issued_at"] > now + MAX_SKEW_S:
            raise MessageError("issued in the future; check the clocks")
        header = {k: msg[k] for k in fields if k not in ("nonce", "ct")}
        header["v"] = WIRE_VERSION
        try:
            plain = self._aead.decrypt(_unb64(msg["nonce"]), _unb64(msg["ct"]), _canonical(header))
        except (InvalidTag, ValueError):
            hint = hex_text_hint("This door's fleet key", None) if self._hex_fleet_key else ""
            raise MessageError(f"cannot decrypt (another site's fleet key?){hint}") from None
        try:
            body = json.loads(plain)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise MessageError("damaged body") from None
        if not isinstance(body, dict):
            raise MessageError("damaged body")
        name = body.get("name")
        # Tombstones have no name; those from doors running older code still carry one.
        if (name is not None or msg["kind"] == "voiceprint") and not self._is_tag_of(
            name, msg["tag"]
        ):
            raise MessageError("the user inside does not match the topic's user tag")
        update = Update(
            kind=msg["kind"],
            site=msg["site"],
            group=msg["group"],
            tag=msg["tag"],
            name=name,
            version=msg["version"],
            signer=signer,
            issued_at=float(msg["issued_at"]),
            tiebreak=self.tiebreak(msg["kind"], signer, plain),
        )
        if update.kind != "voiceprint":
            return update
        try:
            dim = int(body["dim"])
            emb = np.frombuffer(bytes.fromhex(body["embeddings"]), dtype="<f4")
            emb = emb.astype(np.float32).reshape(-1, dim)
        except (KeyError, ValueError, TypeError):
            raise MessageError("damaged voiceprint body") from None
        # Checked here, not left to the store: its refusal was a traceback per message.
        if emb.shape[0] < 1 or not np.all(np.isfinite(emb)):
            raise MessageError("voiceprint body without usable embeddings (none, NaN or inf)")
        meta = body.get("meta") or {}
        if not isinstance(meta, dict):
            raise MessageError("voiceprint meta is not a JSON object")
        sha = body.get("model_sha256")
        if sha is not None and sha256_or_none(sha) is None:
            raise MessageError("voiceprint model_sha256 is not 64 hex digits")
        return dataclasses.replace(
            update,
            model_id=str(body.get("model_id")),
            embeddings=emb,
            meta=dict(meta),
            model_sha256=sha,
        )
