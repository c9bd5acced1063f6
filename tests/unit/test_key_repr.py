"""Objects holding secret keys must not show them in their repr (tracebacks, log lines,
pytest failure messages print reprs)."""

from __future__ import annotations

import os

from voxgate.fleet import FleetKeys
from voxgate.mqtt.commands import CommandGate


def test_key_holders_do_not_show_their_keys() -> None:
    key = os.urandom(32)
    gate = CommandGate("front-door", key, started_at=0.0)
    keys = FleetKeys(key, key, {"door-a": b"\x01" * 32})
    for obj in (gate, keys):
        text = repr(obj)
        assert key.hex() not in text and repr(key) not in text and str(key) not in text, text
    assert "front-door" in repr(gate)  # the rest is still shown
