"""A write refused on a read-only file system (an SD card the kernel remounted after errors)
is not answered with "free space on ...": `df` shows room there and the advice misleads."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest
from small_fs import fill, free, small_fs

from voxgate.decision import SequenceCounter


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
        assert "free space" not in said[0], said

        # A full disk is still told to free space.
        caplog.clear()
        fill(data)
        counter._save_log.reset()
        assert counter.next() == 3
        said = [r.getMessage() for r in caplog.records if "decision sequence" in r.getMessage()]
        assert said and f"the disk is full: free space on {data}" in said[0], said
        free(data)
