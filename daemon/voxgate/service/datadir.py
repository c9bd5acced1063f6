"""The daemon's data folder: that it can be written, that no other daemon runs on it, and
that every file the daemon uses there is this user's to read and write. Checked first at
start (service/loop.py), and by `voxgate config check --deep` (service/preflight.py)."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from voxgate.config import VoxgateConfig
from voxgate.mqtt.nonces import FILE_NAME as USED_COMMANDS_FILE


def probe_writable(folder: Path) -> None:
    """Raise OSError unless a file can be created in `folder` (made if missing). A data
    folder that is read-only failed later and less clearly (exit 69, "cannot use the
    voiceprint database (unable to open database file)")."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryFile(dir=folder):
        pass


class DataDirInUse(Exception):
    """Another daemon holds the data folder (its message says what to do)."""


def hold_data_dir(folder: Path) -> int:
    """Take an exclusive flock on the data folder itself, held for the daemon's life (the
    kernel drops it however the process ends); returns the descriptor to close at the end.
    Two daemons on one folder (a `voxgate run` started by hand beside the service: dsnoop
    lets both read the microphone) each answered every attempt, counted each failure twice
    and took the MQTT connection from each other. The folder and not a file in it: a lock
    file made by root would shut out the service's own user."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirInUse(
            f"another voxgate daemon is running on data_dir {folder}: two on one door answer "
            "every attempt twice, count each failure twice and take the MQTT connection from "
            "each other. Stop the other one first (systemctl stop voxgate, or the "
            "`voxgate run` started by hand)"
        ) from None
    return fd


def data_dir_held(folder: Path) -> bool | None:
    """Whether a process holds a flock on `folder` (a daemon running on it, hold_data_dir),
    read from /proc/locks: asking by taking the lock, even for a moment, would make a daemon
    starting at that moment exit as "another voxgate daemon is running". None when it
    cannot be told (no /proc, the folder not there). Matched on the inode alone: on btrfs
    the device stat() gives is not the one /proc/locks prints, and a stray match only means
    waiting for a daemon that is not there, as before."""
    try:
        ino = folder.stat().st_ino
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        # "6: FLOCK  ADVISORY  WRITE 8470 fe:00:2155753 0 EOF" (a waiter: "6: -> FLOCK ...")
        fields = line.split()
        if "FLOCK" in fields and any(":" in f and f.rsplit(":", 1)[1] == str(ino) for f in fields):
            return True
    return False


def data_files(cfg: VoxgateConfig) -> list[Path]:
    """Every file the daemon reads and writes under its config (those that exist are
    checked at start), with the WAL and shared-memory files of its SQLite databases."""
    data = Path(cfg.data_dir)
    audit = Path(cfg.audit.path or data / "audit.jsonl")
    dbs = [Path(cfg.speaker.database or data / "voiceprints.db")]
    dbs.append(Path(cfg.lockout.path or data / "lockout.db"))
    if cfg.challenge.mode != "off":
        dbs.append(data / "replay.db")
    if cfg.fleet.enabled:
        dbs.append(Path(cfg.fleet.state_file or data / "fleet.db"))
    files = [p.with_name(p.name + end) for p in dbs for end in ("", "-wal", "-shm")]
    files += [audit, audit.with_name(audit.name + ".anchor"), data / "decision-seq.json"]
    if cfg.mqtt.enabled:
        files.append(data / USED_COMMANDS_FILE)
    if cfg.audit.keep_audio:
        files.append(Path(cfg.audit.audio_dir or data / "audio"))
    return files


def check_access(paths: list[Path]) -> None:
    """Raise PermissionError for a file this user cannot read and write. Such a file (left
    by a command run as root without the hand-over to the service's user) failed in a
    different way for each: the audit log and lockout state were given up in memory, the
    replay store said "not a replay-fingerprint database", the voiceprints "restore from a
    backup"; none said whose the file is."""
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue  # absent: created when needed
        if not os.access(path, os.R_OK | os.W_OK | (os.X_OK if path.is_dir() else 0)):
            raise PermissionError(
                errno.EACCES,
                f"{path} cannot be read and written by this user (uid {os.geteuid()}): it "
                f"belongs to uid {st.st_uid}, mode {st.st_mode & 0o7777:o}. Give it to the "
                "service's user (chown), as the daemon's own files are",
            )
