"""Which sockets a process holds (``/proc``): readiness probes for daemons the lab starts.

A daemon is ready when it holds its port itself: ``port_open`` matches the
socket's inode among the process's own fds, so another daemon already on the
port never passes for it.
"""

from __future__ import annotations

import os

TCP_LISTEN = "0A"  # state column of /proc/net/tcp


def socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets process ``pid`` holds open."""
    inodes: set[str] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def port_open(pid: int, proto: str, port: int) -> bool:
    """Whether process ``pid`` itself holds a ``proto`` socket on local ``port``.

    For TCP only listening sockets count; for UDP any bound socket does.  The
    socket must be one of ``pid``'s own (matched by inode), so another daemon
    already on the port does not pass for ours.
    """
    owned = socket_inodes(pid)
    for table in (proto, proto + "6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4:
                continue
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port != port or (proto == "tcp" and fields[3] != TCP_LISTEN):
                continue
            if len(fields) > 9 and fields[9] in owned:
                return True
    return False
