"""Pytest plugin: the ``test_hosts`` fixture (network-namespace test hosts).

Wire it with ``pytest_plugins = ["tests.system.conftest_netns"]`` in the root conftest (the
repository root must be importable, e.g. ``pythonpath = ["."]`` in the pytest options).

``test_hosts`` yields a set-up :class:`testrigs.netns.NetnsHarness` with 3 hosts; ask for another
count with indirect parametrization::

    @pytest.mark.parametrize("test_hosts", [2], indirect=True)
    def test_x(test_hosts: NetnsHarness) -> None: ...

It skips (with the reason) when not root or when ``ip netns`` / Linux bridges don't work, and
tears everything down afterwards: processes it started, then its namespaces.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testrigs.netns import NetnsHarness, netns_unavailable_reason

_DEFAULT_HOSTS = 3


@pytest.fixture
def test_hosts(request: pytest.FixtureRequest) -> Iterator[NetnsHarness]:
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    n_hosts = int(getattr(request, "param", _DEFAULT_HOSTS))
    harness = NetnsHarness(n_hosts)
    harness.setup()
    try:
        yield harness
    finally:
        harness.teardown()
