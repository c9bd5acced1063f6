"""How a door applies fleet messages (no broker: messages go straight to FleetSync.handle)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.store_helpers import damage_row
from voxgate.config import parse_config
from voxgate.fleet import Codec, FleetKeys, FleetSync, public_key_hex
from voxgate.voiceprints import VoiceprintStore

FLEET_KEY = os.urandom(32)
SIGNING = os.urandom(32)
KEYS = FleetKeys(FLEET_KEY, None, {"door-a": bytes.fromhex(public_key_hex(SIGNING))})
SENDER = Codec(FleetKeys(FLEET_KEY, SIGNING, {}), "acme", "door-a")
ROOT = "voxgate/_fleet/acme"


def _door(tmp_path: Path, groups: list[str], access: dict, **fleet: object) -> FleetSync:
    doc = {"device_id": "door-b", "fleet": {"site": "acme", "groups": groups, "access": access}}
    doc["fleet"].update(fleet)
    cfg = parse_config(yaml.safe_dump(doc))
    store = VoiceprintStore(tmp_path / "vp.db", os.urandom(32))
    return FleetSync(
        cfg.fleet, cfg.mqtt, cfg.device_id, store, tmp_path / "fleet.db", keys=KEYS, model_id="m"
    )


def _vp(group: str, name: str, version: int, model: str = "m") -> tuple[str, bytes]:
    emb = np.random.default_rng(version).standard_normal((2, 8)).astype(np.float32)
    msg = SENDER.encode("voiceprint", group, name, version, model_id=model, embeddings=emb)
    return f"{ROOT}/{group}/{SENDER.user_tag(name)}", msg


def _tomb(kind: str, group: str, name: str, version: int) -> tuple[str, bytes]:
    return f"{ROOT}/{group}/{SENDER.user_tag(name)}", SENDER.encode(kind, group, name, version)


def test_versions_decide(tmp_path: Path) -> None:
    door = _door(tmp_path, ["lobby"], {"lobby": ["alice"]})
    assert door.handle(*_vp("lobby", "alice", 10)) == "stored"
    assert door.handle(*_vp("lobby", "alice", 10)) == "ignored_old"  # redelivered
    assert door.handle(*_vp("lobby", "alice", 12)) == "stored"  # re-enrolled
    assert door.store.get("alice").meta["fleet_version"] == 12
    assert door.handle(*_tomb("erase", "lobby", "alice", 20)) == "erased"
    assert door.handle(*_vp("lobby", "alice", 15)) == "ignored_old"  # older than the erase
    assert door.store.get("alice") is None
    assert door.handle(*_vp("lobby", "alice", 25)) == "stored"  # enrolled again, later


def test_refusals_never_store(tmp_path: Path) -> None:
    door = _door(tmp_path, ["lobby"], {"lobby": ["alice"], "lab": ["bob"]}, allowed_users=["alice"])
    assert door.handle(*_vp("lab", "bob", 1)) == "not_my_group"
    assert door.handle(*_vp("lobby", "bob", 1)) == "not_allowed"  # lobby does not allow bob
    assert door.handle(*_vp("lobby", "alice", 1, model="other")) == "model_mismatch"
    assert door.handle(f"{ROOT}/lobby/xyz", b"{}") == "refused"
    assert door.handle(f"{ROOT}/lobby/xyz", b"") == "empty"
    assert door.store.users() == []


def test_a_voiceprint_from_another_file_of_the_model_is_not_stored(tmp_path: Path) -> None:
    """Doors of one site running other weights under the same card id: a voiceprint made
    by one was stored and scored by the other. The file's sha256 now goes with it."""
    door = _door(tmp_path, ["lobby"], {"lobby": ["alice", "bob", "carol", "dan"]})
    door.model_sha256 = "a" * 64
    emb = np.ones((2, 8), dtype=np.float32)

    def sent(name: str, sha: str | None, version: int = 1) -> tuple[str, bytes]:
        msg = SENDER.encode(
            "voiceprint", "lobby", name, version, model_id="m", embeddings=emb, model_sha256=sha
        )
        return f"{ROOT}/lobby/{SENDER.user_tag(name)}", msg

    assert door.handle(*sent("bob", "b" * 64)) == "model_mismatch"
    assert door.handle(*sent("alice", "a" * 64)) == "stored"
    assert door.store.get("alice").model_sha256 == "a" * 64
    assert door.handle(*sent("carol", None)) == "stored"  # from a door that does not send it
    assert door.handle(*sent("dan", "not a sha256")) == "refused"
    assert [u.name for u in door.store.users()] == ["alice", "carol"]


def test_revoke_keeps_users_another_group_still_allows(tmp_path: Path) -> None:
    door = _door(tmp_path, ["lobby", "lab"], {"lobby": ["alice"], "lab": ["alice"]})
    assert door.handle(*_vp("lobby", "alice", 5)) == "stored"
    assert door.handle(*_vp("lab", "alice", 5)) == "already_have"
    assert door.handle(*_tomb("revoke", "lobby", "alice", 6)) == "revoked_group"
    assert door.store.get("alice") is not None
    assert door.handle(*_tomb("revoke", "lab", "alice", 7)) == "revoked"
    assert door.store.get("alice") is None


def test_a_failed_store_write_is_retried_on_redelivery(tmp_path: Path) -> None:
    door = _door(tmp_path, ["lobby"], {"lobby": ["alice"]})
    topic, msg = _vp("lobby", "alice", 3)
    door.store.close()  # e.g. the disk went away
    assert door.handle(topic, msg) == "store_failed"  # a log line, not a traceback
    door.store = VoiceprintStore(tmp_path / "vp2.db", os.urandom(32))
    assert door.handle(topic, msg) == "stored"  # the state did not claim it was applied


def test_shrunken_access_map_erases_fleet_users_at_start(tmp_path: Path) -> None:
    door = _door(tmp_path, ["lobby"], {"lobby": ["alice", "bob"]})
    door.handle(*_vp("lobby", "alice", 1))
    door.handle(*_vp("lobby", "bob", 1))
    door.store.add_user("carol", np.ones((1, 8)), "m")  # enrolled here, not from the fleet
    door.cfg = door.cfg.model_copy(update={"access": {"lobby": ["bob"]}})
    assert door.enforce_access() == ["alice"]
    assert [u.name for u in door.store.users()] == ["bob", "carol"]


def test_a_damaged_voiceprint_neither_stops_the_start_nor_blocks_its_repair(tmp_path: Path) -> None:
    """A damaged row used to make enforce_access raise, and the daemon with fleet sync did not
    start; a fleet re-enrollment of that user could not replace the row either."""
    door = _door(tmp_path, ["lobby"], {"lobby": ["alice", "bob"]})
    door.handle(*_vp("lobby", "alice", 1))
    door.handle(*_vp("lobby", "bob", 1))
    damage_row(door.store, "bob")
    door.cfg = door.cfg.model_copy(update={"access": {"lobby": ["bob"]}})
    assert door.enforce_access() == ["alice"]  # the readable rows are still checked
    assert door.handle(*_vp("lobby", "bob", 2)) == "stored"  # the new version repairs the row
    assert door.store.get("bob").meta["fleet_version"] == 2
    damage_row(door.store, "bob")  # nothing readable left at all: logged, not raised
    assert door.enforce_access() == []


def test_unusable_voiceprint_bodies_are_refused_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A signed voiceprint with NaN or no embeddings, or a meta that is not an object, used
    to raise from the store (or dict()) inside handle(): a traceback per message."""
    door = _door(tmp_path, ["lobby"], {"lobby": ["alice"]})
    topic = f"{ROOT}/lobby/{SENDER.user_tag('alice')}"
    nan = np.full((2, 8), np.nan, dtype=np.float32)
    none = np.zeros((0, 8), dtype=np.float32)
    ok = np.ones((2, 8), dtype=np.float32)
    bad = [
        SENDER.encode("voiceprint", "lobby", "alice", 1, model_id="m", embeddings=nan),
        SENDER.encode("voiceprint", "lobby", "alice", 2, model_id="m", embeddings=none),
        SENDER.encode("voiceprint", "lobby", "alice", 3, model_id="m", embeddings=ok, meta="x"),  # type: ignore[arg-type]
    ]
    for msg in bad:
        assert door.handle(topic, msg) == "refused"
    assert door.store.users() == []
    assert door.stats["refused"] == 3
    assert not [r for r in caplog.records if r.exc_info]
    assert door.handle(*_vp("lobby", "alice", 4)) == "stored"  # later versions still apply


def test_a_version_sqlite_cannot_hold_is_refused_before_anything_is_stored(
    tmp_path: Path,
) -> None:
    """A signed version above 2**63-1 stored the voiceprint, then raised OverflowError while
    recording the version: a traceback, and a user in the store the sync state knew nothing of."""
    door = _door(tmp_path, ["lobby"], {"lobby": ["alice"]})
    assert door.handle(*_vp("lobby", "alice", 2**63)) == "refused"
    assert door.handle(*_tomb("erase", "lobby", "alice", 2**64)) == "refused"
    assert door.store.get("alice") is None
    assert door.handle(*_vp("lobby", "alice", 2**63 - 1)) == "stored"  # the largest allowed


def test_a_local_change_on_a_receive_only_door_is_a_warning_not_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A door without a signing key only receives; erasing a user through its admin API (or
    the MQTT erase-user command) logged the FleetError with a traceback."""
    from voxgate.api.users import UserAdmin

    door = _door(tmp_path, ["lobby"], {"lobby": ["alice"]})  # KEYS: no signing key
    door.store.add_user("alice", np.ones((2, 8)), "m")
    admin = UserAdmin(door.store, None, None, lambda: None, on_change=door.on_local_change)
    admin.erase("alice")
    assert door.store.get("alice") is None  # the local change stands
    assert not [r for r in caplog.records if r.exc_info]
    assert any("no fleet signing key" in r.getMessage() for r in caplog.records)
    assert door.state.outbox() == []
    # The same through the daemon's MQTT erase-user command.
    from types import SimpleNamespace

    from voxgate.config import VoxgateConfig
    from voxgate.service.users import UserServices

    door.store.add_user("alice", np.ones((2, 8)), "m")
    emb = SimpleNamespace(model_id="m")
    users = UserServices(VoxgateConfig(data_dir=tmp_path), door.store, emb, lambda e, **f: None)
    users.agent = door
    assert users.command_erase({"user": "alice"}) == {"user": "alice", "erased": True}
    assert not [r for r in caplog.records if r.exc_info]


def test_a_user_dropped_by_config_comes_back_when_the_config_allows_them_again(
    tmp_path: Path,
) -> None:
    """enforce_access erased alice but kept her grant, so when the access map was put back
    (an Ansible mistake reverted) the retained voiceprint was skipped as already seen and
    alice stayed locked out of this door until someone re-enrolled her."""
    door = _door(tmp_path, ["lobby"], {"lobby": ["alice", "bob"]})
    topic, msg = _vp("lobby", "alice", 1)
    assert door.handle(topic, msg) == "stored"
    door.cfg = door.cfg.model_copy(update={"access": {"lobby": ["bob"]}})
    assert door.enforce_access() == ["alice"]
    assert door.handle(topic, msg) == "not_allowed"  # redelivered: still not allowed
    assert door.store.get("alice") is None
    door.cfg = door.cfg.model_copy(update={"access": {"lobby": ["alice", "bob"]}})
    old_topic, old_msg = _vp("lobby", "alice", 0)
    assert door.handle(old_topic, old_msg) == "ignored_old"  # a replay of an older one
    assert door.handle(topic, msg) == "stored"  # the retained copy after the next connect
    assert door.store.get("alice") is not None


def test_a_nameless_tombstone_finds_the_user_by_tag_and_binds_doors_that_never_held_them(
    tmp_path: Path,
) -> None:
    """Tombstones carry only the user tag. A door that holds the user finds the row by the tag
    (and tells on_erased the name); a door that does not hold them still records the erase,
    so an older voiceprint replayed later is ignored."""
    door = _door(tmp_path, ["lobby"], {"lobby": ["*"]})
    gone: list[str] = []
    door.on_erased = gone.append
    audit: list[tuple[str, dict]] = []
    door.audit_event = lambda event, **f: audit.append((event, f))
    assert door.handle(*_vp("lobby", "Alice", 3)) == "stored"
    assert door.handle(*_vp("lobby", "bob", 3)) == "stored"
    assert door.handle(*_tomb("erase", "lobby", "alice", 4)) == "erased"
    assert [u.name for u in door.store.users()] == ["bob"] and gone == ["Alice"]
    assert audit[-1][0] == "fleet_erased" and audit[-1][1]["user"] == "Alice"

    assert door.handle(*_tomb("erase", "lobby", "carol", 5)) == "erased_absent"
    assert gone == ["Alice"]  # no name to forget: the door never held carol
    assert audit[-1][1]["user_tag"] == SENDER.user_tag("carol") and "user" not in audit[-1][1]
    assert door.handle(*_vp("lobby", "carol", 4)) == "ignored_old"  # a replay
    assert door.store.get("carol") is None

    assert door.handle(*_tomb("revoke", "lobby", "bob", 6)) == "revoked"
    assert door.store.users() == [] and gone == ["Alice", "bob"]


def test_an_erase_from_a_door_running_older_code_still_applies(tmp_path: Path) -> None:
    from tests.fleet_wire import old_tombstone

    door = _door(tmp_path, ["lobby"], {"lobby": ["alice"]})
    assert door.handle(*_vp("lobby", "alice", 3)) == "stored"
    tag = SENDER.user_tag("alice")
    msg = old_tombstone(
        FLEET_KEY,
        SIGNING,
        kind="erase",
        site="acme",
        group="lobby",
        tag=tag,
        name="alice",
        version=4,
        signer="door-a",
        issued_at=door.clock(),
    )
    assert door.handle(f"{ROOT}/lobby/{tag}", msg) == "erased"
    assert door.store.get("alice") is None


OTHER_SIGNING = os.urandom(32)
OTHER = Codec(FleetKeys(FLEET_KEY, OTHER_SIGNING, {}), "acme", "door-z")


def _from(codec: Codec, kind: str, name: str, version: int, seed: int) -> tuple[str, bytes]:
    topic = f"{ROOT}/lobby/{codec.user_tag(name)}"
    if kind != "voiceprint":
        return topic, codec.encode(kind, "lobby", name, version)
    emb = np.random.default_rng(seed).standard_normal((2, 8)).astype(np.float32)
    return topic, codec.encode(kind, "lobby", name, version, model_id="m", embeddings=emb)


@pytest.mark.parametrize(
    "first,second",
    [
        ("voiceprint", "voiceprint"),
        ("voiceprint", "erase"),
        ("erase", "voiceprint"),
        ("voiceprint", "revoke"),
    ],
)
def test_two_changes_with_the_same_version_end_the_same_in_either_order(
    tmp_path: Path, first: str, second: str
) -> None:
    """Two doors change alice within the same clock tick (or with skewed clocks) and both
    messages carry the same version. A door applied whichever came first and ignored the
    other; doors that got them in the other order (a door syncing later gets only the last,
    retained one) kept the other change, for ever."""
    keys = FleetKeys(
        FLEET_KEY,
        None,
        {
            "door-a": bytes.fromhex(public_key_hex(SIGNING)),
            "door-z": bytes.fromhex(public_key_hex(OTHER_SIGNING)),
        },
    )
    msgs = [_from(SENDER, first, "alice", 100, 1), _from(OTHER, second, "alice", 100, 2)]
    outcomes = []
    for n, order in enumerate((msgs, msgs[::-1])):
        door = _door(tmp_path / str(n), ["lobby"], {"lobby": ["alice"]})
        door.keys = keys
        door.codec = Codec(keys, "acme", "door-b")
        for topic, payload in order:
            assert door.handle(topic, payload) != "refused"
        vp = door.store.get("alice")
        outcomes.append(None if vp is None else vp.embeddings.tobytes())
        door.stop()
        door.store.close()
    assert outcomes[0] == outcomes[1]
    if "erase" in (first, second) or "revoke" in (first, second):
        # At the same version, removing wins over enrolling (the conservative side).
        assert outcomes[0] is None


def test_a_sync_state_file_from_before_tie_breaks_keeps_working(tmp_path: Path) -> None:
    """Rows written by older code have no tie-break: they tie with every message of their
    version, as before (the retained copy after an upgrade is not applied a second time)."""
    import sqlite3

    tag = SENDER.user_tag("alice")
    con = sqlite3.connect(tmp_path / "fleet.db")
    con.executescript(
        """
        CREATE TABLE users (tag TEXT PRIMARY KEY, version INTEGER NOT NULL, kind TEXT NOT NULL,
            held INTEGER NOT NULL);
        CREATE TABLE grants (tag TEXT NOT NULL, grp TEXT NOT NULL, version INTEGER NOT NULL,
            kind TEXT NOT NULL, PRIMARY KEY (tag, grp));
        CREATE TABLE outbox (topic TEXT PRIMARY KEY, payload BLOB NOT NULL,
            version INTEGER NOT NULL);
        """
    )
    con.execute("INSERT INTO users VALUES (?, 100, 'erase', 0)", (tag,))
    con.execute("INSERT INTO grants VALUES (?, 'lobby', 100, 'erase')", (tag,))
    con.execute("INSERT INTO outbox VALUES ('t', x'00', 100)")
    con.commit()
    con.close()
    door = _door(tmp_path, ["lobby"], {"lobby": ["alice"]})
    assert door.state.user(tag) == (100, "erase", False, "")
    assert door.state.outbox() == [("t", b"\x00", (100, ""))]
    assert door.handle(*_vp("lobby", "alice", 100)) == "ignored_old"
    assert door.handle(*_tomb("erase", "lobby", "alice", 100)) == "ignored_old"
    assert door.handle(*_vp("lobby", "alice", 101)) == "stored"
    assert door.state.user(tag)[:3] == (101, "voiceprint", True)
    door.state.sent("t", (100, ""))
    assert door.state.outbox() == []


def test_the_access_map_matches_names_as_the_store_does(tmp_path: Path) -> None:
    """'Alice' and 'alice' open one voiceprint, so fleet.access listing 'alice' lets 'Alice'
    in: before, her voiceprint was kept on the door it was enrolled at and never sent."""
    door = _door(tmp_path, ["lobby"], {"lobby": ["alice"]}, allowed_users=[" ALICE"])
    assert door.groups_for("Alice") == ["lobby"]
    assert door.allowed_here("Alice")
    assert door.handle(*_vp("lobby", "Alice", 1)) == "stored"
    assert door.groups_for("bob") == []


def test_an_agent_outside_the_daemon_forgets_the_rest_of_a_user_the_fleet_erased(
    tmp_path: Path,
) -> None:
    """`voxgate api` and the fleet/enroll commands run an agent of their own, which applies
    the fleet's erases while connected: it erased the voiceprint and left the person's
    lockout entry (their name in plain text) behind, since only the daemon set on_erased."""
    from voxgate.lockout import LockoutBook

    doc = {
        "device_id": "door-b",
        "data_dir": str(tmp_path),
        "fleet": {"site": "acme", "groups": ["lobby"], "access": {"lobby": ["*"]}},
    }
    cfg = parse_config(yaml.safe_dump(doc))
    book = LockoutBook(tmp_path / "lockout.db", cfg.lockout)
    for _ in range(2):
        book.record("alice", ok=False)
    book.close()
    store = VoiceprintStore(tmp_path / "vp.db", os.urandom(32))
    door = FleetSync.from_config(cfg, store, keys=KEYS, model_id="m")
    assert door.handle(*_vp("lobby", "alice", 3)) == "stored"
    assert door.handle(*_tomb("erase", "lobby", "alice", 4)) == "erased"
    assert b"alice" not in (tmp_path / "lockout.db").read_bytes()


def test_an_erase_a_damaged_row_may_hide_is_not_recorded_as_done(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A tombstone finds the row by the user tag, computed from the decrypted name: bob's
    unreadable row was never erased, yet the erase was recorded as applied (erased_absent)
    and its retained copy ignored from then on, so bob stayed in the file for good."""
    import logging

    door = _door(tmp_path, ["lobby"], {"lobby": ["*"]})
    audit: list[tuple[str, dict]] = []
    door.audit_event = lambda event, **f: audit.append((event, f))
    assert door.handle(*_vp("lobby", "alice", 3)) == "stored"
    assert door.handle(*_vp("lobby", "bob", 3)) == "stored"
    damage_row(door.store, "bob")
    tomb = _tomb("erase", "lobby", "bob", 4)
    with caplog.at_level(logging.WARNING, logger="voxgate.fleet"):
        assert door.handle(*tomb) == "erase_unverified"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "may be incomplete: 1 voiceprint row(s)" in errors[0], errors
    assert SENDER.user_tag("bob") in errors[0]
    event, fields = audit[-1]
    assert event == "fleet_erase_unverified" and fields["unreadable"] == 1
    assert fields["user_tag"] == SENDER.user_tag("bob") and fields["version"] == 4
    # The retained copy, at the next connect: tried again, not skipped as already applied.
    assert door.handle(*tomb) == "erase_unverified"
    # The erase still counts against older messages: no older voiceprint comes back.
    assert door.handle(*_vp("lobby", "bob", 3)) == "ignored_old"
    # The row repaired (here: the same byte flipped back): the next try erases bob.
    damage_row(door.store, "bob")
    assert door.handle(*tomb) == "erased"
    assert [u.name for u in door.store.users()] == ["alice"]
    assert door.handle(*tomb) == "ignored_old"  # done now


def test_an_erase_retried_after_the_damaged_row_was_removed_is_done(tmp_path: Path) -> None:
    door = _door(tmp_path, ["lobby"], {"lobby": ["*"]})
    assert door.handle(*_vp("lobby", "alice", 3)) == "stored"
    assert door.handle(*_vp("lobby", "bob", 3)) == "stored"
    damage_row(door.store, "bob")
    tomb = _tomb("erase", "lobby", "carol", 4)  # someone else: this door cannot tell
    assert door.handle(*tomb) == "erase_unverified"
    assert door.store.erase("bob")  # what `voxgate users erase bob` does
    assert door.handle(*tomb) == "erased_absent"
    assert door.handle(*tomb) == "ignored_old"
    assert door.handle(*_vp("lobby", "carol", 3)) == "ignored_old"


def test_a_revoke_a_damaged_row_may_hide_is_not_recorded_as_done(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Seen: a revoke whose user tag matched no readable row was recorded as applied
    (`revoked`, held cleared) while bob's row could not be read. Once the row read again
    (voiceprints.db restored from a backup), bob was let in: the retained revoke was skipped
    as already seen, and the start's access check looks only at held users."""
    import logging

    door = _door(tmp_path, ["lobby"], {"lobby": ["*"]})
    audit: list[tuple[str, dict]] = []
    door.audit_event = lambda event, **f: audit.append((event, f))
    assert door.handle(*_vp("lobby", "alice", 3)) == "stored"
    assert door.handle(*_vp("lobby", "bob", 3)) == "stored"
    damage_row(door.store, "bob")
    tomb = _tomb("revoke", "lobby", "bob", 4)
    with caplog.at_level(logging.WARNING, logger="voxgate.fleet"):
        assert door.handle(*tomb) == "revoke_unverified"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "revoke of user tag" in errors[0], errors
    assert "may be incomplete: 1 voiceprint row(s)" in errors[0]
    event, fields = audit[-1]
    assert event == "fleet_revoke_unverified" and fields["unreadable"] == 1
    assert door.handle(*tomb) == "revoke_unverified"  # the retained copy, next connect
    assert door.handle(*_vp("lobby", "bob", 3)) == "ignored_old"
    damage_row(door.store, "bob")  # the row reads again (the same byte flipped back)
    assert door.handle(*tomb) == "revoked"
    assert [u.name for u in door.store.users()] == ["alice"]
    assert door.handle(*tomb) == "ignored_old"


def test_unverified_tombstones_are_named_once_per_group_not_at_each_connect(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Seen: each connect applied the retained tombstones again and every one wrote the
    same ERROR and the same audit line again (a door reconnecting all day filled its
    journal and its append-only, fsynced audit log with copies)."""
    import logging

    door = _door(tmp_path, ["lobby", "lab"], {"lobby": ["*"], "lab": ["*"]})
    audit: list[str] = []
    door.audit_event = lambda event, **f: audit.append(event)
    assert door.handle(*_vp("lobby", "alice", 3)) == "stored"
    assert door.handle(*_vp("lobby", "bob", 3)) == "stored"
    damage_row(door.store, "bob")
    tombs = [_tomb("erase", g, "carol", 4) for g in ("lobby", "lab")]
    with caplog.at_level(logging.WARNING, logger="voxgate.fleet"):
        for _connect in range(3):
            for tomb in tombs:
                assert door.handle(*tomb) == "erase_unverified"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2, [r.getMessage() for r in errors]
    assert sorted("via lab" in r.getMessage() for r in errors) == [False, True]
    assert audit.count("fleet_erase_unverified") == 2
    assert door.stats["erase_unverified"] == 6


def test_an_empty_sync_state_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    """Seen: a fleet.db cut to 0 bytes was opened as a new state. The outbox went with it
    (an erase made here while the broker was away was never sent), and at the next connect
    the retained voiceprint of that person, still on the broker, was stored again: the
    erase undone without a word. An absent file is still a new state."""
    from voxgate.fleet import FleetError, SyncState

    path = tmp_path / "fleet.db"
    path.write_bytes(b"")
    with pytest.raises(FleetError) as err:
        _door(tmp_path, ["lobby"], {"lobby": ["*"]})
    msg = str(err.value)
    assert f"{path}: the fleet sync state is empty (0 bytes)" in msg
    assert "Restore it from a backup" in msg and "voxgate users erase NAME" in msg
    assert not err.value.temporary  # damage: the daemon stops with exit 78, not restarted
    assert path.stat().st_size == 0
    path.unlink()
    state = SyncState(path)
    assert path.stat().st_size > 0 and state.outbox() == []
    state.close()
    assert sorted(p.name for p in tmp_path.iterdir() if ".new-" in p.name) == []


def test_a_foreign_sync_state_file_is_damage_not_a_full_disk(tmp_path: Path) -> None:
    """Only a full disk makes the fleet sync state's error temporary (exit 69, restarted);
    a file that is not a database stays a stop with exit 78 (restarting cannot mend it)."""
    from voxgate.fleet import FleetError, SyncState

    path = tmp_path / "fleet.db"
    path.write_bytes(b"these are not the bytes of an SQLite database\n" * 200)
    with pytest.raises(FleetError, match="unusable fleet sync state") as err:
        SyncState(path)
    assert not err.value.temporary
    assert "the disk is full" not in str(err.value)


def test_a_name_this_door_refuses_for_a_new_user_is_not_a_disk_fault(tmp_path: Path) -> None:
    """A fleet voiceprint under a look-alike of a user enrolled here ('ａｌｉｃｅ' beside
    'alice'), or under a name from before a naming rule (a line separator), was counted and
    logged as store_failed, the counter of full and read-only disks."""
    door = _door(tmp_path, ["lobby"], {"lobby": ["*"]})
    door.store.add_user("alice", np.ones((2, 8), np.float32), "m")
    for name in ("ａｌｉｃｅ", "old\u2028name"):
        assert door.handle(*_vp("lobby", name, 3)) == "name_refused"
    assert door.stats["refused"] == 2 and door.stats["store_failed"] == 0
    assert [u.name for u in door.store.users()] == ["alice"]
    assert door.handle(*_vp("lobby", "bob", 3)) == "stored"
