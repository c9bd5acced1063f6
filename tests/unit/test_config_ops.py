"""Config mistakes a fleet administrator makes, caught by `voxgate config check` (and at
start and SIGHUP, which use the same loader) instead of by the running door."""

from __future__ import annotations

import pytest

from voxgate.config import ConfigError, parse_config


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "door.yaml")
    return info.value.problems


def test_passphrase_mode_needs_a_passphrase() -> None:
    # Accepted before: the daemon started, reported READY, then aborted every attempt with
    # "challenge.mode is passphrase but challenge.passphrase is empty".
    for text in (
        "challenge:\n  mode: passphrase\n",
        "challenge:\n  mode: passphrase\n  passphrase: '  '\n",
    ):
        (msg,) = problems(text)
        assert msg.startswith("line 1: challenge:") and "challenge.passphrase" in msg, msg
    cfg = parse_config("challenge:\n  mode: passphrase\n  passphrase: open sesame\n")
    assert cfg.challenge.passphrase == "open sesame"
    assert parse_config("challenge:\n  mode: digits\n").challenge.passphrase is None
