"""glibc malloc settings for a process that runs for months.

The loop makes and drops many short numpy buffers (audio, features, windows) in several
threads. With glibc's defaults each thread gets its own heap and large freed blocks stay in
the heap, so RSS creeps up with fragmentation (benchmarks/soak.py, real stages, 3 min: 152-163
MB with the defaults); glibc also raises its mmap threshold after the first big free, so a
long recording's buffer would stay in the heap for good. Hence two arenas and fixed thresholds.

The thresholds must not be too low: every attempt allocates the same ~15 MB of short buffers
(features, LSTM gates). At 128 kB each was a fresh mapping, and touching it cost ~3900 page
faults per 3 s utterance (tests/unit/test_malloc.py counts them) and about twice the time:
18.6-24.8 against 10.8-12.3 ms per embedding in four runs on the x86 machine this was
measured on (`MALLOC_MMAP_THRESHOLD_=131072 MALLOC_TRIM_THRESHOLD_=131072 voxgate bench
--no-torch` against plain `voxgate bench --no-torch`; the environment wins over these).

Below 4 MB they now come from the heap and are reused; the heap's top goes back to the OS only
past 8 MB free (at 4 MB, 7 of 10 processes handed back and faulted in ~1000 pages on every
attempt; at 6 and 8 MB none did). Buffers of 4 MB and more (two minutes of int16 audio, one
of float32) are still mapped and returned when freed. Soak, 3 min: 139 MB at 128 kB, 143-146
MB at 4/4 MB, 147-151 MB at 4/8 MB, 156 MB at 4/16 MB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

SETTINGS = {
    # Two heaps are enough for the loop, capture and MQTT threads.
    ("MALLOC_ARENA_MAX", M_ARENA_MAX): 2,
    ("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD): 4 * 1024 * 1024,
    ("MALLOC_TRIM_THRESHOLD_", M_TRIM_THRESHOLD): 8 * 1024 * 1024,
}


def tune_malloc() -> list[str]:
    """Apply SETTINGS (each unless its environment variable is set: that wins). Call before
    threads start. Returns what was set; [] where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return []
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    done = []
    for (env, param), value in SETTINGS.items():
        if env in os.environ:
            continue
        if mallopt(param, value) == 1:
            done.append(f"{env}={value}")
    if done:
        log.debug("malloc: %s", " ".join(done))
    return done
