"""Files a root shell leaves in the service's data folder are handed to the service's user.

The unit runs as `voxgate` (DynamicUser, or the static user the Ansible role makes). An
administrator who runs `sudo voxgate enroll ...` or `voxgate users erase ...` on the door
would otherwise leave root-owned files there (a new voiceprint database, its WAL, an audit
anchor) that the service then cannot write: enrollments would work once and then the door
would fail with "readonly database". So after a command run as root, everything root-owned
under the data folder goes to the folder's owner.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)


def hand_over(folder: Path) -> list[Path]:
    """chown root-owned entries under `folder` to the owner of `folder`; returns them.
    Does nothing unless we are root and the folder belongs to someone else."""
    if os.geteuid() != 0:
        return []
    try:
        owner = folder.stat()
    except OSError:
        return []
    if owner.st_uid == 0:
        return []
    changed: list[Path] = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            try:
                st = path.lstat()
                if st.st_uid == 0 and not stat.S_ISLNK(st.st_mode):
                    os.chown(path, owner.st_uid, owner.st_gid)
                    changed.append(path)
            except OSError as exc:
                log.warning("cannot hand %s to uid %d: %s", path, owner.st_uid, exc)
    if changed:
        log.info("gave %d file(s) in %s to uid %d", len(changed), folder, owner.st_uid)
    return changed
