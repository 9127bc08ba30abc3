"""The control socket: one JSON request per connection, errors as JSON, stale sockets."""

from __future__ import annotations

import socket

import pytest
import trio

from l2bridge import control


def handler(cmd: str) -> object:
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
