"""What the loopback tests need to know about this machine."""

from __future__ import annotations

import socket


def have_ipv6_loopback() -> bool:
    """True when ::1 can be bound (IPv6 may be off in a container)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False
