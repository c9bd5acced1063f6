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


def test_a_data_folder_reached_through_systemds_link_is_handed_over(tmp_path: Path) -> None:
    # DynamicUser=yes with StateDirectory=voxgate: /var/lib/voxgate is a root-owned link to
    # private/voxgate, the folder the service's user owns. Nothing in it was handed over, so
    # a root command left root's files there (a new voiceprint database, its WAL).
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    data = private / "voxgate"
    data.mkdir()
    os.chown(data, UID, GID)
    (data / "voiceprints.db").write_text("db")
    (tmp_path / "voxgate").symlink_to("private/voxgate")

    changed = hand_over(tmp_path / "voxgate")

    assert [p.name for p in changed] == ["voiceprints.db"]
    assert (data / "voiceprints.db").stat().st_uid == UID


def test_a_link_the_folders_owner_made_is_not_followed(tmp_path: Path) -> None:
    # Only root's link is followed: the service's user could point its own anywhere.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.chown(elsewhere, UID + 1, GID + 1)
    (elsewhere / "f").write_text("root's")
    (tmp_path / "data").symlink_to(elsewhere)
    os.chown(tmp_path / "data", UID, GID, follow_symlinks=False)
    assert hand_over(tmp_path / "data") == []
    assert (elsewhere / "f").stat().st_uid == 0
