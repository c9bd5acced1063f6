"""ownership.hand_over: root-owned files in the service's folder go to the folder's owner,
and nothing outside the folder can be reached through it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from voxgate.ownership import hand_over

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")

UID = GID = 61235


def test_root_owned_entries_are_handed_over_but_not_through_links(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    os.chown(data, UID, GID)
    (data / "voiceprints.db").write_text("db")
    (data / "sub" / "anchor").write_text("a")
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "shadow"
    secret.write_text("root only")
    (data / "link-to-file").symlink_to(secret)
    (data / "link-to-dir").symlink_to(outside)
    os.link(secret, data / "hardlink")  # a second name for a file that is not the service's

    changed = {p.relative_to(data).as_posix() for p in hand_over(data)}

    assert changed == {"sub", "voiceprints.db", "sub/anchor"}
    for name in changed:
        assert ((data / name).stat().st_uid, (data / name).stat().st_gid) == (UID, GID)
    assert secret.stat().st_uid == 0 and outside.stat().st_uid == 0
    assert (data / "link-to-file").lstat().st_uid == 0


def test_nothing_changes_when_the_folder_is_roots(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    assert hand_over(tmp_path) == [] and (tmp_path / "f").stat().st_uid == 0
    assert hand_over(tmp_path / "missing") == []
