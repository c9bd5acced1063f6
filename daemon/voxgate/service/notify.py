"""sd_notify: tell systemd we are ready, alive, busy with what, and stopping.

The protocol is one datagram of newline-separated KEY=VALUE lines to the AF_UNIX socket
named by $NOTIFY_SOCKET (an abstract-namespace socket when the name starts with '@').
systemd-python's daemon.notify is used when it is installed; otherwise the datagram is sent
here directly. Without $NOTIFY_SOCKET (not started by systemd) every call is a no-op.

Watchdog: systemd sets $WATCHDOG_USEC (and $WATCHDOG_PID) from WatchdogSec=. The loop calls
watchdog_if_due() from its own iteration, so a stalled loop stops the pings and systemd
kills and restarts the service; pings go out at half the period.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


def _env_number(env: Mapping[str, str], name: str) -> int | None:
    """A whole number systemd put in the environment, or None. Anything but ASCII digits is
    treated as not set, with a warning: str.isdigit() passed '²' to int(), which raised
    and stopped the daemon's start, and int() alone took other scripts' digits."""
    text = env.get(name)
    if not text:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 19):
        shown = text if len(text) <= 40 else text[:37] + "..."
        log.warning("ignoring %s=%r (not a number): treated as not set", name, shown)
        return None
    return int(text)


def _watchdog_period(env: Mapping[str, str]) -> float | None:
    usec = _env_number(env, "WATCHDOG_USEC")
    if usec is None:
        return None
    pid = _env_number(env, "WATCHDOG_PID")
    if pid is not None and pid != os.getpid():
        return None  # meant for another process (e.g. our parent)
    return usec / 1e6 if usec > 0 else None


class Notifier:
    def __init__(
        self, env: Mapping[str, str] | None = None, use_systemd_python: bool = True
    ) -> None:
        env = os.environ if env is None else env
        self.address = env.get("NOTIFY_SOCKET") or None
        self.watchdog_period = _watchdog_period(env)
        self._next_ping = 0.0
        self._status: str | None = None
        self._sock: socket.socket | None = None
        self._sd_notify: Callable[[str], object] | None = None
        if self.address and use_systemd_python:
            try:
                # attr-defined: for mypy, the repo's systemd/ (unit files) shadows the package.
                from systemd import daemon  # type: ignore[import-not-found,attr-defined]

                self._sd_notify = daemon.notify
            except ImportError:
                pass

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send KEY=VALUE lines in one datagram; False (logged) when it could not be sent."""
        if not self.address:
            return False
        message = "\n".join(lines)
        if self._sd_notify is not None:
            return bool(self._sd_notify(message))
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), target)
            return True
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False

    def ready(self, status: str | None = None) -> bool:
        lines = ["READY=1", f"MAINPID={os.getpid()}"]
        if status:
            self._status = status
            lines.append(f"STATUS={status}")
        return self.send(*lines)

    def status(self, text: str) -> bool:
        """STATUS= (only sent when it changed; systemctl status shows it)."""
        if text == self._status:
            return True
        self._status = text
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def watchdog_if_due(self, now: float | None = None) -> bool:
        """Ping when half the watchdog period has passed since the last ping."""
        if self.watchdog_period is None or not self.address:
            return False
        now = time.monotonic() if now is None else now
        if now < self._next_ping:
            return False
        self._next_ping = now + self.watchdog_period / 2
        return self.watchdog()

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> bool:
        lines = ["STOPPING=1"]
        if status:
            lines.append(f"STATUS={status}")
        return self.send(*lines)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
