"""The clock that measures time passed, suspend included, for telling clock steps apart.

The lockout book and the command gate compare the wall clock with a clock that is never
stepped: a jump between the two is a step (NTP, fake-hwclock, an admin). time.monotonic
stops while the machine is suspended (a Jetson put to sleep), so every wake-up looked like a
forward step as long as the sleep, and locks lasted that much longer. CLOCK_BOOTTIME (Linux)
runs through a suspend and is never stepped either; elsewhere the monotonic clock is what
there is.
"""

from __future__ import annotations

import time

# Read at import: the constant exists on Linux only (Python >= 3.7).
_BOOTTIME: int | None = getattr(time, "CLOCK_BOOTTIME", None)


def elapsed() -> float:
    """Seconds from an arbitrary start; runs through a suspend; never stepped."""
    if _BOOTTIME is not None:
        try:
            return time.clock_gettime(_BOOTTIME)
        except OSError:  # a kernel without it (before 2.6.39): not on any supported board
            pass
    return time.monotonic()
