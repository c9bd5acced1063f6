"""Replay check: peak memory and time of one check against N stored answers with many short
loud runs (a ticking or clicking background, or choppy noise), the prefilter's worst case.

    PYTHONPATH=daemon python benchmarks/bench_replay_memory.py --stored 1000 [--seconds 15]
        [--copies 0]
    PYTHONPATH=daemon python benchmarks/bench_replay_memory.py --open --stored 5000 \
        [--seconds 15] [--budget-mb 64]

The stored answers are made as fingerprints directly (random bits, loud in runs of 6 frames
with 2 quiet frames between: 188 runs in 15 s); the new answer is one more like them, checked
by ReplayDetector.check_and_add() on audio of the same rhythm. `--copies K`: K of the stored
answers are earlier replays of the second check's answer (each one a possible match the
prefilter passes on). Prints the wall time of two checks, how many stored answers the second
compared exactly, and the process's peak resident memory (ru_maxrss) before and after them.

`--open`: the daemon's path instead. The answers are written into a replay.db file, then a
ReplayDetector opens it as the daemon does at start (reading every row into the in-memory
copy, within the memory budget `--budget-mb`, challenge.replay_memory_mb); prints how many
frames it holds, the resident memory the open added (VmRSS after minus before) and its peak
(VmHWM, reset just before), each per stored second of answer held.
"""

from __future__ import annotations

import argparse
import gc
import logging
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from voxgate import replay
from voxgate.replay_index import FingerprintIndex


def choppy_audio(seconds: float, seed: int) -> np.ndarray:
    """30 ms noise bursts every 80 ms."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * 16000))
    for i in range(0, len(out) - 480, 1280):
        out[i : i + 480] = rng.normal(0, 5000, 480)
    return out.clip(-32768, 32767).astype(np.int16)


def choppy_fingerprint(frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**32, frames, dtype=np.uint64).astype(np.uint32)
    return bits, (np.arange(frames) % 8) < 6


def _status(field: str) -> float:
    """A VmRSS/VmHWM line of /proc/self/status, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def open_store(stored: int, seconds: float, budget_mb: int) -> None:
    """Write `stored` choppy answers into a file, then open it as the daemon does."""
    pcm = choppy_audio(seconds, 0)
    frames = len(replay.fingerprint(pcm)[0])
    with tempfile.TemporaryDirectory(prefix="bench_replay_memory_") as tmp:
        path = Path(tmp) / "replay.db"
        replay.ReplayDetector(path, window_s=10**9).close()  # the current schema
        with sqlite3.connect(path) as db:
            for i in range(stored):  # one row at a time: the writer stays small
                bits, loud = choppy_fingerprint(frames, i + 1)
                db.execute(
                    "INSERT INTO fingerprints (created_at, frames, fp, loud) VALUES (?, ?, ?, ?)",
                    (1.0 + i, int(loud.sum()), bits.astype("<u4").tobytes(), np.packbits(loud)),
                )
        db.close()
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = _status("VmRSS")
        t0 = time.perf_counter()
        det = replay.ReplayDetector(
            path, window_s=10**9, max_rows=100_000, max_frames=replay.frames_for(budget_mb)
        )
        open_ms = (time.perf_counter() - t0) * 1000
        held, rows = det._index.frames, len(det._index)
        after, peak_open = _status("VmRSS"), _status("VmHWM")
        t0 = time.perf_counter()
        det.check_and_add(choppy_audio(seconds, 1), 2.0 * stored)
        check_ms = (time.perf_counter() - t0) * 1000
        peak = _status("VmHWM")
        det.close()
    per_s = held / 100
    print(
        f"{stored} stored answers of {seconds:g} s ({frames} frames each), budget {budget_mb} MB: "
        f"opened in {open_ms:.0f} ms holding {rows} answers, {held} frames "
        f"({per_s:.0f} s of answer); resident memory +{after - before:.1f} MB after the "
        f"open ({(after - before) * 1024 / per_s:.2f} kB per second held), peak "
        f"+{peak_open - before:.1f} MB ({(peak_open - before) * 2**20 / held:.1f} bytes a "
        f"frame); one check {check_ms:.0f} ms, peak with it +{peak - before:.1f} MB; "
        f"process peak {peak:.0f} MB"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stored", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=15.0, help="length of each answer")
    ap.add_argument("--copies", type=int, default=0, help="stored replays of the 2nd answer")
    ap.add_argument("--open", action="store_true", help="open a replay.db as the daemon does")
    ap.add_argument(
        "--budget-mb",
        type=int,
        default=replay.DEFAULT_MEMORY_MB,
        help="with --open: challenge.replay_memory_mb (default %(default)s)",
    )
    args = ap.parse_args()
    if args.stored < 1 or not 1 <= args.seconds <= 120 or not 0 <= args.copies <= args.stored:
        print(
            "bench_replay_memory.py: --stored >= 1, --seconds 1..120, --copies 0..stored",
            file=sys.stderr,
        )
        return 2
    logging.getLogger("voxgate.replay").setLevel(logging.ERROR)
    if args.open:
        open_store(args.stored, args.seconds, args.budget_mb)
        return 0
    pcm = choppy_audio(args.seconds, 0)
    frames = len(replay.fingerprint(pcm)[0])
    with tempfile.TemporaryDirectory(prefix="bench_replay_memory_") as tmp:
        # No memory budget: this measures the time of a check against every stored answer.
        det = replay.ReplayDetector(
            Path(tmp) / "replay.db", window_s=10**9, max_rows=100_000, max_frames=10**9
        )
        copy = replay.fingerprint(pcm)
        index = FingerprintIndex()
        for i in range(args.stored):  # straight into the in-memory copy, as _load() does
            fp = copy if i < args.copies else choppy_fingerprint(frames, i + 1)
            index.add(i + 1, 1.0, *fp)
        t0 = time.perf_counter()
        if hasattr(index, "build"):  # as the detector does at start (else the first check)
            index.build()
        build_ms = (time.perf_counter() - t0) * 1000
        det._index = index
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        ms = []
        for i, x in enumerate((choppy_audio(args.seconds, 1), pcm)):
            t0 = time.perf_counter()
            det.check_and_add(x, 2.0 + i)
            ms.append((time.perf_counter() - t0) * 1000)
        examined = det.last_examined
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        det.close()
    print(
        f"{args.stored} stored answers of {args.seconds:g} s ({frames} frames each): "
        f"in-memory array built in {build_ms:.0f} ms; "
        f"first check {ms[0]:.0f} ms, second {ms[1]:.0f} ms "
        f"({examined} compared exactly); "
        f"peak resident memory {base:.0f} MB before the checks, {peak:.0f} MB after"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
