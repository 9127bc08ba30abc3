"""The leader's side of its worker processes, with stand-in processes (no root)."""

from __future__ import annotations

import json
import socket
import sys
import types

import pytest
import trio

from l2bridge.core.caps import Capabilities
from l2bridge.core.keys import Secrets
from l2bridge.errors import sole_cause
from l2bridge.io import proc
from l2bridge.site.workers import Leader, WorkerError


def leader_with(script: str) -> Leader:
    """A Leader whose followers are ``python -c script`` given the channel as fd 3."""
    config = types.SimpleNamespace(path="unused.toml", document={})
    state = types.SimpleNamespace(peers=[], sessions=None, caps=Capabilities(lanes=2),
                                  config=config)  # no peers, cleartext
    site = types.SimpleNamespace(state=state)
    leader = Leader(site, Secrets(None, {}))  # type: ignore[arg-type]

    async def spawn(lane: int, tap_fd: int, sock: object, channel: socket.socket,
                    pipe: socket.socket) -> proc.Child:
        return await proc.start([sys.executable, "-c", script, str(channel.fileno())],
                                name=f"worker {lane}", pass_fds=(channel.fileno(),))

    leader._spawn = spawn  # type: ignore[method-assign]
    return leader


async def failure_of(leader: Leader) -> BaseException:
    with pytest.raises(BaseException) as caught:  # noqa: PT011 - a trio group, unwrapped below
        with trio.fail_after(10):
            await leader.run([-1, -1], [None, None])  # type: ignore[list-item]
    return sole_cause(caught.value)


async def test_a_worker_that_dies_at_start_is_named() -> None:
    error = await failure_of(leader_with("import sys; sys.exit(3)"))
    assert isinstance(error, WorkerError)
    assert str(error).startswith("worker 1 (pid ")
    assert "exited with status 3; the site stops" in str(error)


async def test_a_worker_that_exits_after_ready_stops_the_site() -> None:
    ready = json.dumps({"op": "ready", "lane": 1})
    script = ("import socket, sys, time; s = socket.socket(fileno=int(sys.argv[1]));"
              f" s.send({ready!r}.encode()); time.sleep(0.2); sys.exit(5)")
    leader = leader_with(script)
    error = await failure_of(leader)
    assert isinstance(error, WorkerError)
    assert "exited with status 5; the site stops" in str(error)
