"""Reading the newest audit entries from the end of a JSON-lines file."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

from voxgate.api.decisions import BLOCK, MAX_LINE_BYTES, recent_events


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


def test_a_long_run_without_line_ends_is_one_skipped_line_held_in_bounded_memory(
    tmp_path: Path,
) -> None:
    # A crash can leave a run of NUL bytes at the end of a log. The reader glued each block
    # onto everything after it and split the lot again: memory grew with the run and time
    # with its square (48 MB took 17 s per GET /decisions).
    log = tmp_path / "audit.jsonl"
    _write(log, 3)
    with open(log, "ab") as f:
        f.write(b"\0" * (8 * MAX_LINE_BYTES))
    tracemalloc.start()
    got = recent_events(log, 10, None)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [e["seq"] for e in got.events] == [3, 2, 1]
    assert got.skipped_lines == 1 and got.complete
    assert peak < 3 * MAX_LINE_BYTES, peak


def test_lines_longer_than_a_block_still_read(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, 4, pad=3 * BLOCK)
    got = recent_events(log, 10, None)
    assert [e["seq"] for e in got.events] == [4, 3, 2, 1] and got.skipped_lines == 0


def test_a_line_with_nan_or_infinity_is_skipped(tmp_path: Path) -> None:
    # Python's json reads NaN/Infinity, and Flask writes them back as is: one such line (the
    # audit log never writes them) made GET /decisions answer text no JSON parser accepts.
    log = tmp_path / "audit.jsonl"
    _write(log, 2)
    with open(log, "a") as f:
        f.write('{"seq": 3, "event": "decision", "score": NaN}\n')
        f.write('{"seq": 4, "event": "decision", "score": -Infinity}\n')
    got = recent_events(log, 10, None)
    assert [e["seq"] for e in got.events] == [2, 1] and got.skipped_lines == 2
    json.dumps(got.events, allow_nan=False)


def test_a_deeply_nested_line_is_skipped_not_a_server_error(tmp_path: Path) -> None:
    # RecursionError got past the ValueError handler: every call to /decisions was a 500.
    log = tmp_path / "audit.jsonl"
    _write(log, 2)
    with open(log, "a") as f:
        f.write("[" * 20000 + "]" * 20000 + "\n")
    got = recent_events(log, 10, None)
    assert [e["seq"] for e in got.events] == [2, 1]
    assert got.skipped_lines == 1
