"""The notify protocol against real AF_UNIX datagram listeners (path and abstract names)."""

from __future__ import annotations

import os
import secrets
import socket

import pytest

from l2bridge.io.notify import Notifier, message, socket_address


@pytest.fixture(params=["path", "abstract"])
def listener(request, tmp_path):
    """A datagram socket standing in for the service manager; yields (NOTIFY_SOCKET, sock)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        name = str(tmp_path / "notify")
        sock.bind(name)
    else:
        name = f"@l2bridge-test-{secrets.token_hex(6)}"
        sock.bind(socket_address(name))
    sock.settimeout(5)
    with sock:
        yield name, sock


def received(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_ready_status_reloading_stopping_watchdog_arrive(listener) -> None:
    name, sock = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": name})
    assert notifier.enabled and notifier.watchdog_interval_s is None
    assert notifier.ready("2/2 peers up")
    assert received(sock) == {"READY": "1", "STATUS": "2/2 peers up"}
    assert notifier.status("1/2 peers up; down: berlin")
    assert received(sock) == {"STATUS": "1/2 peers up; down: berlin"}
    assert notifier.reloading()
    got = received(sock)
    assert got["RELOADING"] == "1" and int(got["MONOTONIC_USEC"]) > 0
    assert notifier.stopping() and received(sock) == {"STOPPING": "1"}
    assert notifier.watchdog() and received(sock) == {"WATCHDOG": "1"}
    assert notifier.sent == 5 and notifier.failed == 0
    notifier.close()


def test_status_is_one_line_and_bounded() -> None:
    text = message({"STATUS": "a\nb" + "x" * 2000}).decode()
    assert text.count("\n") == 0 and text.startswith("STATUS=a b") and len(text) < 600


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_pid() -> None:
    me = str(os.getpid())
    assert Notifier.from_env({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "4000000"}
                             ).watchdog_interval_s == 2.0
    assert Notifier.from_env({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "4000000",
                              "WATCHDOG_PID": me}).watchdog_interval_s == 2.0
    assert Notifier.from_env({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "4000000",
                              "WATCHDOG_PID": "1"}).watchdog_interval_s is None  # another's
    assert Notifier.from_env({"WATCHDOG_USEC": "junk"}).watchdog_interval_s is None


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled and not notifier.ready("up") and notifier.sent == 0


def test_a_missing_socket_is_said_once_and_never_raises(tmp_path, caplog) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "nobody-here")})
    for _ in range(5):
        assert not notifier.watchdog()
    assert notifier.failed == 5
    lines = [r.getMessage() for r in caplog.records if "NOTIFY_SOCKET" in r.getMessage()]
    assert len(lines) == 1 and "runs on without it" in lines[0]
