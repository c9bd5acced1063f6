"""Read-only commands run on a door without sudo: the data folder (0700, the service's user)
cannot be entered. They must say so, not end in a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import test_sd_card_damaged

as_nobody = test_sd_card_damaged.as_nobody  # the fixture: runs a command as user nobody


def _door_folder(home: Path) -> Path:
    """A config beside a data folder only root can enter, as /var/lib/voxgate (0700) is to
    an administrator without sudo; returns the config."""
    data = home / "data"
    data.mkdir()
    (data / "audit.jsonl").write_text("")
    (data / "fleet.db").write_bytes(b"")
    data.chmod(0o700)
    cfg = home / "voxgate.yaml"
    cfg.write_text(f"data_dir: {data}\n")
    cfg.chmod(0o644)
    return cfg


def _run_without_root(as_nobody: Any, *argv: str) -> subprocess.CompletedProcess[str]:
    """`voxgate ARGV -c CFG` as user nobody on such a door: exit 1 and no traceback."""
    home, prefix, env, _ = as_nobody
    cfg = _door_folder(home)
    proc = subprocess.run(
        [*prefix, "-m", "voxgate", *argv, "-c", str(cfg)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stdout + proc.stderr
    return proc


def test_audit_verify_without_access_to_the_log_says_so(as_nobody: Any) -> None:
    """`voxgate audit verify` said "NOT intact ... cannot read: Permission denied" here;
    since the check for a lost log (2865dc3) it ended in a PermissionError traceback from
    the log's exists()."""
    proc = _run_without_root(as_nobody, "audit", "verify")
    assert "Permission denied" in proc.stdout + proc.stderr


def test_fleet_status_without_access_to_the_state_says_so(as_nobody: Any) -> None:
    """`voxgate fleet status` caught only sqlite3 errors: the sync state under a folder this
    user cannot enter ended in a PermissionError traceback from Path.is_file()."""
    proc = _run_without_root(as_nobody, "fleet", "status")
    assert proc.stderr.startswith("voxgate fleet status: ") and "fleet.db" in proc.stderr
    assert "Permission denied" in proc.stderr, proc.stderr
