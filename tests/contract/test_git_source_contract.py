"""The git source's contract: GitPythonSource against a real git daemon on loopback and
FakeGitSource (reconciler.testing.git_source) answer the same scenarios the same way:
a new revision is fetched and exported; an unsigned or foreign-signed commit and a
history rewrite are refused for good (not retryable); an unreachable remote is a
retryable FetchFailed that clears when it comes back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal, Protocol

import pytest

from reconciler.ports.git import GitPythonSource, GitSource, GitSourceConfig, SourceError
from reconciler.testing.git_source import FakeGitSource
from testrigs.gitserver import GitServer, Operator, allowed_signers, ssh_keypair

PROD = "clusters/prod"
Signed = bool | Literal["unknown-key"]


def files(name: str) -> dict[str, str | bytes | None]:
    return {f"{PROD}/{name}.yaml": f"name: {name}\n"}


class World(Protocol):
    def commit(self, name: str, signed: Signed = True) -> str: ...
    def rewrite(self, onto: str, name: str) -> str: ...
    def source(self, *, ssh_policy: bool = False, lax: bool = False) -> GitSource: ...
    def remote_down(self, down: bool) -> None: ...


class RealWorld:
    def __init__(self, server: GitServer, operator: Operator, keys: Path) -> None:
        self.server = server
        self.op = operator
        self.root = keys.parent
        self.trusted, trusted_pub = ssh_keypair(keys, "trusted")
        self.stranger, _ = ssh_keypair(keys, "stranger")
        self.signers = allowed_signers(keys / "allowed_signers", {"op@example.test": trusted_pub})
        self._sources = 0

    def commit(self, name: str, signed: Signed = True) -> str:
        key = {True: self.trusted, "unknown-key": self.stranger}.get(signed)
        return self.op.commit_and_push(files(name), name, sign_with=key)

    def rewrite(self, onto: str, name: str) -> str:
        self.op.reset_hard(onto)
        sha = self.op.commit(files(name), name, sign_with=self.trusted)
        self.op.push(force=True)
        return sha

    def source(self, *, ssh_policy: bool = False, lax: bool = False) -> GitSource:
        self._sources += 1
        return GitPythonSource(GitSourceConfig(
            url=self.op.url, branch="main", path=PROD, timeout_s=10.0,
            checkout_dir=self.root / f"source-{self._sources}",
            signature_policy="ssh" if ssh_policy else "none",
            allowed_signers_file=self.signers if ssh_policy else None,
            allow_non_fast_forward=lax,
        ))

    def remote_down(self, down: bool) -> None:
        if down:
            self.server.stop()
        else:
            self.server.start()


class FakeWorld:
    def __init__(self) -> None:
        self.remote = FakeGitSource(path=PROD)  # the operator's side of every source
        self._sources: list[FakeGitSource] = []

    def commit(self, name: str, signed: Signed = True) -> str:
        rev = self.remote.commit({f"{PROD}/{name}.yaml": f"name: {name}\n"}, name, signed)
        for s in self._sources:
            s.commits, s.head = self.remote.commits, self.remote.head
        return rev

    def rewrite(self, onto: str, name: str) -> str:
        self.remote.force_reset(onto)
        return self.commit(name)

    def source(self, *, ssh_policy: bool = False, lax: bool = False) -> GitSource:
        s = FakeGitSource(path=PROD, signature_policy="ssh" if ssh_policy else "none",
                          allow_non_fast_forward=lax)
        s.commits, s.head = self.remote.commits, self.remote.head
        self._sources.append(s)
        return s

    def remote_down(self, down: bool) -> None:
        for s in self._sources:
            s.set_down(down)

    def close(self) -> None:
        for s in (self.remote, *self._sources):
            s.close()


@pytest.fixture(params=["real", "fake"])
def world(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    git_server_factory: Callable[..., GitServer],
    make_operator: Callable[..., Operator],
) -> Iterator[World]:
    if request.param == "fake":
        fake = FakeWorld()
        yield fake
        fake.close()
        return
    server = git_server_factory("git")  # private: the unreachable scenario stops it
    yield RealWorld(server, make_operator(server), tmp_path / "keys")


def refused(reason: str, fn: Callable[[], object]) -> SourceError:
    with pytest.raises(SourceError) as info:
        fn()
    assert info.value.reason == reason, info.value
    return info.value


def test_a_new_revision_is_fetched_verified_and_exported(world: World) -> None:
    a = world.commit("a")
    src = world.source()
    head = src.fetch()
    assert head.revision == a and head.subject == "a" and "@" in head.author
    src.verify(a, last_accepted=None)
    b = world.commit("b")
    assert src.fetch().revision == b
    src.verify(b, last_accepted=a)
    tree = src.export(b)
    assert sorted(p.name for p in tree.iterdir()) == ["a.yaml", "b.yaml"]
    assert (tree / "b.yaml").read_text() == "name: b\n"
    assert (src.export(a) / "a.yaml").is_file() and not (src.export(a) / "b.yaml").exists()


def test_verify_needs_the_revision_fetched_first(world: World) -> None:
    a = world.commit("a")
    src = world.source()
    err = refused("FetchFailed", lambda: src.verify(a, last_accepted=None))
    assert err.retryable


def test_signature_policy_refuses_unsigned_and_foreign_commits(world: World) -> None:
    unsigned = world.commit("a", signed=False)
    src = world.source(ssh_policy=True)
    src.fetch()
    err = refused("SignatureMissing", lambda: src.verify(unsigned, last_accepted=None))
    assert err.revision == unsigned and not err.retryable

    foreign = world.commit("b", signed="unknown-key")
    src.fetch()
    err = refused("SignatureInvalid", lambda: src.verify(foreign, last_accepted=None))
    assert err.revision == foreign and not err.retryable

    trusted = world.commit("c", signed=True)
    assert src.fetch().revision == trusted
    src.verify(trusted, last_accepted=None)


def test_a_history_rewrite_is_refused_unless_allowed(world: World) -> None:
    a = world.commit("a")
    b = world.commit("b")
    src = world.source()
    src.fetch()
    src.verify(b, last_accepted=a)
    c = world.rewrite(a, "c")  # force-push: b is no longer an ancestor of the head
    assert src.fetch().revision == c
    err = refused("NonFastForward", lambda: src.verify(c, last_accepted=b))
    assert err.revision == c and not err.retryable
    assert (src.export(b) / "b.yaml").is_file(), "the last good one is still there"

    lax = world.source(lax=True)
    assert lax.fetch().revision == c
    lax.verify(c, last_accepted=b)


def test_an_unreachable_remote_is_retryable_and_clears(world: World) -> None:
    a = world.commit("a")
    src = world.source()
    src.fetch()
    world.remote_down(True)
    err = refused("FetchFailed", src.fetch)
    assert err.retryable
    assert (src.export(a) / "a.yaml").is_file(), "what was fetched stays usable"
    world.remote_down(False)
    assert src.fetch().revision == a
