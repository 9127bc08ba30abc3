"""What a reload may change, and the plan that changes it (pure).

``plan(old, new, old_secrets, new_secrets)`` compares the running config with a
freshly loaded one and says what to do; ``l2bridge.site.reload`` does it.

Live (applied without a restart; unchanged peers keep their sessions):
  peers         added, removed, or changed: endpoint; public key or pre-shared key
                (new sessions: the peer handshakes again); persistent_keepalive;
                max_macs and allowed_macs (the switch's port policy); transport
                (the peer starts over on its new paths); storm_* (its storm limits)
  [site]        ageing, max_entries, max_entries_per_peer, pinned_macs, keepalive,
                dead_after, log_level, relay, resolve_interval; the layer-2 safety
                keys: loop_protect, loop_probe_interval, storm_control, storm_*,
                mac_flap_*, dhcp_servers, arp_suppress, arp_max_bindings
Not live: every other key - listen, tap, bridge, interfaces, workers, the
private key (its file or its content), mtu, wan_mtu, hub, offload, insecure,
control, ... (a key added to ``SiteConfig`` is not live until it is listed
here).  A plan that would change one of them is refused whole, naming each;
the site keeps running on the old config.

Peers are matched by name: a renamed peer is one removed and one added.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from l2bridge.core.config import STORM_KEYS, PeerConfig, SiteConfig
from l2bridge.core.keys import Secrets

# SiteConfig field -> its key in the file.
SITE_KEY = {"ageing_s": "ageing", "keepalive_s": "keepalive", "dead_after_s": "dead_after",
            "rekey_after_s": "rekey_after", "resolve_interval_s": "resolve_interval",
            "loop_probe_interval_s": "loop_probe_interval",
            "storm": "storm limits", "mac_flap_window_s": "mac_flap_window",
            "mac_flap_hold_s": "mac_flap_hold"}
LAYER2_SAFETY = frozenset({"loop_protect", "loop_probe_interval_s", "storm_control", "storm",
                           "mac_flap_detect", "mac_flap_moves", "mac_flap_window_s",
                           "mac_flap_hold_s", "dhcp_servers", "arp_suppress", "arp_max_bindings"})
LIVE_SITE = frozenset({"ageing_s", "max_entries", "max_entries_per_peer", "pinned_macs",
                       "keepalive_s", "dead_after_s", "log_level", "relay",
                       "resolve_interval_s"}) | LAYER2_SAFETY
# The live fields as written in the file (the storm limits are four keys).
LIVE_SITE_KEYS = tuple(sorted(k for f in LIVE_SITE for k in (
    STORM_KEYS if f == "storm" else (SITE_KEY.get(f, f),))))
NOT_COMPARED = frozenset({"peers", "path", "document"})


@dataclasses.dataclass(frozen=True, slots=True)
class PeerChange:
    """What changed for one peer kept by name."""

    name: str
    endpoint: bool = False
    keys: bool = False  # public key or pre-shared key: its sessions start over
    keepalive: bool = False
    policy: bool = False  # allowed_macs or max_macs
    storm: bool = False  # its storm limits
    transport: bool = False

    @property
    def what(self) -> list[str]:
        return [w for w, on in (("endpoint", self.endpoint), ("keys", self.keys),
                                ("keepalive", self.keepalive), ("MAC policy", self.policy),
                                ("transport", self.transport),
                                ("storm limits", self.storm))
                if on]


@dataclasses.dataclass(frozen=True, slots=True)
class ReloadPlan:
    """The difference between two configs, as work to do (or refused keys)."""

    refused: tuple[str, ...] = ()  # key paths that cannot change live
    added: tuple[PeerConfig, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[PeerChange, ...] = ()
    site: tuple[str, ...] = ()  # SiteConfig fields changed live

    @property
    def empty(self) -> bool:
        return not (self.refused or self.added or self.removed or self.changed or self.site)

    def refusal(self, path: str) -> str:
        """The one line saying why the reload changes nothing."""
        return (f"{path}: {', '.join(self.refused)} cannot change while the site runs "
                "(restart it to apply); nothing was changed")

    def describe(self) -> str:
        """One line: what the reload changed."""
        if self.empty:
            return "no change"
        parts = []
        if self.added:
            parts.append("peers added: " + ", ".join(p.name for p in self.added))
        if self.removed:
            parts.append("peers removed: " + ", ".join(self.removed))
        for change in self.changed:
            parts.append(f"peer {change.name}: {', '.join(change.what)}")
        if self.site:
            parts.append("site: " + ", ".join(SITE_KEY.get(f, f) for f in self.site))
        return "; ".join(parts)


def plan(old: SiteConfig, new: SiteConfig, old_secrets: Secrets,
         new_secrets: Secrets) -> ReloadPlan:
    """What a reload from ``old`` to ``new`` does (module docstring)."""
    refused = []
    site = []
    for field in dataclasses.fields(SiteConfig):
        name = field.name
        if name in NOT_COMPARED or getattr(old, name) == getattr(new, name):
            continue
        if name in LIVE_SITE:
            site.append(name)
        else:
            refused.append(f"site.{SITE_KEY.get(name, name)}")
    if old_secrets.private != new_secrets.private and "site.private_key_file" not in refused:
        refused.append("the private key")
    if refused:
        return ReloadPlan(refused=tuple(refused))
    before = {p.name: p for p in old.peers}
    after = {p.name: p for p in new.peers}
    added = tuple(p for p in new.peers if p.name not in before)
    removed = tuple(p.name for p in old.peers if p.name not in after)
    changed = []
    for peer in new.peers:
        was = before.get(peer.name)
        if was is None:
            continue
        change = _peer_change(was, peer, old_secrets.psks, new_secrets.psks)
        if change.what:
            changed.append(change)
    return ReloadPlan(added=added, removed=removed, changed=tuple(changed), site=tuple(site))


def _peer_change(old: PeerConfig, new: PeerConfig, old_psks: Mapping[str, bytes],
                 new_psks: Mapping[str, bytes]) -> PeerChange:
    return PeerChange(
        name=new.name,
        endpoint=old.endpoint != new.endpoint,
        keys=(old.public_key != new.public_key
              or old_psks.get(old.name) != new_psks.get(new.name)),
        keepalive=old.persistent_keepalive_s != new.persistent_keepalive_s,
        policy=old.allowed_macs != new.allowed_macs or old.max_macs != new.max_macs,
        storm=old.storm != new.storm,
        transport=old.transport != new.transport,
    )
