"""Live reconfiguration and metrics of real sites in a lab (root).

1. A ping every 10 ms between London and Berlin loses nothing while London's
   config is reloaded twice: once removing Paris, once adding it back (London
   runs two workers, so both reload).  Paris comes back up within seconds.
2. /metrics of a site under iperf3 load, scraped with a real HTTP client and
   parsed with Prometheus' own parser: counters only go up, and agree with
   ``show --json`` once the traffic stopped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import urllib.request

import trio
from prometheus_client.parser import text_string_to_metric_families
from support import REPO, repo_env, site_toml

from l2bridge.ops.metrics import totals
from netns.checks import traffic
from netns.describe.scenario import parse_scenario
from netns.lab import Lab
from netns.realise.nsenter import in_netns, netns_preexec

SCENARIO = """
[lab]
keepalive = 1
dead_after = 3
[[site]]
name = "london"
l2bridge = { workers = 2, metrics = "127.0.0.1:9587" }
[[site.host]]
name = "h1"
ipv4 = "10.77.1.10/16"
[[site]]
name = "berlin"
[[site.host]]
name = "h1"
ipv4 = "10.77.2.10/16"
[[site]]
name = "paris"
[[site.host]]
name = "h1"
ipv4 = "10.77.3.10/16"
"""
PINGS = 500
BOUND_S = 30.0


def rewrite(path: str, keep: set[str]) -> None:
    """The site's config with only the peers named in ``keep`` (values written as TOML)."""
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    site = {k: json.dumps(v) for k, v in doc["site"].items() if k != "name"}
    peers = {p["name"]: {k: json.dumps(v) for k, v in p.items() if k != "name"}
             for p in doc["peer"] if p["name"] in keep}
    with open(path, "w") as f:
        f.write(site_toml(doc["site"]["name"], site, peers))


async def reload(lab: Lab, site: str) -> str:
    plan = lab.plan.site(site)
    done = await trio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-m", "l2bridge", "reload", "-c", plan.config_path],
        preexec_fn=netns_preexec(plan.gw_ns), capture_output=True, text=True, timeout=60,
        env=repo_env(), cwd=REPO))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def peer_states(lab: Lab, site: str) -> dict[str, str]:
    return {p["name"]: p["state"] for p in (await lab.show(site))["peers"]}


async def test_a_reload_of_other_peers_loses_no_ping(lab_scenario):
    lab = await lab_scenario(parse_scenario(SCENARIO, "reload.toml"), gateway="l2bridge")
    london = lab.plan.site("london").config_path
    with open(london) as f:
        original = f.read()
    src, dst, far = lab.node("london.h1"), lab.node("berlin.h1"), lab.node("paris.h1")
    results = {}
    async with trio.open_nursery() as nursery:

        async def ping() -> None:
            results["ping"] = await traffic.ping(src.ns, dst.ip, count=PINGS, interval_s=0.01,
                                                 deadline_s=BOUND_S)

        nursery.start_soon(ping)
        await trio.sleep(1.0)
        rewrite(london, {"berlin"})
        assert (await reload(lab, "london")).endswith("reloaded: peers removed: paris")
        assert await peer_states(lab, "london") == {"berlin": "up"}
        await trio.sleep(1.0)
        with open(london, "w") as f:
            f.write(original)
        assert (await reload(lab, "london")).endswith("reloaded: peers added: paris")
    ping = results["ping"]
    assert ping.sent == PINGS and ping.received == PINGS, ping.output
    with trio.fail_after(BOUND_S):
        while await peer_states(lab, "london") != {"berlin": "up", "paris": "up"}:
            await trio.sleep(0.1)
    back = await traffic.ping(src.ns, far.ip, count=3, interval_s=0.1)
    assert back.ok, back.output
    show = await lab.show("london")
    assert show["config"]["reloads_ok"] == 2
    assert [p["times_down"] for p in show["peers"] if p["name"] == "berlin"] == [0]


def scrape(ns: str) -> dict[tuple[str, tuple], float]:
    url = "http://127.0.0.1:9587/metrics"
    with in_netns(ns), urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_under_load_only_go_up_and_agree_with_show(lab_scenario):
    lab = await lab_scenario(parse_scenario(SCENARIO, "metrics.toml"), gateway="l2bridge")
    gw = lab.plan.site("london").gw_ns
    src, dst = lab.node("london.h1"), lab.node("berlin.h1")
    scrapes: list[dict] = []
    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def load() -> None:
            await traffic.iperf3(dst.ns, dst.ip, src.ns, seconds=3)
            done.set()

        nursery.start_soon(load)
        while not done.is_set():
            scrapes.append(await trio.to_thread.run_sync(scrape, gw))
            await trio.sleep(0.3)
    assert len(scrapes) >= 5
    key = ("l2bridge_peer_tx_bytes_total", (("peer", "berlin"),))
    sent = [s[key] for s in scrapes]
    assert sent == sorted(sent) and sent[-1] > sent[0] + 10_000_000  # iperf3's bytes
    for before, after in zip(scrapes, scrapes[1:], strict=False):
        for name, value in before.items():
            if name[0].endswith("_total"):
                assert after.get(name, value) >= value, name
    for _ in range(20):  # the LAN is quiet between two equal shows: compare then
        first = await lab.show("london")
        metrics = await trio.to_thread.run_sync(scrape, gw)
        second = await lab.show("london")
        if totals(first) == totals(second):
            break
        await trio.sleep(0.2)
    summed = totals(second)
    for peer, counters in summed["peers"].items():
        assert metrics[("l2bridge_peer_tx_bytes_total", (("peer", peer),))] == \
            counters["bytes_out"]
        assert metrics[("l2bridge_peer_rx_frames_total", (("peer", peer),))] == \
            counters["frames_in"]
    assert metrics[("l2bridge_tap_rx_frames_total", ())] == summed["local"]["frames_in"]
