"""The OpenVPN reference gateway as data (no root): identities, config text, refusals, and
``[lab] daemon_defaults`` (the lab writes none of the daemon's performance keys)."""

from __future__ import annotations

import tomllib

import pytest
from cryptography import x509
from support import two_sites

from netns import lab as lab_mod
from netns.describe import openvpn
from netns.describe.plan import DAEMON_DEFAULT_KEYS, make_plan
from netns.describe.scenario import ScenarioError, parse_scenario

PREFIX = "l2b0c0de"


def options(text: str) -> list[str]:
    """The option lines of an OpenVPN config: no comments, no inline PEM blocks."""
    out, inline = [], False
    for line in text.splitlines():
        if line.startswith("<") and not line.startswith("</"):
            inline = True
        elif line.startswith("</"):
            inline = False
        elif not inline and not line.startswith("#"):
            out.append(line)
    return out


def test_identity_is_a_self_signed_certificate_pinned_by_its_fingerprint() -> None:
    ident = openvpn.make_identity("west")
    cert = x509.load_pem_x509_certificate(ident.cert_pem.encode())
    assert cert.subject == cert.issuer
    assert cert.subject.rfc4514_string() == "CN=west"
    assert ident.fingerprint == openvpn.fingerprint(cert)
    pairs = ident.fingerprint.split(":")
    assert len(pairs) == 32 and all(len(p) == 2 and p == p.upper() for p in pairs)
    assert "PRIVATE KEY" in ident.key_pem
    assert openvpn.make_identity("west").fingerprint != ident.fingerprint  # fresh each time


def test_config_of_the_tls_server_and_client() -> None:
    own = openvpn.make_identity("west")
    server = openvpn.render_config(site="west", remote="198.18.2.2", tls_server=True, own=own,
                                   peer_fingerprint="AA:BB", management="/run/x/west.sock")
    assert options(server) == [
        "dev ovpn0", "dev-type tap", "remote 198.18.2.2", "tls-server", "dh none",
        "peer-fingerprint AA:BB", "data-ciphers AES-256-GCM",
        "management /run/x/west.sock unix", "verb 3"]
    assert f"<cert>\n{own.cert_pem}</cert>\n<key>\n{own.key_pem}</key>\n" in server
    client = openvpn.render_config(site="east", remote="198.18.1.2", tls_server=False, own=own,
                                   peer_fingerprint="CC:DD", management="/m", lan_mtu=1400)
    assert "tls-client" in options(client) and "tls-server" not in options(client)
    assert "dh none" not in options(client)
    assert options(client)[-1] == "tun-mtu 1400"


def test_plan_pins_each_sites_certificate_at_the_other() -> None:
    plan = make_plan(parse_scenario(two_sites("west", "east")), prefix=PREFIX,
                     gateway="openvpn")
    west, east = plan.site("west"), plan.site("east")
    assert (west.config_path, east.config_path) == (
        f"/run/l2bridge/lab/{PREFIX}/west.ovpn", f"/run/l2bridge/lab/{PREFIX}/east.ovpn")

    def own_fingerprint(text: str) -> str:
        pem = text.split("<cert>\n")[1].split("</cert>")[0]
        return openvpn.fingerprint(x509.load_pem_x509_certificate(pem.encode()))

    def pinned(text: str) -> str:
        (line,) = [ln for ln in options(text) if ln.startswith("peer-fingerprint ")]
        return line.split()[1]

    assert pinned(west.config_text) == own_fingerprint(east.config_text)
    assert pinned(east.config_text) == own_fingerprint(west.config_text)
    assert f"remote {east.underlay}" in options(west.config_text)
    assert f"remote {west.underlay}" in options(east.config_text)
    assert "tls-server" in options(west.config_text)
    assert "tls-client" in options(east.config_text)
    assert f"management {west.control_path} unix" in options(west.config_text)
    assert any(line.startswith("gateway west: openvpn --config") for line in plan.describe())


@pytest.mark.parametrize(("text", "message"), [
    (two_sites("a", "b") + '[[site]]\nname = "c"\n[[site.host]]\nname = "h1"\n',
     "lab.toml: site: openvpn gateways join exactly 2 sites (one point-to-point tunnel), "
     "found 3; use the l2bridge gateway"),
    (two_sites("a", "b").replace('name = "b"', 'name = "b"\nwan = { nat = true }'),
     "lab.toml: site[1].wan.nat: site b is behind NAT, which openvpn gateways do not cross "
     "(each end dials the other's address); use the l2bridge gateway or remove nat"),
    (two_sites("a", "b").replace('name = "b"', 'name = "b"\ndial_out = false'),
     "lab.toml: site[1].dial_out: openvpn gateways dial each other; use the l2bridge gateway "
     "or remove dial_out"),
    ("[wan]\nipv6 = true\n" + two_sites("a", "b"),
     "lab.toml: wan.ipv6: openvpn gateways run over an IPv4 WAN only; use the l2bridge "
     "gateway or remove ipv6"),
    (two_sites("a", "b", tail='[[event]]\nat = 1\nkind = "stop"\nsite = "a"\n'),
     'lab.toml: event[0].kind: "stop" acts on an l2bridge process, which openvpn gateways '
     "do not have; use the l2bridge gateway or remove the event"),
])
def test_what_openvpn_gateways_refuse_is_one_line_naming_the_key(text: str,
                                                                 message: str) -> None:
    with pytest.raises(ScenarioError) as info:
        make_plan(parse_scenario(text, "lab.toml"), prefix=PREFIX, gateway="openvpn")
    assert str(info.value) == message


def test_preflight_names_the_missing_program(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert lab_mod.openvpn_problem() == (
        "openvpn is not on PATH (install it: apt-get install openvpn)")


def test_daemon_defaults_write_none_of_the_performance_keys() -> None:
    plain = make_plan(parse_scenario(two_sites("west", "east")), prefix=PREFIX, offload=False)
    site = tomllib.loads(plain.site("west").config_text)["site"]
    assert (site["workers"], site["offload"]) == (1, False)
    scenario = parse_scenario(two_sites("west", "east", lab="daemon_defaults = true"))
    assert scenario.daemon_defaults
    shipped = make_plan(scenario, prefix=PREFIX, offload=False)
    text = shipped.site("west").config_text
    assert not set(DAEMON_DEFAULT_KEYS) & set(tomllib.loads(text)["site"])
    assert "# workers, offload, low_latency: the daemon's own defaults" in text
    # what a site asks for itself still goes in
    tuned = parse_scenario(two_sites("west", "east", lab="daemon_defaults = true",
                                     site="l2bridge = { workers = 2 }"))
    doc = tomllib.loads(make_plan(tuned, prefix=PREFIX).site("east").config_text)
    assert doc["site"]["workers"] == 2
