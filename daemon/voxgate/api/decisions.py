"""Recent audit events, read from the end of the audit log (hash-chained JSON lines).

The audit log belongs to voxgate.audit; this module only reads it: one JSON object per line
with at least `seq`, `ts` and `event`. Lines that do not parse are skipped and counted (the
log's own `voxgate audit verify` reports what is wrong with them).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BLOCK = 64 * 1024
MAX_SCAN_BYTES = 64 * 1024 * 1024  # never read more than this per request, however big the log
MAX_LINE_BYTES = 1024 * 1024  # audit entries are small; a longer "line" is damage (e.g. NULs)
_OVERLONG = b"\0"  # stands for a skipped overlong line: not JSON, so counted as skipped


@dataclass
class Recent:
    events: list[dict[str, Any]] = field(default_factory=list)
    skipped_lines: int = 0
    scanned_bytes: int = 0
    complete: bool = True  # False when the scan stopped at MAX_SCAN_BYTES


def _lines_backwards(path: Path, limit_bytes: int, stats: Recent) -> Iterator[bytes]:
    """Yield the file's lines from last to first, reading blocks from the end."""
    with open(path, "rb") as f:
        pos = f.seek(0, os.SEEK_END)
        # The line being read, as blocks from last to first: joined once when its start is
        # found (gluing each block onto the rest took time in the square of a line's length).
        pending: list[bytes] = []
        pending_len = 0
        while pos > 0:
            if stats.scanned_bytes >= limit_bytes:
                stats.complete = False
                return
            step = min(BLOCK, pos)
            pos -= step
            f.seek(pos)
            chunk = f.read(step)
            stats.scanned_bytes += step
            parts = chunk.split(b"\n")
            if pending_len <= MAX_LINE_BYTES:
                pending.append(parts[-1])
            pending_len += len(parts[-1])
            if len(parts) == 1:
                continue
            yield from _whole(pending, pending_len)
            for line in reversed(parts[1:-1]):
                if line.strip():
                    yield line
            pending, pending_len = [parts[0]], len(parts[0])
        yield from _whole(pending, pending_len)


def _whole(pieces: list[bytes], length: int) -> Iterator[bytes]:
    if length > MAX_LINE_BYTES:
        yield _OVERLONG
        return
    line = b"".join(reversed(pieces))
    if line.strip():
        yield line


def _no_constant(name: str) -> Any:
    # NaN/Infinity are not JSON: the audit log never writes them, and passed on they made
    # the whole response unreadable to a strict client.
    raise ValueError(f"{name} is not JSON")


def recent_events(
    path: Path,
    limit: int,
    events: set[str] | None = None,
    *,
    max_scan_bytes: int = MAX_SCAN_BYTES,
) -> Recent:
    """Up to `limit` newest entries (newest first) whose `event` is in `events` (None: all)."""
    out = Recent()
    if not path.exists():
        return out
    for raw in _lines_backwards(path, max_scan_bytes, out):
        try:
            rec = json.loads(raw, parse_constant=_no_constant)
        # RecursionError: an edited line nested "[[[[..." made every call a 500.
        except (ValueError, RecursionError):  # not JSON, not UTF-8 (ValueErrors), NaN/Infinity
            out.skipped_lines += 1
            continue
        # A damaged line may still parse; an `event` that is not a string cannot be filtered
        # on (a list in the `in` test raised TypeError: one such line made every call a 500).
        if not isinstance(rec, dict) or not isinstance(rec.get("event"), str):
            out.skipped_lines += 1
            continue
        if events is not None and rec.get("event") not in events:
            continue
        out.events.append(rec)
        if len(out.events) >= limit:
            break
    if out.skipped_lines:
        log.warning("%s: skipped %d unreadable audit line(s)", path, out.skipped_lines)
    return out
