"""The metrics: names by the conventions, worker-summed, parsed back by Prometheus' parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from l2bridge.ops import metrics

STATUS = {
    "site": "london", "uptime_s": 12.5, "auth_drops": {"bad_mac1": 3},
    "local": {"frames_in": 10, "bytes_in": 1000, "frames_out": 20, "bytes_out": 2000,
              "drops": {"runt": 1}},
    "unknown_source": 2, "socket_errors": 0,
    "fdb": {"entries": 4, "learned": 6, "moved": 1, "expired": 1, "flushed": 0, "evicted": 0},
    "peers": [
        {"name": "berlin", "state": "up", "last_seen_s": 0.2, "frames_in": 5, "bytes_in": 500,
         "frames_out": 7, "bytes_out": 700, "datagrams_in": 5, "datagrams_out": 7,
         "unicast_out": 6, "flooded_out": 1, "bursts_in": 0, "bursts_out": 0,
         "handshakes": 2, "rekeys": 1, "times_down": 0, "roamed": 0,
         "drops": {"no_session": 1}},
        {"name": "paris", "state": "down", "last_seen_s": None, "frames_in": 0, "bytes_in": 0,
         "frames_out": 0, "bytes_out": 0, "datagrams_in": 0, "datagrams_out": 0,
         "unicast_out": 0, "flooded_out": 0, "bursts_in": 0, "bursts_out": 0,
         "handshakes": 0, "rekeys": 0, "times_down": 1, "roamed": 0, "drops": {}},
    ],
    "workers": {"count": 2, "followers": [
        {"lane": 1, "local": {"frames_in": 3, "bytes_in": 300, "frames_out": 4, "bytes_out": 400,
                              "drops": {"runt": 2}},
         "peers": {"berlin": {"frames_in": 1, "bytes_in": 100, "frames_out": 2, "bytes_out": 200,
                              "datagrams_in": 1, "datagrams_out": 2, "bursts_in": 0,
                              "bursts_out": 0, "drops": {"no_session": 4}}}},
    ]},
}


def samples() -> dict[tuple[str, tuple], float]:
    text = metrics.exposition(lambda: STATUS).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_names_follow_the_conventions_and_parse() -> None:
    got = samples()
    names = {name for name, _ in got}
    assert all(name.startswith("l2bridge_") for name in names)
    assert {"l2bridge_peer_rx_bytes_total", "l2bridge_peer_up", "l2bridge_drops_total",
            "l2bridge_fdb_entries", "l2bridge_peer_handshakes_total",
            "l2bridge_peer_rekeys_total", "l2bridge_build_info"} <= names


def test_worker_series_are_summed() -> None:
    got = samples()
    assert got[("l2bridge_peer_rx_bytes_total", (("peer", "berlin"),))] == 600
    assert got[("l2bridge_peer_tx_frames_total", (("peer", "berlin"),))] == 9
    assert got[("l2bridge_tap_rx_frames_total", ())] == 13
    assert got[("l2bridge_drops_total", (("peer", "local"), ("reason", "runt")))] == 3
    assert got[("l2bridge_drops_total", (("peer", "berlin"), ("reason", "no_session")))] == 5
    assert got[("l2bridge_drops_total", (("peer", ""), ("reason", "bad_mac1")))] == 3
    assert got[("l2bridge_peer_up", (("peer", "berlin"),))] == 1
    assert got[("l2bridge_peer_up", (("peer", "paris"),))] == 0
    assert got[("l2bridge_workers", ())] == 2
    assert got[("l2bridge_fdb_events_total", (("event", "learned"),))] == 6


def test_the_http_answer_is_bounded_and_exact() -> None:
    ok = metrics.answer(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", lambda: STATUS)
    head, _, body = ok.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"version=0.0.4" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"l2bridge_peer_up" in body
    head_only = metrics.answer(b"HEAD /metrics HTTP/1.1\r\n\r\n", lambda: STATUS)
    assert head_only.endswith(b"\r\n\r\n")
    assert metrics.answer(b"GET / HTTP/1.1\r\n\r\n", lambda: STATUS).startswith(
        b"HTTP/1.1 404")
    assert metrics.answer(b"POST /metrics HTTP/1.1\r\n\r\n", lambda: STATUS).startswith(
        b"HTTP/1.1 405")
    assert metrics.answer(b"garbage\r\n\r\n", lambda: STATUS).startswith(b"HTTP/1.1 400")
    half = b"GET /metrics HTTP/1.1\r\n" + b"x" * metrics.REQUEST_MAX_BYTES
    assert metrics.answer(half, lambda: STATUS).startswith(b"HTTP/1.1 431")


def test_layer2_safety_series() -> None:
    status = {**STATUS,
              "fdb": {**STATUS["fdb"], "dup_mac": 2, "held": 9, "held_macs": 1},
              "loop": {"probes": {"sent": 40, "seen": 12}, "self_loop": False},
              "neigh": {"bindings": 7, "answered_arp": 3, "conflicts": 1},
              "policy": {"dhcp_kept_local": 4, "bpdus": 0},
              "peers": [{**STATUS["peers"][0], "loop_blocked": "segment", "loop_blocks": 1,
                         "drops": {"storm_broadcast_out": 5},
                         "flooded_by_class": {"out": {"broadcast": 2}, "in": {}}},
                        STATUS["peers"][1]]}
    text = metrics.exposition(lambda: status).decode()
    got = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            got[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert got[("l2bridge_peer_loop_blocked", (("peer", "berlin"),))] == 1
    assert got[("l2bridge_peer_loop_blocked", (("peer", "paris"),))] == 0
    assert got[("l2bridge_peer_loop_blocks_total", (("peer", "berlin"),))] == 1
    assert got[("l2bridge_peer_flooded_by_class_frames_total",
                (("class", "broadcast"), ("direction", "tx"), ("peer", "berlin")))] == 2
    assert got[("l2bridge_drops_total",
                (("peer", "berlin"), ("reason", "storm_broadcast_out")))] == 5
    assert got[("l2bridge_loop_probes_total", (("event", "seen"),))] == 12
    assert got[("l2bridge_fdb_events_total", (("event", "dup_mac"),))] == 2
    assert got[("l2bridge_fdb_held_macs", ())] == 1
    assert got[("l2bridge_neigh_answered_total", (("protocol", "arp"),))] == 3
    assert got[("l2bridge_neigh_bindings", ())] == 7
    assert got[("l2bridge_dhcp_requests_kept_local_total", ())] == 4
