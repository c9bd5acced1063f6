"""The nonces of the signed commands a door ran, kept on disk (`data_dir/command-nonces.json`).

A command must run once, whatever the door's clock does later. Forgetting a nonce when the
door's clock passed the command's expires_at was not enough: a clock set back (an admin,
NTP correcting a clock that was ahead) made the command fresh again, and so did a restart,
which started with no nonces at all. The never-stepped clock does not help either: it
starts again at each boot, and a command dropped after its real lifetime is fresh again
after any later step back.

So the file is measured against the senders' clocks, which the door's steps do not move: it
keeps a *floor*, the latest issued_at of a command it ran less the allowed skew, and refuses
every command that expired at or before it. Only nonces of commands that expire after the
floor are kept: those signed in about the last minute of the senders' time. Of two commands
a door with a steady clock accepts, the later one's floor is never above the earlier one's
expires_at (that would take a skew larger than `margin_s`), so this refuses no command the
door would otherwise run, unless the door's clock stepped between them.

Only accepted commands (signature checked) are recorded, and at most MAX_KEPT nonces are
kept: past that the oldest goes and the floor rises to its expires_at (still never reopened).
A file that cannot be written (full or read-only disk) is logged once and the nonces are
held in memory and saved with the next command. A damaged file (not the JSON written here)
is moved aside (`command-nonces.json.corrupt-<time>`) with an ERROR, and the door starts
with no used commands: what it guards against is one more run of a command from the last
minute, and only while the door's clock is set back, which is not worth a door that stays
down (exit 78 leaves it down until someone comes). A file that cannot be read at all (a
folder in its place, no permission) still stops the start, naming it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from pathlib import Path

from voxgate.decision import DecisionError, _JsonState, is_finite_number
from voxgate.logs import LogLimit

log = logging.getLogger(__name__)

MAX_KEPT = 512  # ~50 kB of file at most; accepted commands of one minute, normally a few
FILE_NAME = "command-nonces.json"
_ADVICE = (
    "move it aside to start with no used commands (a copy of a command run in the last "
    "minute could then run once more, and only while the door's clock is set back)"
)


def _parse(text: str) -> tuple[float, dict[str, float]] | str:
    """(floor, used) from the file's text, or what is wrong with it."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        return f"not JSON: {exc}"
    except RecursionError:  # "[[[[...": a traceback at the door's start, not moved aside
        return "not JSON: nested too deeply"
    if not isinstance(data, dict):
        return "not a JSON object"
    floor, used = data.get("floor", 0.0), data.get("used", {})
    if not is_finite_number(floor) or not isinstance(used, dict):
        return "no 'floor' number and 'used' map"
    if not all(isinstance(n, str) and is_finite_number(e) for n, e in used.items()):
        return "'used' is not a map of nonce to time"
    return float(floor), {n: float(e) for n, e in used.items()}


class UsedCommands:
    """Nonces of commands run, and the floor below which any command is refused. `path`
    None: in memory only (tests, tools)."""

    def __init__(self, path: Path | None, max_kept: int = MAX_KEPT) -> None:
        self.path = path
        self._state = _JsonState(path) if path is not None else None
        self._max = max_kept
        self._lock = threading.Lock()
        self.floor = 0.0
        self._used: dict[str, float] = {}  # nonce -> expires_at
        self._save_log = LogLimit()  # a failed save: logged once until one works
        if self._state is not None:
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except UnicodeDecodeError:
            text = ""  # not ours: damaged below
        except OSError as exc:
            raise DecisionError("state-unreadable", f"{self.path}: {exc}; {_ADVICE}") from None
        read = _parse(text)
        if isinstance(read, str):
            self._move_aside(read)
            return
        self.floor, self._used = read[0], {n: e for n, e in read[1].items() if e > read[0]}

    def _move_aside(self, problem: str) -> None:
        assert self.path is not None
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        try:
            os.replace(self.path, aside)
        except OSError as exc:
            raise DecisionError(
                "state-unreadable", f"{self.path}: {problem}; cannot move it aside ({exc})"
            ) from None
        log.error(
            "used commands %s: damaged (%s); moved aside to %s, starting with no used "
            "commands (a copy of a command run in the last minute could run once more, and "
            "only while the door's clock is set back)",
            self.path,
            problem,
            aside.name,
        )

    def __len__(self) -> int:
        return len(self._used)

    def use(self, nonce: str, issued_at: float, expires_at: float, margin_s: float) -> str | None:
        """Record the command as run and return None, or say why it is a replay (and record
        nothing). `margin_s`: the senders' clock difference the door allows (max skew)."""
        with self._lock:
            if nonce in self._used:
                return "nonce already used"
            if expires_at <= self.floor:
                return (
                    "it expired before a command this door ran was issued (by the senders' "
                    "clocks): a copy sent again, or a sender whose clock is behind"
                )
            self._used[nonce] = expires_at
            self.floor = max(self.floor, issued_at - margin_s)
            self._used = {n: e for n, e in self._used.items() if e > self.floor}
            while len(self._used) > self._max:
                oldest = min(self._used, key=self._used.__getitem__)
                self.floor = max(self.floor, self._used.pop(oldest))
            self._save()
            return None

    def _save(self) -> None:
        if self._state is None:
            return
        try:
            self._state.save({"floor": self.floor, "used": self._used})
        except OSError as exc:
            if self._save_log.allow():
                log.error(
                    "used commands %s: cannot save (%s); the nonces are kept in memory and "
                    "saved with the next command (a restart before that forgets them). Free "
                    "space on %s",
                    self.path,
                    "disk full" if exc.errno == errno.ENOSPC else exc.strerror or exc,
                    self._state.path.parent,
                )
            return
        if self._save_log.reset():
            log.warning("used commands %s: saved again", self.path)
