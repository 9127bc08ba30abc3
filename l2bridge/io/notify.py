"""systemd's notify protocol, spoken directly (no libsystemd): ``Type=notify`` services.

A message is one datagram of ``KEY=VALUE`` lines sent to the unix socket named
by ``$NOTIFY_SOCKET``; a name starting with ``@`` is in the abstract namespace
(its first byte becomes NUL).  What l2bridge sends:

  READY=1 + STATUS=...          once the site is up (tap, bridge, sockets, workers, control)
  STATUS=...                    a line a person reads in ``systemctl status``, when it changes
  RELOADING=1 + MONOTONIC_USEC  a reload begins (then READY=1 when it ended)
  STOPPING=1                    the site begins to stop
  WATCHDOG=1                    only while the dataplane is alive (``l2bridge.site.health``)

``$WATCHDOG_USEC`` (for this process when ``$WATCHDOG_PID`` is unset or names
it) asks for ``WATCHDOG=1`` more often than that; l2bridge pings at half of it.
Without ``$NOTIFY_SOCKET`` every call does nothing.  A socket that cannot be
reached is said once in the log and never stops the site.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("l2bridge")

STATUS_MAX_CHARS = 512


def message(fields: Mapping[str, object]) -> bytes:
    """The datagram for ``fields`` (``{"READY": 1, "STATUS": "..."}``), one line each."""
    lines = []
    for key, value in fields.items():
        text = str(value).replace("\n", " ")
        if key == "STATUS" and len(text) > STATUS_MAX_CHARS:
            text = text[: STATUS_MAX_CHARS - 1] + "…"
        lines.append(f"{key}={text}")
    return "\n".join(lines).encode()


def socket_address(name: str) -> str | bytes:
    """The ``sendto`` address of ``$NOTIFY_SOCKET``: a path, or an abstract name."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as ``MONOTONIC_USEC=`` wants it."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends notifications to the service manager (does nothing without one)."""

    def __init__(self, name: str | None, watchdog_usec: int | None = None) -> None:
        self.name = name
        self.watchdog_usec = watchdog_usec
        self.sent = 0
        self.failed = 0
        self._said = False
        self._sock: socket.socket | None = None
        if name:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC``/``$WATCHDOG_PID`` ask for."""
        env = os.environ if environ is None else environ
        name = env.get("NOTIFY_SOCKET") or None
        usec: int | None = None
        text = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if text.isdigit() and int(text) > 0 and (not pid or pid == str(os.getpid())):
            usec = int(text)
        return cls(name, usec)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to ping: half of ``$WATCHDOG_USEC`` (None: no watchdog)."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2e6

    def notify(self, **fields: object) -> bool:
        """Send one message; False (said once in the log) when it could not be sent."""
        if self._sock is None or self.name is None:
            return False
        try:
            self._sock.sendto(message(fields), socket_address(self.name))
        except OSError as exc:
            self.failed += 1
            if not self._said:
                self._said = True
                name = errno.errorcode.get(exc.errno or 0, "?")
                log.warning("NOTIFY_SOCKET %s: cannot notify the service manager: %s (%s); "
                            "the site runs on without it", self.name, exc.strerror, name)
            return False
        self.sent += 1
        return True

    def ready(self, status: str) -> bool:
        return self.notify(READY=1, STATUS=status)

    def status(self, status: str) -> bool:
        return self.notify(STATUS=status)

    def reloading(self) -> bool:
        return self.notify(RELOADING=1, MONOTONIC_USEC=monotonic_usec())

    def stopping(self) -> bool:
        return self.notify(STOPPING=1)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
