"""Reload planning: what may change live, what is refused (naming each key), per peer."""

from __future__ import annotations

from support import site_toml

from l2bridge.core import keys
from l2bridge.core.config import parse_config
from l2bridge.core.keys import Secrets
from l2bridge.core.reload import PeerChange, plan

B_KEY = keys.encode_key(keys.public_key(keys.generate_private_key()))
C_KEY = keys.encode_key(keys.public_key(keys.generate_private_key()))
SITE = {"private_key_file": '"/unused"', "listen": '"0.0.0.0:55555"'}
PEERS = {"b": {"endpoint": '"192.0.2.2:55555"', "public_key": f'"{B_KEY}"'},
         "c": {"endpoint": '"192.0.2.3:55555"', "public_key": f'"{C_KEY}"'}}
SECRETS = Secrets(bytes(range(32)), {})


def config(site=None, peers=None):
    return parse_config(site_toml("a", {**SITE, **(site or {})},
                                  PEERS if peers is None else peers), "a.toml")


def test_nothing_changed_is_an_empty_plan() -> None:
    assert plan(config(), config(), SECRETS, SECRETS).empty


def test_keys_that_cannot_change_live_are_all_named() -> None:
    new = config({"listen": '"0.0.0.0:4000"', "tap": '"l2b9"', "workers": "3",
                  "ageing": "60"})
    result = plan(config(), new, SECRETS, SECRETS)
    assert result.refused == ("site.listen", "site.tap", "site.workers")
    assert result.refusal("a.toml") == (
        "a.toml: site.listen, site.tap, site.workers cannot change while the site runs "
        "(restart it to apply); nothing was changed")
    other = Secrets(bytes(32), {})
    assert plan(config(), config(), SECRETS, other).refused == ("the private key",)


def test_peers_added_removed_and_changed() -> None:
    d_key = keys.encode_key(keys.public_key(keys.generate_private_key()))
    new_peers = {
        "b": {**PEERS["b"], "endpoint": '"192.0.2.9:55555"', "persistent_keepalive": "10",
              "max_macs": "5"},
        "d": {"public_key": f'"{d_key}"'},
    }
    result = plan(config(), config(peers=new_peers), SECRETS, SECRETS)
    assert [p.name for p in result.added] == ["d"] and result.removed == ("c",)
    assert result.changed == (PeerChange("b", endpoint=True, keepalive=True, policy=True),)
    assert result.describe() == ("peers added: d; peers removed: c; "
                                 "peer b: endpoint, keepalive, MAC policy")


def test_new_keys_for_a_peer_and_site_wide_live_keys() -> None:
    fresh = keys.encode_key(keys.public_key(keys.generate_private_key()))
    new = config({"ageing": "60", "keepalive": "2", "dead_after": "7", "log_level": '"debug"'},
                 {"b": {**PEERS["b"], "public_key": f'"{fresh}"'}, "c": PEERS["c"]})
    result = plan(config(), new, SECRETS, SECRETS)
    assert result.changed == (PeerChange("b", keys=True),)
    assert result.site == ("ageing_s", "keepalive_s", "dead_after_s", "log_level")
    psk = Secrets(SECRETS.private, {"c": bytes(32)})
    assert plan(config(), config(), SECRETS, psk).changed == (PeerChange("c", keys=True),)


def test_the_layer2_safety_keys_change_live() -> None:
    new = config({"loop_protect": "false", "storm_broadcast": "10", "dhcp_servers": "[]",
                  "arp_suppress": "true", "mac_flap_hold": "30", "loop_probe_interval": "2"},
                 {"b": {**PEERS["b"], "storm_multicast": "5"}, "c": PEERS["c"]})
    result = plan(config(), new, SECRETS, SECRETS)
    assert not result.refused
    assert set(result.site) == {"loop_protect", "storm", "dhcp_servers", "arp_suppress",
                                "mac_flap_hold_s", "loop_probe_interval_s"}
    assert result.changed == (PeerChange("b", storm=True),)
    assert "storm limits" in result.describe() and "loop_probe_interval" in result.describe()
