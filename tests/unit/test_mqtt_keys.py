"""The door's MQTT keys: the lock holds the decision key, so the command key must differ."""

from __future__ import annotations

import logging

import pytest

from voxgate.config.mqtt import MqttConfig
from voxgate.mqtt.client import MqttLink

DKEY = b"decision-key-for-tests-0123456789"


def test_a_command_key_equal_to_the_decision_key_is_an_error_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With one key for both, whoever holds the lock's key could sign erase-user or reload
    for the door; nothing said so."""
    caplog.set_level(logging.WARNING, logger="voxgate.mqtt.client")
    MqttLink(MqttConfig(), "front-door", decision_key=DKEY, command_key=b"another-key-0123456")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    MqttLink(MqttConfig(), "front-door", decision_key=DKEY, command_key=bytes(DKEY))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "command key of front-door is its decision key" in errors[0]
