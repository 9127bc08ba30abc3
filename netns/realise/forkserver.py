"""The lab's fork server: import the daemon once, fork one child per gateway.

A fresh ``python -m l2bridge up`` spends about half a second importing the same
modules (pyroute2, trio, cryptography, the site) before it does anything; 32
gateways on two cores paid that 32 times.  The lab instead starts one small
server per lab, which imports them once and then forks a child per gateway.
A child is what ``python -m l2bridge up -c CONFIG`` in the gateway's namespace
would be, minus the imports: same config, same log file, same control socket,
its own session, and it dies of SIGKILL like any process.

The server is a process of its own, never the lab's trio process: it has no
trio run and no threads, so a fork of it copies no lock or wakeup fd in the
middle of use.

Flow:
 1. ``Launcher.start``: ``python -m netns.realise.forkserver FD MODULE...`` with
    one end of a SOCK_SEQPACKET socketpair as FD (the control channel), in a
    session of its own, output to its log; it imports the MODULEs and sends
    ``ready`` (the lab starts it before the build, so the imports overlap it);
 2. ``Launcher.spawn``: a request on the control channel, JSON ``{"argv",
    "netns", "resolv_conf"}`` with two fds (SCM_RIGHTS): the child's channel
    (one end of a new socketpair; the lab keeps the other) and its log file;
 3. the server forks; the child: 1. a session of its own (``setsid``, as
    ``start_new_session``)  2. default signal dispositions  3. enters the
    network namespace (and the lab's ``resolv.conf``: ``nsenter.netns_preexec``)
    4. stdin ``/dev/null``, stdout and stderr the log  5. every other fd closed
    6. runs ``argv`` (``["-m", MODULE, ARG...]``) as ``python -m`` would
    (``runpy``) and leaves with its exit status through ``os._exit``: nothing of
    the server runs again in the child.  A step that fails writes one line to
    the log and exits 1;
 4. the child sends ``{"pid": PID}`` on its channel once it leads its session in
    its namespace (before that, a signal to its group would miss it), then
    closes it; when the server reaps the child (SIGCHLD) it sends ``{"status":
    S}`` (``Popen.returncode``'s convention: -N
    for signal N), and closes the channel.  ``ForkedProcess`` (pid, poll,
    wait) reads them, and ``l2bridge.io.proc.Child`` supervises it like any
    child: signals to its group, the ready probe with early-exit detection and
    the log's tail, a bounded stop;
 5. the server exits when the lab's end of the control channel closes (the
    lab is done, or was killed); children still running stay running (the
    gateways of ``lab up`` outlive the lab process) and the kernel gives them
    a new parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import json
import os
import runpy
import select
import signal
import socket
import sys
import traceback
from collections.abc import Sequence
from typing import IO, Any

import trio

from l2bridge.errors import L2bridgeError
from l2bridge.io import proc
from netns.realise.nsenter import netns_preexec

READY = b"ready"
MAX_MESSAGE_BYTES = 65536
READY_TIMEOUT_S = 60.0  # the server's imports, on a loaded machine
SPAWN_TIMEOUT_S = 10.0  # from a request to the child's pid
STOP_GRACE_S = 1.0
LOST_STATUS = 255  # the child exited, but the server that knew its status is gone
LOG_TAIL_LINES = 8
# What a gateway imports: the daemon, its command line, its config and logs.
GATEWAY_MODULES = ("l2bridge.ops.cli", "l2bridge.ops.daemon", "l2bridge.io.logs",
                   "l2bridge.core.config", "l2bridge.site.worker")


class LauncherError(L2bridgeError):
    """The fork server did not start or answer; the message names why."""


# ---------------------------------------------------------------- the lab's side


class ForkedProcess:
    """A child of the fork server, seen from the lab: what ``proc.Child`` needs of a
    process (``pid``, ``poll()``, ``wait()``), fed by the child's channel (flow 4)."""

    def __init__(self, pid: int, channel: socket.socket) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._channel = channel
        self._channel.setblocking(False)
        self._reading = trio.Lock()

    def poll(self) -> int | None:
        """Its exit status once the server reported it, else None (running)."""
        if self.returncode is None:
            try:
                data = self._channel.recv(MAX_MESSAGE_BYTES)
            except BlockingIOError:
                return None
            except OSError:
                data = b""
            self.returncode = int(json.loads(data)["status"]) if data else LOST_STATUS
            self._close()
        return self.returncode

    async def wait(self) -> int:
        """Until it exits; its exit status (one task reads, the others wait their turn)."""
        async with self._reading:
            while self.poll() is None:
                await trio.lowlevel.wait_readable(self._channel)
        assert self.returncode is not None
        return self.returncode

    def _close(self) -> None:
        if self._channel.fileno() >= 0:
            with contextlib.suppress(RuntimeError):  # outside trio: nothing waits on it
                trio.lowlevel.notify_closing(self._channel)
            self._channel.close()


class Launcher:
    """The lab's end of its fork server (module doc): start it, spawn children, stop it."""

    def __init__(self, log_path: str, *, modules: Sequence[str] = GATEWAY_MODULES,
                 env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        self.log_path = log_path
        self.modules = tuple(modules)
        self.env = env
        self.cwd = cwd
        self.child: proc.Child[trio.Process] | None = None
        self._control: socket.socket | None = None
        self._ready = False
        self._sending = trio.Lock()  # one request at a time on the control channel

    async def start(self) -> None:
        """Start the server (flow 1); ``spawn`` waits until it is ready."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with open(self.log_path, "ab") as log:
                self.child = await proc.start(
                    [sys.executable, "-m", "netns.realise.forkserver", str(theirs.fileno()),
                     *self.modules],
                    name="gateway launcher", pass_fds=(theirs.fileno(),), stdout=log,
                    stderr=log, env=self.env, cwd=self.cwd, error=LauncherError,
                    detail=proc.log_detail(self.log_path, LOG_TAIL_LINES))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._control = ours

    async def spawn(self, argv: Sequence[str], *, name: str, netns: str | None,
                    log_path: str, resolv_conf: str | None = None,
                    error: type[L2bridgeError] = LauncherError,
                    detail: proc.Detail | None = None) -> proc.Child[ForkedProcess]:
        """Fork a child running ``python ARGV`` in ``netns`` (None: the server's own),
        output to ``log_path`` (flow 2-4); supervised as ``proc.Child`` named ``name``."""
        request = json.dumps({"argv": list(argv), "netns": netns,
                              "resolv_conf": resolv_conf}).encode()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with contextlib.ExitStack() as undo:
            undo.callback(ours.close)
            with theirs, open(log_path, "ab") as log:
                await self._send(request, [theirs.fileno(), log.fileno()])
            ours.setblocking(False)
            with trio.move_on_after(SPAWN_TIMEOUT_S):
                await trio.lowlevel.wait_readable(ours)
            try:
                answer = ours.recv(MAX_MESSAGE_BYTES)
            except BlockingIOError:
                raise self._failure(f"no child for {name} within {SPAWN_TIMEOUT_S:g} s"
                                    ) from None
            if not answer:
                raise self._failure(f"did not start {name}")
            first = json.loads(answer)
            if "pid" not in first:  # it died becoming the child: its log says why
                why = detail() if detail is not None else ""
                raise error(f"{name}: did not start (exit status {first.get('status')}){why}")
            pid = int(first["pid"])
            undo.pop_all()
        return proc.Child(ForkedProcess(pid, ours), name, error=error, detail=detail)

    async def close(self) -> None:
        """Close the control channel; the server exits (flow 5) and is reaped (bounded).
        Children it started keep running."""
        self._close_control()
        if self.child is not None:
            with trio.move_on_after(STOP_GRACE_S):
                await self.child.wait()
            await self.child.stop(signal.SIGTERM, grace_s=STOP_GRACE_S)

    def kill_now(self) -> None:
        """An undo that cannot wait: the server's group is killed (children are not in it)."""
        self._close_control()
        if self.child is not None:
            self.child.kill_now()

    async def _send(self, request: bytes, fds: list[int]) -> None:
        """One request (waiting until the server is ready, and while its queue is full)."""
        async with self._sending:
            control = self._control
            if control is None or self.child is None:
                raise LauncherError("gateway launcher: not started")
            if not self._ready:
                await self._wait_ready(control)
            while True:
                try:
                    socket.send_fds(control, [request], fds)
                    return
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(control)
                except OSError as e:
                    raise self._failure(f"refused a request ({e.strerror or e})") from None

    async def _wait_ready(self, control: socket.socket) -> None:
        with trio.move_on_after(READY_TIMEOUT_S):
            await trio.lowlevel.wait_readable(control)
        try:
            message = control.recv(MAX_MESSAGE_BYTES)
        except BlockingIOError:
            raise self._failure(f"not ready within {READY_TIMEOUT_S:g} s") from None
        if message != READY:
            if self.child is not None:
                with trio.move_on_after(STOP_GRACE_S):
                    await self.child.wait()
            raise self._failure("exited before it was ready")
        self._ready = True

    def _failure(self, what: str) -> L2bridgeError:
        assert self.child is not None
        return self.child.failure(what)

    def _close_control(self) -> None:
        if self._control is not None:
            with contextlib.suppress(RuntimeError):  # outside trio: nothing waits on it
                trio.lowlevel.notify_closing(self._control)
            self._control.close()
            self._control = None


# ---------------------------------------------------------------- the server


class Server:
    """The fork server's loop (flow 2-5): requests in, children out, statuses back."""

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.channels: dict[int, socket.socket] = {}  # pid -> its channel
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)

    def serve(self) -> None:
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self.wake_w)
        self.control.sendall(READY)
        control = self.control.fileno()
        while True:
            readable, _, _ = select.select([control, self.wake_r], [], [])
            if self.wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 4096)
            if control in readable and not self.request():
                return
            self.reap()

    def request(self) -> bool:
        """Serve one request; False once the lab's end is closed."""
        try:
            data, fds, _, _ = socket.recv_fds(self.control, MAX_MESSAGE_BYTES, 2)
        except InterruptedError:
            return True
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            return True
        channel = socket.socket(fileno=fds[0])
        log_fd = fds[1]
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(json.loads(data), channel, log_fd, self)  # never returns
        os.close(log_fd)
        self.channels[pid] = channel  # the child announces itself on it (flow 4)
        return True

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            channel = self.channels.pop(pid, None)
            if channel is not None:
                with contextlib.suppress(OSError):
                    channel.sendall(json.dumps(
                        {"status": os.waitstatus_to_exitcode(status)}).encode())
                channel.close()


def _child(request: dict[str, Any], channel: socket.socket, log_fd: int,
           server: Server) -> None:
    """In the forked child (flow 3): become the gateway, run it, exit with its status."""
    status = 1
    try:
        try:
            _become(request, log_fd, channel.detach(), _detach_all(server))
        except Exception as e:  # noqa: BLE001 - one line in the log, exit 1
            os.write(log_fd, f"gateway launcher: {e}\n".encode(errors="replace"))
            os._exit(1)
        status = _run(request["argv"])
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status)


def _detach_all(server: Server) -> list[int]:
    fds = [server.control.detach(), server.wake_r, server.wake_w]
    fds += [c.detach() for c in server.channels.values()]
    server.channels.clear()
    return fds


def _become(request: dict[str, Any], log_fd: int, channel: int, server_fds: list[int]
            ) -> None:
    """Flow 3.1-3.6; the pid goes to the lab once the child leads its session in its
    namespace, so a signal to its group from then on reaches it."""
    os.setsid()
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for fd in server_fds:
        os.close(fd)
    if request.get("netns") is not None:
        netns_preexec(request["netns"], request.get("resolv_conf"))()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.write(channel, json.dumps({"pid": os.getpid()}).encode())
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    retitle([sys.executable, *request["argv"]])


def retitle(argv: Sequence[str]) -> bool:
    """Show ``argv`` as this process's command line (flow 3.6), as setproctitle does:
    the original argument strings are overwritten in place, NUL-padded to their end
    (so the kernel reads them as arguments).  False, and nothing changed, when it
    does not fit.  Python keeps its own copy of its arguments."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (stat fields 48, 49)
    title = b"\0".join(os.fsencode(a) for a in argv) + b"\0"
    if not start or len(title) > end - start:
        return False
    ctypes.memmove(start, title.ljust(end - start, b"\0"), end - start)
    return True


def _run(argv: Sequence[str]) -> int:
    """``python ARGV`` for ``ARGV`` = ``["-m", MODULE, ARG...]``: its exit status."""
    if len(argv) < 2 or argv[0] != "-m":
        print(f"gateway launcher: expected -m MODULE ARG..., found {list(argv)}",
              file=sys.stderr)
        return 2
    sys.argv = [argv[1], *argv[2:]]
    try:
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return _exit_status(e.code)
    except BaseException:  # noqa: BLE001 - as Python does: the traceback, status 1
        traceback.print_exc()
        return 1
    return 0


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def main(argv: Sequence[str], stderr: IO[str] = sys.stderr) -> int:
    """``python -m netns.realise.forkserver FD MODULE...`` (flow 1)."""
    if not argv or not argv[0].isdigit():
        print("usage: python -m netns.realise.forkserver FD MODULE...", file=stderr)
        return 2
    control = socket.socket(fileno=int(argv[0]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the lab stops it, never a terminal
    for module in argv[1:]:
        importlib.import_module(module)
    gc.freeze()  # what the imports made is never collected: children share it, uncopied
    Server(control).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
