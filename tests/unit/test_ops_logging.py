"""logging.format json promises one JSON object per line: also for what Python itself would
print to stderr (a thread that dies, a library warning)."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import warnings

import pytest

from voxgate.config.logging import LoggingConfig
from voxgate.logs import (
    FACT,
    WENT_ON,
    JsonFormatter,
    command_line_warnings,
    reported_by_command,
    setup_logging,
)


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


def test_the_command_line_leaves_out_what_the_command_reports_itself(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`voxgate enroll` printed the library's "warning: enrollment refused: takes 6, 7 ..."
    above its own "not enrolled: takes 6, 7 ...": one fact, said twice. A fact the running
    command reports is left out on its command line, and nowhere else; `voxgate eval`'s
    "error: ... read error after 0.6 s" read as if the run had failed, which went on."""
    log = logging.getLogger("voxgate.test_facts")
    with command_line_warnings():
        with reported_by_command("refusal"):
            log.warning("refused: two voices", extra={FACT: "refusal"})
            log.warning("another fact", extra={FACT: "other"})
            log.warning("a plain warning")
            log.error("a cut file: read error", extra={WENT_ON: True})
            log.error("a real error")
        log.warning("refused again", extra={FACT: "refusal"})  # no command reports it now
    assert capsys.readouterr().err.splitlines() == [
        "warning: another fact",
        "warning: a plain warning",
        "warning: a cut file: read error",
        "error: a real error",
        "warning: refused again",
    ]
    # A log (the daemon's, the API's) keeps every line at its level, without the markers.
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    log.addHandler(handler)
    try:
        with reported_by_command("refusal"):
            log.warning("refused: two voices", extra={FACT: "refusal"})
            log.error("a cut file: read error", extra={WENT_ON: True})
    finally:
        log.removeHandler(handler)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["level"], r["msg"]) for r in lines] == [
        ("warning", "refused: two voices"),
        ("error", "a cut file: read error"),
    ]
    assert all(set(r) == {"ts", "time", "level", "logger", "msg"} for r in lines), lines
