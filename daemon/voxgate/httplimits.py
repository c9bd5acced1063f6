"""Limits for the door's small threaded HTTP servers (the admin API, the metrics endpoint).

socketserver's ThreadingMixIn gives every connection a thread, and the request handlers
wait for the request line without a timeout: a connection that never sends a byte (no
token or anything else is asked before the request) held a thread for ever. The daemon
hosts these servers and its unit allows 64 tasks in all, so a few dozen idle sockets left it
unable to start a thread or a program (the phoneme decoder's background thread, espeak-ng).

A bound on the threads alone moved the problem: eight idle sockets from anyone, renewed
before the silence timeout, kept the administrator out (503 busy). So the request line and
headers have a short deadline of their own (a connection cannot hold a slot long without
sending a request), one client holds only a share of the slots, and the last slots are kept
for loopback clients (the administrator on the device itself).

"One client" is a group of addresses one party holds (client_group): an IPv6 host is given a
whole /64 (often more) and can pick a new source address for each connection, so counting
each IPv6 address took every shared slot from one host; all of loopback (127.0.0.0/8, ::1)
is one party, the device itself, or a local user took every slot with 127.0.0.2, 127.0.0.3...
Clients on the door's own network (the /64 of the address they reached, or link-local) count
per address, as on IPv4: with SLAAC every device of the LAN shares that /64, and one of them
holding a few connections (a browser) had Home Assistant and the admin refused.

A slot is held by a thread, and a thread lives on a little after its answer went out (werkzeug
looks for an unread body, then the socket is closed): a client that waits for each answer
and opens its next connection at once (http.client after `Connection: close`) found its
earlier, finished connections still counted, and under CPU load got 503 busy with nothing
else open. So a connection whose answer has begun and whose client has closed it holds no
slot: its thread has nothing left to wait for from the client, its reads end at once.
"""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import math
import select
import socket
import sys
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

# Connections served at once, per server; a scraper or one admin needs one or two.
MAX_CONNECTIONS = 8
# Connections one client address may hold at once, and slots only loopback clients may take.
PER_ADDRESS_CONNECTIONS = 3
LOOPBACK_RESERVED = 2
# Time from the connection (or the end of the previous request) to the end of the headers;
# a deadline, not a silence timeout: sending a byte now and then does not extend it.
HEADER_TIMEOUT_S = 5.0
# How long a connection may stay silent once its headers are in (within an upload).
REQUEST_TIMEOUT_S = 15.0
# Time from the connection (or the end of the previous request) to the end of the body: a
# body dribbled a byte each few seconds held its slot for ever. The admin API raises it
# with api.max_upload_mb (upload_deadline).
REQUEST_DEADLINE_S = 60.0
# What a request may still send once the reply has begun (a body the app did not read).
DRAIN_S = 2.0
DRAIN_BYTES = 1 << 20
# The slowest upload the API's deadline allows for: 128 kB/s, about 1 Mbit/s.
MIN_UPLOAD_BYTES_PER_S = 128 * 1024
REFUSAL_LOG_EVERY_S = 60.0
# Lines a request without the token, or one that cannot be parsed, may add to the log: the
# first of each minute, then one notice (logs.LogLimit). They need nothing but the port.
REJECTED_LOG_BURST = 10
REJECTED_LOG_EVERY_S = 60.0


# IPv6 addresses one host is assumed to hold: the /64 every network hands out at least.
IPV6_GROUP_PREFIX = 64
LOOPBACK_GROUP = "loopback"


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address (an IPv4-mapped IPv6 one as IPv4), None when `host` is none."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped or ip


def client_group(host: str, local: str = "") -> str:
    """The party a client address counts for: loopback (127.0.0.0/8, ::1, their IPv4-mapped
    forms) is one group, an IPv4 address its own, an IPv6 address its /64 prefix, unless it
    is on the door's own network (link-local, or in the /64 of `local`, the address the
    connection reached): then its own address. Anything else: the text itself."""
    ip = _ip(host)
    if ip is None:
        return host
    if ip.is_loopback:
        return LOOPBACK_GROUP
    if ip.version == 4:
        return str(ip)
    net = ipaddress.ip_network(f"{ip}/{IPV6_GROUP_PREFIX}", strict=False)
    mine = _ip(local)
    if ip.is_link_local or (mine is not None and mine.version == 6 and mine in net):
        return host
    return str(net)


def _local_address(request: Any) -> str:
    try:
        return str(request.getsockname()[0])
    except (OSError, AttributeError, IndexError, TypeError):
        return ""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (::ffff:127.0.0.1)."""
    ip = _ip(host)
    return ip is not None and ip.is_loopback


def upload_deadline(max_body_bytes: int) -> float:
    """The whole-request deadline of a server that accepts bodies up to `max_body_bytes`."""
    return REQUEST_DEADLINE_S + max_body_bytes / MIN_UPLOAD_BYTES_PER_S


# poll() events of a socket whose client has closed it (at least its sending side) or reset it.
# Without POLLRDHUP (not Linux) a finished connection holds its slot until its thread ends.
_PEER_GONE = getattr(select, "POLLRDHUP", 0) | getattr(select, "POLLHUP", 0)


def peer_gone(sock: Any) -> bool:
    """The client has closed `sock` (or at least its sending side) or reset it: a read on
    it no longer waits. Never waits itself; False when the socket is closed here already."""
    if not hasattr(select, "poll") or not getattr(select, "POLLRDHUP", 0):
        return False
    try:
        poller = select.poll()
        poller.register(sock, _PEER_GONE)
        events = poller.poll(0)
    except (OSError, ValueError):  # closed by its thread meanwhile (fileno -1)
        return False
    return any(ev & (_PEER_GONE | select.POLLERR) for _, ev in events)


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
    connections have a thread, at most `per_address` of them from one client group
    (client_group: an IPv4 address, an IPv6 /64 or on the door's network an address, all
    of loopback), and
    clients that are not loopback together at most `max_connections - loopback_reserved`.
    One more gets `busy` and is closed at once, unless a connection whose answer has begun
    (reply_begun, told by HeaderDeadline) has been closed by its client: that one gives its
    slot back first, as its thread has only to finish (no read of it can wait any more)."""

    max_connections = MAX_CONNECTIONS
    per_address = PER_ADDRESS_CONNECTIONS
    loopback_reserved = LOOPBACK_RESERVED
    # The kernel's accept queue (socketserver's default is 5): connections past it wait in
    # SYN retries for seconds instead of being answered busy at once.
    request_queue_size = 128
    busy = busy_reply("too many open connections")
    busy_address = busy_reply("too many open connections from this address (or its network)")
    _lock: threading.Lock | None = None
    _open: dict[str, int] | None = None
    _groups: dict[int, str] | None = None  # id(socket) -> the group its slot counts for
    _answered: dict[int, Any] | None = None  # id(socket) -> socket, its reply begun
    _remote = 0
    _refused = 0
    _refusal_logged = -math.inf

    def _take(self, host: str) -> bytes | None:
        """Take a slot for a connection from group `host`; the reply to send when there is
        none."""
        if self._lock is None or self._open is None:
            # Only the serving thread calls this first, so the lazy creation does not race.
            self._lock, self._open, self._groups, self._answered = threading.Lock(), {}, {}, {}
        reply = self._try_take(host)
        # Only when refusing: a poll() per answered connection, none on the way in.
        if reply is not None and self._free_finished():
            reply = self._try_take(host)
        return reply

    def _try_take(self, host: str) -> bytes | None:
        assert self._lock is not None and self._open is not None
        with self._lock:
            total = sum(self._open.values())
            mine = self._open.get(host, 0)
            local = host == LOOPBACK_GROUP
            if total >= self.max_connections:
                return self.busy
            if mine >= self.per_address:
                return self.busy_address
            if not local and self._remote >= self.max_connections - self.loopback_reserved:
                return self.busy
            self._open[host] = mine + 1
            if not local:
                self._remote += 1
            return None

    def _release_key(self, key: int) -> bool:
        """Give back the slot of the connection whose id(socket) is `key`; False: it held
        none (refused, or given back already)."""
        if self._lock is None or self._open is None or self._groups is None:
            return False
        with self._lock:
            if self._answered is not None:
                self._answered.pop(key, None)
            host = self._groups.pop(key, None)
            if host is None:
                return False
            left = self._open.get(host, 0) - 1
            if left > 0:
                self._open[host] = left
            else:
                self._open.pop(host, None)
            if host != LOOPBACK_GROUP:
                self._remote -= 1
            return True

    def _free_finished(self) -> bool:
        """Give back the slots of connections answered and closed by their client; True if
        any was."""
        assert self._lock is not None and self._answered is not None
        with self._lock:
            answered = list(self._answered.items())
        # peer_gone outside the lock; its thread may meanwhile give the slot back itself,
        # then _release_key finds none.
        return any([self._release_key(key) for key, sock in answered if peer_gone(sock)])

    def reply_begun(self, request: Any, begun: bool = True) -> None:
        """The connection's answer has begun (False: the next request on it has). Called
        by the request's thread before the answer's first byte is sent, so before its
        client can have read it, closed the connection and opened its next one."""
        if self._lock is None or self._groups is None or self._answered is None:
            return
        key = id(request)
        with self._lock:
            if begun and key in self._groups:
                self._answered[key] = request
            else:
                self._answered.pop(key, None)

    def process_request(self, request: Any, client_address: Any) -> None:
        host = str(client_address[0]) if client_address else ""
        group = client_group(host, _local_address(request))
        reply = self._take(group)
        if reply is not None:
            self._refused += 1
            now = time.monotonic()
            # One line a minute at most: each refusal costs the sender only a connection.
            if now - self._refusal_logged >= REFUSAL_LOG_EVERY_S:
                log.warning(
                    "%s refused %d connection(s) since the last such line, the latest from "
                    "%s (%s; limits: %d connections at once, %d per client (address, IPv6 /64), %d "
                    "for clients other than loopback)",
                    self,
                    self._refused,
                    host,
                    group,
                    self.max_connections,
                    self.per_address,
                    self.max_connections - self.loopback_reserved,
                )
                self._refused, self._refusal_logged = 0, now
            try:
                request.settimeout(1.0)
                request.sendall(reply)
            except OSError:
                pass
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        assert self._groups is not None and self._lock is not None
        # The socket's own address is gone once it is closed: give back the group taken.
        with self._lock:
            self._groups[id(request)] = group
        try:
            super().process_request(request, client_address)  # type: ignore[misc]
        except BaseException:
            self._release_key(id(request))
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)  # type: ignore[misc]
        finally:
            self._release(request)  # if shutdown_request did not run

    def shutdown_request(self, request: Any) -> None:
        # The slot goes back before the socket closes: given back after, a client that
        # connects again as soon as it reads the end of its answer found it still held (503).
        self._release(request)
        super().shutdown_request(request)  # type: ignore[misc]

    def _release(self, request: Any) -> None:
        self._release_key(id(request))

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went silent (the timeout) or away is no error worth a traceback.
        if isinstance(sys.exc_info()[1], (TimeoutError, ConnectionError)):
            log.debug("connection from %s closed: %s", client_address, sys.exc_info()[1])
            return
        super().handle_error(request, client_address)  # type: ignore[misc]

    def __str__(self) -> str:
        address = getattr(self, "server_address", ("?", 0))
        return f"the HTTP server on {address[0]}:{address[1]}"


class _DeadlineReader(io.RawIOBase):
    """The connection's reads, each given what is left of the deadline (and at most the
    silence timeout, when one is set): a per-read timeout alone is renewed by every byte.
    `budget` (None: no bound) is how many more bytes may be read."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.deadline = math.inf
        self.silence: float | None = None
        self.what = "request"
        self.budget: int | None = None
        self.broken = False  # a limit was hit: the connection must not serve another request

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.broken = True
            raise TimeoutError(f"{self.what} not complete in time")
        if self.budget is not None:
            if self.budget <= 0:
                self.broken = True
                raise ConnectionAbortedError(f"{self.what}: more bytes than it may send")
            buffer = memoryview(buffer)[: self.budget]
        before = self._sock.gettimeout()
        self._sock.settimeout(left if self.silence is None else min(left, self.silence))
        try:
            got = self._sock.recv_into(buffer)
        finally:
            self._sock.settimeout(before)  # the replies are written with the usual timeout
        if self.budget is not None:
            self.budget -= got
        return got


class HeaderDeadline:
    """Mixin, placed before a BaseHTTPRequestHandler class: the request line and headers
    must be complete within `header_timeout` of the connection (or of the end of the
    previous request), the whole request (its body too) within `request_deadline` of the
    same moment; while the body comes, `timeout` is the silence allowed. What is read after
    the reply has started (werkzeug reads a body the app did not want, so the client sees a
    401 or 413 rather than a reset) has `drain_s` and `drain_bytes` at most: a body dribbled
    after a 401 held the slot for as long as it came, no token needed."""

    header_timeout = HEADER_TIMEOUT_S
    request_deadline = REQUEST_DEADLINE_S
    drain_s = DRAIN_S
    drain_bytes = DRAIN_BYTES
    _reader: _DeadlineReader
    _request_due = math.inf
    _in_headers = False
    close_connection: bool

    def setup(self) -> None:
        super().setup()  # type: ignore[misc]
        connection: socket.socket = self.connection  # type: ignore[attr-defined]
        self._reader = _DeadlineReader(connection)
        self._start_request()
        # The handler reads the request through this (StreamRequestHandler set a plain file).
        setattr(self, "rfile", io.BufferedReader(self._reader))  # noqa: B010

    def _start_request(self) -> None:
        self._tell_reply_begun(False)
        now = time.monotonic()
        self._in_headers = True
        self._request_due = now + max(self.request_deadline, self.header_timeout)
        reader = self._reader
        reader.deadline, reader.silence, reader.budget = now + self.header_timeout, None, None
        reader.what = "request line and headers"

    def handle_one_request(self) -> None:
        # Keep-alive: the next request has its own deadlines (the first one's are set above).
        if not self._in_headers:
            self._start_request()
        super().handle_one_request()  # type: ignore[misc]
        if self._reader.broken:
            # The rest of a body cut off would be read as the next request (werkzeug keeps
            # the connection after an error it counts as the client's).
            self.close_connection = True

    def parse_request(self) -> bool:
        try:
            return bool(super().parse_request())  # type: ignore[misc]
        finally:
            self._in_headers = False
            reader = self._reader
            reader.deadline, reader.what = self._request_due, "request (headers and body)"
            reader.silence = getattr(self, "timeout", None) or REQUEST_TIMEOUT_S
            # The reply is written with the socket's timeout: not what was left of the deadline.
            self.connection.settimeout(getattr(self, "timeout", None))  # type: ignore[attr-defined]

    def _tell_reply_begun(self, begun: bool) -> None:
        # The server's connection limit (ConnectionLimit), if it has one.
        tell = getattr(getattr(self, "server", None), "reply_begun", None)
        if tell is not None:
            tell(getattr(self, "connection", None), begun)

    def send_response(self, *args: Any, **kwargs: Any) -> None:
        # Before the status line is written: once the client has the answer it may close
        # the connection and open its next one. (werkzeug starts every answer here; wsgiref,
        # under the metrics endpoint, only its errors.)
        self._tell_reply_begun(True)
        super().send_response(*args, **kwargs)  # type: ignore[misc]
        reader = self._reader
        if not self._in_headers:  # a reply to a request whose headers are in: the body is over
            reader.deadline = min(reader.deadline, time.monotonic() + self.drain_s)
            reader.budget = self.drain_bytes
            reader.what = "request body after the reply"
