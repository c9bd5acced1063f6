"""What remembering a used MQTT command costs (UsedCommands.use: write + fsync + rename of
data_dir/command-nonces.json), and the file's size, for commands --gap-s apart by the
senders' clocks (all kept: the file at its largest for that rate). Put --dir on the door's
data disk: an SD card is slower than the build machine's disk.

    PYTHONPATH=daemon python benchmarks/bench_command_nonces.py
    PYTHONPATH=daemon python benchmarks/bench_command_nonces.py --dir /var/lib/voxgate -n 100
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from pathlib import Path

from _stats import report

from voxgate.mqtt.nonces import UsedCommands


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=200, help="commands (default 200)")
    p.add_argument("--gap-s", type=float, default=0.1, help="issued_at spacing (default 0.1)")
    p.add_argument("--dir", type=Path, default=None, help="where the file goes")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-nonces-") as tmp:
        path = Path(tmp) / "command-nonces.json"
        used = UsedCommands(path)
        start, ms = time.time(), []
        for i in range(args.n):
            issued = start + i * args.gap_s
            t0 = time.perf_counter()
            used.use(secrets.token_hex(16), issued, issued + 30.0, 5.0)
            ms.append((time.perf_counter() - t0) * 1000)
        report("use", ms)
        print(f"kept {len(used)} nonces, file {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
