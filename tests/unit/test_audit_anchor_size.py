"""The anchor is read no further than an anchor's size: the service's user owns the folder a
root shell's `voxgate users erase` writes in, and can leave the anchor as a link to /dev/zero."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

from voxgate.audit import AuditLog, anchor_path_for, verify


def test_an_anchor_far_larger_than_an_anchor_is_unreadable_not_read_whole(
    tmp_path: Path,
) -> None:
    # A sparse 100 MB file stands for /dev/zero (read without end: GBs, then the command's
    # audit line was lost to a MemoryError, or the OOM killer came).
    p = tmp_path / "audit.jsonl"
    AuditLog(p).append("decision", user="erin")
    anchor = anchor_path_for(p)
    anchor.unlink()
    with open(anchor, "wb") as f:
        f.truncate(100 * 2**20)
    tracemalloc.start()
    try:
        problems = verify(p).problems
        log = AuditLog(p)
        log.append("erase", user="erin")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20, peak
    assert any("unreadable anchor (larger than 64 kB: not an anchor)" in x for x in problems)
    assert log.pending == 0  # the erase is in the log, after the line recording the anchor
    assert [x["event"] for x in _lines(p)] == ["decision", "audit_anchor_gap", "erase"]
    assert os.path.getsize(anchor) < 1024  # and a new anchor in its place


def _lines(p: Path) -> list[dict[str, object]]:
    import json

    return [json.loads(x) for x in p.read_bytes().splitlines()]
