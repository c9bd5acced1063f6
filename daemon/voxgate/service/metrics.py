"""Prometheus metrics, served over HTTP on localhost (prometheus_client).

Each Metrics object has its own registry, so tests and benchmarks can run several daemons in
one process. A port that cannot be bound is logged and the door works on without metrics.
"""

from __future__ import annotations

import logging
from typing import Any

from voxgate.httplimits import (
    HEADER_TIMEOUT_S,
    REQUEST_TIMEOUT_S,
    ConnectionLimit,
    HeaderDeadline,
)
from voxgate.service.states import State

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.decisions = Counter(
            "voxgate_decisions", "Decisions published, by outcome.", ["outcome"], registry=r
        )
        self.latency = Histogram(
            "voxgate_decision_latency_seconds",
            "End of speech to decision published.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.utterances = Counter("voxgate_utterances", "Utterances the VAD ended.", registry=r)
        self.dropped_audio = Counter(
            "voxgate_audio_dropped_seconds",
            "Audio dropped because processing fell behind capture.",
            registry=r,
        )
        self.dc_offset = Gauge(
            "voxgate_audio_dc_offset_lsb",
            "DC offset removed from the audio input, in LSB, averaged over its sound so far.",
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "voxgate_mqtt_connected", "1 while the MQTT broker connection is up.", registry=r
        )
        self.lock_refusals = Counter(
            "voxgate_lock_refusals",
            "Decisions a lock reported it did not act on, by reason.",
            ["reason"],
            registry=r,
        )
        self.command_refusals = Counter(
            "voxgate_command_refusals",
            "MQTT commands refused before they ran (bad signature, replayed, ...), by code.",
            ["code"],
            registry=r,
        )
        self.lockouts = Counter(
            "voxgate_lockouts", "Back-off periods started, by scope.", ["scope"], registry=r
        )
        self.locked = Gauge("voxgate_locked", "Users and doors in back-off now.", registry=r)
        self.attempt_errors = Counter(
            "voxgate_attempt_errors", "Attempts aborted by a stage error.", registry=r
        )
        self.audit_write_errors = Counter(
            "voxgate_audit_write_errors", "Audit log writes that failed.", registry=r
        )
        self.state = Enum(
            "voxgate_state", "The loop's state.", states=[s.value for s in State], registry=r
        )
        self.state.state(State.IDLE.value)
        self._server: Any = None
        self._thread: Any = None

    def serve(
        self,
        host: str,
        port: int,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        header_timeout_s: float = HEADER_TIMEOUT_S,
    ) -> int | None:
        """Start the HTTP endpoint; returns the bound port, or None when it could not bind."""
        import threading

        try:
            self._server = _make_server(
                host, port, self.registry, request_timeout_s, header_timeout_s
            )
        except OSError as exc:
            log.error(
                "metrics endpoint %s:%d not started: %s (going on without it)", host, port, exc
            )
            return None
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="voxgate-metrics", daemon=True
        )
        self._thread.start()
        bound = int(self._server.server_port)
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _make_server(host: str, port: int, registry: Any, timeout_s: float, header_s: float) -> Any:
    """prometheus_client's WSGI app on a threaded server with a connection limit and a read
    timeout (httplimits): its own start_http_server gave every connection, idle or not, a
    thread for ever."""
    import socket
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import make_wsgi_app

    class Handler(HeaderDeadline, WSGIRequestHandler):
        timeout = timeout_s  # socketserver sets it on the connection
        header_timeout = header_s

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a scrape every few seconds is not worth a log line

    class Server(ConnectionLimit, ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

    return make_server(host, port, make_wsgi_app(registry), Server, Handler)
