"""Fixtures for the reliability and security suites (see testrigs/daemon_rig.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testrigs.daemon_rig import TOKEN, Findings, Rig
from testrigs.gitserver import GitServer, HttpGitServer, Operator


@pytest.fixture
def findings(request: pytest.FixtureRequest) -> Iterator[Findings]:
    """What the test measured; written to $RECONCILER_RELIABILITY_RESULTS at teardown
    (also when the test fails: the report shows what was seen)."""
    f = Findings(test=request.node.nodeid)
    yield f
    f.write()


@pytest.fixture
def make_rig(tmp_path: Path, git_server_factory: Callable[..., GitServer],
             make_operator: Callable[..., Operator]) -> Iterator[Callable[..., Rig]]:
    """make_rig(**kw) -> a Rig on a private token-protected HTTP git server."""
    rigs: list[Rig] = []

    def make(**kw: object) -> Rig:
        server = git_server_factory("http", token=TOKEN)
        assert isinstance(server, HttpGitServer)
        op = make_operator(
            server, push_config=(f"http.extraHeader=Authorization: Bearer {TOKEN}",)
        )
        root = tmp_path / f"rig{len(rigs)}"
        root.mkdir()
        rig = Rig(root, server, op, **kw)  # type: ignore[arg-type]
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()
