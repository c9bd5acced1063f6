"""The HTTP servers' connection limits against real sockets: who counts as one client, and
how long one request may hold its slot."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flask")

from mqtt_helpers import wait_until
from socket_helpers import sent_so_far

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
        told = [sent_so_far(s) for s in idle]
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
        told = [sent_so_far(s) for s in idle]
        assert sum(r.startswith(b"HTTP/1.1 503") for r in told) == 1, told
    finally:
        for s in idle:
            s.close()


def _dribble(sock: socket.socket, seconds: float, every: float = 0.2) -> tuple[bytes, float | None]:
    """Send one body byte each `every` s for up to `seconds`; what the server sent, and
    when (from the start) it closed the connection (None: still open at the end)."""
    sock.settimeout(every)
    got = b""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            sock.sendall(b"x")
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            return got, time.monotonic() - started
        if not chunk:
            return got, time.monotonic() - started
        got += chunk
    return got, None


def _post_head(path: str, length: int, token: str | None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/yaml\r\n{auth}"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def test_a_body_dribbled_after_a_401_does_not_hold_the_slot(make_api: Any) -> None:
    """No token needed: the 401 went out at once, then the server read the unwanted body
    (so the client sees the reply rather than a reset) for as long as a byte came within
    the silence timeout: one slot held for ever per connection."""
    server = make_api(request_timeout_s=1.0)
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(_post_head("/api/v1/config/check", 10_000_000, None))
        got, closed = _dribble(s, 6.0)
    assert got.startswith(b"HTTP/1.1 401"), got[:100]
    # The reply, then at most DRAIN_S (2 s) of what the body still sends.
    assert closed is not None and closed < 4.0, closed


def test_an_upload_dribbled_with_the_token_ends_at_the_request_deadline(make_api: Any) -> None:
    """A byte every 0.2 s renewed the 1 s silence timeout: a 50 kB body never ended."""
    server = make_api(request_timeout_s=1.0, header_timeout_s=1.0, request_deadline_s=2.0)
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(_post_head("/api/v1/config/check", 50_000, TOKEN))
        got, closed = _dribble(s, 6.0)
    assert closed is not None and closed < 4.0, (closed, got[:200])
    assert got.startswith(b"HTTP/1.1 408") and b"did not arrive whole in time" in got, got
    # Slots are given back: the API answers.
    assert _ask_health("127.0.0.1", server.port).startswith(b"HTTP/1.1 200")


def test_an_upload_in_time_is_read_whole(make_api: Any) -> None:
    """The deadline is for the whole request: a body sent in parts within it is read."""
    server = make_api(request_timeout_s=1.0, request_deadline_s=3.0)
    body = b"device_id: door-1\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(_post_head("/api/v1/config/check", len(body), TOKEN))
        for part in (body[:5], body[5:]):
            time.sleep(0.5)
            s.sendall(part)
        reply = b""
        while chunk := s.recv(4096):  # the reply ends with the connection
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200") and b'"valid"' in reply, reply


def _check_config(port: int, body: bytes, chunked: bool = False) -> tuple[int, dict]:
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/yaml"}
    if chunked:
        headers["Transfer-Encoding"] = "chunked"
        parts = [body[i : i + 8192] for i in range(0, len(body), 8192)]
        conn.request("POST", "/api/v1/config/check", iter(parts), headers, encode_chunked=True)
    else:
        conn.request("POST", "/api/v1/config/check", body, headers)
    resp = conn.getresponse()
    reply = json.loads(resp.read())
    conn.close()
    return resp.status, reply


def test_a_config_to_check_is_at_most_64_kb(make_api: Any) -> None:
    """POST /config/check took anything up to api.max_upload_mb (10 MB) and parsed it: a few
    hundred kB of YAML values kept a core busy for tens of seconds per request."""
    server = make_api()
    padding = b"# " + b"x" * 998 + b"\n"
    small = b"device_id: door-1\n" + padding * 60  # ~60 kB with comments: still checked
    status, reply = _check_config(server.port, small)
    assert status == 200 and reply["valid"] is True, reply
    big = b"device_id: door-1\n" + padding * 100
    for chunked in (False, True):
        status, reply = _check_config(server.port, big, chunked)
        assert status == 413, (chunked, reply)
        assert reply["message"] == "a config is at most 64 kB", reply


# Run in a network namespace of its own (unshare -n): a /64 of addresses on its loopback
# interface, as a host on the network has one, without touching this machine's network.
_IPV6_ROTATION = r"""
import socket, subprocess, sys, tempfile, time
from pathlib import Path
for cmd in ("ip link set lo up", "ip -6 route add local 2001:db8:1:2::/64 dev lo",
            "ip -6 route add local 2001:db8:7::/64 dev lo",
            "ip -6 addr add 2001:db8:9::1/64 dev lo nodad",
            "ip -6 addr add 2001:db8:9::a/64 dev lo nodad",
            "ip -6 addr add 2001:db8:9::b/64 dev lo nodad"):
    subprocess.run(cmd.split(), check=True)
from voxgate.api import ApiServer, UserAdmin, create_app
from voxgate.config import parse_config
from voxgate.voiceprints import VoiceprintStore
tmp = Path(tempfile.mkdtemp())
cfg = parse_config(f"device_id: d\ndata_dir: {tmp}\n")
store = VoiceprintStore(tmp / "v.db", bytes(range(32)))
server = ApiServer(create_app(cfg, UserAdmin(store, cfg.speaker, cfg.vad, lambda: None),
                              b"t" * 20), "2001:db8:9::1", 0, 0.05)
server.start()
def idle(source):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, 78, 1)  # IPV6_FREEBIND: any address of the local route
    s.bind((source, 0))
    s.settimeout(5)
    s.connect(("2001:db8:9::1", server.port))
    return s
def told(s):
    s.settimeout(0.05)
    try:
        return s.recv(200)
    except TimeoutError:
        return b""
# One host, a new source address from its /64 for each connection.
rotating = [idle(f"2001:db8:1:2:{i:x}::{i:x}") for i in range(1, 9)]
time.sleep(0.3)
refused = sum(told(s).startswith(b"HTTP/1.1 503") for s in rotating)
other = idle("2001:db8:7::1")  # another host (another /64): still let in
time.sleep(0.2)
other_let_in = told(other) == b""
for s in rotating + [other]:
    s.close()
time.sleep(0.3)
# Two devices on the door's own network (its /64, as SLAAC gives a LAN): three each.
lan = [idle(f"2001:db8:9::{d}") for d in ("a", "a", "a", "b", "b", "b")]
time.sleep(0.3)
lan_refused = sum(told(s).startswith(b"HTTP/1.1 503") for s in lan)
print(refused, other_let_in, lan_refused)
server.stop()
"""


def test_an_ipv6_host_rotating_addresses_in_its_64_counts_once() -> None:
    """Each IPv6 source address had its own share of 3: one host with a /64 held every slot
    open to the network, and a scraper or administrator coming over the network got 503.
    Devices on the door's own /64 (its LAN) still count one each."""
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip (util-linux, iproute2)")
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a network namespace: {probe.stderr.decode().strip()}")
    done = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", _IPV6_ROTATION],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    refused, other_let_in, lan_refused = done.stdout.split()
    assert (int(refused), other_let_in) == (5, "True"), done.stdout
    # Devices on the door's own /64 are clients of their own (as IPv4 addresses are): with
    # the whole LAN one client, the second device's connections were refused.
    assert int(lan_refused) == 0, done.stdout


def _hold_after_answer(server: ApiServer, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list]:
    """Keep each request's thread, once its answer is out, from ending until the returned
    event is set (a thread the scheduler runs late, as on a loaded machine); the list holds
    the handlers waiting."""
    handler = server._server.RequestHandlerClass
    finish = handler.finish
    go, waiting = threading.Event(), []

    def finish_later(self: Any) -> None:
        waiting.append(self)
        go.wait(30)
        finish(self)

    monkeypatch.setattr(handler, "finish", finish_later)
    return go, waiting


def test_a_client_that_waits_for_each_answer_is_not_refused_for_threads_still_ending(
    make_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread ends a little after its answer went out (werkzeug looks for an unread body,
    then closes), and its slot was held till then: a client that read each answer, closed,
    and connected again at once (http.client after `Connection: close`) found its earlier
    connections still counted and got 503 busy. Under CPU load that was 30 runs in 40 of
    a 200-request loop (test_api's flood of requests without the token). Here every
    thread waits after its answer until the end, so each request finds all the earlier
    ones not ended."""
    from voxgate.httplimits import MAX_CONNECTIONS

    server = make_api()
    go, waiting = _hold_after_answer(server, monkeypatch)
    try:
        statuses = []
        for _ in range(2 * MAX_CONNECTIONS):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request("GET", "/api/v1/users", headers={"Authorization": "Bearer wrong"})
            resp = conn.getresponse()
            statuses.append((resp.status, resp.read()[:100]))
            conn.close()
        assert all(status == 401 for status, _ in statuses), statuses
        # Every one of them answered and not ended, twice the server's limit.
        wait_until(lambda: len(waiting) == 2 * MAX_CONNECTIONS, 10, "every answered thread waiting")
    finally:
        go.set()


def test_connections_answered_but_kept_open_still_hold_their_slots(
    make_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished connection gives its slot back early only once its client has closed it:
    one kept open can still send (a body after the 401, read for up to DRAIN_S), so it
    counts until its thread ends, and a client still gets at most its share of threads."""
    from voxgate.httplimits import PER_ADDRESS_CONNECTIONS

    server = make_api()
    go, _ = _hold_after_answer(server, monkeypatch)
    kept = []
    try:
        for _ in range(PER_ADDRESS_CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            kept.append(s)
            s.sendall(b"GET /api/v1/users HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 401")
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            refused = b""  # a refusal is closed at once: read to the end
            while chunk := s.recv(4096):
                refused += chunk
        assert refused.startswith(b"HTTP/1.1 503"), refused
        assert b"from this address" in refused, refused
        # Closed by the client: their slots are free though their threads have not ended.
        for s in kept:
            s.close()
        answer = _ask_health("127.0.0.1", server.port)
        assert answer.startswith(b"HTTP/1.1 200"), answer
    finally:
        for s in kept:
            s.close()
        go.set()
