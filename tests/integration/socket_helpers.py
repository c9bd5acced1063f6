"""Reading what a real HTTP server (the admin API, /metrics) has sent on a raw socket."""

from __future__ import annotations

import socket


def sent_so_far(sock: socket.socket) -> bytes:
    """What the server has sent on `sock` so far (nothing: b"")."""
    sock.settimeout(0.01)
    try:
        return sock.recv(200)
    except TimeoutError:
        return b""
