"""Small CLI defects found using voxgate as an installer would: each test runs the real
command (in-process, real files) and checks what the user is told."""

from __future__ import annotations

from pathlib import Path

import pytest

from voxgate.cli import main


def _device(tmp_path: Path, extra: str = "") -> Path:
    key = tmp_path / "voiceprint.key"
    assert main(["users", "init-key", str(key)]) == 0
    cfg = tmp_path / "voxgate.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\nspeaker:\n  key_file: {key}\n{extra}")
    return cfg


@pytest.mark.parametrize("action", [["resend", "alice"], ["revoke", "alice", "--group", "hq_lab"]])
def test_fleet_actions_with_sync_off_point_at_fleet_enabled(
    action: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("VOXGATE_FLEET_KEY", raising=False)
    cfg = _device(tmp_path)
    capsys.readouterr()
    assert main(["fleet", *action, "-c", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert f"fleet sync is off in {cfg} (fleet.enabled: false)" in err
    assert "fleet-key" not in err


def test_audit_show_on_a_missing_log_says_what_creates_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _device(tmp_path)
    capsys.readouterr()
    assert main(["audit", "show", "-c", str(cfg)]) == 1
    err = capsys.readouterr().err
    log = tmp_path / "data" / "audit.jsonl"
    assert err.startswith(f"voxgate audit show: {log}: no such file. The daemon (voxgate run)")
    assert "audit.path" in err and "Errno" not in err
    assert main(["audit", "show", str(tmp_path)]) == 1  # a folder: the reason, not a repr
    assert (
        capsys.readouterr().err == f"voxgate audit show: {tmp_path}: cannot read: Is a directory\n"
    )
