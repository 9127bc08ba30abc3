"""The site watches its own plumbing: bridge, tap, LAN NICs, the tap's membership.

Flow (one trio task in the leader, beside the dataplane):
  1. subscribe to rtnetlink link events (RTMGRP_LINK) in the site's namespace;
  2. observe the bridge, the tap and the NICs (``BridgePlumbing.observe``) at
     start, after every burst of link events (drained, then ``SETTLE_S``), and
     every ``CHECK_EVERY_S`` anyway (events can be lost: ENOBUFS);
  3. ``plumbing.decide`` says what changed and what to do: notes are logged
     once, repairs are made and logged with their reason, a fatal change is
     logged and raised as ``PlumbingError`` (the site stops with status 1 so a
     supervisor restarts it);
  4. ``status`` (what ``show`` reports) is the latest observation.
"""

from __future__ import annotations

import errno
import logging
import socket

import trio

from l2bridge.core import plumbing
from l2bridge.errors import L2bridgeError
from l2bridge.io.netctl import BridgePlumbing, NetctlError

log = logging.getLogger("l2bridge")

CHECK_EVERY_S = 5.0
SETTLE_S = 0.05  # let a burst of link events (a bridge deleted releases every port) end
REPAIR_ATTEMPTS = 2  # a refused repair is decided again once, from a fresh look
RTMGRP_LINK = 0x1
NETLINK_RCVBUF_BYTES = 1 << 20


class PlumbingError(L2bridgeError):
    """The plumbing changed in a way the site cannot repair; the message says how."""


class PlumbingWatch:
    """Observes ``plumb`` and keeps it as the config wants (module docstring)."""

    def __init__(self, plumb: BridgePlumbing) -> None:
        self.plumb = plumb
        self.observed: plumbing.Observed | None = None

    def status(self) -> dict | None:
        """The plumbing as last observed (``show``), or None before the first look."""
        if self.observed is None:
            return None
        return plumbing.status(self.plumb.expected(), self.observed)

    async def check(self) -> None:
        """Observe; log, repair or raise ``PlumbingError`` as ``plumbing.decide`` says.

        A repair the kernel refuses is decided again once from a fresh look after
        SETTLE_S: a bridge being deleted releases its ports before it is gone, so a
        look in between sees a port to re-attach to a bridge that is going away.  A note
        the first look already said is not said again."""
        said: set[str] = set()
        for attempt in range(REPAIR_ATTEMPTS):
            try:
                self._check_once(said)
                return
            except NetctlError as exc:
                if attempt + 1 == REPAIR_ATTEMPTS:
                    log.error("repairing the plumbing failed: %s", exc)
                    raise PlumbingError(f"repairing the plumbing failed: {exc}") from None
            await trio.sleep(SETTLE_S)

    def _check_once(self, said: set[str]) -> None:
        now = self.plumb.observe()
        decision = plumbing.decide(self.plumb.expected(), self.observed, now)
        for note in decision.notes:
            if note not in said:
                said.add(note)
                log.warning("%s", note)
        if decision.fatal is not None:
            self.observed = now
            log.error("%s", decision.fatal)
            raise PlumbingError(decision.fatal)
        if decision.repairs:
            self.plumb.repair(decision.repairs)
            for repair in decision.repairs:
                if repair.reason is not None:
                    log.warning("%s", repair.reason)
            now = self.plumb.observe()
        self.observed = now

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Watch until cancelled (module flow)."""
        events = _link_events()
        try:
            await self.check()
            task_status.started()
            while True:
                with trio.move_on_after(CHECK_EVERY_S):
                    await trio.lowlevel.wait_readable(events)
                    _drain(events)
                    await trio.sleep(SETTLE_S)
                _drain(events)
                await self.check()
        finally:
            trio.lowlevel.notify_closing(events)
            events.close()


def _link_events() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                         socket.NETLINK_ROUTE)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, NETLINK_RCVBUF_BYTES)
        sock.bind((0, RTMGRP_LINK))
    except OSError:
        sock.close()
        raise
    return sock


def _drain(sock: socket.socket) -> None:
    """Discard queued events: each only says "look again" (ENOBUFS says it too)."""
    while True:
        try:
            sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
