"""The plumbing rules (``l2bridge.core.plumbing.decide``), one case each, no kernel needed."""

from __future__ import annotations

from l2bridge.core.plumbing import Expected, LinkView, Repair, decide, status

BR, TAP, NIC = 10, 11, 12
OURS = Expected("br0", "l2b0", ("eth1",), created=True)
ADMINS = Expected("br0", "l2b0", ("eth1",), created=False)


def healthy(**changes: LinkView | None) -> dict[str, LinkView | None]:
    view: dict[str, LinkView | None] = {
        "br0": LinkView(BR, "bridge", 0, True),
        "l2b0": LinkView(TAP, "tun", BR, True),
        "eth1": LinkView(NIC, "veth", BR, True),
    }
    view.update(changes)
    return view


def test_nothing_to_do_when_all_is_as_set_up() -> None:
    d = decide(OURS, healthy(), healthy())
    assert (d.repairs, d.notes, d.fatal) == ([], [], None)


def test_its_own_bridge_deleted_is_rebuilt_in_one_line() -> None:
    now = healthy(br0=None, l2b0=LinkView(TAP, "tun", 0, True), eth1=LinkView(NIC, "veth", 0, True))
    d = decide(OURS, healthy(), now)
    assert d.fatal is None
    assert [r.action for r in d.repairs] == ["create_bridge", "attach", "attach"]
    assert [r.reason is not None for r in d.repairs] == [True, False, False]
    assert "l2b0, eth1 re-attached" in d.repairs[0].reason  # type: ignore[operator]


def test_the_admins_bridge_deleted_is_fatal() -> None:
    d = decide(ADMINS, healthy(), healthy(br0=None))
    assert d.fatal is not None and "did not create it" in d.fatal


def test_a_bridge_replaced_by_another_kind_is_fatal() -> None:
    d = decide(OURS, healthy(), healthy(br0=LinkView(BR + 5, "dummy", 0, True)))
    assert d.fatal is not None and "replaced by a dummy link" in d.fatal


def test_the_tap_deleted_is_fatal() -> None:
    d = decide(OURS, healthy(), healthy(l2b0=None))
    assert d.fatal is not None and 'tap "l2b0" was deleted' in d.fatal


def test_tap_detached_and_down_are_repaired() -> None:
    d = decide(OURS, healthy(), healthy(l2b0=LinkView(TAP, "tun", 0, False)))
    assert d.repairs == [
        Repair("attach", "l2b0", 'tap "l2b0" left bridge "br0"; attached it again'),
        Repair("up", "l2b0", 'tap "l2b0" was set down; brought it up again'),
    ]


def test_a_nic_gone_is_said_once_and_reattached_when_back() -> None:
    gone = healthy(eth1=None)
    first = decide(OURS, healthy(), gone)
    assert first.repairs == [] and len(first.notes) == 1 and "disappeared" in first.notes[0]
    assert decide(OURS, gone, gone).notes == []  # said once
    back = healthy(eth1=LinkView(NIC + 7, "veth", 0, True))
    d = decide(OURS, gone, back)
    assert d.repairs == [Repair("attach", "eth1",
                                'interface "eth1" is back; attached it to bridge "br0" again')]


def test_a_nic_set_down_is_said_not_fought() -> None:
    down = healthy(eth1=LinkView(NIC, "veth", BR, False))
    d = decide(OURS, healthy(), down)
    assert d.repairs == [] and "was set down" in d.notes[0]
    assert decide(OURS, down, down).notes == []


def test_a_bridge_set_down_is_raised_only_when_ours() -> None:
    down = healthy(br0=LinkView(BR, "bridge", 0, False))
    assert decide(OURS, healthy(), down).repairs == [
        Repair("up", "br0", 'bridge "br0" was set down; brought it up again')]
    admins = decide(ADMINS, healthy(), down)
    assert admins.repairs == [] and "not by l2bridge" in admins.notes[0]


def test_status_reports_what_is_not_what_was_configured() -> None:
    view = status(OURS, healthy(eth1=None, l2b0=LinkView(TAP, "tun", 0, True)))
    assert view["bridge"] == {"name": "br0", "present": True, "up": True,
                              "created_by_l2bridge": True}
    assert view["tap"] == {"name": "l2b0", "present": True, "attached": False, "up": True}
    assert view["interfaces"] == [{"name": "eth1", "present": False, "attached": False,
                                   "up": False}]
