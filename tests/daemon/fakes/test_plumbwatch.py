"""The plumbing watcher against a bridge caught half-deleted (no kernel needed)."""

from __future__ import annotations

import pytest
import trio

from l2bridge.core.plumbing import Expected, LinkView
from l2bridge.io.netctl import NetctlError
from l2bridge.io.plumbwatch import PlumbingError, PlumbingWatch

BRIDGE, TAP, NIC = LinkView(1, "bridge", 0, True), LinkView(2, "tun", 1, True), \
    LinkView(3, None, 1, True)


class HalfDeleted:
    """The admin's bridge is being deleted: the first look still sees it with the NIC
    already released, and re-attaching the NIC is refused (EINVAL); the next look
    finds the bridge gone."""

    def __init__(self) -> None:
        self.looks = [
            {"br9": BRIDGE, "l2b0": TAP, "eth1": NIC},
            {"br9": BRIDGE, "l2b0": TAP, "eth1": LinkView(3, None, 0, True)},
            {"br9": None, "l2b0": LinkView(2, "tun", 0, True), "eth1": LinkView(3, None, 0, True)},
        ]
        self.repairs = 0

    def expected(self) -> Expected:
        return Expected(bridge="br9", tap="l2b0", interfaces=("eth1",), created=False)

    def observe(self) -> dict[str, LinkView | None]:
        return self.looks.pop(0) if len(self.looks) > 1 else self.looks[0]

    def repair(self, repairs: object) -> None:
        self.repairs += 1
        raise NetctlError('enslaving interface "eth1" to bridge "br9": Invalid argument (EINVAL)')


async def test_a_refused_repair_is_decided_again_and_names_the_real_cause() -> None:
    plumb = HalfDeleted()
    watch = PlumbingWatch(plumb)  # type: ignore[arg-type]
    await watch.check()  # the first look: all as expected
    with pytest.raises(PlumbingError) as info:
        with trio.fail_after(5):
            await watch.check()
    assert plumb.repairs == 1
    assert 'bridge "br9" was deleted; l2bridge did not create it' in str(info.value)


class RefusedOnce:
    """The NIC disappears and the tap leaves the bridge; re-attaching the tap is refused
    once, then done: the decision (with its note about the NIC) is made twice."""

    def __init__(self) -> None:
        self.looks = [
            {"br9": BRIDGE, "l2b0": TAP, "eth1": NIC},
            {"br9": BRIDGE, "l2b0": LinkView(2, "tun", 0, True), "eth1": None},
            {"br9": BRIDGE, "l2b0": LinkView(2, "tun", 0, True), "eth1": None},
            {"br9": BRIDGE, "l2b0": TAP, "eth1": None},
        ]
        self.repairs = 0

    def expected(self) -> Expected:
        return Expected(bridge="br9", tap="l2b0", interfaces=("eth1",), created=False)

    def observe(self) -> dict[str, LinkView | None]:
        return self.looks.pop(0) if len(self.looks) > 1 else self.looks[0]

    def repair(self, repairs: object) -> None:
        self.repairs += 1
        if self.repairs == 1:
            raise NetctlError('enslaving tap "l2b0" to bridge "br9": Device busy (EBUSY)')


async def test_a_retried_decision_says_its_notes_once(caplog: pytest.LogCaptureFixture) -> None:
    plumb = RefusedOnce()
    watch = PlumbingWatch(plumb)  # type: ignore[arg-type]
    await watch.check()
    with trio.fail_after(5):
        await watch.check()
    assert plumb.repairs == 2
    notes = [r.getMessage() for r in caplog.records if "disappeared" in r.getMessage()]
    assert notes == ['interface "eth1" disappeared: the LAN behind it is cut; '
                     "it is attached again when it comes back"]
