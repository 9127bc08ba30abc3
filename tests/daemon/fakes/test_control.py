"""The control socket: one JSON request per connection, errors as JSON, stale sockets."""

from __future__ import annotations

import contextlib
import socket

import pytest
import trio

from l2bridge.ops import control


async def handler(cmd: str) -> object:
    if cmd == "show":
        return {"site": "a", "peers": []}
    raise LookupError(f"unknown command {cmd!r} (known: show)")


async def test_query_answers_and_names_unknown_commands(nursery, tmp_path):
    path = str(tmp_path / "run" / "a.sock")
    await nursery.start(control.serve, path, handler)
    reply = await trio.to_thread.run_sync(control.query, path, "show")
    assert reply == {"site": "a", "peers": []}
    with pytest.raises(control.ControlError, match="unknown command 'nope'"):
        await trio.to_thread.run_sync(control.query, path, "nope")


async def test_garbage_request_gets_an_error_reply(nursery, tmp_path):
    path = str(tmp_path / "a.sock")
    await nursery.start(control.serve, path, handler)

    def raw() -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            s.sendall(b"\xff\xfe not json\n")
            return s.recv(4096)

    assert b"bad request" in await trio.to_thread.run_sync(raw)


async def test_stale_socket_is_replaced_live_one_is_refused(nursery, tmp_path):
    path = str(tmp_path / "a.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # a file nobody listens on: what a killed site leaves
    await nursery.start(control.serve, path, handler)
    with pytest.raises(control.ControlError, match="another l2bridge runs this site"):
        await nursery.start(control.serve, path, handler)


def test_query_without_a_site_names_the_cause(tmp_path):
    with pytest.raises(control.ControlError, match="is the site running"):
        control.query(str(tmp_path / "none.sock"), "show")


def test_find_socket_needs_exactly_one(tmp_path):
    with pytest.raises(control.ControlError, match="no running site"):
        control.find_socket(str(tmp_path))
    for name in ("a.sock", "b.sock"):
        (tmp_path / name).touch()
    with pytest.raises(control.ControlError, match=r"several sites run here \(a.sock, b.sock\)"):
        control.find_socket(str(tmp_path))


# ---------------------------------------------------------------- hostile clients


def _client(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    while True:
        try:
            s.connect(path)
            return s
        except BlockingIOError:  # the listen backlog is full for an instant
            trio_sleep_blocking(0.001)


def trio_sleep_blocking(seconds: float) -> None:
    import time

    time.sleep(seconds)


async def big_handler(cmd: str) -> object:
    if cmd == "fdb":
        return [{"mac": f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}", "vlan": 0} for i in range(5000)]
    return await handler(cmd)


async def test_clients_that_misbehave_never_stop_the_server(nursery, tmp_path):
    path = str(tmp_path / "a.sock")
    await nursery.start(control.serve, path, big_handler)

    def misbehave() -> None:
        for _ in range(100):
            _client(path).close()  # connect and close at once (crashed the site before)
        for _ in range(20):
            with _client(path) as s:  # hang up after 100 bytes of a large answer
                s.sendall(b'{"cmd": "fdb"}\n')
                s.recv(100)
        for i in range(20):
            with _client(path) as s:
                s.sendall(bytes(range(256)) * (i + 1))
        with _client(path) as s, contextlib.suppress(OSError):
            s.sendall(b"x" * (1 << 20))  # refused after REQUEST_MAX_BYTES: as it should
        for _ in range(1000):
            _client(path).close()

    await trio.to_thread.run_sync(misbehave)
    assert await trio.to_thread.run_sync(control.query, path, "show") == {"site": "a",
                                                                          "peers": []}


async def test_oversized_and_garbage_requests_get_error_replies(nursery, tmp_path):
    path = str(tmp_path / "a.sock")
    await nursery.start(control.serve, path, handler)

    def ask(data: bytes) -> bytes:
        with _client(path) as s:
            with contextlib.suppress(OSError):
                s.sendall(data)
            out = b""
            try:
                while chunk := s.recv(4096):
                    out += chunk
            except ConnectionResetError:  # closed with the rest of the request unread
                out += b"<reset>"
            return out

    oversized = await trio.to_thread.run_sync(ask, b"y" * 10_000)
    assert b"longer than 4096 bytes" in oversized or oversized == b"<reset>"
    assert b"bad request" in await trio.to_thread.run_sync(ask, b"[1, 2]\n")
    assert b"bad request" in await trio.to_thread.run_sync(ask, b'{"cmd": 3}\n')


async def test_a_silent_client_is_dropped_at_its_deadline(nursery, tmp_path, autojump_clock):
    path = str(tmp_path / "a.sock")
    await nursery.start(control.serve, path, handler)
    stream = await trio.open_unix_socket(path)
    await stream.send_all(b'{"cmd": "sh')  # half a request, then silence
    with trio.fail_after(control.CLIENT_TIMEOUT_S + 1):
        assert await stream.receive_some() == b""  # closed by the server, no answer


async def test_clients_beyond_the_bound_are_closed_and_the_rest_answered(nursery, tmp_path,
                                                                         autojump_clock):
    path = str(tmp_path / "a.sock")
    await nursery.start(control.serve, path, handler)
    silent = [await trio.open_unix_socket(path) for _ in range(control.MAX_CLIENTS)]
    await trio.sleep(0.1)
    extra = await trio.open_unix_socket(path)
    assert await extra.receive_some() == b""  # busy: closed at once
    await trio.sleep(control.CLIENT_TIMEOUT_S + 1)  # the silent ones time out
    for stream in silent:
        await stream.aclose()
    honest = await trio.open_unix_socket(path)
    await honest.send_all(b'{"cmd": "show"}\n')
    answer = b""
    while chunk := await honest.receive_some():
        answer += chunk
    assert b'"site": "a"' in answer


async def test_a_handler_bug_is_an_error_reply_not_a_crash(nursery, tmp_path):
    async def buggy(cmd: str) -> object:
        raise ZeroDivisionError("boom")

    path = str(tmp_path / "a.sock")
    await nursery.start(control.serve, path, buggy)
    with pytest.raises(control.ControlError, match="show failed inside the site"):
        await trio.to_thread.run_sync(control.query, path, "show")
    with pytest.raises(control.ControlError, match="show failed inside the site"):
        await trio.to_thread.run_sync(control.query, path, "show")


# ---------------------------------------------------------------- claiming the path


def test_a_claim_refuses_what_is_not_a_stale_socket_and_deletes_nothing(tmp_path):
    regular = tmp_path / "file.sock"
    regular.write_text("precious")
    with pytest.raises(control.ControlPathError, match="a regular file exists there"):
        control.ControlClaim(str(regular)).__enter__()
    assert regular.read_text() == "precious"
    folder = tmp_path / "dir.sock"
    folder.mkdir()
    with pytest.raises(control.ControlPathError, match="a directory exists there"):
        control.ControlClaim(str(folder)).__enter__()
    link = tmp_path / "link.sock"
    link.symlink_to(regular)
    with pytest.raises(control.ControlPathError, match="a symbolic link exists there"):
        control.ControlClaim(str(link)).__enter__()
    assert regular.read_text() == "precious"


def test_a_held_claim_names_its_holder(tmp_path):
    import os

    path = str(tmp_path / "a.sock")
    holder = rf"another l2bridge runs this site \(pid {os.getpid()}\)"
    with control.ControlClaim(path), pytest.raises(control.ControlError, match=holder):
        control.ControlClaim(path).__enter__()
    with control.ControlClaim(path):  # released: a new claim succeeds
        pass
    assert not os.path.exists(path + ".lock")


def test_the_directory_is_created_safely_and_unsafe_ones_are_refused(tmp_path):
    import os
    import stat

    path = tmp_path / "new" / "dir" / "a.sock"
    with control.ControlClaim(str(path)):
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o755
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    with pytest.raises(control.ControlPathError, match="writable by group or others"):
        control.ControlClaim(str(open_dir / "a.sock")).__enter__()
    os.chmod(open_dir, 0o1777)  # sticky, like /tmp: others cannot replace our socket
    with control.ControlClaim(str(open_dir / "a.sock")):
        pass
