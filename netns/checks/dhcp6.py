"""``python -m netns.checks.dhcp6 IFNAME MAC SECONDS``: which DHCPv6 servers and routers answer.

Run inside a lab host's namespace by the ``dhcp_local`` check (busybox here has
no DHCPv6 client).  Flow: 1. a router solicitation (ICMPv6 133 to ff02::2) and
a SOLICIT (RFC 8415: client ID DUID-LL of MAC, one IA_NA) to ff02::1:2, sent
again every second; 2. for SECONDS, collect every ADVERTISE (its source, server
DUID, offered address) and every router advertisement (its source);
3. REQUEST the first advertised address and wait for the REPLY; 4. print one
JSON line ``{"advertised": [...], "lease": ADDR or null, "server": DUID,
"ras": [SOURCES]}``.  Everything is bounded by SECONDS (plus one second for
the REPLY).
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import sys
import time

CLIENT_PORT, SERVER_PORT = 546, 547
ALL_SERVERS = "ff02::1:2"
ALL_ROUTERS = "ff02::2"
SOLICIT, ADVERTISE, REQUEST, REPLY = 1, 2, 3, 7
OPT_CLIENTID, OPT_SERVERID, OPT_IA_NA, OPT_IAADDR, OPT_ELAPSED = 1, 2, 3, 5, 8
ICMPV6_RS, ICMPV6_RA = 133, 134
IAID = 1


def option(code: int, data: bytes) -> bytes:
    return struct.pack("!HH", code, len(data)) + data


def options(data: bytes) -> dict[int, bytes]:
    """The top-level options of a message body (last of each code wins)."""
    out: dict[int, bytes] = {}
    at = 0
    while at + 4 <= len(data):
        code, size = struct.unpack_from("!HH", data, at)
        out[code] = data[at + 4:at + 4 + size]
        at += 4 + size
    return out


def ia_address(ia_na: bytes) -> str | None:
    """The address of the first IAADDR inside an IA_NA option's data."""
    inner = options(ia_na[12:])
    addr = inner.get(OPT_IAADDR)
    if addr is None or len(addr) < 16:
        return None
    return socket.inet_ntop(socket.AF_INET6, addr[:16])


def message(kind: int, xid: bytes, duid: bytes, *extra: bytes) -> bytes:
    ia = struct.pack("!III", IAID, 0, 0)
    body = [option(OPT_CLIENTID, duid), option(OPT_ELAPSED, b"\0\0"), *extra]
    if not any(e[:2] == struct.pack("!H", OPT_IA_NA) for e in extra):
        body.append(option(OPT_IA_NA, ia))
    return bytes([kind]) + xid + b"".join(body)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m netns.checks.dhcp6 IFNAME MAC SECONDS", file=sys.stderr)
        return 2
    ifname, mac, seconds = args[0], bytes.fromhex(args[1].replace(":", "")), float(args[2])
    index = socket.if_nametoindex(ifname)
    duid = struct.pack("!HH", 3, 1) + mac  # DUID-LL, Ethernet
    xid = os.urandom(3)
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
    udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
    udp.bind(("::", CLIENT_PORT))
    icmp = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    icmp.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
    icmp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
    icmp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    advertised: list[dict] = []
    ras: list[str] = []
    started = time.monotonic()
    next_send = started
    while (now := time.monotonic()) < started + seconds:
        if now >= next_send:
            udp.sendto(message(SOLICIT, xid, duid), (ALL_SERVERS, SERVER_PORT, 0, index))
            icmp.sendto(bytes([ICMPV6_RS, 0, 0, 0]) + bytes(4), (ALL_ROUTERS, 0, 0, index))
            next_send = now + 1.0
        ready, _, _ = select.select([udp, icmp], [], [], min(0.1, started + seconds - now))
        if icmp in ready:
            data, source = icmp.recvfrom(2048)
            if data[:1] == bytes([ICMPV6_RA]) and source[0].split("%")[0] not in ras:
                ras.append(source[0].split("%")[0])
        if udp in ready:
            data, source = udp.recvfrom(2048)
            if data[:1] == bytes([ADVERTISE]) and data[1:4] == xid:
                opts = options(data[4:])
                ia = opts.get(OPT_IA_NA, b"")
                advertised.append({"source": source[0].split("%")[0],
                                   "server": opts.get(OPT_SERVERID, b"").hex(),
                                   "address": ia_address(ia) if ia else None,
                                   "ia_na": ia.hex()})
    lease = server = None
    offer = next((a for a in advertised if a["address"]), None)
    if offer is not None:
        request = message(REQUEST, xid, duid, option(OPT_SERVERID, bytes.fromhex(offer["server"])),
                          option(OPT_IA_NA, bytes.fromhex(offer["ia_na"])))
        udp.sendto(request, (ALL_SERVERS, SERVER_PORT, 0, index))
        deadline = time.monotonic() + 1.0
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([udp], [], [], left)
            if not ready:
                break
            data, _ = udp.recvfrom(2048)
            if data[:1] == bytes([REPLY]) and data[1:4] == xid:
                opts = options(data[4:])
                lease = ia_address(opts.get(OPT_IA_NA, b"")) if OPT_IA_NA in opts else None
                server = opts.get(OPT_SERVERID, b"").hex()
                break
    for a in advertised:
        del a["ia_na"]
    print(json.dumps({"advertised": advertised, "lease": lease, "server": server, "ras": ras}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
