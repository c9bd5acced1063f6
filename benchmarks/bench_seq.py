"""What the door's decision sequence counter costs per decision (SequenceCounter.next()).

The counter raises its ceiling in its file (write + fsync + rename) when a number passes it:
with the default reserve (60,000, one minute of the clock's milliseconds) about once a minute
and at the first decision. Prints spaced decisions and a burst, for a counter file in --dir
(put it on the door's data disk: an SD card is slower than the build machine's disk), with
the default reserve and with --reserve (100, the reserve before the clock floor, when every
decision more than 0.1 s after the last one wrote the file):
  spaced: decisions --gap-ms apart
  burst:  decisions back to back

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
    p.add_argument("--reserve", type=int, default=100, help="the other reserve (default 100)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-seq-") as tmp:
        runs = [(f"{kind}, reserve {r}", gap, r) for r in (60_000, args.reserve)
                for kind, gap in (("spaced", args.gap_ms / 1000), ("burst", 0.0))]  # fmt: skip
        for i, (name, gap_s, reserve) in enumerate(runs):
            counter = SequenceCounter(Path(tmp) / f"{i}.json", reserve=reserve)
            ms = []
            for _ in range(args.n):
                time.sleep(gap_s)
                t0 = time.perf_counter()
                counter.next()
                ms.append((time.perf_counter() - t0) * 1000)
            report(name, ms)


if __name__ == "__main__":
    main()
