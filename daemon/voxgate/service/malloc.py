"""glibc malloc settings for a process that runs for months.

The loop makes and drops many short numpy buffers (audio, features, windows) in several
threads. With glibc's defaults each thread gets its own heap and large freed blocks stay in
the heap, so RSS creeps up with fragmentation. Measured with benchmarks/soak.py (real
stages, 3 min): RSS settled at 152-163 MB with the defaults, 148-150 MB with these.
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
    # Blocks from 128 kB (a second of audio) are mmapped and go back to the OS when freed;
    # glibc would otherwise raise this threshold after the first big free.
    ("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD): 128 * 1024,
    ("MALLOC_TRIM_THRESHOLD_", M_TRIM_THRESHOLD): 128 * 1024,
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
