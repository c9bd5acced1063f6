"""numpy's OpenBLAS runs on one thread unless the user sets its thread count.

numpy's wheels bring OpenBLAS built with pthreads: when numpy is imported it starts one
thread per CPU the process may use (4 on a Pi), and after each matrix product those threads
keep spinning on their CPU for a while before they sleep. voxgate's products are small (the
mel projection of the replay check, the challenge's MFCCs, cohort scores): the extra threads
save nothing and spin between products, on a device whose CPU the capture, VAD and speaker
model need. Figures and the commands that measure them: docs/service.md,
"OpenBLAS threads".

OpenBLAS reads its setting once, when numpy loads it, so this must run before the first
`import numpy`: `voxgate.cli` calls it before it imports any command (the `voxgate` console
script and `python -m voxgate` both go through it). A thread count the user set wins.
"""

from __future__ import annotations

import os

# What OpenBLAS reads, in its order of precedence; any of them set (not empty) is the user's.
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")


def one_blas_thread() -> bool:
    """Set OPENBLAS_NUM_THREADS=1 unless the environment sets a thread count already.
    Returns whether it was set."""
    if any(os.environ.get(name) for name in THREAD_VARIABLES):
        return False
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    return True
