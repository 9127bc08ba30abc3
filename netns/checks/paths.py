"""The ``path`` and ``quiet`` checks: how a site reaches a peer, and who carries the data.

``path``: poll site ``site``'s ``show`` every ``PATH_POLL_S`` until peer ``peer``
has the expected ``path`` (and ``via``), at most ``within`` seconds; the verdict
says what ``show`` said last.  ``quiet``: read site ``site``'s counters for the
peers at both ends, run iperf3 ``from`` → ``to``, read them again; the growth
must stay under the bound (``describe/paths.py`` has the arithmetic).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import trio

from netns.checks import traffic
from netns.describe.paths import (
    PATH_POLL_S,
    path_matches,
    path_seen,
    path_verdict,
    peer_bytes,
    quiet_verdict,
)
from netns.describe.plan import Node

Outcome = tuple[bool, str, dict[str, Any]]


class Lab(Protocol):
    def node(self, ref: str) -> Node: ...

    async def show(self, site: str) -> dict[str, Any]: ...


async def check_path(lab: Lab, p: Mapping[str, Any], timeout_s: float) -> Outcome:
    started = trio.current_time()
    deadline = started + p["within"]
    while True:
        seen = path_seen(await lab.show(p["site"]), p["peer"])
        now = trio.current_time()
        if path_matches(seen, p["expect"], p["via"]) or now >= deadline:
            return path_verdict(p["site"], p["peer"], seen, p["expect"], p["via"],
                                now - started)
        await trio.sleep(PATH_POLL_S)


async def check_quiet(lab: Lab, p: Mapping[str, Any], timeout_s: float) -> Outcome:
    src, dst = lab.node(p["from"]), lab.node(p["to"])
    peers = sorted({src.site or "", dst.site or ""})
    before = peer_bytes(await lab.show(p["site"]), peers)
    r = await traffic.iperf3(dst.ns, dst.ip, src.ns, seconds=p["seconds"],
                             timeout_s=max(p["seconds"] + 1.0, timeout_s - 2.0))
    carried = peer_bytes(await lab.show(p["site"]), peers) - before
    ok, summary, numbers = quiet_verdict(p["site"], peers, carried, iperf3_bytes(r),
                                         p["max_percent"], p["max_bytes"])
    numbers["mbit_s"] = round(r.mbit_s, 2)
    return ok, f"{summary}; iperf3 {r.mbit_s:.1f} Mbit/s", numbers


def iperf3_bytes(r: traffic.IperfResult) -> int:
    """The bytes an iperf3 run delivered (receiver side)."""
    end = r.raw.get("end") or {}
    summary = end.get("sum_received") or end.get("sum") or {}
    return int(summary.get("bytes", 0))
