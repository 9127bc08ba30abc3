"""pytest plugin: bring a lab scenario up inside a test, act on it, assert on it.

    async def test_offices(lab_scenario):
        lab = await lab_scenario("scenarios/two-offices.toml", gateway="vxlan", wan_mtu=1550)
        result = await lab.check("ping", from_="london.h1", to="berlin.h1")
        assert result.ok, result.summary
        assert (await lab.show("london"))["peers"][0]["state"] == "up"

Every lab a test brings up is torn down when the test ends, whatever happened.
Tests using the fixture are skipped (with the reason) when not run as root.
``--lab-gateway l2bridge|vxlan`` overrides the gateway of every lab whose test did
not choose one.  Registered as the ``l2bridge_lab`` pytest11 entry point; load it
with ``pytest_plugins = ["netns.pytest_plugin"]`` when the package is not installed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from netns.describe.scenario import GATEWAY_MODES, Scenario
from netns.lab import Lab, open_lab

LabFactory = Callable[..., Awaitable[Lab]]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("l2bridge-lab")
    group.addoption("--lab-gateway", choices=GATEWAY_MODES, default=None,
                    help="gateway mode for labs whose test does not choose one")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "netns: needs root, network namespaces and real devices")


def need_root() -> None:
    """Skip the calling test unless it runs as root."""
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces, veths, bridges)")


@pytest.fixture
async def lab_scenario(request: pytest.FixtureRequest) -> AsyncIterator[LabFactory]:
    """A factory: ``await lab_scenario(path_or_scenario, **open_lab options) -> Lab``."""
    need_root()
    default_gateway = request.config.getoption("--lab-gateway", default=None)
    async with contextlib.AsyncExitStack() as stack:

        async def factory(scenario: Scenario | str, **options: Any) -> Lab:
            if options.get("gateway") is None:
                options["gateway"] = default_gateway
            return await stack.enter_async_context(open_lab(scenario, **options))

        yield factory
