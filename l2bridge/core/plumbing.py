"""What to do when the site's plumbing changes under it (pure: no netlink, no trio).

The site runs beside a Linux bridge, its tap and the LAN NICs, all of which an
admin or another program can delete or change while it runs.  The watcher
(``netctl.PlumbingWatch``) observes them (on every link event and every few
seconds) and asks ``decide`` what to do; this module holds the rules:

  bridge deleted, l2bridge created it   -> create it again (with its marker), re-attach
                                           the tap and the NICs
  bridge deleted, it was the admin's    -> stop (exit status 1): l2bridge cannot know how
                                           to rebuild it; a supervisor restarts the site,
                                           which then creates one
  bridge replaced by a non-bridge link  -> stop
  bridge down, l2bridge created it      -> bring it up again; the admin's: say so
  tap deleted                           -> stop: the frames of every worker go through
                                           queues of that device (a restart opens a new one)
  tap left the bridge, or went down     -> attach it / bring it up again
  NIC deleted (unplugged)               -> say so and keep running: other NICs and the
                                           other sites still work; re-attached when it
                                           comes back (same name)
  NIC left the bridge                   -> attach it again (the config says it belongs)
  NIC went down                         -> say so; an admin's choice, left alone

Each change is said once, when it is seen (``before`` is the previous
observation); a repair is logged by the watcher with its reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class LinkView:
    """One observed network interface."""

    index: int
    kind: str | None  # "bridge", "tun", "veth", ... (None: a plain device)
    master: int  # ifindex of its master (bridge), 0 when none
    up: bool  # administratively up (IFF_UP)


Observed = Mapping[str, LinkView | None]  # by interface name; None: it does not exist


@dataclass(frozen=True, slots=True)
class Expected:
    """What the site set up and wants to stay."""

    bridge: str
    tap: str
    interfaces: tuple[str, ...]
    created: bool  # the bridge is l2bridge's (created by it, or marked by a killed one)


@dataclass(frozen=True, slots=True)
class Repair:
    """One change to make: ``action`` is "create_bridge", "attach" or "up"."""

    action: str
    name: str
    reason: str | None  # the log line; None when another repair's line covers it


@dataclass(slots=True)
class Decision:
    repairs: list[Repair] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # changes said but not repaired
    fatal: str | None = None  # stop the site with this line


def decide(expected: Expected, before: Observed | None, now: Observed) -> Decision:
    """The repairs, notes or fatal stop for observation ``now`` (``before``: the last one)."""
    out = Decision()
    b = expected.bridge
    bridge = now.get(b)
    if bridge is not None and bridge.kind != "bridge":
        out.fatal = (f'bridge "{b}" was replaced by a {bridge.kind or "plain"} link of the same '
                     "name: the LAN is cut; stopping so that a supervisor restarts the site")
        return out
    tap = now.get(expected.tap)
    if tap is None:
        out.fatal = (f'tap "{expected.tap}" was deleted: this site cannot carry frames without '
                     "it; stopping so that a supervisor restarts the site")
        return out
    bridge_index = bridge.index if bridge is not None else -1
    if bridge is None:
        if not expected.created:
            out.fatal = (f'bridge "{b}" was deleted; l2bridge did not create it and cannot '
                         "rebuild it: the LAN is cut; stopping so that a supervisor restarts "
                         "the site")
            return out
        ports = [expected.tap, *(n for n in expected.interfaces if now.get(n) is not None)]
        out.repairs.append(Repair(
            "create_bridge", b,
            f'bridge "{b}" was deleted; l2bridge created it, so it is created again and '
            f"{', '.join(ports)} re-attached"))
    elif not bridge.up:
        if expected.created:
            out.repairs.append(Repair("up", b, f'bridge "{b}" was set down; brought it up again'))
        elif before is None or _was_up(before, b):
            out.notes.append(f'bridge "{b}" was set down (not by l2bridge): the LAN is cut '
                             "until it is up again")
    if tap.master != bridge_index:
        reason = None if bridge is None else (
            f'tap "{expected.tap}" left bridge "{b}"; attached it again')
        out.repairs.append(Repair("attach", expected.tap, reason))
    if not tap.up:
        out.repairs.append(Repair("up", expected.tap,
                                  f'tap "{expected.tap}" was set down; brought it up again'))
    for name in expected.interfaces:
        nic = now.get(name)
        if nic is None:
            if _had(before, name):
                out.notes.append(f'interface "{name}" disappeared: the LAN behind it is cut; '
                                 "it is attached again when it comes back")
            continue
        if nic.master != bridge_index:
            if bridge is None:
                reason = None
            elif not _had(before, name):
                reason = f'interface "{name}" is back; attached it to bridge "{b}" again'
            else:
                reason = f'interface "{name}" left bridge "{b}"; attached it again'
            out.repairs.append(Repair("attach", name, reason))
        if not nic.up and (before is None or _was_up(before, name)):
            out.notes.append(f'interface "{name}" was set down: the LAN behind it is cut '
                             "until it is up again")
    return out


def _had(before: Observed | None, name: str) -> bool:
    return before is None or before.get(name) is not None


def _was_up(before: Observed, name: str) -> bool:
    view = before.get(name)
    return view is not None and view.up


def status(expected: Expected, now: Observed) -> dict:
    """What ``l2bridge show`` says about the plumbing: what is, not what was configured."""
    bridge = now.get(expected.bridge)
    index = bridge.index if bridge is not None and bridge.kind == "bridge" else -1

    def port(name: str) -> dict:
        view = now.get(name)
        return {
            "name": name,
            "present": view is not None,
            "attached": view is not None and view.master == index,
            "up": view is not None and view.up,
        }

    return {
        "bridge": {
            "name": expected.bridge,
            "present": index >= 0,
            "up": bridge is not None and bridge.up,
            "created_by_l2bridge": expected.created,
        },
        "tap": port(expected.tap),
        "interfaces": [port(name) for name in expected.interfaces],
    }
