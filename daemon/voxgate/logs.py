"""Logging setup from config.logging: text, JSON lines, or journald fields.

Called at start and again on SIGHUP; it replaces only the handler it installed itself.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # only a type here: LogLimit's users (audit, decision) need no pydantic
    from voxgate.config.logging import LoggingConfig

_MARK = "_voxgate_handler"
# LogRecord attributes that are not "extra" fields.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra={...}` fields are kept as top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = (
                    value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
                )
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


# Marks a library's log line carries (`extra={...}`) for the command-line handler below; the
# leading _ keeps them out of JSON lines. FACT: the name of a fact the library also hands back
# to its caller (a refusal, the takes that gave no templates), which a command that reports
# it in its own words names with reported_by_command(): printed twice, it read as two
# problems. WENT_ON: an ERROR about one recording that was read in part, after which the
# work went on with what was read; in a log an error, on the command line a warning (the
# command did not fail: `voxgate eval` read the rest of its set).
FACT = "_voxgate_fact"
WENT_ON = "_voxgate_went_on"
_reported: set[str] = set()  # facts the running command reports itself


class _CommandLine(logging.Handler):
    """A command's warnings as `warning: <message>` (`error: ` from ERROR up) on stderr, the
    form its own messages take. Without a handler Python printed the bare message, which did
    not say it was a warning. sys.stderr is looked up per line: a test swaps it."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if getattr(record, FACT, None) in _reported:
                return  # the command's own report says it
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text += f" ({record.exc_info[1]})"  # what failed, without a traceback
            error = record.levelno >= logging.ERROR and not getattr(record, WENT_ON, False)
            sys.stderr.write(f"{'error' if error else 'warning'}: {text}\n")
        except Exception:
            self.handleError(record)


@contextmanager
def command_line_warnings() -> Iterator[None]:
    """For a one-shot command (enroll, verify, ...) that sets up no logging of its own: its
    libraries' warnings reach the person as plain lines for as long as it runs."""
    root = logging.getLogger()
    handler = _CommandLine()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


@contextmanager
def reported_by_command(*facts: str) -> Iterator[None]:
    """While a command runs that prints these facts (FACT) in its own report: the command
    line leaves out the library's log line of them. Other handlers (the daemon's log, the
    journal) still get it."""
    added = set(facts) - _reported
    _reported.update(added)
    try:
        yield
    finally:
        _reported.difference_update(added)


def _journal_handler() -> logging.Handler | None:
    try:
        from systemd.journal import JournalHandler  # type: ignore[import-not-found]
    except ImportError:
        return None
    return JournalHandler(SYSLOG_IDENTIFIER="voxgate")


def _thread_died(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("voxgate").error(
        "thread %s stopped by an uncaught exception",
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
    )


def _uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger("voxgate").critical("uncaught exception", exc_info=(kind, value, tb))


def setup_logging(cfg: LoggingConfig, stream: TextIO | None = None) -> str:
    """Install the configured handler and levels; returns the format actually used."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _MARK, False):
            root.removeHandler(h)
            h.close()
    used = cfg.format
    handler: logging.Handler | None = None
    if cfg.format == "journal":
        handler = _journal_handler()
        if handler is None:
            used = "text"
    if handler is None:
        handler = logging.StreamHandler(stream or sys.stderr)
        if used == "json":
            handler.setFormatter(JsonFormatter())
        else:
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
            )
    setattr(handler, _MARK, True)
    root.addHandler(handler)
    # What Python would print to stderr itself (a dying thread, a library's warning) goes
    # through the same handler, so json stays one object per line and journald gets levels.
    # Hooks someone else installed (a test runner) are left alone.
    logging.captureWarnings(True)
    if threading.excepthook is threading.__excepthook__:
        threading.excepthook = _thread_died
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _uncaught
    root.setLevel(cfg.level.upper())
    # Per-module levels; names set by an earlier config but absent now go back to inheriting.
    previous: set[str] = getattr(setup_logging, "_modules", set())
    for name in previous - set(cfg.modules):
        logging.getLogger(name).setLevel(logging.NOTSET)
    for name, level in cfg.modules.items():
        logging.getLogger(name).setLevel(level.upper())
    setup_logging._modules = set(cfg.modules)  # type: ignore[attr-defined]
    if used != cfg.format:
        logging.getLogger(__name__).warning(
            "logging.format is 'journal' but systemd-python is not installed "
            "(pip install 'voxgate[journal]'); logging text to stderr, which journald keeps too"
        )
    return used


class LogLimit:
    """How many lines of one kind go to the log, for lines an outsider or a failure can
    repeat without end (journald's own rate limit would otherwise drop the lines that
    matter, with no word of what it dropped).

    `allow()` counts a line and says whether to write it: the first `burst` of each window of
    `every_s` seconds are written; the next one writes a notice that more are held back, and
    the first one after the window writes how many were (then the window starts again).
    `every_s` None: the window lasts until `reset()`, which is "log once while a failure
    lasts": reset() when it is over says whether a line went out (so a recovery line is
    due). Counting for metrics stays with the caller: every call is one event."""

    def __init__(
        self,
        burst: int = 1,
        every_s: float | None = None,
        *,
        what: str = "",
        logger: logging.Logger | None = None,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1:
            raise ValueError("burst must be >= 1")
        self.burst, self.every_s, self.what = burst, every_s, what
        self._log, self._level, self._clock = logger, level, clock
        self._lock = threading.Lock()
        self._start = -math.inf
        self._written = self._held = 0

    @property
    def active(self) -> bool:
        """A line was written since the last reset (with every_s None: the failure lasts)."""
        with self._lock:
            return self._written > 0

    def allow(self) -> bool:
        with self._lock:
            now = self._clock()
            if self.every_s is not None and now - self._start >= self.every_s:
                if self._held:
                    self._say(
                        "%s: %d more held back in the last %.0f s",
                        self.what,
                        self._held,
                        now - self._start,
                    )
                self._start, self._written, self._held = now, 0, 0
            if self._written < self.burst:
                self._written += 1
                return True
            if not self._held and self.every_s is not None:
                self._say(
                    # The count goes out with the next line allowed (no timer here): a
                    # flood that stops shows its count only then, and in the metrics.
                    "%s: more than %d in %.0f s; the next ones are held back, and their "
                    "count is written with the first one after that time",
                    self.what,
                    self.burst,
                    self.every_s,
                )
            self._held += 1
            return False

    def reset(self) -> bool:
        """Start again (the failure is over); True when a line had been written."""
        with self._lock:
            was = self._written > 0
            self._start, self._written, self._held = -math.inf, 0, 0
            return was

    def _say(self, msg: str, *args: object) -> None:
        if self._log is not None:
            self._log.log(self._level, msg, *args)
