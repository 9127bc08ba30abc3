"""Fixtures of the fake-network tests: three sites' keys and a lab on one FakeNetwork."""

from __future__ import annotations

import pytest
from fakesites import Lab, SiteKeys


@pytest.fixture
def sites():
    return SiteKeys("a"), SiteKeys("b"), SiteKeys("c")


@pytest.fixture
async def lab(nursery):
    lab = Lab(nursery)
    yield lab
    nursery.cancel_scope.cancel()

