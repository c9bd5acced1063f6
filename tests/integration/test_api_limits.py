"""The HTTP servers' connection limits against real sockets: who counts as one client, and
how long one request may hold its slot."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flask")

from voxgate.api import ApiServer, UserAdmin, create_app
from voxgate.config import parse_config
from voxgate.voiceprints import VoiceprintStore

TOKEN = "t" * 20


@pytest.fixture
def make_api(tmp_path: Path) -> Iterator[Any]:
    servers: list[ApiServer] = []
    store = VoiceprintStore(tmp_path / "voiceprints.db", bytes(range(32)))

    def make(host: str = "127.0.0.1", **timeouts: float) -> ApiServer:
        cfg = parse_config(f"device_id: door-test\ndata_dir: {tmp_path}\n")
        admin = UserAdmin(store, cfg.speaker, cfg.vad, lambda: None)
        server = ApiServer(create_app(cfg, admin, TOKEN.encode()), host, 0, 0.05, **timeouts)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
    store.close()


def _idle(source: str, server: str, port: int) -> socket.socket:
    """A TCP connection from the local address `source` that sends nothing."""
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.connect((server, port))
    return s


def _told(sock: socket.socket) -> bytes:
    """What the server has sent on `sock` so far (nothing: b"")."""
    sock.settimeout(0.01)
    try:
        return sock.recv(200)
    except TimeoutError:
        return b""


def _ask_health(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(
            b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n"
        )
        return s.recv(100)


def test_many_loopback_addresses_count_as_one_client(make_api: Any) -> None:
    """Each of 127.0.0.2, 127.0.0.3, ... had its own share of 3: a local user held every slot
    (loopback may use the reserved ones too) and kept the network out. All of 127.0.0.0/8 is
    now one client: 3 slots, the other 5 stay free."""
    server = make_api()
    idle = [_idle(f"127.0.0.{i}", "127.0.0.1", server.port) for i in range(2, 10)]
    try:
        time.sleep(0.3)
        told = [_told(s) for s in idle]
        refused = [r for r in told if r.startswith(b"HTTP/1.1 503")]
        assert len(refused) == 5, told
        assert all(b"from this address" in r for r in refused), refused
    finally:
        for s in idle:
            s.close()


def test_ipv6_loopback_and_ipv4_mapped_loopback_are_one_client(make_api: Any) -> None:
    """A dual-stack server ('::') sees 127.0.0.2 as ::ffff:127.0.0.2: with ::1 beside it
    that was two clients (6 slots) for one local user."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        server = make_api(host="::")
    except OSError as exc:
        pytest.skip(f"cannot listen on '::': {exc}")
    idle = []
    try:
        idle += [_idle("::1", "::1", server.port) for _ in range(2)]
        idle += [_idle("127.0.0.2", "127.0.0.1", server.port) for _ in range(2)]
        time.sleep(0.3)
        told = [_told(s) for s in idle]
        assert sum(r.startswith(b"HTTP/1.1 503") for r in told) == 1, told
    finally:
        for s in idle:
            s.close()
