"""A door whose config no longer allows a fleet user (fleet.access shrunk by an Ansible run)
starts on a full disk: enforce_access cannot write the erase. The person must not be let in
meanwhile, and the start must go on; the next start with room erases them from the file.
Real SQLite on a real full tmpfs; messages go straight to FleetSync.handle (no broker)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import yaml
from small_fs import fill, free, small_fs

from tests.unit.test_fleet_apply import KEYS, _vp
from voxgate.config import parse_config
from voxgate.fleet import FleetSync
from voxgate.voiceprints import VoiceprintStore

KEY = os.urandom(32)


def _door(data: Path, state: Path, access: dict) -> FleetSync:
    doc = {"device_id": "door-b", "fleet": {"site": "acme", "groups": ["lobby"], "access": access}}
    cfg = parse_config(yaml.safe_dump(doc))
    store = VoiceprintStore(data / "vp.db", KEY, read_when_full=True)
    return FleetSync(cfg.fleet, cfg.mqtt, cfg.device_id, store, state, keys=KEYS, model_id="m")


def test_a_user_the_config_no_longer_allows_is_withheld_when_the_full_disk_refuses_the_erase(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "fleet.db"  # beside the tmpfs: only the voiceprint store is full
    with small_fs(tmp_path / "data") as data:
        door = _door(data, state, {"lobby": ["alice", "bob"]})
        assert door.handle(*_vp("lobby", "alice", 1)) == "stored"
        assert door.handle(*_vp("lobby", "bob", 1)) == "stored"
        door.store.close()
        fill(data)
        # The next start, with alice taken out of fleet.access, on the full disk.
        door = _door(data, state, {"lobby": ["bob"]})
        with caplog.at_level(logging.ERROR, logger="voxgate.fleet"):
            assert door.enforce_access() == ["alice"]  # did raise StoreError: no start
        assert door.store.get("alice") is None  # not let in while the file still holds her
        assert door.store.get("bob") is not None
        assert "alice" in caplog.text and "cannot be written" in caplog.text
        door.store.close()
        free(data)
        # A start with room erases her from the file.
        door = _door(data, state, {"lobby": ["bob"]})
        assert door.enforce_access() == ["alice"]
        door.store.close()
        fresh = VoiceprintStore(data / "vp.db", KEY)
        assert [u.name for u in fresh.users()] == ["bob"]
        fresh.close()
