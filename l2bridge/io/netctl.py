"""Attach the tap and the LAN interfaces to a Linux bridge, and undo exactly that.

Setup flow (``BridgePlumbing.setup``), every change through rtnetlink (pyroute2):
  1. the namespace must exist (pyroute2 would silently create a missing one);
  2. bridge: reuse it if it exists (it must be of kind "bridge"; one carrying our
     ``marker`` alias is ours to remove), else create it with STP off and forward
     delay 0 so that new ports forward at once, and mark it;
  3. tap: set its MTU to ``mtu``, enslave it, bring it up;
  4. each interface: it must exist and have no other master; raise its MTU to ``mtu``
     when lower (a higher MTU is left alone), enslave it, bring it up;
  5. bring the bridge up.

Invariant: every change is recorded as an undo right after it succeeds, and only
changes actually made are recorded (an interface already in our bridge is not
released later; a bridge we did not create is never deleted).  A failure part-way
runs the recorded undos in reverse and re-raises; ``teardown`` runs them in
reverse too.  An undo whose object has disappeared (ENODEV, e.g. a transient tap
already closed) is logged at debug level and skipped.

The calls are synchronous and quick; the daemon calls them directly from trio.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from l2bridge.core.plumbing import Expected, LinkView, Repair
from l2bridge.errors import KernelError

log = logging.getLogger(__name__)

IFF_UP = 0x1
NETNS_RUN_DIR = "/run/netns"
MIN_MTU = 68
MAX_MTU = 65535
IFNAMSIZ = 16

_GONE = (errno.ENODEV, errno.ENOENT)

Undo = Callable[[IPRoute], None]


class NetctlError(KernelError):
    """A bridge plumbing step failed; ``str()`` is one line naming the interface,
    the namespace, the cause and the fix.  ``errno`` is set when the kernel refused.
    """


def _ename(err: int) -> str:
    return errno.errorcode.get(err, f"errno {err}")


class BridgePlumbing:
    """Bridge ``bridge`` with tap ``tap`` and ``interfaces`` in namespace ``netns``.

    Use as ``with BridgePlumbing(...) as plumb:`` or call ``setup()`` and
    ``teardown()``.  ``netns=None`` means the namespace of the calling thread.
    ``created`` tells whether the bridge is ours: setup created it (with the
    alias ``marker``), or it already carried ``marker`` - left by a killed
    l2bridge of the same site; either way it is deleted on exit.
    """

    def __init__(
        self,
        *,
        bridge: str,
        tap: str,
        interfaces: Sequence[str] = (),
        mtu: int = 1500,
        netns: str | None = None,
        marker: str | None = None,
    ) -> None:
        self.bridge = bridge
        self.marker = marker
        self.tap = tap
        self.interfaces = tuple(interfaces)
        self.mtu = mtu
        self.netns = netns
        self.created = False
        self._undos: list[tuple[str, Undo]] = []
        self._set_up = False
        self._bridge_index = 0

    # --- public ------------------------------------------------------------------

    def setup(self) -> None:
        """Perform the setup flow; on failure undo the completed steps and re-raise."""
        if self._set_up:
            raise NetctlError(f'bridge "{self.bridge}" in {self._where()}: already set up')
        self._validate()
        with self._ipr() as ipr:
            try:
                self._setup(ipr)
            except BaseException:
                self._rollback(ipr, strict=False)
                raise
        self._set_up = True

    def teardown(self) -> None:
        """Undo what setup did, in reverse.  Idempotent; a vanished object is skipped.

        Runs every undo even if one fails, then raises the first failure.
        """
        if not self._undos:
            self._set_up = False
            return
        if self.netns is not None and not os.path.exists(self._netns_path()):
            log.debug("namespace %s is gone; nothing to tear down", self.netns)
            self._undos.clear()
            self._set_up = False
            return
        with self._ipr() as ipr:
            self._rollback(ipr, strict=True)
        self._set_up = False

    def flush_fdb(self) -> None:
        """Forget every MAC the bridge learned (IFLA_BR_FDB_FLUSH): the layer-2 topology
        changed (loop protection blocked or released a tunnel), as STP flushes on a
        topology change.  A bridge that is gone is left alone (the watch repairs it)."""
        with self._ipr() as ipr:
            msg = self._get(ipr, self.bridge)
            if msg is None:
                return
            self._call(ipr, f'flushing the MAC table of bridge "{self.bridge}"',
                       "check your privileges (CAP_NET_ADMIN)", "set", index=msg["index"],
                       kind="bridge", br_fdb_flush=1)

    def __enter__(self) -> BridgePlumbing:
        self.setup()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.teardown()

    # --- setup steps ---------------------------------------------------------------

    def _setup(self, ipr: IPRoute) -> None:
        # 2. the bridge
        msg = self._get(ipr, self.bridge)
        if msg is None:
            msg = self._create_bridge(ipr)
        else:
            kind = _kind(msg)
            if kind != "bridge":
                raise NetctlError(
                    f'"{self.bridge}" in {self._where()} exists but is a '
                    f"{kind or 'plain'} link, not a bridge (EEXIST): choose another bridge "
                    f'name or delete "{self.bridge}"',
                    errno.EEXIST,
                )
            if self.marker is not None and msg.get_attr("IFLA_IFALIAS") == self.marker:
                # Left by a killed l2bridge of this site: ours to remove, not the admin's.
                log.info('bridge "%s" carries the marker "%s": left by an earlier run of '
                         "this site; it is removed on exit", self.bridge, self.marker)
                self.created = True
                found_index = msg["index"]
                self._push(f'delete bridge "{self.bridge}"',
                           lambda r: r.link("del", index=found_index))
        self._bridge_index = msg["index"]
        bridge_up = bool(msg["flags"] & IFF_UP)

        # 3. the tap (MTU always follows `mtu`)
        tap = self._get(ipr, self.tap)
        if tap is None:
            raise NetctlError(
                f'tap "{self.tap}" not found in {self._where()} (ENODEV): open the tap '
                "before attaching it to the bridge",
                errno.ENODEV,
            )
        self._attach_port(ipr, tap, "tap", force_mtu=True)

        # 4. the LAN interfaces (MTU only raised)
        for name in self.interfaces:
            port = self._get(ipr, name)
            if port is None:
                raise NetctlError(
                    f'interface "{name}" not found in {self._where()} (ENODEV): check the '
                    "name in the configuration, or create the interface first",
                    errno.ENODEV,
                )
            self._attach_port(ipr, port, "interface", force_mtu=False)

        # 5. the bridge up
        if not bridge_up:
            index = self._bridge_index
            self._call(
                ipr,
                f'bringing bridge "{self.bridge}" up',
                "check the bridge",
                "set",
                index=index,
                state="up",
            )
            if not self.created:  # a created bridge is deleted instead
                self._push(
                    f'bring bridge "{self.bridge}" down',
                    lambda r: r.link("set", index=index, state="down"),
                )

    def _create_bridge(self, ipr: IPRoute) -> Any:
        """Create the bridge (STP off, forward delay 0, our marker); record its deletion."""
        self._call(
            ipr,
            f'creating bridge "{self.bridge}"',
            "check the name, and that the bridge module is available",
            "add",
            ifname=self.bridge,
            kind="bridge",
            br_stp_state=0,
            br_forward_delay=0,
        )
        self.created = True
        msg = self._get(ipr, self.bridge)
        if msg is None:
            raise NetctlError(
                f'bridge "{self.bridge}" in {self._where()} vanished right after creation '
                "(ENODEV): check for another tool deleting links",
                errno.ENODEV,
            )
        created_index = msg["index"]
        self._push(
            f'delete bridge "{self.bridge}"',
            lambda r: r.link("del", index=created_index),
        )
        if self.marker is not None:
            self._call(ipr, f'marking bridge "{self.bridge}"', "check the bridge", "set",
                       index=created_index, ifalias=self.marker)
        return msg

    # --- watching and repairing (l2bridge.core.plumbing decides) -------------------------

    def expected(self) -> Expected:
        return Expected(self.bridge, self.tap, self.interfaces, self.created)

    def observe(self) -> dict[str, LinkView | None]:
        """The bridge, the tap and the NICs as they are now (None: missing)."""
        with self._ipr() as ipr:
            return {name: _view(self._get(ipr, name))
                    for name in (self.bridge, self.tap, *self.interfaces)}

    def repair(self, repairs: Sequence[Repair]) -> None:
        """Make the repairs ``plumbing.decide`` asked for, recording undos as setup does."""
        with self._ipr() as ipr:
            for item in repairs:
                if item.action == "create_bridge":
                    self._bridge_index = self._create_bridge(ipr)["index"]
                elif item.action == "attach":
                    msg = self._get(ipr, item.name)
                    if msg is not None:
                        tap = item.name == self.tap
                        self._attach_port(ipr, msg, "tap" if tap else "interface",
                                          force_mtu=tap)
                elif item.action == "up":
                    msg = self._get(ipr, item.name)
                    if msg is not None:
                        self._call(ipr, f'bringing "{item.name}" up', "check the device", "set",
                                   index=msg["index"], state="up")
            if any(item.action == "create_bridge" for item in repairs):
                self._call(ipr, f'bringing bridge "{self.bridge}" up', "check the bridge", "set",
                           index=self._bridge_index, state="up")

    def _attach_port(self, ipr: IPRoute, msg: Any, role: str, *, force_mtu: bool) -> None:
        """MTU, enslave, up for one port, recording an undo after each change."""
        index = msg["index"]
        name = msg.get_attr("IFLA_IFNAME")
        label = f'{role} "{name}"'
        if index == self._bridge_index:
            raise NetctlError(
                f"{label} in {self._where()} is the bridge itself: remove it from the interfaces"
            )
        master = msg.get_attr("IFLA_MASTER") or 0
        if master and master != self._bridge_index:
            other = self._name_of(ipr, master)
            raise NetctlError(
                f'{label} in {self._where()} is already enslaved to "{other}" (EBUSY): '
                f'release it ("ip link set {name} nomaster") or use "{other}" as the bridge',
                errno.EBUSY,
            )

        old_mtu = msg.get_attr("IFLA_MTU")
        if old_mtu != self.mtu and (force_mtu or old_mtu < self.mtu):
            self._call(
                ipr,
                f"setting MTU {self.mtu} on {label}",
                "choose an mtu the device supports",
                "set",
                index=index,
                mtu=self.mtu,
            )
            self._push(
                f"restore MTU {old_mtu} on {label}",
                lambda r: r.link("set", index=index, mtu=old_mtu),
            )

        if master != self._bridge_index:
            self._call(
                ipr,
                f'enslaving {label} to bridge "{self.bridge}"',
                "check that the interface can be a bridge port",
                "set",
                index=index,
                master=self._bridge_index,
            )
            self._push(
                f'release {label} from "{self.bridge}"',
                lambda r: r.link("set", index=index, master=0),
            )

        if not msg["flags"] & IFF_UP:
            self._call(
                ipr, f"bringing {label} up", "check the device", "set", index=index, state="up"
            )
            self._push(f"bring {label} down", lambda r: r.link("set", index=index, state="down"))

    # --- helpers -------------------------------------------------------------------

    def _validate(self) -> None:
        if not MIN_MTU <= self.mtu <= MAX_MTU:
            raise NetctlError(
                f'bridge "{self.bridge}": mtu {self.mtu} is out of range: use {MIN_MTU}..{MAX_MTU}'
            )
        for name in (self.bridge, self.tap, *self.interfaces):
            if not name or len(name.encode()) >= IFNAMSIZ or "/" in name:
                raise NetctlError(
                    f'interface name "{name}" is not valid: use 1 to {IFNAMSIZ - 1} bytes '
                    'without "/"'
                )
        if self.netns is not None and not os.path.exists(self._netns_path()):
            raise NetctlError(
                f'network namespace "{self.netns}" does not exist (ENOENT): create it first '
                "or fix the namespace name",
                errno.ENOENT,
            )

    def _netns_path(self) -> str:
        assert self.netns is not None
        if self.netns.startswith("/"):
            return self.netns
        return os.path.join(NETNS_RUN_DIR, self.netns)

    def _ipr(self) -> IPRoute:
        return IPRoute() if self.netns is None else IPRoute(netns=self.netns)

    def _where(self) -> str:
        return "the current namespace" if self.netns is None else f'namespace "{self.netns}"'

    def _push(self, description: str, undo: Undo) -> None:
        self._undos.append((description, undo))

    def _call(self, ipr: IPRoute, action: str, fix: str, command: str, **kwargs: Any) -> None:
        try:
            ipr.link(command, **kwargs)
        except NetlinkError as exc:
            raise NetctlError(
                f"{action} in {self._where()}: {os.strerror(exc.code)} ({_ename(exc.code)}): {fix}",
                exc.code,
            ) from None

    def _get(self, ipr: IPRoute, name: str) -> Any | None:
        try:
            return ipr.link("get", ifname=name)[0]
        except NetlinkError as exc:
            if exc.code in _GONE:
                return None
            raise NetctlError(
                f'looking up "{name}" in {self._where()}: {os.strerror(exc.code)} '
                f"({_ename(exc.code)}): check the name and your privileges (CAP_NET_ADMIN)",
                exc.code,
            ) from None

    @staticmethod
    def _name_of(ipr: IPRoute, index: int) -> str:
        try:
            return str(ipr.link("get", index=index)[0].get_attr("IFLA_IFNAME"))
        except NetlinkError:
            return f"ifindex {index}"

    def _rollback(self, ipr: IPRoute, *, strict: bool) -> None:
        """Run recorded undos newest first; skip vanished objects.

        strict: raise the first real failure after running them all (teardown);
        otherwise log it (rollback of a failed setup, whose own error wins).
        """
        first: NetctlError | None = None
        while self._undos:
            description, undo = self._undos.pop()
            try:
                undo(ipr)
            except NetlinkError as exc:
                if exc.code in _GONE:
                    log.debug("%s: already gone, skipped", description)
                    continue
                error = NetctlError(
                    f"teardown: {description} in {self._where()} failed: "
                    f"{os.strerror(exc.code)} ({_ename(exc.code)}): undo it by hand",
                    exc.code,
                )
                if strict and first is None:
                    first = error
                log.warning("%s", error)
            else:
                log.debug("%s: done", description)
        if first is not None:
            raise first


def _view(msg: Any | None) -> LinkView | None:
    if msg is None:
        return None
    return LinkView(index=msg["index"], kind=_kind(msg), master=msg.get_attr("IFLA_MASTER") or 0,
                    up=bool(msg["flags"] & IFF_UP))


def _kind(msg: Any) -> str | None:
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    if linkinfo is None:
        return None
    kind = linkinfo.get_attr("IFLA_INFO_KIND")
    return None if kind is None else str(kind)
