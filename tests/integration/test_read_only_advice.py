"""A write refused on a read-only file system (an SD card the kernel remounted after errors)
is not answered with "free space on ...": `df` shows room there and the advice misleads."""

from __future__ import annotations

import contextlib
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from small_fs import fill, free, small_fs

from voxgate.decision import SequenceCounter

KEY = bytes(range(32))


@contextlib.contextmanager
def _alice_on_a_read_only_disk(tmp_path: Path, full: bool) -> Iterator[tuple[Path, Any]]:
    """A voiceprint store holding alice on a 1 MiB file system (filled first if `full`),
    remounted read-only for the body; yields the store's path and an embedding."""
    import numpy as np

    from voxgate.voiceprints import VoiceprintStore

    emb = np.random.default_rng(1).standard_normal((3, 256))
    data = tmp_path / "data"
    with small_fs(data, "1m"):
        path = data / "voiceprints.db"
        with VoiceprintStore(path, KEY) as store:
            store.add_user("alice", emb, "test-model/1", {"takes": 3})
        if full:
            fill(data)
        subprocess.run(["mount", "-o", "remount,ro", str(data)], check=True)
        try:
            yield path, emb
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(data)], check=True)


def test_a_read_only_disk_is_named_as_such_not_as_full(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="voxgate")
    data = tmp_path / "data"
    with small_fs(data, "1m"):
        counter = SequenceCounter(data / "decision-seq.json", reserve=1, clock=None)
        assert counter.next() == 1
        subprocess.run(["mount", "-o", "remount,ro", str(data)], check=True)
        try:
            assert counter.next() == 2  # the decision still goes out
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(data)], check=True)
        said = [r.getMessage() for r in caplog.records if "decision sequence" in r.getMessage()]
        assert said and "read-only file system" in said[0], said
        assert "free space" not in said[0] and "once there is room" not in said[0], said

        # A full disk is still told to free space.
        caplog.clear()
        fill(data)
        counter._save_log.reset()
        assert counter.next() == 3
        said = [r.getMessage() for r in caplog.records if "decision sequence" in r.getMessage()]
        assert said and f"the disk is full: free space on {data}" in said[0], said
        free(data)


@pytest.mark.parametrize("full", [False, True], ids=["with-room", "full-then-read-only"])
def test_the_voiceprint_store_and_rekey_name_a_read_only_disk_as_such(
    tmp_path: Path, full: bool
) -> None:
    """voiceprints.py and rekey.py kept their own "; the disk is full: free space on ..."
    suffix: a card the kernel remounted read-only got no advice at all ("unable to open
    database file"), or, if it was also full, "free space", which `df` answers with room.
    They use ownership.what_to_do now, as the decision sequence does."""
    from voxgate.rekey import rekey
    from voxgate.voiceprints import StoreError, VoiceprintStore

    said = []
    with _alice_on_a_read_only_disk(tmp_path, full) as (path, _):
        with pytest.raises(StoreError) as err:
            VoiceprintStore(path, KEY)  # `voxgate enroll`, `users erase`
        said.append(str(err.value))
        with pytest.raises(StoreError) as err:
            rekey(path, KEY, bytes(range(1, 33)))
        said.append(str(err.value))
    data = path.parent
    for text in said:
        assert f"{data} is on a read-only file system" in text, said
        assert "free space" not in text, said


def test_the_daemons_store_on_a_full_read_only_disk_does_not_wait_for_room(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The daemon reads its voiceprints from a full disk and writes again once there is
    room. On a disk both full and read-only its ERROR named the read-only file system, then
    said enrolling would work "until there is room": no room can be made there, and the
    message sent the administrator to wait for, or free, space."""
    from voxgate.voiceprints import StoreError, VoiceprintStore

    caplog.set_level(logging.ERROR, logger="voxgate")
    with (
        _alice_on_a_read_only_disk(tmp_path, full=True) as (path, emb),
        VoiceprintStore(path, KEY, read_when_full=True) as store,  # the daemon's
    ):
        assert store.get("alice") is not None  # she is still let in
        with pytest.raises(StoreError) as err:
            store.add_user("bob", emb, "test-model/1", {"takes": 3})
    data = path.parent
    said = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    assert said and f"{data} is on a read-only file system" in said[0], said
    assert "does not pass by itself" in said[0], said
    assert "until there is room" not in said[0] and "free space" not in said[0], said
    assert "read-only file system" in str(err.value) and "free space" not in str(err.value)
