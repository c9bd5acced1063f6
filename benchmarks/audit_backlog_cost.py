"""CPU one audit append costs while the disk is full, by the number of lines held in memory.

While the disk refuses writes, AuditLog holds lines (up to audit.MAX_PENDING) and every
append, and the daemon's housekeeping once a second, tries to write them all. This mounts a
small tmpfs (as root), fills it, holds N lines and times one more append (CPU time, median
of --repeat).

    sudo PYTHONPATH=daemon python benchmarks/audit_backlog_cost.py [--held 100 1000 10000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from voxgate.audit import AuditLog

FIELDS = {
    "user": "alice",
    "outcome": "denied",
    "reasons": ["no_match"],
    "score": 0.41,
    "device": "door-1",
    "speech_s": 2.1,
}


def fill(folder: Path) -> None:
    try:
        with open(folder / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--held", type=int, nargs="+", default=[100, 1000, 5000, 10000])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("audit_backlog_cost: needs root to mount a small tmpfs", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", tmp], check=True)
        try:
            log = AuditLog(folder / "audit.jsonl", fsync=False)
            fill(folder)
            for held in sorted(args.held):
                cpu = []
                for _ in range(args.repeat):
                    # Held lines put in place directly: appending them one by one costs
                    # the sum of every step (minutes at 10,000 without the room check).
                    while log.pending < held:
                        log._pending.append({"ts": time.time(), "event": "decision", **FIELDS})
                    t = time.process_time()
                    log.append("decision", **FIELDS)
                    cpu.append((time.process_time() - t) * 1000)
                print(f"{held:6d} lines held: {statistics.median(cpu):7.1f} ms CPU per append")
        finally:
            subprocess.run(["umount", "-l", tmp], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
