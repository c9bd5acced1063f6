"""The door's decision path around the scorer: what a claimed user name may be."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from voxgate.config import VoxgateConfig
from voxgate.service.loop import Daemon


@pytest.mark.parametrize("name", ["   ", "bob\x07", "\u200bbob"])
def test_an_attempt_for_a_name_no_user_can_have_is_refused_at_the_command(
    tmp_path: Path, name: str
) -> None:
    """The MQTT `attempt` command checked only the length. A name the voiceprint store
    refuses (blank, control or format characters) got a challenge, and then its decision
    was `denied, store_unreadable`, with "cannot read the voiceprints" in the log: the
    operator was sent to restore a healthy voiceprints.db."""
    d = Daemon(VoxgateConfig(data_dir=tmp_path))
    d.stages = SimpleNamespace(new_challenge=object())  # type: ignore[assignment]
    reply = d._command_attempt({"user": name})
    assert reply["ok"] is False and "user name" in reply["error"]
    assert d._commands.empty()


def test_an_attempt_name_is_queued_as_the_store_reads_it(tmp_path: Path) -> None:
    d = Daemon(VoxgateConfig(data_dir=tmp_path))
    d.stages = SimpleNamespace(new_challenge=object())  # type: ignore[assignment]
    assert d._command_attempt({"user": " alice "}) == {"ok": True}
    assert d._commands.get_nowait() == ("attempt", {"user": "alice"})
