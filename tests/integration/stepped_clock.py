"""Run `python -m voxgate ...` with a wall clock a test can step, for a daemon process:

    python stepped_clock.py STEP_FILE -m voxgate run -c voxgate.yaml

time.time() reads the machine's clock plus the seconds written in STEP_FILE (read again
whenever the file changes), as after an admin or NTP set the clock. The machine's clock is
never touched, and CLOCK_BOOTTIME / CLOCK_MONOTONIC run on as they do through a real step.
"""

from __future__ import annotations

import os
import runpy
import sys
import time

_machine = time.time
_step_file = ""  # set by the main block
_seen: tuple[int, float] = (-1, 0.0)  # (mtime_ns, step)


def _stepped() -> float:
    global _seen
    try:
        mtime = os.stat(_step_file).st_mtime_ns
        if mtime != _seen[0]:
            with open(_step_file, encoding="ascii") as f:
                _seen = (mtime, float(f.read() or 0))
    except (OSError, ValueError):
        pass
    return _machine() + _seen[1]


def step_to(path: str, seconds: float) -> None:
    """Set the step (for the test side): written whole, then renamed into place."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(repr(float(seconds)))
    os.replace(tmp, path)


if __name__ == "__main__":
    if sys.argv[2:4] != ["-m", "voxgate"]:
        sys.exit("usage: stepped_clock.py STEP_FILE -m voxgate ARGS...")
    _step_file = sys.argv[1]
    time.time = _stepped
    sys.argv = ["voxgate", *sys.argv[4:]]
    runpy.run_module("voxgate", run_name="__main__", alter_sys=True)
