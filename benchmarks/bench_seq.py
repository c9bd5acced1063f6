"""What the door's decision sequence counter costs per decision (SequenceCounter.next()).

With the clock floor, a decision taken more than `reserve` milliseconds after the previous one
raises the counter's ceiling in its file (write + fsync + rename); a burst within the reserve
does not. Prints both, for a counter file in --dir (put it on the door's data disk: an SD card
is slower than the build machine's disk):
  spaced: decisions --gap-ms apart (each one past the ceiling)
  burst:  decisions back to back (the file written once per `reserve` numbers)

    PYTHONPATH=daemon python benchmarks/bench_seq.py
    PYTHONPATH=daemon python benchmarks/bench_seq.py --dir /var/lib/voxgate -n 50
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _stats import report

from voxgate.decision import SequenceCounter


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=30, help="decisions per run (default 30)")
    p.add_argument("--gap-ms", type=float, default=150.0, help="spacing of the spaced run")
    p.add_argument("--dir", type=Path, default=None, help="where the counter file goes")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-seq-") as tmp:
        for name, gap_s in (("spaced", args.gap_ms / 1000), ("burst", 0.0)):
            counter = SequenceCounter(Path(tmp) / f"{name}.json")
            ms = []
            for _ in range(args.n):
                time.sleep(gap_s)
                t0 = time.perf_counter()
                counter.next()
                ms.append((time.perf_counter() - t0) * 1000)
            report(name, ms)


if __name__ == "__main__":
    main()
