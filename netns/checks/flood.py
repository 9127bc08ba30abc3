"""``python -m netns.checks.flood IFNAME SECONDS [SRC_MAC]``: broadcast as fast as one process can.

Run inside a lab host's namespace by the ``storm`` check: one AF_PACKET socket
bound to IFNAME sends the same 60-byte broadcast frame (experimental ethertype
0x88B5, payload ``L2B-storm``) in a tight loop for SECONDS, then prints one JSON
line: ``{"sent": N, "errors": E, "seconds": S}`` (errors: sends the kernel
refused, e.g. ENOBUFS).  Bounded in time by construction; the check kills it
past its own bound anyway.
"""

from __future__ import annotations

import json
import socket
import sys
import time

ETHERTYPE = b"\x88\xb5"
PAYLOAD = b"L2B-storm"
BURST = 256  # sends between two looks at the clock
DEFAULT_SRC = bytes.fromhex("0277ff000001")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print("usage: python -m netns.checks.flood IFNAME SECONDS [SRC_MAC]", file=sys.stderr)
        return 2
    ifname, seconds = args[0], float(args[1])
    src = bytes.fromhex(args[2].replace(":", "")) if len(args) == 3 else DEFAULT_SRC
    frame = b"\xff" * 6 + src + ETHERTYPE + PAYLOAD.ljust(46, b"\0")
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.bind((ifname, 0))
    send = sock.send
    sent = errors = 0
    started = time.monotonic()
    end = started + seconds
    while True:
        for _ in range(BURST):
            try:
                send(frame)
                sent += 1
            except OSError:
                errors += 1
        if time.monotonic() >= end:
            break
    sock.close()
    print(json.dumps({"sent": sent, "errors": errors,
                      "seconds": round(time.monotonic() - started, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
