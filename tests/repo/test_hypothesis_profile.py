"""The suite's hypothesis profile (conftest.py): no verdict depends on the machine's speed."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings


def effective_settings(item: pytest.Item) -> settings | None:
    """The settings a collected hypothesis test runs with; None for other tests."""
    found = getattr(getattr(item, "obj", None), "_hypothesis_internal_use_settings", None)
    if isinstance(found, settings):
        return found
    found = getattr(getattr(item, "cls", None), "settings", None)  # a state machine's TestCase
    return found if isinstance(found, settings) else None


def assert_speed_independent(s: settings, what: str) -> None:
    assert s.deadline is None, f"{what}: deadline {s.deadline}"
    assert HealthCheck.too_slow in s.suppress_health_check, what
    # The health checks that do not measure time stay on.
    assert HealthCheck.filter_too_much not in s.suppress_health_check, what
    assert HealthCheck.data_too_large not in s.suppress_health_check, what


def test_the_default_settings_have_no_deadline_and_no_too_slow_check() -> None:
    assert_speed_independent(settings.default, "settings.default")


def test_no_hypothesis_test_of_this_run_brings_a_time_limit_back(
    request: pytest.FixtureRequest,
) -> None:
    # Per-test @settings(...) inherit from the loaded profile; none may set a deadline
    # or drop the too_slow suppression.  Checks every hypothesis test collected with
    # this one (the whole suite in a full run).
    for item in request.session.items:
        found = effective_settings(item)
        if found is not None:
            assert_speed_independent(found, item.nodeid)
