"""The lab's DNS (pure): names, the dnsmasq command, its hosts file, the gateways' resolv.conf.

With ``[lab] dns = true`` a dnsmasq runs in the WAN router's namespace and
answers for one name per site, ``<site>.wan.test`` (``.test`` is reserved for
testing, RFC 6761), with the site's public address(es): an A record when the
site has a public IPv4 address, an AAAA record when it has an IPv6 one.  It
listens on ``198.18.0.53`` and/or ``2001:db8::53`` (the router's loopback,
``underlay.py``), forwards nothing (``--no-resolv``), reads no ``/etc/hosts``
(``--no-hosts``) and answers with a TTL of 1 s.  Its records live in
``RUNDIR/dns-hosts`` (``--addn-hosts``), which a ``readdress`` event rewrites
before it sends dnsmasq SIGHUP (which re-reads it and clears the cache).

Each l2bridge gateway runs with ``RUNDIR/resolv.conf`` bind-mounted over
``/etc/resolv.conf`` in a private mount namespace (``realise/nsenter.py``), so
the daemon's ``getaddrinfo`` asks this server and nothing else; the daemons'
configs name their peers' endpoints ``<peer>.wan.test:55555``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DNS_DOMAIN = "wan.test"
DNS_TTL_S = 1
DNS_PORT = 53
HOSTS_FILE = "dns-hosts"
RESOLV_FILE = "resolv.conf"
LOG_FILE = "dnsmasq.log"
RESOLV_OPTIONS = "options timeout:1 attempts:2"


def dns_name(site: str) -> str:
    return f"{site}.{DNS_DOMAIN}"


@dataclass(frozen=True, slots=True)
class DnsPlan:
    """The lab's dnsmasq: where it runs and listens, its files."""

    ns: str
    listen: tuple[str, ...]  # bare addresses on the router's loopback
    hosts_path: str
    resolv_path: str
    log_path: str

    @property
    def nameserver(self) -> str:
        """The address gateways ask (the first of ``listen``: IPv4 whenever the WAN has it)."""
        return self.listen[0]

    def argv(self, program: str) -> list[str]:
        return [
            program, "--keep-in-foreground", "--conf-file=/dev/null", "--pid-file=",
            "--log-facility=-", "--log-queries", "--no-resolv", "--no-hosts",
            f"--addn-hosts={self.hosts_path}", f"--local=/{DNS_DOMAIN}/", "--domain-needed",
            f"--local-ttl={DNS_TTL_S}", f"--port={DNS_PORT}", "--bind-interfaces",
            *(f"--listen-address={a}" for a in self.listen),
        ]

    def __str__(self) -> str:
        return (f"dns {self.ns}: dnsmasq on {', '.join(self.listen)} port {DNS_PORT}, "
                f"names *.{DNS_DOMAIN} from {self.hosts_path}")


def hosts_text(records: Mapping[str, Sequence[str | None]]) -> str:
    """The ``--addn-hosts`` file: one line per (address, name), sites in the order given."""
    lines = [f"{address} {dns_name(site)}" for site, addresses in records.items()
             for address in addresses if address is not None]
    return "\n".join(lines) + "\n"


def resolv_text(nameserver: str) -> str:
    """The ``resolv.conf`` the gateways see: the lab's server only, quick to give up."""
    return f"nameserver {nameserver}\n{RESOLV_OPTIONS}\n"
