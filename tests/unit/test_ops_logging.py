"""logging.format json promises one JSON object per line: also for what Python itself would
print to stderr (a thread that dies, a library warning)."""

from __future__ import annotations

import io
import json
import sys
import threading
import warnings

from voxgate.config.logging import LoggingConfig
from voxgate.logs import setup_logging


def test_thread_crashes_and_warnings_stay_json() -> None:
    """A worker thread that died (or a library warning) printed a raw multi-line traceback to
    stderr, between the JSON lines a log shipper parses, and journald filed it at info
    priority (found by making a thread fail with logging.format json)."""
    out = io.StringIO()
    saved = threading.excepthook, sys.excepthook, sys.stderr
    sys.stderr = out  # what Python's own hooks would write
    # As in a plain process (pytest has its own hook, which setup_logging leaves alone).
    threading.excepthook, sys.excepthook = threading.__excepthook__, sys.__excepthook__
    try:
        setup_logging(LoggingConfig(format="json"), out)

        def worker() -> None:
            raise RuntimeError("broker callback failed")

        t = threading.Thread(target=worker, name="mqtt-worker")
        t.start()
        t.join()
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("a library warning", UserWarning, stacklevel=1)
    finally:
        threading.excepthook, sys.excepthook, sys.stderr = saved
        setup_logging(LoggingConfig(level="warning"))
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    crash = next(r for r in records if "mqtt-worker" in r["msg"])
    assert crash["level"] == "error" and "RuntimeError: broker callback failed" in crash["exc"]
    assert any("a library warning" in r["msg"] and r["level"] == "warning" for r in records)
