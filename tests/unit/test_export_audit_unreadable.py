"""An audit log that cannot be read (audit.path a folder, or under a file) must not take the
export or the erase down with it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from voxgate.config import VoxgateConfig
from voxgate.erasure import forget_on_disk, held_about


@pytest.mark.parametrize("where", ["a folder", "under a file"])
def test_an_unreadable_audit_log_is_named_in_the_export_and_the_erase(
    tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Seen: with audit.path naming a folder, or a path under a regular file, `voxgate users
    export` and the API export crashed (IsADirectoryError / NotADirectoryError from reading
    the log), and an erase stopped before it had dropped the lockout entry's neighbours."""
    if where == "a folder":
        audit = tmp_path / "audit.jsonl"
        audit.mkdir()
    else:
        (tmp_path / "plain").write_text("x")
        audit = tmp_path / "plain" / "audit.jsonl"
    (tmp_path / "audio").mkdir()  # kept recordings were on once: the erase looks for them
    cfg = VoxgateConfig(data_dir=tmp_path, audit={"path": audit})
    with caplog.at_level(logging.ERROR):
        held = held_about(cfg, "alice")
        assert held["audit_events"] == [] and held["kept_recordings"] == []
        assert held["not_included"][0].startswith(f"audit log {audit}: could not be read")
        assert forget_on_disk(cfg, "alice") == []
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("export of alice: cannot read the audit log" in e for e in errors), errors
    assert any("cannot find the kept recordings of erased user alice" in e for e in errors)
