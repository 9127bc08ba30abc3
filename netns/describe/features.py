"""What a scenario needs of the l2bridge daemon, and whether this one has it (pure).

Some scenarios exercise daemon features that arrive separately from the lab
(issue 13): the TCP transport (a peer's ``transport`` key; ``show`` then reports
each peer's ``path`` and ``via``), NAT traversal with relaying (the site's
``relay`` key) and DNS re-resolution (the site's ``resolve_interval`` key).
Whether the daemon has a feature is read from its own config schema
(``l2bridge.core.config``): the key is the feature's switch, so the lab never
guesses from a version number.

``missing(scenario, gateway)`` names the features a scenario needs that the
daemon lacks: ``lab run`` refuses such a scenario before building anything
(exit 2), and the tests skip it with the same words.  The renderer writes a
feature's key (``resolve_interval``) only when the daemon has it, so every
scenario still plans.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from l2bridge.core import config
from netns.describe.scenario import Scenario

# feature -> (daemon table, key that switches it, what the lab uses it for)
DAEMON_FEATURES: dict[str, tuple[str, str, str]] = {
    "transport": ("peer", "transport",
                  "the TCP transport and each peer's path in show (peer.transport)"),
    "relay": ("site", "relay", "NAT-to-NAT traversal and relaying (site.relay)"),
    "resolve_interval": ("site", "resolve_interval",
                         "re-resolution of endpoints given as names (site.resolve_interval)"),
}
_SCHEMAS: Mapping[str, Mapping[str, Any]] = {"site": config.SITE_SCHEMA,
                                             "peer": config.PEER_SCHEMA}


def daemon_has(feature: str) -> bool:
    """Whether this l2bridge's config schema knows the feature's key."""
    table, key, _ = DAEMON_FEATURES[feature]
    return key in _SCHEMAS[table]


def needed(scenario: Scenario) -> list[str]:
    """The daemon features ``scenario`` relies on, in ``DAEMON_FEATURES`` order."""
    want = set()
    if any(scenario.link(s.name).block_udp for s in scenario.sites) or any(
            e.kind == "impair" and "block_udp" in e.changes for e in scenario.events):
        want.add("transport")
    if any(c.kind == "path" for c in scenario.checks):
        want.add("transport")
    natted = scenario.natted
    peers = scenario.peers_of()
    if any(a in natted and b in natted for a in peers for b in peers[a]):
        want.add("relay")
    if scenario.resolve_interval_s is not None:
        want.add("resolve_interval")
    return [f for f in DAEMON_FEATURES if f in want]


def missing(scenario: Scenario, gateway: str | None = None) -> list[str]:
    """The needed features this daemon lacks (none for kernel VXLAN gateways)."""
    if (gateway or scenario.gateway) != "l2bridge":
        return []
    return [f for f in needed(scenario) if not daemon_has(f)]


def missing_words(features: list[str]) -> str:
    """One phrase naming the missing features."""
    return "; ".join(DAEMON_FEATURES[f][2] for f in features)
