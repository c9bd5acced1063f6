"""Fleet wire format: what a door accepts and what it refuses, without a broker."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from voxgate.config.fleet import FleetConfig
from voxgate.fleet import (
    Codec,
    FleetError,
    FleetKeys,
    MessageError,
    newer,
    parse_key32,
    public_key_hex,
)

NOW = 1_800_000_000.0


def _codec(
    device: str, signing: bytes | None, signers: dict[str, bytes], fleet_key: bytes
) -> Codec:
    return Codec(FleetKeys(fleet_key, signing, signers), "acme", device)


@pytest.fixture()
def pair() -> tuple[Codec, Codec, bytes]:
    fleet_key = os.urandom(32)
    sk = os.urandom(32)
    pub = bytes.fromhex(public_key_hex(sk))
    sender = _codec("door-a", sk, {"door-a": pub}, fleet_key)
    receiver = _codec("door-b", None, {"door-a": pub}, fleet_key)
    return sender, receiver, fleet_key


def _emb() -> np.ndarray:
    e = np.random.default_rng(3).standard_normal((3, 256)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_round_trip(pair: tuple[Codec, Codec, bytes]) -> None:
    sender, receiver, _ = pair
    emb = _emb()
    msg = sender.encode(
        "voiceprint", "lobby", "Alice", 17, model_id="m/1", embeddings=emb, meta={"k": 1}, now=NOW
    )
    tag = sender.user_tag("Alice")
    upd = receiver.decode("lobby", tag, msg, NOW)
    assert (upd.kind, upd.name, upd.version, upd.signer) == ("voiceprint", "Alice", 17, "door-a")
    assert upd.model_id == "m/1" and upd.meta == {"k": 1}
    np.testing.assert_array_equal(upd.embeddings, emb)
    # Neither the name nor the embeddings travel in the clear.
    assert b"Alice" not in msg and tag != "Alice"
    assert emb.astype("<f4").tobytes().hex()[:32].encode() not in msg
    erase = sender.encode("erase", "lobby", "Alice", 18, now=NOW)
    assert receiver.decode("lobby", tag, erase, NOW).kind == "erase"


def test_user_tags_are_stable_and_keyed(pair: tuple[Codec, Codec, bytes]) -> None:
    sender, receiver, _ = pair
    assert sender.user_tag("alice") == receiver.user_tag("ALICE ")  # casefold + strip
    other_site = _codec("x", None, {}, os.urandom(32))
    assert other_site.user_tag("alice") != sender.user_tag("alice")


def _tamper(msg: bytes, **changes: object) -> bytes:
    doc = json.loads(msg)
    doc.update(changes)
    return json.dumps(doc).encode()


def test_refusals(pair: tuple[Codec, Codec, bytes]) -> None:
    sender, receiver, fleet_key = pair
    tag = sender.user_tag("alice")
    good = sender.encode("voiceprint", "lobby", "alice", 5, model_id="m", embeddings=_emb())
    cases = {
        "not JSON": b"\xff\x00garbage",
        "not a JSON object": b"[1, 2]",
        "unknown wire version": _tamper(good, v=2),
        "missing fields": json.dumps({"v": 1}).encode(),
        "bad signature": _tamper(good, version=6),
        "not in fleet.signers": _tamper(good, signer="door-z"),
    }
    for reason, payload in cases.items():
        with pytest.raises(MessageError, match=reason):
            receiver.decode("lobby", tag, payload, NOW)
    # The same message moved to another group's or user's topic is refused.
    with pytest.raises(MessageError, match="does not match the topic"):
        receiver.decode("lab", tag, good, NOW)
    with pytest.raises(MessageError, match="does not match the topic"):
        receiver.decode("lobby", sender.user_tag("bob"), good, NOW)
    # Signed by a trusted door but sealed with another site's key.
    sk = os.urandom(32)
    pub = bytes.fromhex(public_key_hex(sk))
    foreign = _codec("door-a", sk, {}, os.urandom(32))
    wrong_key = foreign.encode("erase", "lobby", "alice", 9)
    trusting = _codec("door-b", None, {"door-a": pub}, fleet_key)
    with pytest.raises(MessageError):
        trusting.decode("lobby", tag, wrong_key, NOW)
    # Oversized.
    with pytest.raises(MessageError, match="too large"):
        receiver.decode("lobby", tag, b" " * (1024 * 1024 + 1), NOW)


def test_a_receive_only_door_cannot_publish(pair: tuple[Codec, Codec, bytes]) -> None:
    _, receiver, _ = pair
    with pytest.raises(FleetError, match="signing key"):
        receiver.encode("erase", "lobby", "alice", 1)


def test_keys_from_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("VOXGATE_FLEET_KEY", "VOXGATE_FLEET_SIGNING_KEY", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)
    key = tmp_path / "fleet-key"
    cfg = FleetConfig(key_file=key, signing_key_file=tmp_path / "absent")
    with pytest.raises(FleetError, match="fleet-key"):
        FleetKeys.load(cfg)
    key.write_text("ab" * 31 + "\n")
    key.chmod(0o600)
    with pytest.raises(FleetError, match="64 hex"):
        FleetKeys.load(cfg)
    key.write_text("ab" * 32 + "\n")
    keys = FleetKeys.load(cfg)
    assert keys.fleet_key == bytes([0xAB]) * 32 and keys.signing_key is None
    assert parse_key32(bytes(range(32)), "k") == bytes(range(32))


def test_raw_keys_keep_their_whitespace_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("VOXGATE_FLEET_KEY", "VOXGATE_FLEET_SIGNING_KEY", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)
    fleet, signing = b" " + bytes(range(31)), bytes(range(1, 32)) + b"\n"
    (tmp_path / "fleet-key").write_bytes(fleet)
    (tmp_path / "signing").write_bytes(signing)
    for f in tmp_path.iterdir():
        f.chmod(0o600)
    keys = FleetKeys.load(
        FleetConfig(key_file=tmp_path / "fleet-key", signing_key_file=tmp_path / "signing")
    )
    assert keys.fleet_key == fleet and keys.signing_key == signing


def test_tombstones_carry_no_name_even_for_a_holder_of_the_fleet_key(
    pair: tuple[Codec, Codec, bytes],
) -> None:
    """An erase stays retained for good and every door holds the fleet key: the sealed name
    inside it told every door, for ever, who had been erased. The topic's tag says whose it is."""
    from tests.fleet_wire import open_body

    sender, receiver, fleet_key = pair
    tag = sender.user_tag("Alice")
    for kind in ("erase", "revoke"):
        msg = sender.encode(kind, "lobby", "Alice", 18, now=NOW)
        assert b"alice" not in open_body(fleet_key, msg).lower()
        upd = receiver.decode("lobby", tag, msg, NOW)
        assert (upd.kind, upd.tag, upd.name, upd.version) == (kind, tag, None, 18)
    # A voiceprint still needs its name (the door stores it under that name).
    vp = sender.encode("voiceprint", "lobby", "Alice", 19, model_id="m", embeddings=_emb())
    assert b'"name":"Alice"' in open_body(fleet_key, vp)


def test_tombstones_from_doors_running_older_code_are_still_accepted(
    pair: tuple[Codec, Codec, bytes],
) -> None:
    """A mixed fleet during an upgrade: an old door's erase (the name inside) still applies;
    one whose name does not match the topic's tag is refused as before."""
    from tests.fleet_wire import old_tombstone

    sender, receiver, fleet_key = pair
    assert sender.keys.signing_key is not None
    tag = sender.user_tag("alice")

    def old(name: str) -> bytes:
        return old_tombstone(
            fleet_key,
            sender.keys.signing_key,  # type: ignore[arg-type]
            kind="erase",
            site="acme",
            group="lobby",
            tag=tag,
            name=name,
            version=7,
            signer="door-a",
            issued_at=NOW,
        )

    upd = receiver.decode("lobby", tag, old("ALICE"), NOW)
    assert (upd.kind, upd.name, upd.version) == ("erase", "ALICE", 7)
    for wrong in ("bob", "", "\x00"):
        with pytest.raises(MessageError, match="does not match the topic's user tag"):
            receiver.decode("lobby", tag, old(wrong), NOW)


def test_every_door_computes_the_same_tie_break_and_the_sender_knows_it(
    pair: tuple[Codec, Codec, bytes],
) -> None:
    """The order of two changes with the same version is taken from the message itself, so
    each door (and the sender, for its own echo) gets the same answer; the copies sent to
    each group are one change."""
    sender, receiver, _ = pair
    emb = _emb()
    lobby = sender.encode("voiceprint", "lobby", "alice", 5, model_id="m", embeddings=emb)
    lab = sender.encode("voiceprint", "lab", "alice", 5, model_id="m", embeddings=emb)
    tag = sender.user_tag("alice")
    a, b = receiver.decode("lobby", tag, lobby, NOW), receiver.decode("lab", tag, lab, NOW)
    own = sender.tiebreak(
        "voiceprint", "door-a", sender.body("voiceprint", "alice", model_id="m", embeddings=emb)
    )
    assert a.order == b.order == (5, own)
    erase = receiver.decode("lobby", tag, sender.encode("erase", "lobby", "alice", 5), NOW)
    assert newer(erase.order, a.order) and not newer(a.order, erase.order)
    assert newer((6, ""), erase.order) and not newer((5, ""), a.order)  # rows from before


def test_a_key_of_32_hex_digits_that_fails_says_it_was_read_as_raw_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fleet key or signing key file holding 32 hex digits (the 64 cut short) is read as
    32 raw bytes, as the voiceprint key reader does. Not refused (a site may use such a key
    on purpose), but where it fails on this door the message says how it was read: a
    message it cannot decrypt, and its own message whose signature does not verify."""
    for var in ("VOXGATE_FLEET_KEY", "VOXGATE_FLEET_SIGNING_KEY", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)
    fleet_hex, sk = os.urandom(32).hex(), os.urandom(32)
    files = {
        "full": fleet_hex + "\n",
        "cut": fleet_hex[:32],
        "other": os.urandom(32).hex() + "\n",
        "signing": sk.hex() + "\n",
        "signing-cut": sk.hex()[:32] + "\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o600)
    signers = {"door-a": public_key_hex(sk)}  # what `voxgate fleet keygen` printed

    def door(device: str, key: str, signing: str = "absent") -> Codec:
        cfg = FleetConfig(
            key_file=tmp_path / key, signing_key_file=tmp_path / signing, signers=signers
        )
        return Codec(FleetKeys.load(cfg), "acme", device)

    sender = door("door-a", "full", "signing")
    msg = sender.encode("erase", "lobby", "alice", 3, now=NOW)
    tag = sender.user_tag("alice")
    with pytest.raises(MessageError, match="cannot decrypt") as cut:
        door("door-b", "cut").decode("lobby", tag, msg, NOW)
    assert "read as 32 raw bytes" in str(cut.value) and "64 hex digits" in str(cut.value)
    with pytest.raises(MessageError, match="cannot decrypt") as other:
        door("door-b", "other").decode("lobby", tag, msg, NOW)
    assert "raw bytes" not in str(other.value)  # a 64-digit wrong key: no hint
    # Such a key works between doors that all use it.
    both = door("door-a", "cut", "signing")
    sent = both.encode("erase", "lobby", "alice", 4, now=NOW)
    assert door("door-b", "cut").decode("lobby", both.user_tag("alice"), sent, NOW).version == 4

    # The signing key cut short: the door's own messages (it reads its groups' topics) do
    # not verify under the public key listed for it.
    cut_signer = door("door-a", "full", "signing-cut")
    own = cut_signer.encode("erase", "lobby", "alice", 5, now=NOW)
    with pytest.raises(MessageError, match="bad signature") as mine:
        cut_signer.decode("lobby", tag, own, NOW)
    assert "read as 32 raw bytes" in str(mine.value), mine.value
    assert "voxgate fleet keygen" in str(mine.value)
    with pytest.raises(MessageError, match="bad signature") as elsewhere:
        door("door-b", "full").decode("lobby", tag, own, NOW)
    assert "raw bytes" not in str(elsewhere.value)  # another door cannot tell why
