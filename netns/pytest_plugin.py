"""pytest plugin: bring a lab scenario up inside a test, act on it, assert on it.

    async def test_offices(lab_scenario):
        lab = await lab_scenario("scenarios/two-offices.toml", gateway="vxlan", wan_mtu=1550)
        result = await lab.check("ping", from_="london.h1", to="berlin.h1")
        assert result.ok, result.summary
        assert (await lab.show("london"))["peers"][0]["state"] == "up"

Every lab a test brings up is torn down when the test ends, whatever happened; a
SIGTERM to the test runner interrupts the test as Ctrl-C does (its labs torn down)
and ends the run.
Tests using the fixture are skipped (with the reason) when not run as root.
``--lab-gateway l2bridge|vxlan`` overrides the gateway of every lab whose test did
not choose one.  Registered as the ``l2bridge_lab`` pytest11 entry point; load it
with ``pytest_plugins = ["netns.pytest_plugin"]`` when the package is not installed.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import FrameType
from typing import Any

import pytest

from netns.describe.scenario import GATEWAY_MODES, Scenario
from netns.lab import Lab, open_lab

LabFactory = Callable[..., Awaitable[Lab]]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("l2bridge-lab")
    group.addoption("--lab-gateway", choices=GATEWAY_MODES, default=None,
                    help="gateway mode for labs whose test does not choose one")


_TERMINATED: list[int] = []  # the SIGTERM the test runner got, if it got one


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "netns: needs root, network namespaces and real devices")
    _stop_on_sigterm()


def _stop_on_sigterm() -> None:
    """SIGTERM (a CI job cancelled, ``timeout``) interrupts the test as Ctrl-C does and
    ends the run after it, so every lab's teardown runs and nothing outlives the run.

    Inside a trio test the interrupt goes through trio's own Ctrl-C handler, which
    delivers it where trio can take it: raised anywhere else it would abandon the trio
    run and every teardown in it.  For that trio needs Python's Ctrl-C handler in
    place, so a runner started with SIGINT ignored (a background job of a script) gets
    it back.  Only in the runner: a child forked from it (a preexec, a fork server)
    dies of SIGTERM as it would have, never running the runner's teardowns itself.
    """
    runner = os.getpid()
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != runner:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        _TERMINATED.append(signum)
        on_ctrl_c = signal.getsignal(signal.SIGINT)
        if callable(on_ctrl_c) and on_ctrl_c is not signal.default_int_handler:
            on_ctrl_c(signal.SIGINT, frame)  # trio's, while a trio test runs
            return
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """After a SIGTERM the run ends with the test it interrupted (its teardown done)."""
    yield
    if _TERMINATED:
        item.session.shouldstop = "SIGTERM: the test run was asked to stop"


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
