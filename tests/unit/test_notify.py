"""sd_notify over a real AF_UNIX datagram socket (path and abstract namespace)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from voxgate.service.notify import Notifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


def recv(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_status_stopping(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path}, use_systemd_python=False)
    assert n.enabled
    assert n.ready("listening")
    assert recv(sock) == ["READY=1", f"MAINPID={os.getpid()}", "STATUS=listening"]
    assert n.status("waiting for audio")
    assert recv(sock) == ["STATUS=waiting for audio"]
    n.status("waiting for audio")  # unchanged: nothing sent
    n.stopping("stopping: SIGTERM")
    assert recv(sock) == ["STOPPING=1", "STATUS=stopping: SIGTERM"]
    n.close()


def test_abstract_namespace_socket() -> None:
    name = f"voxgate-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name}, use_systemd_python=False).watchdog()
        assert recv(sock) == ["WATCHDOG=1"]
    finally:
        sock.close()


def test_watchdog_pings_at_half_the_period(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}, use_systemd_python=False)
    assert n.watchdog_period == 2.0
    sent = [t for t in (0.0, 0.5, 0.99, 1.0, 1.5, 2.1, 2.2) if n.watchdog_if_due(t)]
    assert sent == [0.0, 1.0, 2.1]
    for _ in sent:
        assert recv(sock) == ["WATCHDOG=1"]


def test_watchdog_for_another_pid_is_ignored() -> None:
    env = {"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}
    assert Notifier(env).watchdog_period is None


def test_without_systemd_everything_is_a_no_op() -> None:
    n = Notifier({})
    assert not n.enabled
    assert not n.ready() and not n.watchdog_if_due(0.0)


def test_a_vanished_socket_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}, use_systemd_python=False)
    assert n.ready() is False
    assert "sd_notify" in caplog.text


@pytest.mark.parametrize(
    ("usec", "pid", "period"),
    [
        ("2000000", "²", 2.0),  # isdigit() passed '²' to int(): ValueError at start
        ("2000000", "garbage", 2.0),
        ("2000000", "٣", 2.0),
        ("²", None, None),
        ("٢٠٠٠٠٠٠", None, None),  # int() read other scripts' digits as a period
        ("9" * 5000, None, None),
    ],
)
def test_garbage_watchdog_variables_count_as_not_set_with_a_warning(
    usec: str,
    pid: str | None,
    period: float | None,
    notify_socket: tuple[socket.socket, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sock, path = notify_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": usec}
    if pid is not None:
        env["WATCHDOG_PID"] = pid
    with caplog.at_level("WARNING", logger="voxgate.service.notify"):
        n = Notifier(env, use_systemd_python=False)
    assert n.watchdog_period == period
    bad = "WATCHDOG_PID" if pid is not None else "WATCHDOG_USEC"
    assert f"ignoring {bad}=" in caplog.text and "treated as not set" in caplog.text
    assert len(caplog.text) < 300  # a long value is cut short in the log line
    assert n.watchdog_if_due(0.0) is (period is not None)
    if period is not None:
        assert recv(sock) == ["WATCHDOG=1"]
    n.close()
