"""Site configuration: valid files, and one exact one-line message per error class."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import REPO

from l2bridge.core.caps import default_workers
from l2bridge.core.config import (
    PEER_KEYS,
    SITE_KEYS,
    ConfigError,
    Endpoint,
    PeerConfig,
    SiteConfig,
    config_from_dict,
    load_config,
    parse_config,
    parse_endpoint,
)

EXAMPLE = Path(REPO) / "docs" / "site.example.toml"
MINIMAL = '[site]\nname = "london"\ninsecure = true\n'


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "site.toml")
    message = str(info.value)
    assert "\n" not in message
    return message


def site_error(body: str) -> str:
    return error_of(f'[site]\nname = "london"\n{body}\n')


# ---------------------------------------------------------------- valid files


def test_minimal_config_has_defaults() -> None:
    config = parse_config(MINIMAL, "london.toml")
    assert config == SiteConfig(
        name="london",
        listen=Endpoint("0.0.0.0", 55555),
        bridge="br0",
        tap="l2b0",
        interfaces=(),
        hub=False,
        mtu=1500,
        wan_mtu=1500,
        mss_clamp=None,
        offload=True,
        ageing_s=300.0,
        max_entries=8192,
        max_entries_per_peer=1024,
        keepalive_s=5.0,
        dead_after_s=15.0,
        control="/run/l2bridge/london.sock",
        log_level="info",
        peers=(),
        path="london.toml",
        insecure=True,
        workers=default_workers(),
    )


def test_full_config() -> None:
    config = parse_config(
        """
        [site]
        name = "hub-1.eu_west"
        listen = "[::]:4789"
        bridge = "brlan"
        tap = "tap-l2"
        interfaces = ["eth1", "eth2.100"]
        hub = true
        mtu = 9000
        wan_mtu = 1500
        mss_clamp = 1200
        ageing = 0.5
        max_entries = 1
        max_entries_per_peer = 1_000_000
        keepalive = 0.1
        dead_after = 0.3
        control = "/tmp/hub.sock"
        log_level = "debug"
        insecure = true

        [[peer]]
        name = "berlin"
        endpoint = "203.0.113.7:55555"

        [[peer]]
        name = "paris"
        endpoint = "[2001:DB8:0::7]:1"

        [[peer]]
        name = "roamer"
        endpoint = "vpn.example.org.:65535"

        [[peer]]
        name = "dialin"
        """,
        "hub.toml",
    )
    assert config.name == "hub-1.eu_west"
    assert config.listen == Endpoint("::", 4789)
    assert config.listen.is_ipv6
    assert (config.bridge, config.tap) == ("brlan", "tap-l2")
    assert config.interfaces == ("eth1", "eth2.100")
    assert config.hub is True
    assert (config.mtu, config.wan_mtu, config.mss_clamp) == (9000, 1500, 1200)
    assert (config.ageing_s, config.keepalive_s, config.dead_after_s) == (0.5, 0.1, 0.3)
    assert (config.max_entries, config.max_entries_per_peer) == (1, 1_000_000)
    assert (config.control, config.log_level) == ("/tmp/hub.sock", "debug")
    assert config.peers == (
        PeerConfig("berlin", Endpoint("203.0.113.7", 55555)),
        PeerConfig("paris", Endpoint("2001:db8::7", 1)),
        PeerConfig("roamer", Endpoint("vpn.example.org.", 65535)),
        PeerConfig("dialin", None),
    )
    assert [str(p.endpoint) for p in config.peers] == [
        "203.0.113.7:55555", "[2001:db8::7]:1", "vpn.example.org.:65535", "None",
    ]
    assert config.path == "hub.toml"


def test_integers_accepted_for_seconds() -> None:
    config = parse_config(MINIMAL + "ageing = 0\nkeepalive = 1\ndead_after = 2\n")
    assert (config.ageing_s, config.keepalive_s, config.dead_after_s) == (0.0, 1.0, 2.0)
    assert isinstance(config.ageing_s, float)


@pytest.mark.parametrize(
    ("listen", "wan_mtu", "expected"),
    [("0.0.0.0:1", 1500, 1394), ("[::]:1", 1500, 1374), ("0.0.0.0:1", 1400, 1294)],
)
def test_mss_clamp_true_is_computed(listen: str, wan_mtu: int, expected: int) -> None:
    config = parse_config(
        MINIMAL + f'listen = "{listen}"\nwan_mtu = {wan_mtu}\nmss_clamp = true\n'
    )
    assert config.mss_clamp == expected


def test_mss_clamp_false_is_none() -> None:
    assert parse_config(MINIMAL + "mss_clamp = false\n").mss_clamp is None


def test_config_is_frozen() -> None:
    config = parse_config(MINIMAL)
    with pytest.raises(AttributeError):
        config.name = "paris"  # type: ignore[misc]


def test_example_file_loads() -> None:
    config = load_config(str(EXAMPLE))
    assert config.name == "london"
    assert config.mss_clamp == 1374 - 32  # sealed: DATA header and tag
    assert [peer.name for peer in config.peers] == ["berlin", "paris", "laptop"]
    assert config.peers[2].endpoint is None
    assert config.dhcp_servers == ("berlin",) and config.arp_suppress
    assert config.peers[1].storm is not None and config.peers[1].storm.multicast == 5000


def test_the_example_file_shows_every_key() -> None:
    text = EXAMPLE.read_text()
    site, _, peers = text.partition("[[peer]]")
    written = {line.split("=")[0].strip() for line in site.splitlines() if "=" in line
               and not line.startswith("#")}
    assert set(SITE_KEYS) - written == set()
    peer_keys = {line.split("=")[0].strip() for line in peers.splitlines() if "=" in line
                 and not line.startswith("#")}
    storm_keys = {"storm_broadcast", "storm_unknown_unicast", "storm_burst"}  # one is shown
    assert set(PEER_KEYS) - peer_keys - storm_keys == set()


def test_load_config_reads_file(tmp_path: Path) -> None:
    path = tmp_path / "paris.toml"
    path.write_text('[site]\nname = "paris"\ninsecure = true\n', encoding="utf-8")
    config = load_config(str(path))
    assert config.path == str(path)
    assert config.control == "/run/l2bridge/paris.sock"


# ---------------------------------------------------------------- endpoints


@pytest.mark.parametrize(
    ("text", "host", "port", "text_out"),
    [
        ("1.2.3.4:5", "1.2.3.4", 5, "1.2.3.4:5"),
        ("[::1]:5", "::1", 5, "[::1]:5"),
        ("[2001:0db8::0001]:65535", "2001:db8::1", 65535, "[2001:db8::1]:65535"),
        ("[fe80::1%eth0]:7", "fe80::1%eth0", 7, "[fe80::1%eth0]:7"),
        ("example.org:80", "example.org", 80, "example.org:80"),
    ],
)
def test_parse_endpoint(text: str, host: str, port: int, text_out: str) -> None:
    endpoint = parse_endpoint(text)
    assert endpoint == Endpoint(host, port)
    assert str(endpoint) == text_out
    assert endpoint.is_ipv6 == (":" in host)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1.2.3.4", 'expected "HOST:PORT" or "[IPV6]:PORT", found "1.2.3.4"'),
        (":5", 'expected "HOST:PORT" or "[IPV6]:PORT", found ":5"'),
        ("[::1]5", 'expected "HOST:PORT" or "[IPV6]:PORT", found "[::1]5"'),
        ("[1.2.3.4]:5", 'expected an IPv6 address inside the brackets, found "1.2.3.4"'),
        ("::1:5", 'an IPv6 address needs brackets, like "[::1]:55555"; found "::1:5"'),
        ("1.2.3:5", 'host "1.2.3" is neither an IPv4 address nor a DNS name'),
        ("bad_host:5", 'host "bad_host" is neither an IPv4 address nor a DNS name'),
        ("-a.org:5", 'host "-a.org" is neither an IPv4 address nor a DNS name'),
        ("1.2.3.4:", 'port "" is not a number; expected 1..65535'),
        ("1.2.3.4:+5", 'port "+5" is not a number; expected 1..65535'),
        ("1.2.3.4:\u0665", 'port "\\u0665" is not a number; expected 1..65535'),
        ("1.2.3.4:0", "port 0 out of range; expected 1..65535"),
        ("1.2.3.4:65536", "port 65536 out of range; expected 1..65535"),
    ],
)
def test_parse_endpoint_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_endpoint(text)
    assert str(info.value) == message


# ---------------------------------------------------------------- file-level errors


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: -: cannot read the config file (No such file or directory);"
        " expected a readable TOML file"
    )
    assert (info.value.path, info.value.key) == (path, "-")


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path))
    assert str(info.value) == (
        f"{tmp_path}: -: cannot read the config file (a directory, not a regular file);"
        " expected a readable TOML file"
    )


def test_a_fifo_config_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "site.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"cannot read the config file \(a FIFO, not a regular"):
        load_config(str(fifo))  # blocked forever in open() before


def test_an_endless_config_file_is_refused(tmp_path: Path) -> None:
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    with pytest.raises(ConfigError, match="a character device, not a regular file"):
        load_config("/dev/zero")
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (2 << 20))
    with pytest.raises(ConfigError, match="larger than 1048576 bytes"):
        load_config(str(big))


@pytest.mark.parametrize("nested", [
    "a = " + "[" * 5000 + "]" * 5000,
    "a = " + "{b = " * 5000 + "1" + "}" * 5000,
])
def test_deep_nesting_is_one_line(nested: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL + nested + "\n", "deep.toml")
    message = str(info.value)
    assert message.startswith("deep.toml: -: ") and "nested too deeply" in message
    assert "\n" not in message


@pytest.mark.parametrize(("endpoint", "listen", "why"), [
    ("255.255.255.255:55555", "0.0.0.0:55555", "the broadcast address"),
    ("224.0.0.1:55555", "0.0.0.0:55555", "a multicast address"),
    ("[ff02::1]:55555", "[::]:55555", "a multicast address"),
    ("0.0.0.0:55555", "0.0.0.0:55555", "the unspecified address"),
    ("[::]:4000", "[::]:55555", "the unspecified address"),
    ("192.0.2.1:55555", "192.0.2.1:55555", "this site's own listen address"),
    ("127.0.0.1:55555", "0.0.0.0:55555", "this site's own listen address"),
    ("[::1]:55555", "[::]:55555", "this site's own listen address"),
    ("127.0.0.1:55555", "[::]:55555", "this site's own listen address"),
    ("[::ffff:127.0.0.1]:55555", "[::]:55555", "this site's own listen address"),
])
def test_endpoints_that_are_no_remote_site_are_refused(endpoint: str, listen: str,
                                                        why: str) -> None:
    text = (f'[site]\nname = "a"\nlisten = "{listen}"\ninsecure = true\n'
            f'[[peer]]\nname = "b"\nendpoint = "{endpoint}"\n')
    with pytest.raises(ConfigError) as info:
        parse_config(text, "s.toml")
    assert info.value.key == "peer[0].endpoint"
    assert why in info.value.message


@pytest.mark.parametrize(("endpoint", "listen"), [
    ("127.0.0.1:55556", "0.0.0.0:55555"),  # loopback, another port: a second site here
    ("192.0.2.1:55555", "192.0.2.2:55555"),
    ("peer.example:55555", "0.0.0.0:55555"),
])
def test_ordinary_endpoints_still_pass(endpoint: str, listen: str) -> None:
    text = (f'[site]\nname = "a"\nlisten = "{listen}"\ninsecure = true\n'
            f'[[peer]]\nname = "b"\nendpoint = "{endpoint}"\n')
    assert parse_config(text, "s.toml").peers[0].endpoint is not None


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.toml"
    path.write_text(MINIMAL)
    path.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(ConfigError, match=r"cannot read the config file \(Permission denied\)"):
            load_config(str(path))
        return
    # Root reads any file: check as an unprivileged user in a forked child.
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.setgid(65534)
            os.setuid(65534)
            load_config(str(path))
            message = "loaded"
        except ConfigError as exc:
            message = str(exc)
        except BaseException as exc:  # noqa: BLE001
            message = repr(exc)
        os.write(write_end, message.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        message = reader.read().decode()
    os.waitpid(pid, 0)
    assert "cannot read the config file (Permission denied)" in message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[site]\nname = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value) == (
        f"{path}: -: not valid UTF-8 (byte 0xe9 at line 2); save the file as UTF-8"
    )
    assert info.value.line == 2


def test_toml_syntax_error_names_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config('[site]\nname = "london"\nmtu = = 3\n', "site.toml")
    assert str(info.value) == "site.toml: -: TOML syntax error at line 3, column 7: Invalid value"
    assert info.value.line == 3


def test_toml_syntax_error_at_end() -> None:
    assert error_of('[site]\nname = "x"\nmtu =') == (
        "site.toml: -: TOML syntax error at line 3 (end of file): Invalid value"
    )


def test_toml_duplicate_table() -> None:
    assert error_of('[site]\nname = "x"\n[site]\n') == (
        "site.toml: -: TOML syntax error at line 3, column 6: Cannot declare ('site',) twice"
    )


def test_missing_site() -> None:
    assert error_of('[[peer]]\nname = "x"\n') == (
        'site.toml: site: missing required key; expected a table [site] with name = "..."'
    )


def test_site_not_a_table() -> None:
    assert error_of('site = "london"\n') == (
        'site.toml: site: expected a table [site] with name = "...", found a string ("london")'
    )
    assert error_of('[[site]]\nname = "x"\n') == (
        'site.toml: site: expected a table [site] with name = "...", found an array'
    )


def test_unknown_top_level_key() -> None:
    assert error_of(MINIMAL + '[[peers]]\nname = "x"\n') == (
        'site.toml: peers: unknown key "peers" (did you mean "peer"?)'
    )


# ---------------------------------------------------------------- [site] errors


def test_unknown_site_key_suggests_closest() -> None:
    assert site_error("ageng = 3") == (
        'site.toml: site.ageng: unknown key "ageng" (did you mean "ageing"?)'
    )


def test_unknown_site_key_without_suggestion() -> None:
    assert site_error("zzz = 3") == (
        'site.toml: site.zzz: unknown key "zzz"; expected one of ' + ", ".join(SITE_KEYS)
    )


def test_missing_name() -> None:
    assert error_of("[site]\nmtu = 1500\n") == (
        "site.toml: site.name: missing required key;"
        " expected a name of 1 to 32 characters from A-Z a-z 0-9 _ . -"
    )


@pytest.mark.parametrize(
    ("value", "found"),
    [('""', '""'), ('"lon don"', '"lon don"'),
     ('"' + "x" * 33 + '"', '"' + "x" * 33 + '" (33 characters)'),
     ('"café"', '"caf\\u00e9"')],
)
def test_bad_site_name(value: str, found: str) -> None:
    assert error_of(f"[site]\nname = {value}\n") == (
        "site.toml: site.name: expected a name of 1 to 32 characters from A-Z a-z 0-9 _ . -,"
        f" found {found}"
    )


def test_name_wrong_type() -> None:
    assert error_of("[site]\nname = 7\n") == (
        "site.toml: site.name: expected a name of 1 to 32 characters from A-Z a-z 0-9 _ . -,"
        " found an integer (7)"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("hub = 1", "site.hub: expected true or false, found an integer (1)"),
        ("mtu = true", "site.mtu: expected an integer from 576 to 9000, found a boolean (true)"),
        ("mtu = 1500.0", "site.mtu: expected an integer from 576 to 9000, found a float (1500.0)"),
        ('mtu = "1500"', 'site.mtu: expected an integer from 576 to 9000, found a string ("1500")'),
        ("wan_mtu = [1]", "site.wan_mtu: expected an integer from 576 to 9000, found an array"),
        (
            "max_entries = {a = 1}",
            "site.max_entries: expected an integer from 1 to 1000000, found a table",
        ),
        (
            "ageing = false",
            "site.ageing: expected a number of seconds from 0 to 86400, found a boolean (false)",
        ),
        (
            "keepalive = 1979-05-27",
            "site.keepalive: expected a number of seconds from 0.1 to 3600,"
            " found a date/time (1979-05-27)",
        ),
        (
            "listen = 55555",
            'site.listen: expected an address like "0.0.0.0:55555" or "[::]:55555",'
            " found an integer (55555)",
        ),
        ('log_level = 3', 'site.log_level: expected one of "debug", "info", "warning", "error",'
         " found an integer (3)"),
        ("control = false", "site.control: expected a unix socket path of 1 to 107 bytes"
         " without NUL, found a boolean (false)"),
        ("bridge = 0", "site.bridge: expected a Linux interface name of 1 to 15 bytes"
         " without / : or spaces, found an integer (0)"),
    ],
)
def test_wrong_types(body: str, message: str) -> None:
    assert site_error(body) == f"site.toml: {message}"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("mtu = 575", "site.mtu: expected an integer from 576 to 9000, found 575"),
        ("wan_mtu = 9001", "site.wan_mtu: expected an integer from 576 to 9000, found 9001"),
        ("max_entries = 0", "site.max_entries: expected an integer from 1 to 1000000, found 0"),
        (
            "max_entries_per_peer = 1_000_001",
            "site.max_entries_per_peer: expected an integer from 1 to 1000000, found 1000001",
        ),
        ("ageing = -1", "site.ageing: expected a number of seconds from 0 to 86400, found -1"),
        (
            "ageing = 86400.5",
            "site.ageing: expected a number of seconds from 0 to 86400, found 86400.5",
        ),
        ("ageing = nan", "site.ageing: expected a number of seconds from 0 to 86400, found nan"),
        (
            "keepalive = 0.05",
            "site.keepalive: expected a number of seconds from 0.1 to 3600, found 0.05",
        ),
        (
            "keepalive = inf",
            "site.keepalive: expected a number of seconds from 0.1 to 3600, found inf",
        ),
        (
            "dead_after = 100000",
            "site.dead_after: expected a number of seconds from 0 to 86400, found 100000",
        ),
        (
            "mss_clamp = 535",
            "site.mss_clamp: expected false, true or an integer from 536 to 9000, found 535",
        ),
        (
            'mss_clamp = "auto"',
            'site.mss_clamp: expected false, true or an integer from 536 to 9000,'
            ' found a string ("auto")',
        ),
        (
            "mss_clamp = 1400.0",
            "site.mss_clamp: expected false, true or an integer from 536 to 9000,"
            " found a float (1400.0)",
        ),
        (
            'log_level = "INFO"',
            'site.log_level: expected one of "debug", "info", "warning", "error", found "INFO"',
        ),
    ],
)
def test_out_of_range(body: str, message: str) -> None:
    assert site_error(body) == f"site.toml: {message}"


def test_dead_after_must_exceed_keepalive() -> None:
    assert site_error("keepalive = 5\ndead_after = 5") == (
        "site.toml: site.dead_after: expected more than keepalive (5 s), found 5"
    )
    assert site_error("keepalive = 2.5\ndead_after = 1") == (
        "site.toml: site.dead_after: expected more than keepalive (2.5 s), found 1"
    )


def test_mtu_needing_too_many_fragments() -> None:
    assert site_error('listen = "[::]:1"\nmtu = 9000\nwan_mtu = 576') == (
        "site.toml: site.mtu: frames of up to 9022 bytes need 19 fragments at wan_mtu 576"
        " (the limit is 16); expected mtu <= 7850 or a larger wan_mtu"
    )  # sealed datagrams (the default) carry 32 bytes of header and tag more
    parse_config(MINIMAL + 'listen = "[::]:1"\nmtu = 8362\nwan_mtu = 576\n')  # cleartext


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        (
            "example.org:5",
            'host "example.org" is not an IP address; expected an IP literal like'
            ' "0.0.0.0:55555" or "[::]:55555"',
        ),
        ("0.0.0.0:0", "port 0 out of range; expected 1..65535"),
        ("0.0.0.0:99999", "port 99999 out of range; expected 1..65535"),
        ("0.0.0.0", 'expected "HOST:PORT" or "[IPV6]:PORT", found "0.0.0.0"'),
        ("[::]", 'expected "HOST:PORT" or "[IPV6]:PORT", found "[::]"'),
        (":::55555", 'an IPv6 address needs brackets, like "[::1]:55555"; found ":::55555"'),
    ],
)
def test_bad_listen(listen: str, message: str) -> None:
    assert site_error(f'listen = "{listen}"') == f"site.toml: site.listen: {message}"


IFNAME_RULE = "expected a Linux interface name of 1 to 15 bytes without / : or spaces"


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ('""', '""'),
        ('"a-very-long-name"', '"a-very-long-name" (16 bytes)'),
        ('"ééééééé12"', '"\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e912" (16 bytes)'),
        ('"br/0"', '"br/0"'),
        ('"br:0"', '"br:0"'),
        ('"br 0"', '"br 0"'),
        ('"br\\t0"', '"br\\t0"'),
        ('"."', '"."'),
        ('".."', '".."'),
    ],
)
def test_bad_interface_names(value: str, found: str) -> None:
    for key in ("bridge", "tap"):
        expected = f"site.toml: site.{key}: {IFNAME_RULE}, found {found}"
        assert site_error(f"{key} = {value}") == expected
    assert site_error(f'interfaces = ["eth0", {value}]') == (
        f"site.toml: site.interfaces[1]: {IFNAME_RULE}, found {found}"
    )


def test_bridge_equals_tap() -> None:
    assert site_error('bridge = "br0"\ntap = "br0"') == (
        'site.toml: site.tap: "br0" is also the bridge name; expected a different name for the tap'
    )


def test_bridge_in_interfaces() -> None:
    assert site_error('interfaces = ["eth1", "br0"]') == (
        'site.toml: site.interfaces[1]: "br0" is the bridge itself; expected a LAN NIC to enslave'
    )


def test_tap_in_interfaces() -> None:
    assert site_error('interfaces = ["l2b0"]') == (
        'site.toml: site.interfaces[0]: "l2b0" is the tap, which is enslaved already;'
        " remove it from interfaces"
    )


def test_duplicate_interfaces() -> None:
    assert site_error('interfaces = ["eth1", "eth2", "eth1"]') == (
        'site.toml: site.interfaces[2]: duplicate interface "eth1" (also site.interfaces[0])'
    )


def test_interfaces_wrong_types() -> None:
    assert site_error('interfaces = "eth1"') == (
        'site.toml: site.interfaces: expected an array of interface names like ["eth1"],'
        ' found a string ("eth1")'
    )
    assert site_error('interfaces = ["eth1", 2]') == (
        f"site.toml: site.interfaces[1]: {IFNAME_RULE}, found an integer (2)"
    )


def test_control_path_limits() -> None:
    long_path = "/run/" + "x" * 103
    assert site_error(f'control = "{long_path}"') == (
        "site.toml: site.control: expected a unix socket path of 1 to 107 bytes without NUL,"
        f' found "{long_path[:37]}..." (108 bytes)'
    )
    assert site_error('control = ""') == (
        'site.toml: site.control: expected a unix socket path of 1 to 107 bytes without NUL,'
        ' found "" (0 bytes)'
    )


# ---------------------------------------------------------------- [[peer]] errors


def test_peer_written_as_table() -> None:
    assert error_of(MINIMAL + '[peer]\nname = "berlin"\n') == (
        "site.toml: peer: expected an array of tables [[peer]], found a table [peer];"
        " write [[peer]] for each peer"
    )


def test_peer_wrong_types() -> None:
    assert error_of(MINIMAL.replace("[site]", 'peer = "berlin"\n[site]')) == (
        'site.toml: peer: expected an array of tables [[peer]], found a string ("berlin")'
    )
    assert error_of(MINIMAL.replace("[site]", 'peer = ["berlin"]\n[site]')) == (
        'site.toml: peer[0]: expected a table [[peer]], found a string ("berlin")'
    )


def test_peer_unknown_key() -> None:
    assert error_of(MINIMAL + '[[peer]]\nname = "a"\n[[peer]]\nname = "b"\nendpiont = "x:1"\n') == (
        'site.toml: peer[1].endpiont: unknown key "endpiont" (did you mean "endpoint"?)'
    )
    assert error_of(MINIMAL + '[[peer]]\nname = "a"\nkey = "x"\n') == (
        'site.toml: peer[0].key: unknown key "key"; expected one of ' + ", ".join(PEER_KEYS)
    )


def test_peer_missing_name() -> None:
    assert error_of(MINIMAL + '[[peer]]\nendpoint = "1.2.3.4:5"\n') == (
        "site.toml: peer[0].name: missing required key;"
        " expected a name of 1 to 32 characters from A-Z a-z 0-9 _ . -"
    )


def test_peer_bad_name() -> None:
    assert error_of(MINIMAL + '[[peer]]\nname = "ber/lin"\n') == (
        "site.toml: peer[0].name: expected a name of 1 to 32 characters from A-Z a-z 0-9 _ . -,"
        ' found "ber/lin"'
    )


def test_duplicate_peer_names() -> None:
    text = MINIMAL + '[[peer]]\nname = "a"\n[[peer]]\nname = "b"\n[[peer]]\nname = "a"\n'
    assert error_of(text) == 'site.toml: peer[2].name: duplicate peer name "a" (also peer[0].name)'


def test_peer_named_like_site() -> None:
    assert error_of(MINIMAL + '[[peer]]\nname = "london"\n') == (
        'site.toml: peer[0].name: "london" is this site\'s own name;'
        " expected another site's name"
    )


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("203.0.113.7", 'expected "HOST:PORT" or "[IPV6]:PORT", found "203.0.113.7"'),
        ("203.0.113.7:0", "port 0 out of range; expected 1..65535"),
        ("203.0.113.7:65536", "port 65536 out of range; expected 1..65535"),
        ("203.0.113.7:http", 'port "http" is not a number; expected 1..65535'),
        ("bad host:1", 'host "bad host" is neither an IPv4 address nor a DNS name'),
        ("[nope]:1", 'expected an IPv6 address inside the brackets, found "nope"'),
    ],
)
def test_bad_peer_endpoint(endpoint: str, message: str) -> None:
    text = MINIMAL + f'[[peer]]\nname = "berlin"\nendpoint = "{endpoint}"\n'
    assert error_of(text) == f"site.toml: peer[0].endpoint: {message}"


def test_peer_endpoint_wrong_type() -> None:
    assert error_of(MINIMAL + '[[peer]]\nname = "berlin"\nendpoint = 55555\n') == (
        'site.toml: peer[0].endpoint: expected an endpoint like "203.0.113.7:55555",'
        " found an integer (55555)"
    )


def test_ipv6_peer_needs_ipv6_listen() -> None:
    text = MINIMAL + '[[peer]]\nname = "berlin"\nendpoint = "[2001:db8::1]:55555"\n'
    assert error_of(text) == (
        'site.toml: peer[0].endpoint: IPv6 endpoint "[2001:db8::1]:55555" but site.listen'
        ' "0.0.0.0:55555" is IPv4; listen on "[::]:55555" to reach IPv6 peers'
    )
    parse_config(text.replace("[site]\n", '[site]\nlisten = "[::]:55555"\n'))


def test_error_attributes_and_one_line() -> None:
    error = ConfigError("a\nb.toml", "site.x", "line one\nline two")
    assert (error.path, error.key, error.message) == ("a\nb.toml", "site.x", "line one\nline two")
    assert str(error) == "a b.toml: site.x: line one line two"


# ---------------------------------------------------------------- properties

toml_scalars = (
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(["0.0.0.0:1", "[::]:2", "br0", "eth1", "info", "x:0", "[::1]:70000"])
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300)
@given(
    st.fixed_dictionaries({}, optional=dict.fromkeys(SITE_KEYS, toml_values)),
    st.lists(st.fixed_dictionaries({}, optional=dict.fromkeys(PEER_KEYS, toml_values)), max_size=3),
)
def test_random_values_raise_only_config_error(site: dict[str, Any], peers: list[Any]) -> None:
    site.setdefault("name", "london")
    try:
        config = config_from_dict({"site": site, "peer": peers}, "r.toml")
    except ConfigError as exc:
        assert "\n" not in str(exc)
        assert str(exc).startswith("r.toml: ")
    else:
        assert isinstance(config, SiteConfig)
        assert math.isfinite(config.ageing_s)


@settings(max_examples=300)
@given(st.sampled_from(SITE_KEYS), toml_values)
def test_random_value_for_each_key(key: str, value: Any) -> None:
    site = {"name": "london", key: value}
    try:
        config_from_dict({"site": site}, "r.toml")
    except ConfigError as exc:
        assert exc.key.startswith("site")


@given(st.text(max_size=200))
def test_random_text_raises_only_config_error(text: str) -> None:
    try:
        parse_config(text, "r.toml")
    except ConfigError as exc:
        assert "\n" not in str(exc)


@given(st.text(max_size=60))
def test_parse_endpoint_raises_only_value_error(text: str) -> None:
    try:
        endpoint = parse_endpoint(text)
    except ValueError as exc:
        assert "\n" not in str(exc)
    else:
        assert 1 <= endpoint.port <= 65535
        assert parse_endpoint(str(endpoint)) == endpoint


# ---------------------------------------------------------------- keys and layer-2 protections

PUB_B = "1cT2kOr0qYa06FCs4nquhVRJimvAKFyNSEqf0mL4G0k="
PUB_C = "CMxSJbwex66U0lQFR6OeizUIgC7WyBwA6wW8ls3BYhc="
SECURE = '[site]\nname = "london"\nprivate_key_file = "/etc/l2bridge/london.key"\n'


def test_secure_is_the_default_and_keys_are_decoded() -> None:
    config = parse_config(
        SECURE + 'pinned_macs = ["02:00:00:00:00:01"]\nrekey_after = 2\n'
        f'[[peer]]\nname = "berlin"\npublic_key = "{PUB_B}"\n'
        'preshared_key_file = "/etc/l2bridge/b.psk"\nallowed_macs = ["02:00:00:00:00:02"]\n'
        "max_macs = 7\npersistent_keepalive = 10\n",
        "site.toml",
    )
    assert config.insecure is False
    assert config.private_key_file == "/etc/l2bridge/london.key"
    assert config.pinned_macs == frozenset({bytes.fromhex("020000000001")})
    assert config.rekey_after_s == 2.0
    peer = config.peers[0]
    assert len(peer.public_key) == 32
    assert peer.preshared_key_file == "/etc/l2bridge/b.psk"
    assert peer.allowed_macs == frozenset({bytes.fromhex("020000000002")})
    assert (peer.max_macs, peer.persistent_keepalive_s) == (7, 10.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[site]\nname = "london"\n',
         "site.toml: site.private_key_file: missing required key; expected the path of this"
         " site's private key (make one with 'l2bridge genkey > /etc/l2bridge/london.key'),"
         " or insecure = true for a cleartext lab link"),
        (SECURE + '[[peer]]\nname = "b"\n',
         "site.toml: peer[0].public_key: missing required key; expected the peer's public key"
         " (on the peer: 'l2bridge pubkey < its.key'), or insecure = true in [site] for a"
         " cleartext lab link"),
        (SECURE + '[[peer]]\nname = "b"\npublic_key = "AAAA"\n', "peer[0].public_key: "),
        (SECURE + '[[peer]]\nname = "b"\npublic_key = "' + "A" * 43 + '="\n',
         "site.toml: peer[0].public_key: a low-order point (no shared secret possible);"
         " expected a real key"),
        (SECURE + f'[[peer]]\nname = "b"\npublic_key = "{PUB_B}"\n'
         f'[[peer]]\nname = "c"\npublic_key = "{PUB_B}"\n',
         "site.toml: peer[1].public_key: the same key as peer[0].public_key;"
         " each peer has its own"),
        (SECURE + 'pinned_macs = ["01:00:5e:00:00:01"]\n',
         'site.toml: site.pinned_macs[0]: expected a unicast MAC address like'
         ' "02:00:00:00:00:01", found "01:00:5e:00:00:01"'),
        (SECURE + 'pinned_macs = "02:00:00:00:00:01"\n',
         'site.toml: site.pinned_macs: expected an array of MAC addresses like'
         ' ["02:00:00:00:00:01"], found a string ("02:00:00:00:00:01")'),
        (SECURE + f'[[peer]]\nname = "b"\npublic_key = "{PUB_C}"\nallowed_macs = ["nope"]\n',
         'site.toml: peer[0].allowed_macs[0]: expected a unicast MAC address like'
         ' "02:00:00:00:00:01", found "nope"'),
        (SECURE + f'[[peer]]\nname = "b"\npublic_key = "{PUB_C}"\nmax_macs = 0\n',
         "site.toml: peer[0].max_macs: expected an integer from 1 to 1000000, found 0"),
        (SECURE + "rekey_after = 500\n",
         "site.toml: site.rekey_after: expected a number of seconds from 1 to 120, found 500"),
    ],
)
def test_key_and_mac_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "site.toml")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_insecure_ignores_missing_keys() -> None:
    config = parse_config('[site]\nname = "a"\ninsecure = true\n[[peer]]\nname = "b"\n')
    assert config.insecure and config.peers[0].public_key is None


def test_secure_mss_clamp_leaves_room_for_the_seal() -> None:
    secure = parse_config(SECURE + "mss_clamp = true\n")
    clear = parse_config(MINIMAL + "mss_clamp = true\n")
    assert clear.mss_clamp - secure.mss_clamp == 32


@pytest.mark.parametrize(("body", "message"), [
    ("storm_broadcast = 0", "site.storm_broadcast: expected a number of frames per second "
     "from 1 to 1000000, found 0"),
    ("storm_multicast = -5", "site.storm_multicast: expected a number of frames per second "
     "from 1 to 1000000, found -5"),
    ("storm_unknown_unicast = 1e12", "site.storm_unknown_unicast: expected a number of frames "
     "per second from 1 to 1000000, found 1000000000000"),
    ("storm_unknown_unicast = nan", "site.storm_unknown_unicast: expected a number of frames "
     "per second from 1 to 1000000, found nan"),
    ("storm_burst = 0", "site.storm_burst: expected a number of seconds from 0.01 to 60, "
     "found 0"),
    ("loop_probe_interval = 0", "site.loop_probe_interval: expected a number of seconds from "
     "0.1 to 60, found 0"),
    ("mac_flap_moves = 0", "site.mac_flap_moves: expected an integer from 1 to 1000, found 0"),
    ("mac_flap_hold = -1", "site.mac_flap_hold: expected a number of seconds from 1 to 86400, "
     "found -1"),
    ("arp_max_bindings = 0", "site.arp_max_bindings: expected an integer from 1 to 1000000, "
     "found 0"),
    ("loop_protect = 1", "site.loop_protect: expected true or false, found an integer (1)"),
    ('dhcp_servers = ["paris"]', 'site.dhcp_servers[0]: no peer "paris" (expected a [[peer]] '
     "name: none configured)"),
])
def test_layer2_safety_values_are_refused_by_name(body: str, message: str) -> None:
    assert error_of(f'[site]\nname = "london"\ninsecure = true\n{body}\n') == \
        f"site.toml: {message}"


def test_a_peers_own_storm_limits_and_the_dhcp_servers() -> None:
    config = parse_config(MINIMAL + 'dhcp_servers = ["b", "c"]\nstorm_burst = 4\n'
                          '[[peer]]\nname = "b"\nstorm_broadcast = 50\n[[peer]]\nname = "c"\n')
    assert config.dhcp_servers == ("b", "c")
    assert config.peers[0].storm is not None
    assert (config.peers[0].storm.broadcast, config.peers[0].storm.burst_s) == (50, 4)
    assert config.peers[1].storm is None
    assert error_of(MINIMAL + 'dhcp_servers = ["b", "b"]\n[[peer]]\nname = "b"\n') == (
        'site.toml: site.dhcp_servers[1]: duplicate peer "b" (also site.dhcp_servers[0])')
    assert error_of(MINIMAL + '[[peer]]\nname = "b"\nstorm_multicast = 0\n') == (
        "site.toml: peer[0].storm_multicast: expected a number of frames per second from 1 "
        "to 1000000, found 0")


def test_default_workers_leave_a_core_to_the_kernel_per_worker() -> None:
    assert [default_workers(n) for n in (1, 2, 3, 4, 8, 200)] == [1, 1, 1, 2, 4, 64]
