"""Serve a WSGI app on a real socket from a background thread (werkzeug's threaded server)."""

from __future__ import annotations

import errno
import logging
import threading
from typing import Any

from voxgate.httplimits import (
    HEADER_TIMEOUT_S,
    REJECTED_LOG_BURST,
    REJECTED_LOG_EVERY_S,
    REQUEST_TIMEOUT_S,
    ConnectionLimit,
    HeaderDeadline,
    busy_reply,
    upload_deadline,
)
from voxgate.logs import LogLimit

log = logging.getLogger(__name__)


def _make_server(
    host: str, port: int, app: Any, timeout_s: float, header_s: float, deadline_s: float
) -> Any:
    """werkzeug's threaded server with connection limits, header and request deadlines and
    a read timeout (httplimits)."""
    from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

    # werkzeug logs an ERROR for each request it cannot parse (a garbage request line, a
    # path too long): anyone reaching the port made ~700 lines a second, one connection at a
    # time, past journald's rate limit, which then dropped the daemon's own lines too.
    bad_log = LogLimit(
        REJECTED_LOG_BURST, REJECTED_LOG_EVERY_S, what="API requests it cannot parse", logger=log
    )

    class Handler(HeaderDeadline, WSGIRequestHandler):
        timeout = timeout_s  # socketserver sets it on the connection
        header_timeout = header_s
        request_deadline = deadline_s

        def log_error(self, format: str, *args: Any) -> None:
            if format.startswith("Request timed out"):
                # An idle keep-alive connection closed: no error (werkzeug said ERROR).
                log.debug("admin API: connection closed: %s", args[0] if args else "timeout")
                return
            if bad_log.allow():
                super().log_error(format, *args)

    class Server(ConnectionLimit, ThreadedWSGIServer):
        busy = busy_reply("too many open connections to the API")

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
        header_timeout_s: float = HEADER_TIMEOUT_S,
        request_deadline_s: float | None = None,
    ) -> None:
        """`request_deadline_s`: the time one request (headers and body) may take; None:
        enough for the app's largest upload at about 1 Mbit/s (httplimits.upload_deadline)."""
        if request_deadline_s is None:
            largest = getattr(app, "config", {}).get("MAX_CONTENT_LENGTH") or 0
            request_deadline_s = upload_deadline(int(largest))
        try:
            self._server = _make_server(
                host, port, app, request_timeout_s, header_timeout_s, request_deadline_s
            )
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
