"""One clear cause out of trio's exception groups."""

from __future__ import annotations

from l2bridge.errors import sole_cause


def test_single_member_groups_unwrap_to_their_error() -> None:
    error = ValueError("bad")
    assert sole_cause(ExceptionGroup("outer", [ExceptionGroup("inner", [error])])) is error
    assert sole_cause(error) is error


def test_several_errors_of_one_type_count_as_the_first() -> None:
    first, second = OSError("worker 1"), OSError("worker 2")
    assert sole_cause(ExceptionGroup("g", [first, ExceptionGroup("h", [second])])) is first


def test_errors_of_different_types_stay_a_group() -> None:
    group = ExceptionGroup("g", [OSError("a"), ValueError("b")])
    assert sole_cause(group) is group


def test_several_l2bridge_errors_count_as_the_first() -> None:
    from l2bridge.errors import L2bridgeError, PeerError

    first = L2bridgeError('tap "l2b0" was deleted')
    assert sole_cause(ExceptionGroup("g", [first, PeerError("other")])) is first
