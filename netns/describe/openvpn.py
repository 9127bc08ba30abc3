"""The OpenVPN reference gateway as data (pure): identities, config text, what it refuses.

``gateway = "openvpn"`` runs OpenVPN 2.6 in tap mode in each of two sites' gateway
namespaces, as a reference for ``l2bridge lab bench``: an encrypted layer-2 tunnel
that people already run.  Everything is OpenVPN's own default except what a
two-site bridged tap tunnel with AES-256-GCM needs:

==========================  ==================================================================
option                      why
==========================  ==================================================================
``dev ovpn0``,              a tap device (layer 2) of a known name, which the lab bridges with
``dev-type tap``            ``eth1``; OpenVPN creates it and it vanishes with the process
``remote ADDRESS``          the other site's WAN address (UDP port 1194, OpenVPN's default)
``tls-server`` + ``dh       point-to-point TLS needs one end to be the TLS server (the first
none`` / ``tls-client``     site); ``dh none``: ECDHE only, no Diffie-Hellman parameters
``peer-fingerprint``        the other site's certificate, pinned by its SHA-256 fingerprint
``<cert>``, ``<key>``       this site's self-signed certificate and key, inline (file mode 0600)
``data-ciphers              the data channel's cipher (OpenVPN 2.6 negotiates it between the
AES-256-GCM``               two ends; with only this one offered, nothing else can be chosen)
``management PATH unix``    a control socket: the lab asks it whether the tunnel is up
``verb 3``                  the log names the negotiated data channel cipher (logging only)
``tun-mtu N``               only when the LAN MTU is not OpenVPN's 1500
==========================  ==================================================================

Why ``peer-fingerprint`` with self-signed certificates rather than a throwaway CA:
it is the trust model of l2bridge itself (each site pins its peer's public key), it
needs one certificate per site and no CA, no signing chain and no
``remote-cert-tls`` roles to get right, and a leaked certificate of a third lab can
never be accepted.  The certificates (ECDSA P-256, made with ``cryptography``) are
new for every lab and valid from 2000 to 9999 (RFC 5280's "no well-defined
expiration"): what is pinned is the key, not a date, and no clock is read.

Only two sites, without NAT and over an IPv4 WAN: one point-to-point tunnel
between two public addresses.  ``refusals`` says so, one line per key.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from netns.describe.scenario import DEFAULT_MTU, Scenario

OPENVPN_TAP = "ovpn0"
OPENVPN_PORT = 1194  # OpenVPN's default: written nowhere, named here for the plan's lines
OPENVPN_CIPHER = "AES-256-GCM"
OPENVPN_SITES = 2
OPENVPN_PROGRAM = "openvpn"
OPENVPN_PACKAGE = "openvpn"
CONFIG_SUFFIX = ".ovpn"
NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)


@dataclass(frozen=True, slots=True)
class Identity:
    """One site's self-signed certificate and key (PEM) and the certificate's fingerprint."""

    cert_pem: str
    key_pem: str
    fingerprint: str  # SHA-256 of the DER certificate, "AB:CD:...", as peer-fingerprint takes it


def make_identity(name: str) -> Identity:
    """A fresh ECDSA P-256 key and a self-signed certificate for ``name`` (its CN)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOT_BEFORE)
            .not_valid_after(NOT_AFTER)
            .sign(key, hashes.SHA256()))
    return Identity(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()).decode(),
        fingerprint=fingerprint(cert),
    )


def fingerprint(cert: x509.Certificate) -> str:
    """``peer-fingerprint``'s form: the SHA-256 of the DER certificate, hex pairs with colons."""
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def render_config(*, site: str, remote: str, tls_server: bool, own: Identity,
                  peer_fingerprint: str, management: str, lan_mtu: int = DEFAULT_MTU) -> str:
    """One site's OpenVPN configuration (see the module doc for each option)."""
    lines = [
        f"# OpenVPN tap reference gateway of site {site} (l2bridge lab)",
        f"dev {OPENVPN_TAP}",
        "dev-type tap",
        f"remote {remote}",
        *(["tls-server", "dh none"] if tls_server else ["tls-client"]),
        f"peer-fingerprint {peer_fingerprint}",
        f"data-ciphers {OPENVPN_CIPHER}",
        f"management {management} unix",
        "verb 3",
    ]
    if lan_mtu != DEFAULT_MTU:
        lines.append(f"tun-mtu {lan_mtu}")
    lines += ["<cert>", own.cert_pem.rstrip("\n"), "</cert>",
              "<key>", own.key_pem.rstrip("\n"), "</key>"]
    return "\n".join(lines) + "\n"


def refusals(scenario: Scenario) -> Iterator[tuple[str, str]]:
    """(key, message) for each thing of ``scenario`` that OpenVPN gateways do not do."""
    use = "use the l2bridge gateway"
    if len(scenario.sites) != OPENVPN_SITES:
        yield ("site", f"openvpn gateways join exactly {OPENVPN_SITES} sites (one "
               f"point-to-point tunnel), found {len(scenario.sites)}; {use}")
    for i, site in enumerate(scenario.sites):
        if not site.dial_out:
            yield (f"site[{i}].dial_out", f"openvpn gateways dial each other; {use} or remove "
                   "dial_out")
        if scenario.link(site.name).nat:
            yield (f"site[{i}].wan.nat", f"site {site.name} is behind NAT, which openvpn "
                   f"gateways do not cross (each end dials the other's address); {use} or "
                   "remove nat")
    if scenario.wan.ipv6:
        yield ("wan.ipv6", f"openvpn gateways run over an IPv4 WAN only; {use} or remove ipv6")
