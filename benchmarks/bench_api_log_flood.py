"""Log lines the admin API writes for requests that need nothing but its port.

    PYTHONPATH=daemon python benchmarks/bench_api_log_flood.py [--seconds 5]

Runs the real API server (werkzeug, the daemon's limits) on loopback and, for `--seconds`
each, sends (1) `GET /api/v1/users` with a wrong token over one keep-alive connection and
(2) a garbage request line per new connection, as fast as one client can; prints requests
and log lines per second. journald's default rate limit is 10000 lines in 30 s per unit.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import os
import socket
import tempfile
import time
from pathlib import Path


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.n += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()

    from voxgate.api import ApiServer, UserAdmin, create_app
    from voxgate.config import parse_config
    from voxgate.voiceprints import VoiceprintStore

    tmp = Path(tempfile.mkdtemp(prefix="bench-api-flood-"))
    cfg = parse_config(f"device_id: bench\ndata_dir: {tmp}\n")
    store = VoiceprintStore(tmp / "voiceprints.db", os.urandom(32))
    admin = UserAdmin(store, cfg.speaker, cfg.vad, load_embedder=lambda: None)
    count = _Count()
    root = logging.getLogger()
    root.addHandler(count)
    root.setLevel(logging.INFO)
    server = ApiServer(create_app(cfg, admin, os.urandom(16).hex().encode()), "127.0.0.1", 0)
    server.start()

    def garbage() -> None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GARBAGE\r\n\r\n")
            while sock.recv(4096):
                pass

    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)

        def keep_alive() -> None:
            conn.request("GET", "/api/v1/users", headers={"Authorization": "Bearer wrong"})
            conn.getresponse().read()

        for label, send in (("wrong token, keep-alive", keep_alive), ("garbage line", garbage)):
            count.n, n, t0 = 0, 0, time.monotonic()
            while time.monotonic() - t0 < args.seconds:
                send()
                n += 1
            took = time.monotonic() - t0
            print(
                f"{label:24s} requests={n / took:7.0f}/s  log lines={count.n / took:7.1f}/s "
                f"({count.n} in {took:.1f} s)"
            )
        conn.close()
    finally:
        server.stop()
        store.close()


if __name__ == "__main__":
    main()
