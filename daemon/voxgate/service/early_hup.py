"""SIGHUP before the daemon's own handlers exist.

Python's default action for SIGHUP ends the process, and `voxgate run` spends about a second
(imports, config, models) before Daemon.run() installs its handlers. A reload sent in that
window (`kill -HUP`, `systemctl kill -s HUP`, a supervisor, a config tool) killed the door.
`voxgate run` calls hold() first thing; the daemon takes the pending reload over once it is
up and applies it then (the file may have changed after it was first read).

Deliberately tiny: it is imported before anything heavy.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

_pending = False


def _remember(signum: int, frame: FrameType | None) -> None:
    global _pending
    _pending = True


def hold() -> None:
    """Catch SIGHUP and remember it until take_pending() (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, _remember)


def take_pending() -> bool:
    """Whether a SIGHUP arrived while held; clears it."""
    global _pending
    was, _pending = _pending, False
    return was
