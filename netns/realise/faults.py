"""Apply a timeline's events to a running lab: links, paths, impairments, gateways, hosts.

``Faults.apply(event)`` does one validated event (``netns/describe/timeline.py``)
and returns one line saying what it did; a failure is a ``FaultError`` (one line).

Mechanisms, each inside the lab's own namespaces:

- ``link_down`` / ``link_up``: the router's interface toward the site goes down
  (the site's cable pulled at the router: its gateway's ``wan0`` loses carrier,
  its routes stay) or up again;
- ``partition`` / ``heal``: a pair of elements ``"a" . "b"`` and ``"b" . "a"`` in
  the set ``cut`` of the nftables table ``inet P_faults`` in the router (a forward
  chain before the impairments drops ``iifname . oifname @cut``); the table is
  made at the first partition;
- ``impair``: the link's values change; loss, duplication and blocked UDP: the
  router's tables ``P`` are replaced in one ``nft -f`` transaction, built by
  the same ``impair.nft_ruleset`` as at build time; rate: tbf replaced (or
  removed with 0) at both ends of the public link; MTU: every veth of the link
  (a NAT router's too); delay, jitter, reordering: the relay reads its knobs
  file again on SIGHUP (the planner gives every link an event delays a relay
  from the start);
- ``readdress``: the site's public address(es) move to the next host of their
  subnet on the link's public end (the gateway's ``wan0``, or its NAT router's):
  the old ones deleted, the new ones added, the default routes put back; with
  the lab's DNS, its records follow (``DnsServer.update``);
- ``kill`` (SIGKILL), ``stop`` (SIGSTOP), ``continue`` (SIGCONT), ``restart``
  (a graceful stop if it runs, then start, until its control socket answers);
  ``reload``: the config is written again with the event's keys and the daemon
  told (``{"cmd": "reload"}`` on its control socket, or SIGHUP, then its
  ``show`` tells the result);
- ``host_down`` / ``host_up``: the host's ``eth0`` down, or up with its
  addresses put back (an interface set down loses its IPv6 addresses);
- ``lan_down`` / ``lan_up``: the LAN switch's port toward the gateway (``gw``)
  or toward one host goes down or up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import json
import os
import signal
from collections.abc import Mapping
from typing import Any

import trio
from pyroute2.netlink.exceptions import NetlinkError

from l2bridge.errors import L2bridgeError
from netns.describe.impair import NftRuleset, nft_replace, tbf_step
from netns.describe.plan import SWITCH_UPLINK, Plan, dns_records, reload_config
from netns.describe.timeline import Event
from netns.describe.underlay import DEFAULT4, DEFAULT6, SiteAddresses, cidr, readdressed
from netns.describe.wanlink import link_ends, public_end
from netns.realise.build import IFA_F_NODAD, netlink
from netns.realise.dns import DnsError, DnsServer, write_atomically
from netns.realise.gateways import Gateway, GatewayError, L2bridgeGateway, query_control
from netns.realise.wanctl import RelayProcess, WanError, apply_tbf, load_nft

RESTART_READY_S = 10.0
SIGHUP_RELOAD_WAIT_S = 5.0
SIGHUP_POLL_S = 0.05


class FaultError(L2bridgeError):
    """An event could not be applied (one line naming the event and why)."""


class Faults:
    """Applies events to one lab; remembers each link as it is now."""

    def __init__(self, plan: Plan, gateways: Mapping[str, Gateway],
                 relays: Mapping[str, RelayProcess], dns: DnsServer | None = None) -> None:
        self.plan = plan
        self.gateways = gateways
        self.relays = relays
        self.dns = dns
        self.links = {s.name: s.link for s in plan.sites}
        self.addresses = {s.name: s.addresses for s in plan.sites}  # as they are now
        self.moves: dict[str, int] = {}  # readdresses so far, per site
        self.daemon_keys: dict[str, dict[str, Any]] = {}
        self.partition_table = False

    async def apply(self, event: Event) -> str:
        try:
            return await self._apply(event)
        except (NetlinkError, OSError) as e:
            code = getattr(e, "code", None) or getattr(e, "errno", None) or 0
            raise FaultError(f"{event.name}: {os.strerror(code) if code else e}") from None
        except (WanError, GatewayError, DnsError) as e:
            raise FaultError(f"{event.name}: {e}") from None

    async def _apply(self, e: Event) -> str:
        plan = self.plan
        kind = e.kind
        if kind in ("link_down", "link_up"):
            s = plan.site(e.site or "")
            await _set_state(plan.wan_ns, s.wan_if, kind == "link_up")
            return f"{plan.wan_ns}:{s.wan_if} {kind.removeprefix('link_')}"
        if kind in ("partition", "heal"):
            return await trio.to_thread.run_sync(self._path, e)
        if kind == "impair":
            return await self._impair(e)
        if kind == "readdress":
            return await self._readdress(e)
        if kind in ("host_down", "host_up"):
            node = plan.nodes[e.host or ""]
            up = kind == "host_up"
            await trio.to_thread.run_sync(_host_state, node.ns, node.ifname or "eth0", up,
                                          [a for a in (node.ipv4, node.ipv6) if a])
            return f"{node.ns}:{node.ifname} {'up' if up else 'down'}"
        if kind in ("lan_down", "lan_up"):
            if e.host is not None:
                node = plan.nodes[e.host]
                ns, port = plan.site(node.site or "").sw_ns, e.host.split(".", 1)[1]
            else:
                ns, port = plan.site(e.site or "").sw_ns, SWITCH_UPLINK
            await _set_state(ns, port, kind == "lan_up")
            return f"{ns}:{port} {kind.removeprefix('lan_')}"
        return await self._gateway(e)

    # -- paths

    def _path(self, e: Event) -> str:
        table = f"{self.plan.prefix}_faults"
        a, b = (self.plan.site(name).wan_if for name in e.sites)
        text = ""
        if not self.partition_table:
            text += (f"table inet {table} {{\n  set cut {{ type ifname . ifname; }}\n"
                     "  chain forward {\n    type filter hook forward priority filter - 10; "
                     "policy accept;\n    iifname . oifname @cut drop\n  }\n}\n")
        verb = "add" if e.kind == "partition" else "delete"
        text += f'{verb} element inet {table} cut {{ "{a}" . "{b}", "{b}" . "{a}" }}\n'
        load_nft(NftRuleset(self.plan.wan_ns, table, text))
        self.partition_table = True
        return f"router drops {a} ↔ {b}" if verb == "add" else f"router forwards {a} ↔ {b}"

    # -- impairments

    async def _impair(self, e: Event) -> str:
        plan = self.plan
        s = plan.site(e.site or "")
        old = self.links[s.name]
        new = dataclasses.replace(old, **{k: v for k, v in e.changes.items()
                                          if k != "rate_mbit"})
        if "rate_mbit" in e.changes:
            new = dataclasses.replace(new, rate_mbit=e.changes["rate_mbit"] or None)
        self.links[s.name] = new
        done = []
        if (new.loss_percent, new.duplicate_percent, new.block_udp) != (
                old.loss_percent, old.duplicate_percent, old.block_udp):
            await trio.to_thread.run_sync(self._reload_ip_table)
            done.append(f"loss {new.loss_percent:g}% duplicate {new.duplicate_percent:g}%")
            if new.block_udp != old.block_udp:
                done.append("UDP blocked" if new.block_udp else "UDP let through")
        if new.rate_mbit != old.rate_mbit or (new.mtu != old.mtu and new.rate_mbit):
            await trio.to_thread.run_sync(self._tbf, s.name)
            done.append(f"rate {new.rate_mbit:g} Mbit/s" if new.rate_mbit else "rate unlimited")
        if new.mtu != old.mtu:
            await trio.to_thread.run_sync(self._mtu, s.name)
            done.append(f"mtu {new.mtu}")
        if (new.delay_ms, new.jitter_ms, new.reorder_percent) != (
                old.delay_ms, old.jitter_ms, old.reorder_percent):
            await self._relay(s.name)
            done.append(f"delay {new.delay_ms:g} ± {new.jitter_ms:g} ms, "
                        f"reorder {new.reorder_percent:g}%")
        return f"{s.name}'s link: " + (", ".join(done) or "unchanged")

    def _reload_ip_table(self) -> None:
        plan = self.plan
        text = nft_replace(plan.prefix, [(s.wan_if, self.links[s.name]) for s in plan.sites])
        load_nft(NftRuleset(plan.wan_ns, plan.prefix, text))

    def _tbf(self, site: str) -> None:
        s = self.plan.site(site)
        link = self.links[site]
        for ns, ifname in ((self.plan.wan_ns, s.wan_if), public_end(s.gw_ns, s.nat)):
            with netlink(ns) as ipr:
                index = ipr.link_lookup(ifname=ifname)[0]
                with contextlib.suppress(NetlinkError):  # no qdisc of ours yet
                    ipr.tc("del", index=index, handle="1:", root=True)
                step = tbf_step(ns, ifname, link)
                if step is not None:
                    apply_tbf(ipr, index, step)

    def _mtu(self, site: str) -> None:
        s = self.plan.site(site)
        mtu = self.links[site].mtu
        for ns, ifname in link_ends(self.plan.wan_ns, s.wan_if, s.gw_ns, s.relay, s.nat):
            with netlink(ns) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], mtu=mtu)

    async def _relay(self, site: str) -> None:
        relay = self.relays.get(site)
        if relay is None or relay.child is None:
            raise FaultError(f"{site}'s link has no delay relay running")
        link = self.links[site]
        knobs = {"delay_ms": link.delay_ms, "jitter_ms": link.jitter_ms,
                 "reorder_percent": link.reorder_percent}
        write_atomically(relay.plan.knobs_path, json.dumps(knobs))
        os.kill(relay.child.pid, signal.SIGHUP)

    # -- addresses

    async def _readdress(self, e: Event) -> str:
        s = self.plan.site(e.site or "")
        old = self.addresses[s.name]
        self.moves[s.name] = self.moves.get(s.name, 0) + 1
        new = readdressed(s.addresses, s.index, self.moves[s.name])
        ns, ifname = public_end(s.gw_ns, s.nat)
        await trio.to_thread.run_sync(_move_addresses, ns, ifname, old, new)
        self.addresses[s.name] = new
        moved = ", ".join(f"{a} → {b}" for a, b in _public_pairs(old, new))
        if self.dns is None:
            return f"{s.name}'s public address: {moved} on {ns}:{ifname}"
        self.dns.update(dns_records(self.plan, self.addresses))
        return f"{s.name}'s public address: {moved} on {ns}:{ifname}; DNS records updated"

    # -- gateways

    async def _gateway(self, e: Event) -> str:
        site = e.site or ""
        gw = self.gateways[site]
        if e.kind == "kill":
            await gw.kill()
            return f"gateway {site} killed"
        if e.kind == "restart":
            await gw.stop()
            await gw.start()
            await gw.wait_ready(trio.current_time() + RESTART_READY_S)
            return f"gateway {site} restarted (control socket answers)"
        assert isinstance(gw, L2bridgeGateway) and gw.child is not None, e.kind
        pid = gw.child.pid
        if e.kind == "stop":
            os.kill(pid, signal.SIGSTOP)
            return f"gateway {site} (pid {pid}) stopped"
        if e.kind == "continue":
            os.kill(pid, signal.SIGCONT)
            return f"gateway {site} (pid {pid}) continued"
        return await self._reload(e, gw)

    async def _reload(self, e: Event, gw: L2bridgeGateway) -> str:
        site = e.site or ""
        keys = self.daemon_keys.setdefault(site, {})
        keys.update(e.changes)
        text = reload_config(self.plan, site, keys)
        write_atomically(gw.site.config_path, text)
        gw.site = dataclasses.replace(gw.site, config_text=text)  # a restart keeps it
        if e.via == "control":
            answer = await query_control(gw.site.control_path, "reload", timeout_s=25.0)
            if "error" in answer:
                raise FaultError(f"{e.name}: the daemon refused: {answer['error']}")
            return f"gateway {site} reloaded: {answer.get('changes', '?')}"
        before = _reloads(await gw.show())
        assert gw.child is not None
        os.kill(gw.child.pid, signal.SIGHUP)
        with trio.move_on_after(SIGHUP_RELOAD_WAIT_S):
            while True:
                show = await gw.show()
                if _reloads(show) != before:
                    last = (show.get("config") or {}).get("last_reload") or {}
                    if last.get("result") != "ok":
                        raise FaultError(f"{e.name}: the daemon refused: {last.get('message')}")
                    return f"gateway {site} reloaded on SIGHUP: {last.get('message')}"
                await trio.sleep(SIGHUP_POLL_S)
        raise FaultError(f"{e.name}: no reload seen within {SIGHUP_RELOAD_WAIT_S:g} s of SIGHUP")


def _reloads(show: dict[str, Any]) -> tuple[int, int]:
    config = show.get("config") or {}
    return int(config.get("reloads_ok", 0)), int(config.get("reloads_failed", 0))


async def _set_state(ns: str, ifname: str, up: bool) -> None:
    def run() -> None:
        with netlink(ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0],
                     state="up" if up else "down")

    await trio.to_thread.run_sync(run)


def _public_pairs(old: SiteAddresses, new: SiteAddresses) -> list[tuple[str, str]]:
    return [(a, b) for a, b in ((old.public4, new.public4), (old.public6, new.public6))
            if a is not None and b is not None]


def _move_addresses(ns: str, ifname: str, old: SiteAddresses, new: SiteAddresses) -> None:
    """Old public addresses off ``ifname``, the new ones on, default routes put back."""
    with netlink(ns) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        for before, after in _public_pairs(old, new):
            _address(ipr, "del", index, before)
            _address(ipr, "add", index, after)
        for default, router in ((DEFAULT4, new.router4), (DEFAULT6, new.router6)):
            if router is not None:
                ipr.route("replace", dst=default, gateway=router)


def _address(ipr: Any, verb: str, index: int, address: str) -> None:
    iface = ipaddress.ip_interface(cidr(address))
    extra = {"flags": IFA_F_NODAD} if iface.version == 6 and verb == "add" else {}
    ipr.addr(verb, index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen,
             **extra)


def _host_state(ns: str, ifname: str, up: bool, addresses: list[str]) -> None:
    with netlink(ns) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        ipr.link("set", index=index, state="up" if up else "down")
        if not up:
            return
        for cidr in addresses:
            iface = ipaddress.ip_interface(cidr)
            extra = {"flags": IFA_F_NODAD} if iface.version == 6 else {}
            try:
                ipr.addr("add", index=index, address=str(iface.ip),
                         prefixlen=iface.network.prefixlen, **extra)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise


__all__ = ["FaultError", "Faults"]
