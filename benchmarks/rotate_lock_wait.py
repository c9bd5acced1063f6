"""How long the door's audit writes wait while `voxgate audit rotate` runs, before and after.

A log of --lines chained lines (the daemon's decision line) is rotated by another process
(voxgate.audit.rotate, as the CLI calls it) while a writer in this process appends a line
every --interval seconds, as the daemon does for each decision (fsync on, real flock).
Printed per version: the rotation's own time, and the writer's longest and median append
while it ran (an append outside any rotation for scale). "before" is voxgate/audit.py at
--before (a git ref; default 9130db8, the last commit whose rotation held the lock
throughout) in a copy of this package, "after" is this tree's.

    PYTHONPATH=daemon python benchmarks/rotate_lock_wait.py [--lines 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from audit_backlog_cost import FIELDS as DECISION

from voxgate.audit import GENESIS, AuditLog, anchor_path_for, canonical, verify, write_anchor

REPO = Path(__file__).resolve().parents[1]
BEFORE = "9130db8"  # main before rotate() checked and copied the log without its lock
FIELDS = {"event": "decision", **DECISION}  # a door decision's line, as the daemon writes it
ROTATE = """
import sys, time
from pathlib import Path
from voxgate.audit import rotate
start = time.perf_counter()
rotate(Path(sys.argv[1]), key=None)
print(time.perf_counter() - start)
"""


def make_log(log: Path, lines: int) -> None:
    """A chained log and its anchor, written at once (appending 100k lines one by one, each
    fsynced, would take minutes and measure nothing here)."""
    records = AuditLog._chain([{"ts": 1.7e9 + i, **FIELDS} for i in range(lines)], 0, GENESIS)
    log.write_bytes(b"".join(canonical(r) + b"\n" for r in records))
    write_anchor(anchor_path_for(log), lines, records[-1]["hash"], None, fsync=True)


def package_at(ref: str, into: Path) -> Path:
    """A copy of this tree's voxgate package with audit.py as it is at `ref`."""
    shutil.copytree(
        REPO / "daemon" / "voxgate", into / "voxgate", ignore=shutil.ignore_patterns("__pycache__")
    )
    old = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{ref}:daemon/voxgate/audit.py"],
        capture_output=True,
        check=True,
    ).stdout
    (into / "voxgate" / "audit.py").write_bytes(old)
    return into


def one_run(
    template: Path, work: Path, pythonpath: Path, interval: float
) -> tuple[float, float, float, int]:
    """(rotation s, longest append s, median append s, appends) for one rotation."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    log = work / "audit.jsonl"
    shutil.copy(template, log)
    shutil.copy(anchor_path_for(template), anchor_path_for(log))
    writer = AuditLog(log, fsync=True)
    waits: list[float] = []
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            writer.append("decision", user="bob", outcome="granted", score=0.8)
            waits.append(time.perf_counter() - start)
            stop.wait(interval)

    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    thread = threading.Thread(target=write)
    thread.start()
    try:
        done = subprocess.run(
            [sys.executable, "-c", ROTATE, str(log)], capture_output=True, text=True, env=env
        )
    finally:
        stop.set()
        thread.join()
    if done.returncode != 0:
        raise SystemExit(f"rotate failed: {done.stderr}")
    rep = verify(log, archive_dir=work)
    if not rep.ok or not any("is intact and ends where" in n for n in rep.notes):
        raise SystemExit(f"after the rotation the log does not verify: {rep.problems}")
    return float(done.stdout), max(waits), statistics.median(waits), len(waits)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--interval", type=float, default=0.01, help="s between the writer's lines")
    ap.add_argument("--before", default=BEFORE, help="git ref whose audit.py is 'before'")
    ap.add_argument("--dir", type=Path, default=None, help="where the logs go (default: TMPDIR)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        template = root / "template.jsonl"
        make_log(template, args.lines)
        (root / "before").mkdir()
        versions = {
            f"before ({args.before})": package_at(args.before, root / "before"),
            "after (this tree)": REPO / "daemon",
        }
        print(
            f"{args.lines} lines ({template.stat().st_size / 1e6:.1f} MB), a writer line every "
            f"{args.interval * 1000:.0f} ms, {args.repeat} rotation(s) each, logs in {root}"
        )
        quiet = AuditLog(root / "quiet.jsonl", fsync=True)
        alone = []
        for _ in range(20):
            start = time.perf_counter()
            quiet.append("decision", user="bob", outcome="granted", score=0.8)
            alone.append(time.perf_counter() - start)
        print(
            f"one append with no rotation running: median {statistics.median(alone) * 1000:.1f} ms"
        )
        for name, path in versions.items():
            runs = [
                one_run(template, root / "work", path, args.interval) for _ in range(args.repeat)
            ]
            longest = [r[1] for r in runs]
            print(
                f"{name}: rotation {statistics.median(r[0] for r in runs):.2f} s; the writer's "
                f"longest wait per rotation {', '.join(f'{w * 1000:.0f}' for w in longest)} ms "
                f"(median append {statistics.median(r[2] for r in runs) * 1000:.1f} ms, "
                f"{sum(r[3] for r in runs)} appends)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
