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


_set_here = False  # one_blas_thread() set the variable: it is voxgate's, not the user's


def one_blas_thread() -> bool:
    """Set OPENBLAS_NUM_THREADS=1 unless the environment sets a thread count already.
    Returns whether it was set."""
    global _set_here
    if any(os.environ.get(name) for name in THREAD_VARIABLES):
        return False
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    _set_here = True
    return True


def users_environ() -> dict[str, str]:
    """The environment for a program voxgate runs on the user's behalf (the actuator's
    command): without the thread count voxgate set for itself, which pinned an unlock
    program's own numpy to one thread. A count the user set is theirs and stays."""
    env = dict(os.environ)
    if _set_here and env.get("OPENBLAS_NUM_THREADS") == "1":
        del env["OPENBLAS_NUM_THREADS"]
    return env
