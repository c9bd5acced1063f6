"""Files a root shell leaves in the service's data folder are handed to the service's user.

The unit runs as `voxgate` (DynamicUser, or the static user the Ansible role makes). An
administrator who runs `sudo voxgate enroll ...` or `voxgate users erase ...` on the door
would otherwise leave root-owned files there (a new voiceprint database, its WAL, an audit
anchor) that the service then cannot write: enrollments would work once and then the door
would fail with "readonly database". So after a command run as root, everything root-owned
under the data folder goes to the folder's owner.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def disk_is_full(path: Path) -> bool:
    """Whether the folder of `path` has (next to) no room left. SQLite then may report "disk
    I/O error" (it cannot size the WAL index), which names neither cause nor remedy."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


def is_read_only(path: Path) -> bool:
    """Whether the folder of `path` is on a file system mounted read-only."""
    try:
        return bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def disk_hint(path: Path) -> str:
    """ "; " + what_to_do() for an SQLite error in the folder of `path` when its file system
    is read-only or full (SQLite says "unable to open database file" or "disk I/O error",
    naming neither), else "" (a locked or damaged file has its own advice)."""
    return f"; {what_to_do(path)}" if is_read_only(path) or disk_is_full(path) else ""


def what_to_do(path: Path) -> str:
    """What to do about a write refused in the folder of `path`, read off its file system.
    "Free space" on a read-only one (an SD card the kernel remounted after errors) sent the
    administrator looking at `df`, which showed room."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return f"check {path.parent} and the disk (dmesg)"
    if st.f_flag & os.ST_RDONLY:
        return (
            f"{path.parent} is on a read-only file system (an SD card the kernel remounted "
            "read-only after errors? see dmesg)"
        )
    if disk_is_full(path):
        return f"the disk is full: free space on {path.parent}"
    return f"check {path.parent}: its permissions, and the disk (dmesg)"


def create_private(path: Path) -> None:
    """Create `path` empty, mode 0600, unless it exists. For SQLite files that name users or
    hold voice-derived data: SQLite makes a missing file (and later its -wal and -shm, which
    take the file's mode) with the umask's mode, 0644 when the daemon or a command runs
    outside the unit's UMask=0077. Errors (a read-only folder) are left to SQLite to report."""
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    # One made before (by an older version, or by SQLite under a looser umask): closed to
    # others too, with its -wal and -shm (those keep their mode while they exist).
    for each in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(OSError):
            st = os.stat(each, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077 and st.st_uid == os.geteuid():
                os.chmod(each, 0o600)
                log.info("%s was readable by others (mode %o); now 0600", each, st.st_mode & 0o777)


def create_whole(path: Path, build: Callable[[sqlite3.Connection], None]) -> None:
    """Make the SQLite file `path` (mode 0600) with what `build` writes into it, in one step:
    built under a temporary name and linked into place. So a state file that exists is never
    empty (an empty one is damage: a power cut, a failed restore), also while another
    process creates it; when two create it at once, the second keeps the first's."""
    tmp = path.with_name(f".{path.name}.new-{os.getpid()}-{os.urandom(4).hex()}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        db = sqlite3.connect(str(tmp), isolation_level=None)
        try:
            build(db)
        finally:
            db.close()
        fsync_path(tmp)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it meanwhile: use theirs
        except OSError:  # a file system without hard links (vfat)
            if not path.exists():
                os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                tmp.with_name(tmp.name + suffix).unlink()


def fsync_path(path: Path) -> None:
    """fsync a file, or a folder (its entries: a rename or link into it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hand_over(folder: Path) -> list[Path]:
    """chown root-owned entries under `folder` to the owner of `folder`; returns them.
    Does nothing unless we are root and the folder belongs to someone else.

    The folder's owner can change its contents while this runs, so nothing here follows a
    name twice: the walk holds directory fds and never enters symlinks, and each entry is
    opened without following links, checked through its fd and changed through that fd.
    A file with other hard links is skipped (it may be someone else's file linked in)."""
    if os.geteuid() != 0:
        return []
    try:
        # DynamicUser=: /var/lib/voxgate is systemd's (root's) link to private/voxgate, and
        # fwalk below enters no link, so nothing was handed over on such a door. A link the
        # folder's owner made is not followed.
        if folder.is_symlink() and folder.lstat().st_uid == 0:
            folder = Path(os.path.realpath(folder))
        owner = folder.stat()
    except OSError:
        return []
    if owner.st_uid == 0:
        return []
    changed: list[Path] = []
    for root, dirs, files, root_fd in os.fwalk(folder, follow_symlinks=False):
        for name in dirs + files:
            path = Path(root) / name
            try:
                if _hand_over_one(name, root_fd, owner.st_uid, owner.st_gid):
                    changed.append(path)
            except OSError as exc:
                log.warning("cannot hand %s to uid %d: %s", path, owner.st_uid, exc)
    if changed:
        log.info("gave %d file(s) in %s to uid %d", len(changed), folder, owner.st_uid)
    return changed


def _hand_over_one(name: str, dir_fd: int, uid: int, gid: int) -> bool:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if st.st_uid != 0 or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return False
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(name, flags, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)  # the inode we hold, whatever the name points to now
        if st.st_uid != 0 or (stat.S_ISREG(st.st_mode) and st.st_nlink > 1):
            return False
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            return False
        os.fchown(fd, uid, gid)
        return True
    finally:
        os.close(fd)
