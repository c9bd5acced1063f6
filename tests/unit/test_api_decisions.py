"""Reading the newest audit entries from the end of a JSON-lines file."""

from __future__ import annotations

import json
from pathlib import Path

from voxgate.api.decisions import BLOCK, recent_events


def _write(path: Path, n: int, pad: int = 0) -> None:
    with open(path, "w") as f:
        for i in range(1, n + 1):
            event = "decision" if i % 3 else "lockout"
            f.write(json.dumps({"seq": i, "event": event, "pad": "x" * pad}) + "\n")


def test_newest_first_across_block_boundaries(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, 400, pad=997)  # ~1 KB lines: many cross a 64 KB block edge
    assert log.stat().st_size > 4 * BLOCK
    got = recent_events(log, 500, None)
    assert [e["seq"] for e in got.events] == list(range(400, 0, -1))
    assert got.skipped_lines == 0 and got.complete
    only = recent_events(log, 5, {"lockout"})
    assert [e["seq"] for e in only.events] == [399, 396, 393, 390, 387]


def test_damaged_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, 5)
    with open(log, "a") as f:
        f.write('{"seq": 6, "event": "decision"\n[1, 2]\n\n\xff\n')
    got = recent_events(log, 10, {"decision"})
    assert [e["seq"] for e in got.events] == [5, 4, 2, 1]
    assert got.skipped_lines == 3


def test_scan_is_bounded(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, 400, pad=997)
    got = recent_events(log, 500, {"no-such-event"}, max_scan_bytes=2 * BLOCK)
    assert got.events == [] and not got.complete
    assert got.scanned_bytes == 2 * BLOCK


def test_missing_log_is_empty(tmp_path: Path) -> None:
    got = recent_events(tmp_path / "absent.jsonl", 10, None)
    assert got.events == [] and got.complete
