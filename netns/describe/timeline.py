"""Timelines: faults over time and the checks that measure them (pure: parsing and validation).

A scenario's ``[[event]]`` tables change the running lab: a site's WAN link
down or up, a partition between two sites, an impairment change on a link
(UDP blocked or let through again among them), a site's public address changed
(``readdress``), a gateway killed, stopped, continued, restarted or reloaded, a
LAN host or a LAN link down or up.  Each event has exactly one anchor:

- ``at = SECONDS``: on the **timeline**, which starts (t = 0) as soon as the lab
  is up.  Checks with ``at`` (and every ``stream`` and ``recovers`` check) run on
  the timeline too, concurrently, each starting at its time;
- ``after_check = N``: between checks, right after sequential check ``N`` (a
  check without ``at``).  Sequential checks run after the timeline, in file order.

Flow of ``parse_events`` (called by ``scenario.py`` once sites and checks are
known): 1. each table against its kind's schema (``l2bridge.core.schema``: one
wording for every mistake)  2. its target exists (site, pair of sites, host)
3. its anchor: exactly one of ``at`` and ``after_check``; ``at`` is never in the
past (before 0, when the lab comes up); ``after_check`` names a sequential check
4. ``simulate``: the events in the order they will run, each target's state
followed through them, so an event that contradicts another at the same time,
or the state it finds (a link brought up that is not down, a stopped gateway
reloaded), is refused before anything is built.

Invariants guaranteed to the runner (``netns/checks/timeline.py``):
- every event names existing nodes and applies to the state it finds;
- no two timeline events act on one target at one time;
- an impair event leaves a consistent link (jitter <= delay, reordering only
  with a delay); a link whose events set a delay, jitter or reordering gets the
  relay from the start (``Scenario.link``);
- a reload event's ``l2bridge`` keys are ones the daemon changes live.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from l2bridge.core import schema
from l2bridge.core.reload import LIVE_SITE_KEYS
from l2bridge.core.schema import Checker, Param, format_number

TIMELINE_MAX_S = 3600.0
STREAM_TAIL_S = 3.0  # a stream without ``seconds`` runs until this long after the last event
STREAM_MIN_S = 2.0
STREAM_TIMEOUT_SLACK_S = 20.0  # a stream's default timeout: its seconds + this
RECOVERS_SLACK_S = 5.0  # a recovers check's default timeout: within_s + this
DEFAULT_INTERVAL_MS = 100.0

# What each kind of event acts on (its target) and the keys it takes.
LINK_KINDS = ("link_down", "link_up")
PATH_KINDS = ("partition", "heal")
GATEWAY_KINDS = ("kill", "stop", "continue", "restart", "reload")
HOST_KINDS = ("host_down", "host_up")
LAN_KINDS = ("lan_down", "lan_up")
IMPAIR_KEYS = ("loss_percent", "duplicate_percent", "delay_ms", "jitter_ms", "reorder_percent",
               "rate_mbit", "mtu", "block_udp")
MAX_READDRESSES = 200  # per site: each one takes the next host address of its /24 (.3, .4, ...)
RELAY_KEYS = ("delay_ms", "jitter_ms", "reorder_percent")
L2BRIDGE_ONLY = ("stop", "continue", "reload")  # kinds that need an l2bridge process

# The daemon's [site] keys a reload may change: the live fields, as written in the file.
RELOADABLE = LIVE_SITE_KEYS


class EventProblem(Exception):
    """A rule an event breaks: ``key`` (relative to the event) and the message."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


@dataclass(frozen=True, slots=True)
class Event:
    """One validated event (see the module doc)."""

    index: int
    kind: str
    name: str
    at: float | None  # seconds on the timeline; None: between checks
    after_check: int | None
    site: str | None = None  # link, impair, gateway and a site's LAN events
    sites: tuple[str, ...] = ()  # partition, heal
    host: str | None = None  # host events, a host's LAN link
    changes: Mapping[str, Any] = field(default_factory=dict)  # impair: link keys; reload: daemon
    via: str = "control"  # reload: "control" (l2bridge reload) or "sighup"

    @property
    def target(self) -> str:
        """What the event acts on, in words (two events on one target at one time clash)."""
        if self.kind in LINK_KINDS or self.kind == "impair":
            return f"{self.site}'s WAN link"
        if self.kind == "readdress":
            return f"{self.site}'s public address"
        if self.kind in PATH_KINDS:
            return f"the path {self.sites[0]} ↔ {self.sites[1]}"
        if self.kind in GATEWAY_KINDS:
            return f"{self.site}'s gateway"
        if self.kind in HOST_KINDS:
            return f"host {self.host}"
        if self.host is not None:
            return f"{self.host}'s LAN link"
        return f"{self.site}'s LAN link to its gateway"

    @property
    def when(self) -> str:
        if self.at is not None:
            return f"at {format_number(self.at)} s"
        return f"after check[{self.after_check}]"


def _default_name(kind: str, site: str | None, sites: Sequence[str], host: str | None,
                  changes: Mapping[str, Any]) -> str:
    if kind in PATH_KINDS:
        return f"{kind} {sites[0]} ↔ {sites[1]}"
    if kind == "impair":
        shown = ", ".join(f"{k} {schema.show(v)}" for k, v in changes.items())
        return f"impair {site}: {shown}"
    if kind == "reload":
        shown = ", ".join(f"{k} = {v!r}" for k, v in changes.items())
        return f"reload {site}" + (f" ({shown})" if shown else "")
    return f"{kind} {host or site}"


# ---------------------------------------------------------------- schemas

# Every check parameter naming a host is this one object (scenario.py finds them by it).
HOST_REF = schema.string('a host reference "site.host"')
_SITE = schema.string("a site name")
_HOST = HOST_REF
_IMPAIR: dict[str, Param] = {
    "loss_percent": schema.number(0, 100, None),
    "duplicate_percent": schema.number(0, 100, None),
    "delay_ms": schema.number(0, 10_000, None, unit="milliseconds"),
    "jitter_ms": schema.number(0, 10_000, None, unit="milliseconds"),
    "reorder_percent": schema.number(0, 100, None),
    "rate_mbit": schema.number(0, 10_000, None, unit="Mbit/s (0: unlimited)"),
    "mtu": schema.integer(576, 9000, None),
    "block_udp": schema.boolean(None),
}
EVENT_SCHEMAS: dict[str, dict[str, Param]] = {
    "link_down": {"site": _SITE},
    "link_up": {"site": _SITE},
    "partition": {"sites": schema.strings(of="two site names", min_items=2)},
    "heal": {"sites": schema.strings(of="two site names", min_items=2)},
    "impair": {"site": _SITE, **_IMPAIR},
    "readdress": {"site": _SITE},
    "kill": {"site": _SITE},
    "stop": {"site": _SITE},
    "continue": {"site": _SITE},
    "restart": {"site": _SITE},
    "reload": {"site": _SITE, "l2bridge": schema.table(None, {}),
               "via": schema.choice(("control", "sighup"), "control")},
    "host_down": {"host": _HOST},
    "host_up": {"host": _HOST},
    "lan_down": {"site": schema.string("a site name", None),
                 "host": schema.string('a host reference "site.host"', None)},
    "lan_up": {"site": schema.string("a site name", None),
               "host": schema.string('a host reference "site.host"', None)},
}
EVENT_KIND = schema.choice(tuple(EVENT_SCHEMAS))
_COMMON_EVENT: dict[str, Param] = {
    "kind": EVENT_KIND,
    "name": schema.string(default=None),
    "at": schema.number(-TIMELINE_MAX_S, TIMELINE_MAX_S, None, unit="seconds"),
    "after_check": schema.integer(0, 100_000, None),
}

# Check kinds that live on the timeline (scenario.py merges them into its own).
TIMELINE_CHECK_SCHEMAS: dict[str, dict[str, Param]] = {
    "stream": {
        "from": HOST_REF,
        "to": HOST_REF,
        "tool": schema.choice(("ping", "iperf3"), "ping"),
        "seconds": schema.number(0.5, TIMELINE_MAX_S, None, unit="seconds"),
        "interval_ms": schema.number(10, 1000, DEFAULT_INTERVAL_MS, unit="milliseconds"),
        "max_outage_s": schema.number(0, TIMELINE_MAX_S, None, unit="seconds"),
        "max_lost_percent": schema.number(0, 100, None),
        "min_mbit_s": schema.number(0, 1_000_000, None),
        "udp": schema.boolean(True),
        "bitrate": schema.string(default="10M"),
        "ipv6": schema.boolean(False),
    },
    "recovers": {
        "event": schema.integer(0, 100_000),
        "from": HOST_REF,
        "to": HOST_REF,
        "within_s": schema.number(0.1, 600, 5.0, unit="seconds"),
        "interval_ms": schema.number(10, 1000, DEFAULT_INTERVAL_MS, unit="milliseconds"),
    },
}
TIMELINE_CHECK_TIMEOUT_S = {"stream": 60.0, "recovers": 30.0}  # replaced per check, below


# ---------------------------------------------------------------- parsing


def parse_events(checker: Checker, tables: list[Any], *, sites: Sequence[str],
                 hosts: Sequence[str], check_at: Sequence[float | None],
                 links: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[Event, ...]:
    """Validate ``[[event]]`` (module doc); ``check_at`` is each check's ``at`` (None:
    sequential).  Raises the checker's error naming the key."""
    events = []
    for i, raw in enumerate(tables):
        key = f"event[{i}]"
        kind = checker.get(raw, key, "kind", EVENT_KIND) if isinstance(raw, Mapping) else None
        if kind is None:
            checker.table(raw, key, _COMMON_EVENT)  # words the wrong type
            raise AssertionError("unreachable")
        t = checker.table(raw, key, {**_COMMON_EVENT, **EVENT_SCHEMAS[kind]})
        try:
            events.append(_event(i, kind, t, sites, hosts, check_at))
        except EventProblem as p:
            raise checker.fail(f"{key}.{p.key}" if p.key else key, p.message) from None
    events_t = tuple(events)
    try:
        simulate(events_t, links)
    except EventProblem as p:
        raise checker.fail(p.key, p.message) from None
    return events_t


def _event(i: int, kind: str, t: Mapping[str, Any], sites: Sequence[str], hosts: Sequence[str],
           check_at: Sequence[float | None]) -> Event:
    at, after = t["at"], t["after_check"]
    if (at is None) == (after is None):
        raise EventProblem("", 'give exactly one of "at" (seconds on the timeline, from when '
                               'the lab is up) or "after_check" (a check index)')
    if at is not None and at < 0:
        raise EventProblem("at", f"{format_number(at)} s is in the past: the timeline starts at "
                                 "0 s, when the lab is up (expected at >= 0)")
    if after is not None:
        if after >= len(check_at):
            raise EventProblem("after_check", f"no check[{after}] (the scenario has "
                                              f"{len(check_at)} checks)")
        if check_at[after] is not None:
            raise EventProblem("after_check", f"check[{after}] runs on the timeline (it has "
                                              '"at" or is a stream); give this event an "at"')

    def site_ok(name: str, key: str = "site") -> str:
        if name not in sites:
            raise EventProblem(key, f'no site "{name}" (one of: {", ".join(sorted(sites))})')
        return name

    def host_ok(ref: str) -> str:
        if ref not in hosts:
            raise EventProblem("host", f'no host "{ref}" (expected "site.host", one of: '
                                       f'{", ".join(sorted(hosts))})')
        return ref

    site = host = None
    pair: tuple[str, ...] = ()
    changes: dict[str, Any] = {}
    if kind in PATH_KINDS:
        if len(t["sites"]) != 2 or t["sites"][0] == t["sites"][1]:
            raise EventProblem("sites", f"expected two different site names, found "
                                        f"{schema.show(t['sites'])}")
        pair = tuple(site_ok(s, "sites") for s in t["sites"])
    elif kind in HOST_KINDS:
        host = host_ok(t["host"])
    elif kind in LAN_KINDS:
        if (t["site"] is None) == (t["host"] is None):
            raise EventProblem("", 'give exactly one of "site" (the link from its LAN switch to '
                                   'its gateway) or "host" (that host\'s switch port)')
        site = site_ok(t["site"]) if t["site"] is not None else None
        host = host_ok(t["host"]) if t["host"] is not None else None
    else:
        site = site_ok(t["site"])
    if kind == "impair":
        changes = {k: t[k] for k in IMPAIR_KEYS if t[k] is not None}
        if not changes:
            raise EventProblem("", "an impair event changes at least one of "
                                   + ", ".join(IMPAIR_KEYS))
    if kind == "reload":
        changes = dict(t["l2bridge"])
        for k in changes:
            if k not in RELOADABLE:
                raise EventProblem(f"l2bridge.{k}", f'the daemon cannot change "{k}" while it '
                                   f"runs (reloadable: {', '.join(RELOADABLE)})")
    name = t["name"] or _default_name(kind, site, pair, host, changes)
    return Event(index=i, kind=kind, name=name, at=at, after_check=after, site=site, sites=pair,
                 host=host, changes=changes, via=t.get("via") or "control")


# ---------------------------------------------------------------- simulation


def run_order(events: Sequence[Event]) -> list[Event]:
    """The order events run in: the timeline by time (then file order), then the ones
    between checks by check (then file order)."""
    timed = sorted((e for e in events if e.at is not None), key=lambda e: (e.at, e.index))
    between = sorted((e for e in events if e.at is None),
                     key=lambda e: (e.after_check, e.index))
    return timed + between


_NEEDS: dict[str, tuple[str, str, str]] = {
    # kind: (state it needs, state it leaves, the words for the state it needs)
    "link_down": ("up", "down", "up"),
    "link_up": ("down", "up", "down"),
    "partition": ("joined", "cut", "joined"),
    "heal": ("cut", "joined", "partitioned"),
    "host_down": ("up", "down", "up"),
    "host_up": ("down", "up", "down"),
    "lan_down": ("up", "down", "up"),
    "lan_up": ("down", "up", "down"),
    "stop": ("running", "stopped", "running"),
    "continue": ("stopped", "running", "stopped (SIGSTOP)"),
    "reload": ("running", "running", "running"),
}
_INITIAL = {"link": "up", "path": "joined", "host": "up", "lan": "up", "gateway": "running"}


def _state_key(e: Event) -> tuple[str, str]:
    if e.kind in LINK_KINDS:
        return "link", e.site or ""
    if e.kind in PATH_KINDS:
        return "path", "|".join(sorted(e.sites))
    if e.kind in HOST_KINDS:
        return "host", e.host or ""
    if e.kind in LAN_KINDS:
        return "lan", e.host or f"{e.site}.gw"
    if e.kind in GATEWAY_KINDS:
        return "gateway", e.site or ""
    if e.kind == "readdress":
        return "address", e.site or ""
    return "impair", e.site or ""


def simulate(events: Sequence[Event], links: Mapping[str, Mapping[str, Any]] | None = None
             ) -> None:
    """Follow every target's state through the events in run order (module doc, step 4).

    ``links``: each site's link as built (``Link`` fields), so an impair event is
    judged on the link it finds: jitter never above the delay, reordering only
    with a delay."""
    current = {site: dict(values) for site, values in (links or {}).items()}
    state: dict[tuple[str, str], str] = {}
    last: dict[tuple[str, str], Event] = {}
    at_time: dict[tuple[str, float], Event] = {}
    for e in run_order(events):
        key = f"event[{e.index}]"
        if e.at is not None:
            other = at_time.setdefault((e.target, e.at), e)
            if other is not e:
                raise EventProblem(f"{key}.at", f"event[{other.index}] ({other.name}) also acts "
                                   f"on {e.target} at {format_number(e.at)} s; two events on one "
                                   "target at one time contradict each other (move one)")
        skey = _state_key(e)
        now = state.get(skey, _INITIAL.get(skey[0], ""))
        if e.kind in _NEEDS:
            need, leaves, words = _NEEDS[e.kind]
            if now != need:
                before = last.get(skey)
                why = (f"event[{before.index}] ({before.name}, {before.when}) left it {now}"
                       if before is not None else f"it is {now} from the start")
                raise EventProblem(key, f"{e.name} {e.when} needs {e.target} {words}, but {why}")
            state[skey] = leaves
        elif e.kind == "kill":
            if now == "killed":
                before = last[skey]
                raise EventProblem(key, f"{e.name} {e.when}: {e.target} is not running "
                                   f"(event[{before.index}] ({before.name}, {before.when}) "
                                   "killed it; restart it first)")
            state[skey] = "killed"
        elif e.kind == "restart":
            state[skey] = "running"
        elif e.kind == "readdress":
            moves = int(state.get(skey) or 0) + 1
            if moves > MAX_READDRESSES:
                raise EventProblem(key, f"{e.name} {e.when} would be the {moves}th readdress of "
                                   f"{e.site}; its /24 holds at most {MAX_READDRESSES}")
            state[skey] = str(moves)
        elif e.kind == "impair" and e.site in current:
            link = current[e.site]
            link.update(e.changes)
            if link.get("jitter_ms", 0) > link.get("delay_ms", 0):
                raise EventProblem(key, f"{e.name} {e.when} leaves {e.target} with jitter "
                                   f"{format_number(link['jitter_ms'])} ms above its delay "
                                   f"{format_number(link['delay_ms'])} ms (expected jitter_ms "
                                   "<= delay_ms)")
            if link.get("reorder_percent", 0) and not link.get("delay_ms", 0):
                raise EventProblem(key, f"{e.name} {e.when} leaves {e.target} reordering "
                                   "without a delay to overtake (set delay_ms > 0)")
        last[skey] = e


def impaired_sites(events: Sequence[Event], keys: Sequence[str] = RELAY_KEYS) -> set[str]:
    """Sites whose link an impair event changes in one of ``keys`` (default: the relay's)."""
    return {e.site for e in events if e.kind == "impair" and e.site is not None
            and any(k in e.changes for k in keys)}


def timeline_end(events: Sequence[Event]) -> float:
    """The time of the last timeline event (0 when there is none)."""
    return max((e.at for e in events if e.at is not None), default=0.0)


def stream_seconds(at: float, seconds: float | None, events: Sequence[Event]) -> float:
    """A stream's length: as given, else until ``STREAM_TAIL_S`` after the last event."""
    if seconds is not None:
        return seconds
    return max(STREAM_MIN_S, timeline_end(events) + STREAM_TAIL_S - at)
