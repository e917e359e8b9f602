"""GitPythonSource against real git servers on loopback (smart HTTP and git daemon)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.ports.git import GitPythonSource, GitSource, GitSourceConfig, SourceError
from reconciler.ports.local_watch import LocalRefWatcher
from reconciler.testing.git_source import FakeGitSource

try:
    from testrigs.gitserver import (
        GitServer,
        HttpGitServer,
        Operator,
        allowed_signers,
        ssh_keypair,
    )
except ImportError:
    from gitserver import (  # type: ignore[no-redef,import-not-found,unused-ignore]
        GitServer,
        HttpGitServer,
        Operator,
        allowed_signers,
        ssh_keypair,
    )

pytestmark = pytest.mark.system

PROD = "clusters/prod"
DOC = "apiVersion: gitops/v1\nkind: Deployment\nname: {name}\n"


@pytest.fixture(autouse=True)
def _hermetic_git(monkeypatch: pytest.MonkeyPatch) -> None:
    """The source runs git with this process's environment: keep host config out."""
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)


@pytest.fixture(scope="module")
def ssh_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ssh-keys")
    trusted, trusted_pub = ssh_keypair(d, "trusted")
    stranger, _ = ssh_keypair(d, "stranger")
    signers = allowed_signers(d / "allowed_signers", {"op@example.test": trusted_pub})
    return {"trusted": trusted, "stranger": stranger, "allowed_signers": signers}


def make_source(url: str, tmp_path: Path, **kw: object) -> GitPythonSource:
    kw.setdefault("path", PROD)
    kw.setdefault("timeout_s", 10.0)
    cfg = GitSourceConfig(url=url, branch="main", checkout_dir=tmp_path / "state", **kw)  # type: ignore[arg-type]
    return GitPythonSource(cfg)


def files(name: str) -> dict[str, str | bytes | None]:
    return {f"{PROD}/{name}.yaml": DOC.format(name=name)}


def raises(reason: str, fn: Callable[[], object]) -> SourceError:
    with pytest.raises(SourceError) as info:
        fn()
    assert info.value.reason == reason, info.value
    return info.value


# --------------------------------------------------------------------------- flow


def test_valid_change(operator: Operator, tmp_path: Path) -> None:
    a = operator.commit_and_push(files("a"), "add a")
    src = make_source(operator.url, tmp_path)
    assert isinstance(src, GitSource)

    info = src.fetch()
    assert info.revision == a
    assert info.subject == "add a"
    assert info.author == "Operator <op@example.test>"
    assert info.committed_at[:4].isdigit() and "T" in info.committed_at
    src.verify(a, last_accepted=None)
    out_a = src.export(a)
    assert sorted(p.name for p in out_a.iterdir()) == ["a.yaml"]

    b = operator.commit_and_push({**files("b"), f"{PROD}/a.yaml": None, "README": "x"}, "b")
    assert src.fetch().revision == b
    src.verify(b, last_accepted=a)
    out_b = src.export(b)
    assert sorted(p.name for p in out_b.iterdir()) == ["b.yaml"]
    assert (out_b / "b.yaml").read_text() == DOC.format(name="b")
    # The old revision is still there, unchanged, and can be exported again.
    assert src.export(a) == out_a
    assert (out_a / "a.yaml").read_text() == DOC.format(name="a")


def test_force_push_backwards_refused_and_allowed(operator: Operator, tmp_path: Path) -> None:
    a = operator.commit_and_push(files("a"), "a")
    b = operator.commit_and_push(files("b"), "b")
    src = make_source(operator.url, tmp_path)
    assert src.fetch().revision == b
    src.verify(b, last_accepted=a)

    operator.reset_hard(a)
    operator.push(force=True)
    assert src.fetch().revision == a
    err = raises("NonFastForward", lambda: src.verify(a, last_accepted=b))
    assert err.revision == a and not err.retryable

    c = operator.commit(files("c"), "diverged")
    operator.push(force=True)
    assert src.fetch().revision == c
    raises("NonFastForward", lambda: src.verify(c, last_accepted=b))
    src.export(b)  # the last good one is still available

    lax = make_source(operator.url, tmp_path / "lax", allow_non_fast_forward=True)
    assert lax.fetch().revision == c
    lax.verify(c, last_accepted=b)


def test_last_accepted_unknown_to_fresh_mirror_is_non_fast_forward(
    operator: Operator, tmp_path: Path
) -> None:
    operator.commit_and_push(files("a"), "a")
    src = make_source(operator.url, tmp_path)
    head = src.fetch().revision
    raises("NonFastForward", lambda: src.verify(head, last_accepted="1" * 40))


def test_branch_deleted(operator: Operator, tmp_path: Path) -> None:
    a = operator.commit_and_push(files("a"), "a")
    src = make_source(operator.url, tmp_path)
    src.fetch()
    out = src.export(a)
    operator.git("branch", "-m", "main", "other")
    operator.git("push", "--quiet", "origin", "other")
    operator.delete_remote_branch()
    err = raises("BranchNotFound", src.fetch)
    assert "main" in err.message
    assert src.export(a) == out  # last good revision still usable


def test_repo_path_missing(operator: Operator, tmp_path: Path) -> None:
    a = operator.commit_and_push({"other/x.yaml": "x: 1\n", "clusters/file": "f"}, "no prod")
    src = make_source(operator.url, tmp_path)
    src.fetch()
    err = raises("PathNotFound", lambda: src.export(a))
    assert err.revision == a and PROD in err.message
    file_src = make_source(operator.url, tmp_path / "f", path="clusters/file")
    file_src.fetch()
    raises("PathNotFound", lambda: file_src.export(a))
    root = make_source(operator.url, tmp_path / "r", path=".")
    root.fetch()
    assert (root.export(a) / "other" / "x.yaml").read_text() == "x: 1\n"


def test_huge_file_refused(operator: Operator, tmp_path: Path) -> None:
    limit = 64 * 1024
    ok = operator.commit_and_push(
        {**files("a"), "blobs/outside.bin": os.urandom(limit * 2)}, "big file outside path"
    )
    src = make_source(operator.url, tmp_path, max_blob_bytes=limit)
    src.fetch()
    src.export(ok)
    big = operator.commit_and_push({f"{PROD}/weights.bin": os.urandom(limit + 1)}, "big")
    assert src.fetch().revision == big
    err = raises("BlobTooLarge", lambda: src.export(big))
    assert "weights.bin" in err.message and not err.retryable


# --------------------------------------------------------------------------- signatures


def test_ssh_policy_unsigned_commit(
    operator: Operator, tmp_path: Path, ssh_keys: dict[str, Path]
) -> None:
    a = operator.commit_and_push(files("a"), "unsigned")
    src = make_source(operator.url, tmp_path, signature_policy="ssh",
                      allowed_signers_file=ssh_keys["allowed_signers"])
    src.fetch()
    err = raises("SignatureMissing", lambda: src.verify(a, last_accepted=None))
    assert err.revision == a and not err.retryable


def test_ssh_policy_unknown_key(
    operator: Operator, tmp_path: Path, ssh_keys: dict[str, Path]
) -> None:
    a = operator.commit_and_push(files("a"), "stranger", sign_with=ssh_keys["stranger"])
    src = make_source(operator.url, tmp_path, signature_policy="ssh",
                      allowed_signers_file=ssh_keys["allowed_signers"])
    src.fetch()
    err = raises("SignatureInvalid", lambda: src.verify(a, last_accepted=None))
    assert err.revision == a


def test_ssh_policy_allowed_key(
    operator: Operator, tmp_path: Path, ssh_keys: dict[str, Path]
) -> None:
    a = operator.commit_and_push(files("a"), "trusted", sign_with=ssh_keys["trusted"])
    b = operator.commit_and_push(files("b"), "trusted 2", sign_with=ssh_keys["trusted"])
    src = make_source(operator.url, tmp_path, signature_policy="ssh",
                      allowed_signers_file=ssh_keys["allowed_signers"])
    assert src.fetch().revision == b
    src.verify(b, last_accepted=a)
    assert (src.export(b) / "b.yaml").is_file()


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("kind", ["http", "git"])
def test_server_down_then_back(
    kind: str,
    git_server_factory: Callable[..., GitServer],
    make_operator: Callable[..., Operator],
    tmp_path: Path,
) -> None:
    server = git_server_factory(kind)
    op = make_operator(server)
    a = op.commit_and_push(files("a"), "a")
    src = make_source(op.url, tmp_path, timeout_s=5.0)
    assert src.fetch().revision == a
    out = src.export(a)

    server.stop()
    started = time.monotonic()
    err = raises("FetchFailed", src.fetch)
    assert err.retryable and time.monotonic() - started < 5
    assert src.export(a) == out  # last good revision usable while the server is down

    server.start()
    b = op.commit_and_push(files("b"), "b")
    assert src.fetch().revision == b
    src.verify(b, last_accepted=a)


def test_hung_server_times_out(
    git_server_factory: Callable[..., GitServer],
    make_operator: Callable[..., Operator],
    tmp_path: Path,
) -> None:
    server = git_server_factory("http")
    assert isinstance(server, HttpGitServer)
    op = make_operator(server)
    op.commit_and_push(files("a"), "a")
    src = make_source(op.url, tmp_path, timeout_s=1.5)
    server.hang.set()
    started = time.monotonic()
    err = raises("FetchFailed", src.fetch)
    elapsed = time.monotonic() - started
    server.release.set()
    assert err.retryable
    assert elapsed < 6, elapsed


def _corrupt(mirror: Path, how: str) -> None:
    if how == "garbage-head":
        (mirror / "HEAD").write_text("garbage\n")
    elif how == "empty-dir":
        shutil.rmtree(mirror)
        mirror.mkdir()
    elif how == "stale-locks":
        (mirror / "packed-refs.lock").write_text("")
        (mirror / "refs" / "heads" / "main.lock").write_text("")
    elif how == "garbage-objects":
        for f in (mirror / "objects").rglob("*"):
            if f.is_file() and f.name not in ("packs",):
                f.chmod(0o644)
                f.write_bytes(b"not a git object" * 3)
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["garbage-head", "empty-dir", "stale-locks", "garbage-objects"])
def test_corrupt_mirror_recovered(
    how: str, git_server: GitServer, make_operator: Callable[..., Operator], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    op = make_operator(git_server)
    op.commit_and_push(files("a"), "a")
    src = make_source(op.url, tmp_path)
    with caplog.at_level(logging.INFO, logger="reconciler.ports.git"):
        src.fetch()
    # issue 19: the first start simply has no mirror yet; that is no warning
    first = [r for r in caplog.records if r.getMessage() == "git mirror re-created"]
    assert [(r.levelno, getattr(r, "why", None)) for r in first] == [(logging.INFO, "missing")]
    caplog.clear()
    _corrupt(src.mirror_dir, how)
    b = op.commit_and_push(files("b"), "b")
    with caplog.at_level(logging.WARNING, logger="reconciler.ports.git"):
        assert src.fetch().revision == b
    assert (src.export(b) / "b.yaml").is_file()
    # garbage-objects needs no re-creation: with the pack index unreadable git fetches
    # every object again (this assertion used to pass on the first start's message)
    if how not in ("stale-locks", "garbage-objects"):
        assert "git mirror re-created" in caplog.messages
    # A new instance (daemon restart) over a corrupt mirror recovers too.
    _corrupt(src.mirror_dir, how)
    again = make_source(op.url, tmp_path)
    assert again.fetch().revision == b


def test_token_never_leaks(
    git_server_factory: Callable[..., GitServer],
    make_operator: Callable[..., Operator],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = "tok-" + os.urandom(8).hex()
    wrong = "wrong-" + os.urandom(8).hex()
    server = git_server_factory("http", token=token)
    assert isinstance(server, HttpGitServer)
    op = make_operator(server, push_config=(f"http.extraHeader=Authorization: Bearer {token}",))
    a = op.commit_and_push(files("a"), "a")
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    caplog.set_level(logging.DEBUG)  # gitpython logs every command line at DEBUG

    good = make_source(op.url, tmp_path / "good", token_file=token_file)
    assert good.fetch().revision == a
    basic = make_source(op.url, tmp_path / "basic", token_file=token_file,
                        token_username="x-access-token")
    assert basic.fetch().revision == a

    token_file.write_text(wrong)  # read at each fetch
    err = raises("FetchFailed", good.fetch)
    no_token = make_source(op.url, tmp_path / "none")
    raises("FetchFailed", no_token.fetch)
    userinfo_url = op.url.replace("http://", f"http://user:{wrong}@")
    in_url = make_source(userinfo_url, tmp_path / "url")
    err_url = raises("FetchFailed", in_url.fetch)

    assert any(token in h for h in server.auth_headers)
    assert any(wrong in h for h in server.auth_headers)  # the wrong one was really sent
    texts = [str(err), err.message, repr(err), str(err_url), err_url.message, caplog.text]
    texts += [str(r.__dict__) for r in caplog.records]
    for text in texts:
        assert token not in text
        assert wrong not in text


# --------------------------------------------------------------------------- local repos


def test_local_path_repo_and_ref_watcher(tmp_path: Path, git_env: dict[str, str]) -> None:
    op = Operator(tmp_path / "local", str(tmp_path / "unused.git"), git_env)
    a = op.commit(files("a"), "a")
    src = make_source(str(op.dir), tmp_path)
    assert src.fetch().revision == a

    woke = threading.Event()
    watcher = LocalRefWatcher(op.dir, woke.set, debounce_ms=50)
    watcher.start()
    try:
        deadline = time.monotonic() + 10
        b = a
        while not woke.is_set() and time.monotonic() < deadline:
            b = op.commit(files(f"b{time.monotonic_ns()}"), "b")  # until the watcher is up
            woke.wait(0.5)
        assert woke.is_set()
    finally:
        watcher.stop()
    assert src.fetch().revision == b


def test_export_keeps_recent_revisions(operator: Operator, tmp_path: Path) -> None:
    shas = [operator.commit_and_push(files(f"r{i}"), f"r{i}") for i in range(5)]
    src = make_source(operator.url, tmp_path, keep_exports=3)
    src.fetch()
    outs = [src.export(sha) for sha in shas]
    assert [o.exists() for o in outs] == [False, False, True, True, True]
    again = src.export(shas[0])  # an old revision comes back on demand
    assert (again / "r0.yaml").is_file()
    assert outs[4].exists()
    assert sum(1 for d in (tmp_path / "state" / "exports").iterdir()) == 3


# --------------------------------------------------------------------------- gpg


def _gpg(home: Path, *args: str) -> bytes:
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--quiet", *args],
                          check=True, capture_output=True, timeout=60).stdout


@pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg not installed")
def test_gpg_policy(git_daemon_server: GitServer, make_operator: Callable[..., Operator],
                    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    signer_home = tmp_path_factory.mktemp("gpg-signer")
    trust_home = tmp_path_factory.mktemp("gpg-trust")
    empty_home = tmp_path_factory.mktemp("gpg-empty")
    for home in (signer_home, trust_home, empty_home):
        home.chmod(0o700)
    try:
        _gpg(signer_home, "--passphrase", "", "--quick-gen-key", "Op <op@example.test>",
             "ed25519", "sign", "never")
        pub = _gpg(signer_home, "--armor", "--export", "op@example.test")
        (tmp_path / "pub.asc").write_bytes(pub)
        _gpg(trust_home, "--import", str(tmp_path / "pub.asc"))
        op = make_operator(git_daemon_server)
        env = {**op.env, "GNUPGHOME": str(signer_home)}
        op.env = env
        op.write(files("a"))
        op.git("add", "--all")
        op.git("-c", "user.signingkey=op@example.test", "commit", "-q", "-S", "-m", "gpg")
        op.push()
        a = op.head()
        unsigned = make_operator(git_daemon_server)
        u = unsigned.commit_and_push(files("u"), "unsigned")

        trusted = make_source(op.url, tmp_path / "t", signature_policy="gpg", gpg_home=trust_home)
        trusted.fetch()
        trusted.verify(a, last_accepted=None)
        unknown = make_source(op.url, tmp_path / "e", signature_policy="gpg", gpg_home=empty_home)
        unknown.fetch()
        raises("SignatureInvalid", lambda: unknown.verify(a, last_accepted=None))
        ssh_only = make_source(op.url, tmp_path / "s", signature_policy="ssh",
                               allowed_signers_file=tmp_path / "pub.asc")
        ssh_only.fetch()
        raises("SignatureInvalid", lambda: ssh_only.verify(a, last_accepted=None))
        plain = make_source(unsigned.url, tmp_path / "u", signature_policy="gpg",
                            gpg_home=trust_home)
        plain.fetch()
        raises("SignatureMissing", lambda: plain.verify(u, last_accepted=None))
    finally:
        for home in (signer_home, trust_home, empty_home):
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"],
                           capture_output=True, timeout=30, check=False)


# --------------------------------------------------------------------------- fake parity


def _outcome(fn: Callable[[], object]) -> str:
    try:
        fn()
    except SourceError as err:
        return err.reason
    return "ok"


def test_fake_follows_the_same_rules(git_daemon_server: GitServer,
                                     make_operator: Callable[..., Operator],
                                     tmp_path: Path) -> None:
    op = make_operator(git_daemon_server)
    real = make_source(op.url, tmp_path, max_blob_bytes=1000)
    fake = FakeGitSource(path=PROD, max_blob_bytes=1000)
    try:
        seen: dict[str, list[str]] = {"real": [], "fake": []}

        def both(real_fn: Callable[[], object], fake_fn: Callable[[], object]) -> None:
            seen["real"].append(_outcome(real_fn))
            seen["fake"].append(_outcome(fake_fn))

        ra, fa = op.commit_and_push(files("a"), "a"), fake.commit(files("a"), "a")  # type: ignore[arg-type]
        both(real.fetch, fake.fetch)
        rb, fb = op.commit_and_push(files("b"), "b"), fake.commit(files("b"), "b")  # type: ignore[arg-type]
        both(real.fetch, fake.fetch)
        both(lambda: real.verify(rb, last_accepted=ra), lambda: fake.verify(fb, last_accepted=fa))
        both(lambda: real.export(rb), lambda: fake.export(fb))
        op.reset_hard(ra)
        op.push(force=True)
        fake.force_reset(fa)
        both(real.fetch, fake.fetch)
        both(lambda: real.verify(ra, last_accepted=rb), lambda: fake.verify(fa, last_accepted=fb))
        big = {f"{PROD}/big.yaml": "x" * 1001}
        rc, fc = op.commit_and_push(big, "big"), fake.commit(big, "big")  # type: ignore[arg-type]
        both(real.fetch, fake.fetch)
        both(lambda: real.export(rc), lambda: fake.export(fc))
        gone = {f"{PROD}/a.yaml": None, f"{PROD}/big.yaml": None, "x": "y"}
        rd, fd = op.commit_and_push(gone, "gone"), fake.commit(gone, "gone")
        both(real.fetch, fake.fetch)
        both(lambda: real.export(rd), lambda: fake.export(fd))
        op.delete_remote_branch()
        fake.delete_branch()
        both(real.fetch, fake.fetch)
        assert seen["real"] == seen["fake"] == [
            "ok", "ok", "ok", "ok", "ok", "NonFastForward", "ok", "BlobTooLarge", "ok",
            "PathNotFound", "BranchNotFound",
        ]
    finally:
        fake.close()
