"""A fleet erase or revoke reaching a door whose SD card has filled up while it runs: the
store cannot write the erase ("database or disk is full"). The person must stop being
recognised at once, not after the next MQTT connect, and the erase must reach the file by
itself once there is room. Real mosquitto, real SQLite on a real full tmpfs, speech from
espeak-ng embedded by the shipped speaker model, scored by the real Scorer.

(A reboot on the full disk is not tested here: the fleet sync state cannot be opened then, so
the fleet agent does not start at all: docs/fleet.md.)"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fleet_tts import DIGITS, say
from mqtt_helpers import wait_until
from small_fs import fill, free, small_fs
from test_fleet_sync import (  # noqa: F401 (fixtures: alice_takes, embedder, fleet)
    ALICE,
    Door,
    _scorer,
    alice_takes,
    embedder,
    fleet,
)

from voxgate.voiceprints import VoiceprintStore

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")


def _full_door(doors: dict, base: Path, key: bytes) -> Door:
    """Door E (group lobby, receives only), its data folder on a small tmpfs."""
    door = Door(base, "door-e", doors["broker"], ["lobby"])
    door.store.close()  # made with a key of its own: start again with `key`
    for made in door.dir.glob("voiceprints.db*"):
        made.unlink()
    door.store = VoiceprintStore(door.dir / "voiceprints.db", key)
    shutil.copy(doors["a"].dir.parent / "fleet-key", base / "fleet-key")
    (door.dir / "signing-key").write_text(os.urandom(32).hex() + "\n")
    return door


@pytest.mark.parametrize("kind", ["erase", "revoke"])
def test_a_fleet_erase_the_full_disk_cannot_store_stops_the_user_at_once_and_lands_later(
    request: pytest.FixtureRequest, tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """Seen: the erase failed with StoreError, was logged and counted, and alice was still
    accepted at this door until the next MQTT connect re-applied the retained tombstone."""
    doors: dict = request.getfixturevalue("fleet")
    model: Any = request.getfixturevalue("embedder")
    takes: list[np.ndarray] = request.getfixturevalue("alice_takes")
    a = doors["a"]
    key = os.urandom(32)
    base = tmp_path / "full"
    base.mkdir()
    with small_fs(base / "door-e", "4m") as data:
        e = _full_door(doors, base, key)
        try:
            a.start(model.model_id)
            e.start(model.model_id, withheld_retry_s=0.2)
            a.admin(model).enroll("alice", takes)
            wait_until(lambda: e.store.get("alice") is not None, 15, "alice on door E")
            attempt = model.embed(say(DIGITS[3], ALICE))
            assert _scorer(e, model).verify(attempt, "alice").accepted

            # The SD card fills up while the door runs: it still lets alice in.
            fill(data)
            scorer = _scorer(e, model)
            assert scorer.verify(attempt, "alice").accepted

            caplog.set_level(logging.INFO, logger="voxgate")
            if kind == "erase":
                a.admin(model).erase("alice")
            else:
                a.agent.publish_revoke("alice", ["lobby"])
            agent = e.agent
            assert agent is not None
            # "store_failed": how the door answered before (the erase lost until a reconnect).
            tried = ("withheld", "store_failed")
            wait_until(lambda: any(agent.stats.get(k) for k in tried), 15, f"the {kind} on E")
            refused = scorer.verify(attempt, "alice")
            assert not refused.accepted and "unknown_user" in refused.reasons, refused
            assert scorer.identify(attempt).user != "alice"
            assert e.store.get("alice") is None
            assert "alice" not in [v.name for v in e.store.all()]  # the admin API's list
            fields = dict(e.audit)[f"fleet_{kind}_withheld"]
            assert fields["user"] == "alice" and fields["signer"] == "door-a"
            said = [r for r in caplog.records if r.levelno == logging.ERROR]
            assert any("no longer recognised" in r.getMessage() for r in said), said
            # The row is still in the file: another reader (a restart) would still find it.
            with VoiceprintStore(e.dir / "voiceprints.db", key, read_only=True) as other:
                assert other.has("alice")

            # Space comes back: the door writes the erase by itself (no reconnect).
            free(data)
            wait_until(lambda: any(ev == f"fleet_{kind}d" for ev, _ in e.audit), 15, "stored")
            assert agent.withheld() == []
            with VoiceprintStore(e.dir / "voiceprints.db", key, read_only=True) as other:
                assert not other.has("alice")
            assert not scorer.verify(attempt, "alice").accepted
        finally:
            e.stop()
            e.store.close()
