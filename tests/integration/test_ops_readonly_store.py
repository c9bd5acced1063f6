"""`voxgate users list` and `users export` on a read-only data folder (a read-only mount, a
snapshot, a backup): SQLite in WAL mode wants to create `<db>-shm` beside the file, so both
commands failed with "unable to open database file". They read it now, and changes still in
`<db>-wal` are never left out silently.

Tests run as root, which ignores permission bits, so the folder is made read-only with a
read-only bind mount inside a private mount namespace (`unshare -m`): nothing leaks to the
host even if the test dies. Skipped where mounting is not allowed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from voxgate.voiceprints import VoiceprintStore

REPO = Path(__file__).resolve().parents[2]
KEY = bytes(range(32))


def ro_run(source: Path, mountpoint: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run `argv` with `source` mounted read-only at `mountpoint`, in a private namespace."""
    mountpoint.mkdir(exist_ok=True)
    script = 'mount --bind "$1" "$2" && mount -o remount,bind,ro "$2" && shift 2 && exec "$@"'
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env["PYTHONPATH"] = str(REPO / "daemon")
    unshare = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"]
    return subprocess.run(
        [*unshare, str(source), str(mountpoint), *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(data folder, where it is mounted read-only, config pointing at the mount)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a read-only bind mount")
    data, ro = tmp_path / "data", tmp_path / "ro"
    data.mkdir()
    probe = ro_run(data, ro, "sh", "-c", '! touch "$0"/probe 2>/dev/null', str(ro))
    if probe.returncode != 0:
        pytest.skip(f"cannot make a read-only bind mount here: {probe.stderr.strip()}")
    key = tmp_path / "voiceprint.key"
    key.write_bytes(KEY)
    key.chmod(0o600)
    conf = tmp_path / "voxgate.yaml"
    conf.write_text(f"data_dir: {ro}\nspeaker: {{key_file: {key}}}\n")
    return data, ro, conf


def enroll(store: VoiceprintStore, name: str, seed: int) -> None:
    emb = np.random.default_rng(seed).standard_normal((3, 256))
    store.add_user(name, emb, "test-model/1", {"takes": 3})


def voxgate(data: Path, ro: Path, conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return ro_run(data, ro, sys.executable, "-m", "voxgate", "users", *args, "-c", str(conf))


def test_list_and_export_a_clean_store_on_a_read_only_folder(
    folders: tuple[Path, Path, Path],
) -> None:
    data, ro, conf = folders
    with VoiceprintStore(data / "voiceprints.db", KEY) as store:
        enroll(store, "alice", 1)
        enroll(store, "bob", 2)
    assert sorted(p.name for p in data.iterdir()) == ["voiceprints.db"]  # nothing pending

    res = voxgate(data, ro, conf, "list")
    assert res.returncode == 0, res.stderr
    assert [line.split()[0] for line in res.stdout.splitlines()[1:]] == ["alice", "bob"]
    res = voxgate(data, ro, conf, "export", "alice")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["name"] == "alice" and len(doc["embeddings"]) == 3
    assert sorted(p.name for p in data.iterdir()) == ["voiceprints.db"]


def test_changes_still_in_the_wal_are_listed(folders: tuple[Path, Path, Path]) -> None:
    """The daemon holds the store open: carol is only in voiceprints.db-wal (and -shm)."""
    data, ro, conf = folders
    with VoiceprintStore(data / "voiceprints.db", KEY) as daemon:
        enroll(daemon, "alice", 1)
        enroll(daemon, "carol", 3)
        assert (data / "voiceprints.db-wal").stat().st_size > 0
        res = voxgate(data, ro, conf, "list")
        assert res.returncode == 0, res.stderr
        assert [line.split()[0] for line in res.stdout.splitlines()[1:]] == ["alice", "carol"]
        res = voxgate(data, ro, conf, "export", "carol")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["name"] == "carol"


def test_pending_wal_that_cannot_be_read_is_an_error_not_a_shorter_list(
    folders: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """A copy with the -wal but without its -shm (SQLite cannot rebuild the index on a
    read-only folder): the committed-but-unmerged users must not silently vanish."""
    data, ro, conf = folders
    live = tmp_path / "live"
    live.mkdir()
    with VoiceprintStore(live / "voiceprints.db", KEY) as daemon:
        enroll(daemon, "alice", 1)
        daemon._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # alice in the file itself
        enroll(daemon, "carol", 3)  # carol only in the WAL
        for name in ("voiceprints.db", "voiceprints.db-wal"):
            shutil.copy(live / name, data / name)
    for args in (("list",), ("export", "carol"), ("export", "alice")):
        res = voxgate(data, ro, conf, *args)
        assert res.returncode != 0, (args, res.stdout)
        assert "carol" not in res.stdout and "alice" not in res.stdout
        err = res.stderr
        assert "voiceprints.db-wal" in err and "read-only" in err, err
        assert "writable" in err  # says how to get at it
