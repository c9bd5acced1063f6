"""`voxgate audit rotate` on a full SD card: the data folder on a small tmpfs filled to the
last block. The archive cannot be written there, so nothing may change: the log is truncated
only once its copy is on disk. Once there is room the same command rotates."""

from __future__ import annotations

import subprocess
from pathlib import Path

from small_fs import fill, free, small_fs

from tests.unit.test_audit import cli
from voxgate.audit import AuditLog, anchor_path_for, verify


def rotate(cfg: Path) -> subprocess.CompletedProcess[str]:
    return cli("rotate", "-c", str(cfg))


def test_rotate_on_a_full_disk_changes_nothing_and_works_once_there_is_room(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "voxgate.yaml"
    with small_fs(tmp_path / "data", "1m") as data:
        cfg.write_text(f"data_dir: {data}\n")
        log = data / "audit.jsonl"
        writer = AuditLog(log)
        for i in range(40):  # more than a page: the file's own slack cannot hold its copy
            writer.append("decision", outcome="granted", user=f"user{i}", note="x" * 200)
        before = (log.read_bytes(), anchor_path_for(log).read_bytes())
        fill(data)
        full = rotate(cfg)
        assert full.returncode == 73, full.stdout + full.stderr
        assert "disk full" in full.stderr and "nothing was changed" in full.stderr, full.stderr
        assert (log.read_bytes(), anchor_path_for(log).read_bytes()) == before
        assert sorted(p.name for p in data.iterdir() if p.name.startswith("audit-")) == []
        free(data)
        done = rotate(cfg)
        assert done.returncode == 0, done.stdout + done.stderr
        assert verify(log).ok and log.read_bytes().count(b"\n") == 1
