"""Shared pytest fixtures.

Git servers on loopback (see testrigs/gitserver.py): `git_server` is parametrized over
git smart HTTP and `git daemon`; `operator` pushes to a fresh repo on it;
`git_server_factory` starts private servers that a test may stop and restart.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest_plugins = ["tests.system.conftest_netns"]

try:
    from testrigs.gitserver import (
        GitDaemonServer,
        GitServer,
        HttpGitServer,
        Operator,
        isolated_git_env,
    )
except ImportError:  # tests/ itself is on sys.path (rootdir conftest, no __init__.py)
    from gitserver import (  # type: ignore[no-redef,import-not-found,unused-ignore]
        GitDaemonServer,
        GitServer,
        HttpGitServer,
        Operator,
        isolated_git_env,
    )

_names = itertools.count()


@pytest.fixture(scope="session")
def git_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for operator and server git processes: isolated config, no prompts."""
    return isolated_git_env(tmp_path_factory.mktemp("git-home"))


@pytest.fixture(scope="session")
def http_git_server(
    tmp_path_factory: pytest.TempPathFactory, git_env: dict[str, str]
) -> Iterator[HttpGitServer]:
    server = HttpGitServer(tmp_path_factory.mktemp("http-git") / "repos", git_env)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def git_daemon_server(
    tmp_path_factory: pytest.TempPathFactory, git_env: dict[str, str]
) -> Iterator[GitDaemonServer]:
    server = GitDaemonServer(tmp_path_factory.mktemp("git-daemon") / "repos", git_env)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["http", "git"])
def git_server(request: pytest.FixtureRequest) -> GitServer:
    """A running shared server (do not stop it; use git_server_factory for that)."""
    name = "http_git_server" if request.param == "http" else "git_daemon_server"
    server: GitServer = request.getfixturevalue(name)
    return server


@pytest.fixture
def git_server_factory(
    tmp_path: Path, git_env: dict[str, str]
) -> Iterator[Callable[..., GitServer]]:
    """make(kind, token=None) -> a started private server, stopped at teardown."""
    servers: list[GitServer] = []

    def make(kind: str, token: str | None = None) -> GitServer:
        root = tmp_path / f"server-{len(servers)}" / "repos"
        server: GitServer = (
            HttpGitServer(root, git_env, token=token)
            if kind == "http"
            else GitDaemonServer(root, git_env)
        )
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def make_operator(
    tmp_path: Path, git_env: dict[str, str]
) -> Callable[..., Operator]:
    """make_operator(server, push_config=()) -> an Operator on a new repo of that server."""

    def make(server: GitServer, push_config: tuple[str, ...] = ()) -> Operator:
        name = f"cluster-{next(_names)}"
        url = server.create_repo(name)
        return Operator(tmp_path / f"op-{name}", url, git_env, push_config=push_config)

    return make


@pytest.fixture
def operator(git_server: GitServer, make_operator: Callable[..., Operator]) -> Operator:
    """An operator with a clone of a new, empty repo on `git_server`."""
    return make_operator(git_server)
