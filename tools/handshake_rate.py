"""How many handshakes one site answers per second (responder side, one core).

    PYTHONPATH=. python3 tools/handshake_rate.py [COUNT]

Feeds valid INITIATIONs from 64 configured peers, each from its own source
address (so the per-source rate limit does not bind), through the same
``SecureLinks.receive`` the daemon uses: mac1, the Diffie-Hellman operations,
the timestamp check and the RESPONSE.
"""

from __future__ import annotations

import sys
import time

from l2bridge.core import keys, noise
from l2bridge.core.secure import PeerLink, Reply, SecureLinks

PEERS = 64
PEER_FLOOD_GAP_S = 0.1  # virtual time between initiations: past the per-peer flood guard


def main(count: int) -> None:
    site = noise.Identity(keys.generate_private_key())
    peers = [noise.Identity(keys.generate_private_key()) for _ in range(PEERS)]
    links = [
        PeerLink(keys=noise.PeerKeys(site, p.public), name=f"p{i}", has_endpoint=False)
        for i, p in enumerate(peers)
    ]
    links_of_site = SecureLinks(site, links)
    messages = []
    for n in range(count):
        peer = peers[n % PEERS]
        message, _ = noise.create_initiation(
            peer, noise.PeerKeys(peer, site.public), n, noise.tai64n(1.8e9 + n)
        )
        messages.append((message, (f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 1)))
    now = 0.0
    answered = 0
    started = time.perf_counter()
    for message, source in messages:
        now += PEER_FLOOD_GAP_S
        answered += isinstance(links_of_site.receive(message, source, now), Reply)
    elapsed = time.perf_counter() - started
    print(f"{answered}/{count} initiations answered in {elapsed:.2f} s: "
          f"{answered / elapsed:.0f} handshakes/s (responder side, one core)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 4000)
