"""The control socket: a unix stream socket that answers one JSON request per connection.

Protocol: the client sends one line ``{"cmd": "show"}`` (or ``"fdb"``) and
reads one JSON object until EOF.  Errors come back as ``{"error": "..."}``.
The socket is created only when the site is running, so a socket that answers
means a site that is up (the lab waits on exactly that).

Claiming the path (``ControlClaim``), before the site touches anything else:
  1. the directory: created with mode 0755 when missing; refused when it is not
     a directory, or is writable by others without the sticky bit, or belongs
     to someone other than us or root (whoever can write there could swap the
     socket);
  2. the lock ``PATH.lock``: an exclusive ``flock`` held for the site's life
     (the kernel releases it when the process dies, however it dies), with the
     holder's pid written in it; a held lock means another l2bridge runs this
     site, and the new one refuses before it changes anything;
  3. the path itself: nothing there is fine; a socket nobody listens on
     (ECONNREFUSED) is the leftover of a killed site and is removed; anything
     else - a socket that answers, a regular file, a directory, a link - is
     refused and never deleted.

Serving: every client gets a deadline (``CLIENT_TIMEOUT_S``) for the whole
exchange, its request is bounded (``REQUEST_MAX_BYTES``), at most
``MAX_CLIENTS`` are served at once (more are closed at once), and any error of
one client (it hung up, reset, sent garbage) ends that client only: nothing a
client does reaches the site.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from types import TracebackType

import trio

from l2bridge.errors import EXIT_FAILED, EXIT_USAGE, L2bridgeError

log = logging.getLogger("l2bridge")

REQUEST_MAX_BYTES = 4096
CLIENT_TIMEOUT_S = 5.0
MAX_CLIENTS = 16  # answered at once; a client beyond this is closed without an answer
LISTEN_BACKLOG = 64
ACCEPT_ERROR_PAUSE_S = 0.1  # after EMFILE/ENFILE/ENOMEM: let the fds drain, then accept again
CONTROL_DIR = "/run/l2bridge"
CONTROL_DIR_MODE = 0o755
SOCKET_MODE = 0o660
LOCK_SUFFIX = ".lock"
PROBE_TIMEOUT_S = 1.0

Handler = Callable[[str], Awaitable[object]]  # cmd -> the JSON-ready answer


class ControlError(L2bridgeError):
    """The control socket could not be reached or set up; the message says why."""


class ControlPathError(ControlError):
    """``[site].control`` names a path l2bridge cannot use (a configuration problem)."""

    exit_status = EXIT_USAGE


class ControlClaim:
    """The exclusive right to serve ``path`` (module docstring, "Claiming the path").

    A context manager: ``__enter__`` checks the directory, takes the lock and
    clears a stale socket, raising ``ControlError`` (one line) otherwise;
    ``__exit__`` removes the lock file (if it is still the one it locked) and
    releases the lock.  Nothing is changed before every check passed, except
    the directory and the lock file.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock_path = path + LOCK_SUFFIX
        self._fd = -1

    def __enter__(self) -> ControlClaim:
        check_directory(self.path, create=True)
        self._fd = _lock(self.lock_path, self.path)
        try:
            _clear_stale(self.path)
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._release()

    def _release(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            if _same_file(self._fd, self.lock_path):
                os.unlink(self.lock_path)
        os.close(self._fd)
        self._fd = -1


def check_directory(path: str, *, create: bool) -> None:
    """The socket's directory is safe to put a socket in (module docstring, step 1)."""
    directory = os.path.dirname(os.path.abspath(path))
    if create and not os.path.lexists(directory):
        try:
            os.makedirs(directory, mode=CONTROL_DIR_MODE, exist_ok=True)
        except OSError as exc:
            raise ControlPathError(f"cannot create the control socket's directory {directory}: "
                               f"{exc.strerror} ({_ename(exc)})") from None
    try:
        info = os.stat(directory)
    except FileNotFoundError:
        if not create:
            return  # `check` on a machine where the site never ran: up creates it
        raise ControlPathError(f"control socket directory {directory} vanished") from None
    except OSError as exc:
        raise ControlPathError(f"control socket directory {directory}: {exc.strerror} "
                           f"({_ename(exc)})") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ControlPathError(f"control socket directory {directory} is not a directory; "
                           "set [site].control to a path in a directory")
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        raise ControlPathError(
            f"control socket directory {directory} is writable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}): anyone there could replace the socket; "
            f"run chmod go-w {directory}, or set [site].control elsewhere")
    if info.st_uid not in (0, os.geteuid()):
        raise ControlPathError(
            f"control socket directory {directory} belongs to uid {info.st_uid}, not to this "
            "user or root; set [site].control to a directory of your own")


def check_path(path: str) -> None:
    """Refuse a control path where something other than a socket exists (never deletes)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ControlPathError(f"control socket {path}: {exc.strerror} ({_ename(exc)})") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise ControlPathError(
            f"control socket {path}: a {_kind(info.st_mode)} exists there and l2bridge never "
            "deletes one; set [site].control to another path (or remove it yourself)")


def _lock(lock_path: str, path: str) -> int:
    """Take the site's lock (step 2); the fd holds it until closed."""
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    while True:
        try:
            fd = os.open(lock_path, flags, 0o600)
        except OSError as exc:
            raise ControlError(f"cannot open lock file {lock_path}: {exc.strerror} "
                               f"({_ename(exc)}); it must be a regular file") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ControlError(f"lock file {lock_path} is not a regular file; remove it")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                who = f" (pid {holder})" if holder else ""
                raise ControlError(
                    f"another l2bridge runs this site{who}: it holds {lock_path}; stop it "
                    f"first, or give this one a different [site].control") from None
            if not _same_file(fd, lock_path):
                os.close(fd)  # its holder removed it between our open and flock: again
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise


def _clear_stale(path: str) -> None:
    """Step 3: remove a socket nobody listens on; refuse anything else."""
    check_path(path)
    if not os.path.lexists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(PROBE_TIMEOUT_S)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a leftover of a killed site (we hold the site's lock)
        return
    except OSError as exc:
        raise ControlError(f"control socket {path}: probing it failed: {exc.strerror} "
                           f"({_ename(exc)})") from None
    finally:
        probe.close()
    raise ControlError(
        f"control socket {path} answers: another l2bridge (or another program) serves it; "
        "stop it first or set a different [site].control")


def _same_file(fd: int, path: str) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "directory"),
                       (stat.S_ISLNK, "symbolic link"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "file"


def _ename(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, "?")


# ---------------------------------------------------------------- serving


async def serve(
    path: str,
    handler: Handler,
    *,
    claim: ControlClaim | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``path`` and answer requests with ``handler(cmd)`` until cancelled.

    ``claim`` is the caller's claim on ``path``; without one, ``serve`` claims
    the path itself for as long as it runs.
    """
    with contextlib.ExitStack() as stack:
        if claim is None:
            claim = stack.enter_context(ControlClaim(path))
        try:
            listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            stack.callback(listener.close)
            await listener.bind(path)
        except OSError as exc:
            raise ControlError(f"cannot create control socket {path}: {exc.strerror} "
                               f"({_ename(exc)})") from None
        stack.callback(_unlink_quietly, path)
        os.chmod(path, SOCKET_MODE)
        listener.listen(LISTEN_BACKLOG)
        task_status.started()
        active = [0]  # clients being answered (trio: no lock needed)
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    conn, _ = await listener.accept()
                except OSError as exc:  # out of fds or memory, an aborted connection
                    if exc.errno not in (errno.ECONNABORTED, errno.EINTR):
                        log.warning("control socket %s: accept failed: %s (%s); retrying",
                                    path, exc.strerror, _ename(exc))
                        await trio.sleep(ACCEPT_ERROR_PAUSE_S)
                    continue
                if active[0] >= MAX_CLIENTS:
                    conn.close()  # busy: this client is not answered, the site goes on
                    continue
                active[0] += 1
                nursery.start_soon(_client, conn, handler, active)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def _client(conn: trio.socket.SocketType, handler: Handler, active: list[int]) -> None:
    """One client, start to end: its failures end here.

    Reading the request and sending the answer each have ``CLIENT_TIMEOUT_S``;
    the command in between is bounded by the site (a reload has its own bound).
    """
    try:
        with conn:
            data = b""
            with trio.move_on_after(CLIENT_TIMEOUT_S) as reading:
                while b"\n" not in data and len(data) < REQUEST_MAX_BYTES:
                    chunk = await conn.recv(REQUEST_MAX_BYTES)
                    if not chunk:
                        break
                    data += chunk
            if reading.cancelled_caught:
                return
            payload = json.dumps(await _reply(handler, data)).encode() + b"\n"
            view = memoryview(payload)
            with trio.move_on_after(CLIENT_TIMEOUT_S):
                while view:
                    view = view[await conn.send(view):]
    except OSError:
        pass  # it hung up, reset or went away mid-answer: nothing to do
    finally:
        active[0] -= 1


async def _reply(handler: Handler, data: bytes) -> object:
    """The answer to one request; a handler failure is an error reply, never a crash.

    An error reply is ``{"error": line, "exit_status": n}``: the status the
    client's command exits with (2: bad request or input, 1: failed).
    """
    line, newline, _ = data.partition(b"\n")
    if not newline and len(data) >= REQUEST_MAX_BYTES:
        return _error(f"request longer than {REQUEST_MAX_BYTES} bytes", EXIT_USAGE)
    try:
        request = json.loads(line.decode("utf-8"))
        cmd = request["cmd"]
        if not isinstance(cmd, str):
            raise TypeError
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return _error('bad request: expected one JSON line like {"cmd": "show"}', EXIT_USAGE)
    try:
        return await handler(cmd)
    except LookupError as exc:
        return _error(str(exc).strip("'\""), EXIT_USAGE)
    except L2bridgeError as exc:
        return _error(str(exc), exc.exit_status)
    except Exception as exc:  # a bug behind one command must not stop the site
        log.exception("control: %r failed", cmd)
        return _error(f"{cmd} failed inside the site: {type(exc).__name__}: {exc}", EXIT_FAILED)


def _error(message: str, status: int) -> dict:
    return {"error": message, "exit_status": status}


# ---------------------------------------------------------------- client


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
        raise ControlError(f"control socket {path}: {exc.strerror} ({_ename(exc)})") from None
    finally:
        sock.close()
    if not chunks:
        raise ControlError(f"control socket {path} closed without answering (is the site busy?)")
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        raise ControlError(f"control socket {path} sent a malformed reply") from None
    if isinstance(reply, dict) and "error" in reply:
        error = ControlError(f"{path}: {reply['error']}")
        status = reply.get("exit_status")
        if status in (EXIT_FAILED, EXIT_USAGE):
            error.exit_status = status
        raise error
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
