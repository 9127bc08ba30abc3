"""The checks of how sites reach each other: ``path`` and ``quiet`` (pure: schemas, verdicts).

``path``: at site ``site``, peer ``peer``'s ``path`` (``"udp"``, ``"tcp"`` or
``"relay"``) and ``via`` (the relaying peer, or null) as ``show --json`` says
them must become ``expect`` (and ``via``, when given) within ``within`` seconds.
The runner (``netns/checks/paths.py``) polls ``show``; ``path_seen`` reads one
answer and ``path_verdict`` judges the last one, so a failure says what ``show``
said.

``quiet``: the public site ``site`` must carry next to none of the traffic
between two other sites: its per-peer data counters (``bytes_in + bytes_out``
and the bytes it relayed, ``relayed_in + relayed_out``, of the peers at the sites
of ``from`` and ``to``) are read before and after an
iperf3 ``from`` → ``to``, and the growth must stay under ``max_percent`` of the
bytes iperf3 moved (or under ``max_bytes``, when given).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from l2bridge.core import schema
from l2bridge.core.schema import Param
from netns.describe.timeline import HOST_REF

PATHS = ("udp", "tcp", "relay")
DEFAULT_PATH_WITHIN_S = 10.0
PATH_POLL_S = 0.2
PATH_TIMEOUT_SLACK_S = 5.0
DEFAULT_QUIET_PERCENT = 1.0
L2BRIDGE_CHECKS = ("path", "quiet")  # checks that read an l2bridge daemon's show

PATH_CHECK_SCHEMAS: dict[str, dict[str, Param]] = {
    "path": {
        "site": schema.string("a site name"),
        "peer": schema.string("a site name"),
        "expect": schema.choice(PATHS),
        "via": schema.string("a site name", None),
        "within": schema.number(0, 600, DEFAULT_PATH_WITHIN_S, unit="seconds"),
    },
    "quiet": {
        "site": schema.string("a site name"),
        "from": HOST_REF,
        "to": HOST_REF,
        "seconds": schema.number(0.5, 600, 3.0, unit="seconds"),
        "max_percent": schema.number(0, 100, DEFAULT_QUIET_PERCENT),
        "max_bytes": schema.integer(0, 2**53, None),
    },
}
PATH_CHECK_TIMEOUT_S = {"path": DEFAULT_PATH_WITHIN_S + PATH_TIMEOUT_SLACK_S, "quiet": 30.0}


def site_problem(kind: str, params: Mapping[str, Any], peers: Mapping[str, Sequence[str]]
                 ) -> tuple[str, str] | None:
    """(param, message) when a ``path`` or ``quiet`` check names sites that do not peer."""
    site = params["site"]
    if site not in peers:
        return "site", f'no site "{site}" (one of: {", ".join(sorted(peers))})'
    if kind == "path":
        if params["peer"] not in peers[site]:
            return "peer", (f'"{params["peer"]}" is not a peer of {site} (its peers: '
                            f'{", ".join(peers[site])})')
        if params["via"] is not None and params["expect"] != "relay":
            return "via", f'only with expect = "relay" (found expect = "{params["expect"]}")'
        return None
    for end in ("from", "to"):
        other = params[end].split(".", 1)[0]
        if other == site or other not in peers[site]:
            return end, (f"{params[end]} must be at a peer of {site} (another site: "
                         f'{", ".join(peers[site])})')
    return None


def path_seen(show: Mapping[str, Any], peer: str) -> tuple[str | None, str | None] | None:
    """(path, via) of ``peer`` in a ``show`` answer; None when the site has no such peer."""
    for p in show.get("peers") or []:
        if p.get("name") == peer:
            return p.get("path"), p.get("via")
    return None


def path_matches(seen: tuple[str | None, str | None] | None, expect: str,
                 via: str | None) -> bool:
    return seen is not None and seen[0] == expect and (via is None or seen[1] == via)


def path_verdict(site: str, peer: str, seen: tuple[str | None, str | None] | None,
                 expect: str, via: str | None, waited_s: float
                 ) -> tuple[bool, str, dict[str, Any]]:
    """Pass when ``seen`` is the expected path; one line saying what ``show`` said."""
    want = expect + (f" via {via}" if via else "")
    numbers: dict[str, Any] = {"expect": expect, "via_expected": via, "waited_s":
                               round(waited_s, 3)}
    if seen is None:
        return False, f"{site} has no peer {peer} in show", numbers
    path, through = seen
    numbers.update(path=path, via=through)
    said = f"path {path or 'null'} via {through or 'null'}"
    if path_matches(seen, expect, via):
        return True, f"{site} → {peer}: {said} after {waited_s:.1f} s", numbers
    return False, (f"{site} → {peer}: show says {said} after {waited_s:.1f} s "
                   f"(expected {want})"), numbers


def peer_bytes(show: Mapping[str, Any], peers: Sequence[str]) -> int:
    """What a site carried for ``peers`` in a ``show`` answer: the bytes of the frames it
    exchanged with them and the bytes it relayed from or to them, summed."""
    return sum(int(p.get(key) or 0) for p in show.get("peers") or [] if p.get("name") in peers
               for key in ("bytes_in", "bytes_out", "relayed_in", "relayed_out"))


def quiet_verdict(site: str, peers: Sequence[str], carried: int, moved: int,
                  max_percent: float, max_bytes: int | None
                  ) -> tuple[bool, str, dict[str, Any]]:
    """Pass when ``carried`` (the site's counters' growth) stays under the bound while
    iperf3 ``moved`` bytes (which must be more than nothing)."""
    share = 100.0 * carried / moved if moved else 100.0
    bound = f"max {max_bytes} bytes" if max_bytes is not None else f"max {max_percent:g}%"
    ok = moved > 0 and (carried <= max_bytes if max_bytes is not None
                        else share <= max_percent)
    summary = (f"{site} carried {carried} bytes for {'/'.join(peers)} while iperf3 moved "
               f"{moved} ({share:.3f}%; {bound})")
    return ok, summary, {"carried_bytes": carried, "moved_bytes": moved,
                         "percent": round(share, 4), "max_percent": max_percent,
                         "max_bytes": max_bytes}
