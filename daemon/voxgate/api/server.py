"""Serve a WSGI app on a real socket from a background thread (werkzeug's threaded server)."""

from __future__ import annotations

import errno
import logging
import threading
from typing import Any

log = logging.getLogger(__name__)

# Connections served at once. Each has a thread in the process hosting the API (the daemon,
# whose unit allows 64 tasks in all); one admin needs a few.
MAX_CONNECTIONS = 8
# How long a connection may stay silent (before its request, within an upload, between
# keep-alive requests) before it is closed.
REQUEST_TIMEOUT_S = 15.0
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: 68\r\n\r\n"
    b'{"error":"busy","message":"too many open connections to the API"}\r\n'
)


def _make_server(host: str, port: int, app: Any, timeout_s: float) -> Any:
    """werkzeug's threaded server with a thread limit and a read timeout. Without them every
    connection, even one that never sent a byte (no token is asked before the request),
    held a thread for ever: a few dozen idle sockets used up the daemon's tasks."""
    from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

    class Handler(WSGIRequestHandler):
        timeout = timeout_s  # socketserver sets it on the connection

    class Server(ThreadedWSGIServer):
        slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

        def process_request(self, request: Any, client_address: Any) -> None:
            if not self.slots.acquire(blocking=False):
                log.warning("admin API: %d connections open; refused one", MAX_CONNECTIONS)
                try:
                    request.settimeout(1.0)
                    request.sendall(_BUSY)
                except OSError:
                    pass
                self.shutdown_request(request)
                return
            try:
                super().process_request(request, client_address)
            except BaseException:
                self.slots.release()
                raise

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.slots.release()

    return Server(host, port, app, Handler)


class ApiServer:
    """`start()` binds and serves in a thread; `stop()` shuts down and joins. port=0 picks one."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        poll_interval: float = 0.5,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        try:
            self._server = _make_server(host, port, app, request_timeout_s)
        except SystemExit:
            # werkzeug prints "Address already in use" and calls sys.exit(1) itself; a
            # daemon hosting the API must decide what that means, so make it an OSError.
            raise OSError(
                errno.EADDRINUSE, "address already in use or not available", f"{host}:{port}"
            ) from None
        # The app logs every request once (method, path, status, time); werkzeug's own access
        # line repeated it, with terminal colour codes inside the JSON log and the journal.
        access = logging.getLogger("werkzeug")
        if access.level == logging.NOTSET:  # unless logging.modules sets it
            access.setLevel(logging.WARNING)
        self.host = host
        self.port = int(self._server.server_port)
        self._thread: threading.Thread | None = None
        self._poll = poll_interval  # how long stop() may wait for the serving loop to notice

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(self._poll,),
            name="voxgate-api",
            daemon=True,
        )
        self._thread.start()
        log.info("admin API listening on %s", self.url)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        log.info("admin API stopped")
