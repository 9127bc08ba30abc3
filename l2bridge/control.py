"""The control socket: a unix stream socket that answers one JSON request per connection.

Protocol: the client sends one line ``{"cmd": "show"}`` (or ``"fdb"``) and
reads one JSON object until EOF.  Errors come back as ``{"error": "..."}``.
The socket is created only when the site is running, so a socket that answers
means a site that is up (the lab waits on exactly that).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
from collections.abc import Callable

import trio

REQUEST_MAX_BYTES = 4096
CLIENT_TIMEOUT_S = 5.0
CONTROL_DIR = "/run/l2bridge"

Handler = Callable[[str], object]


class ControlError(Exception):
    """The control socket could not be reached or set up; the message says why."""


def _prepare_path(path: str) -> None:
    """Make the directory; remove a stale socket, refuse one that still answers."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: a leftover of a killed site
        return
    finally:
        probe.close()
    raise ControlError(
        f"control socket {path} answers: another l2bridge runs this site; "
        "stop it first or set a different [site].control"
    )


async def serve(
    path: str,
    handler: Handler,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``path`` and answer requests with ``handler(cmd)`` until cancelled."""
    try:
        _prepare_path(path)
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await listener.bind(path)
    except OSError as exc:
        raise ControlError(f"cannot create control socket {path}: {exc.strerror}") from None
    try:
        os.chmod(path, 0o660)
        listener.listen(16)
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                conn, _ = await listener.accept()
                nursery.start_soon(_answer, conn, handler)
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


async def _answer(conn: trio.socket.SocketType, handler: Handler) -> None:
    with conn:
        with trio.move_on_after(CLIENT_TIMEOUT_S):
            data = b""
            while b"\n" not in data and len(data) < REQUEST_MAX_BYTES:
                chunk = await conn.recv(REQUEST_MAX_BYTES)
                if not chunk:
                    break
                data += chunk
            try:
                request = json.loads(data.decode("utf-8"))
                cmd = request["cmd"]
                if not isinstance(cmd, str):
                    raise TypeError
                reply = handler(cmd)
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                reply = {"error": 'bad request: expected one JSON line like {"cmd": "show"}'}
            except LookupError as exc:
                reply = {"error": str(exc)}
            payload = json.dumps(reply).encode() + b"\n"
            while payload:
                sent = await conn.send(payload)
                payload = payload[sent:]


def query(path: str, cmd: str, *, timeout_s: float = CLIENT_TIMEOUT_S) -> object:
    """Ask a running site (blocking client, used by the CLI and the lab)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlError(
                f"no control socket at {path}: is the site running (l2bridge up -c FILE)?"
            ) from None
        except ConnectionRefusedError:
            raise ControlError(
                f"control socket {path} does not answer: the site is not running "
                "(a stale socket from a killed process)"
            ) from None
        except PermissionError:
            raise ControlError(
                f"control socket {path}: permission denied (EACCES): run as root"
            ) from None
        sock.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except TimeoutError:
        raise ControlError(f"control socket {path} did not answer within {timeout_s} s") from None
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, "?")
        raise ControlError(f"control socket {path}: {exc.strerror} ({name})") from None
    finally:
        sock.close()
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        raise ControlError(f"control socket {path} sent a malformed reply") from None
    if isinstance(reply, dict) and "error" in reply:
        raise ControlError(f"{path}: {reply['error']}")
    return reply


def find_socket(directory: str = CONTROL_DIR) -> str:
    """The one control socket in ``directory``; an error names the choices otherwise."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".sock"))
    except FileNotFoundError:
        names = []
    if len(names) == 1:
        return os.path.join(directory, names[0])
    if not names:
        raise ControlError(
            f"no running site found in {directory}: start one with 'l2bridge up -c FILE', "
            "or name its socket with -s PATH or its config with -c FILE"
        )
    listed = ", ".join(names)
    raise ControlError(f"several sites run here ({listed}): choose one with -c FILE or -s PATH")
