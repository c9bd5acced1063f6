"""Limits for the door's small threaded HTTP servers (the admin API, the metrics endpoint).

socketserver's ThreadingMixIn gives every connection a thread, and the request handlers
wait for the request line without a timeout: a connection that never sends a byte (no
token or anything else is asked before the request) held a thread for ever. The daemon
hosts these servers and its unit allows 64 tasks in all, so a few dozen idle sockets left it
unable to start a thread or a program (the phoneme decoder's background thread, espeak-ng).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

# Connections served at once, per server; a scraper or one admin needs one or two.
MAX_CONNECTIONS = 8
# How long a connection may stay silent (before its request, within an upload, between
# keep-alive requests) before it is closed.
REQUEST_TIMEOUT_S = 15.0
REFUSAL_LOG_EVERY_S = 60.0


def busy_reply(message: str) -> bytes:
    """The 503 a connection over the limit gets before it is closed."""
    body = (json.dumps({"error": "busy", "message": message}) + "\r\n").encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class ConnectionLimit:
    """Mixin, placed before a ThreadingMixIn server class: at most `max_connections`
    connections have a thread; one more gets `busy` and is closed at once."""

    max_connections = MAX_CONNECTIONS
    # The kernel's accept queue (socketserver's default is 5): connections past it wait in
    # SYN retries for seconds instead of being answered busy at once.
    request_queue_size = 128
    busy = busy_reply("too many open connections")
    _slots: threading.BoundedSemaphore | None = None
    _refused = 0
    _refusal_logged = -math.inf

    def process_request(self, request: Any, client_address: Any) -> None:
        # Only the serving thread calls this, so the lazy creation does not race.
        if self._slots is None:
            self._slots = threading.BoundedSemaphore(self.max_connections)
        if not self._slots.acquire(blocking=False):
            self._refused += 1
            now = time.monotonic()
            # One line a minute at most: each refusal costs the sender only a connection.
            if now - self._refusal_logged >= REFUSAL_LOG_EVERY_S:
                log.warning(
                    "%d connections open to %s; refused %d more since the last such line",
                    self.max_connections,
                    self,
                    self._refused,
                )
                self._refused, self._refusal_logged = 0, now
            try:
                request.settimeout(1.0)
                request.sendall(self.busy)
            except OSError:
                pass
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        try:
            super().process_request(request, client_address)  # type: ignore[misc]
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)  # type: ignore[misc]
        finally:
            assert self._slots is not None
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went silent (the timeout) or away is no error worth a traceback.
        if isinstance(sys.exc_info()[1], (TimeoutError, ConnectionError)):
            log.debug("connection from %s closed: %s", client_address, sys.exc_info()[1])
            return
        super().handle_error(request, client_address)  # type: ignore[misc]

    def __str__(self) -> str:
        address = getattr(self, "server_address", ("?", 0))
        return f"the HTTP server on {address[0]}:{address[1]}"
