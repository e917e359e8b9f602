"""Git source port: fetch the cluster repo, check it, and materialize a revision.

The daemon talks to git only through `GitSource`:

- `fetch()` updates a private bare mirror under `checkout_dir` and returns the head of the
  branch. It applies no policy: a fetched revision is not yet trusted.
- `verify(revision, last_accepted=...)` applies the signature policy and refuses history
  rewrites (the new head must descend from the last accepted revision).
- `export(revision)` writes the `path` sub-directory at that revision into a directory of
  its own and returns it. Exports of the last few revisions are kept, so the daemon can go
  back to the last good one after a restart without the network.

Every failure is a `SourceError` with a CamelCase `reason` and a `retryable` flag. Messages
never contain credentials: tokens travel in `GIT_CONFIG_*` environment variables (not on the
command line, which gitpython logs at DEBUG and puts into `GitCommandError`), user info in
URLs is redacted, and any text that comes back from git is scrubbed of the token before it
is logged or raised.

`LocalRefWatcher` watches the refs of a repository on the local file system and calls a
callback when they may have changed. It only wakes the loop; what changed is read by
`fetch()` like any other tick.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import logging
import math
import os
import re
import secrets
import shlex
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Protocol, cast, runtime_checkable

import git
import watchfiles

_log = logging.getLogger(__name__)

SourceErrorReason = Literal[
    "FetchFailed",
    "BranchNotFound",
    "PathNotFound",
    "SignatureMissing",
    "SignatureInvalid",
    "NonFastForward",
    "BlobTooLarge",
    "CheckoutCorrupt",
]

SignaturePolicy = Literal["none", "ssh", "gpg"]

_FULL_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_ALLOWED_SCHEMES = frozenset({"http", "https", "ssh", "git", "file"})
_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_BAD_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


@dataclass(frozen=True)
class GitSourceConfig:
    """Where the desired state lives and how far to trust it.

    `checkout_dir` is private to the source: it holds the bare mirror and the exports and
    may be deleted and re-created at any time. It must not be a user's clone.
    """

    url: str  # https://, http://, ssh://, git://, file:// or a local path
    branch: str
    checkout_dir: Path  # private dir under the daemon's state dir; we own it
    path: str = "."  # sub-directory of the repo holding the YAML (e.g. clusters/prod)
    timeout_s: float = 30.0
    token_file: Path | None = None  # http(s) token, read at fetch time, never logged
    ssh_key_file: Path | None = None  # GIT_SSH_COMMAND with -i and IdentitiesOnly
    signature_policy: SignaturePolicy = "none"
    allowed_signers_file: Path | None = None  # for ssh
    gpg_home: Path | None = None  # keyring dir for gpg
    allow_non_fast_forward: bool = False
    max_blob_bytes: int = 50 * 1024 * 1024  # refuse revisions with bigger files in `path`
    # Additions beyond the port's contract:
    token_username: str | None = None  # set: HTTP Basic user:token; unset: Bearer token
    ssh_known_hosts_file: Path | None = None  # set: StrictHostKeyChecking against it
    keep_exports: int = 3  # exports kept on disk, most recently used first


@dataclass(frozen=True)
class CommitInfo:
    revision: str  # full sha
    subject: str
    author: str  # "Name <email>"
    committed_at: str  # ISO 8601


class SourceError(Exception):
    """A git source failure. `retryable` says whether trying again later can help
    without a new commit (network, disk) or not (the commit itself is refused)."""

    reason: SourceErrorReason
    message: str
    revision: str | None
    retryable: bool

    def __init__(
        self,
        reason: SourceErrorReason,
        message: str,
        *,
        revision: str | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.revision = revision
        self.retryable = retryable


@runtime_checkable
class GitSource(Protocol):
    def fetch(self) -> CommitInfo:
        """Update the private mirror; return HEAD of the branch (no policy checks)."""
        ...

    def verify(self, revision: str, *, last_accepted: str | None) -> None:
        """Signature policy + fast-forward check against last_accepted; raise SourceError."""
        ...

    def export(self, revision: str) -> Path:
        """Materialize `path` at `revision` into a directory; PathNotFound if absent."""
        ...


# --------------------------------------------------------------------------- helpers


def redact_url(url: str) -> str:
    """Drop user info (user:password@) from URLs in `url` (or in any text)."""
    return _URL_USERINFO.sub(r"\1***@", url)


def normalize_repo_path(path: str) -> str:
    """'./clusters/prod/' -> 'clusters/prod'; '' or '.' -> '.'. Refuses escapes."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if path.startswith("/") or any(p == ".." for p in parts):
        raise ValueError(f"path must be relative and inside the repo: {path!r}")
    return "/".join(parts) if parts else "."


def check_branch_name(branch: str) -> None:
    """The subset of git-check-ref-format(1) rules that matter for a branch name."""
    bad = (
        not branch
        or branch.startswith(("-", "/"))
        or branch.endswith(("/", ".", ".lock"))
        or ".." in branch
        or "@{" in branch
        or "//" in branch
        or branch == "@"
        or _BAD_REF_CHARS.search(branch) is not None
        or any(part.startswith(".") for part in branch.split("/"))
    )
    if bad:
        raise ValueError(f"invalid branch name: {branch!r}")


def _scheme(url: str) -> str | None:
    m = _URL_SCHEME.match(url)
    return m.group(1).lower() if m else None


def is_local_url(url: str) -> bool:
    """True for file:// URLs and plain paths (not scp-like `host:path`)."""
    scheme = _scheme(url)
    if scheme is not None:
        return scheme == "file"
    colon = url.find(":")
    slash = url.find("/")
    return colon < 0 or (0 <= slash < colon)


def check_url(url: str) -> str:
    """Refuse transports we don't support (ext::, fd::, option injection). Returns the URL
    with local paths made absolute."""
    if not url or url.startswith("-"):
        raise ValueError("git url must not be empty or start with '-'")
    scheme = _scheme(url)
    if scheme is not None:
        if scheme not in _ALLOWED_SCHEMES:
            raise ValueError(f"unsupported git url scheme: {scheme}")
        return url
    if "::" in url:
        raise ValueError("git remote-helper urls (<transport>::<address>) are not supported")
    if is_local_url(url):
        return str(Path(url).expanduser().absolute())
    return url  # scp-like ssh: [user@]host:path


def _config_env(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """git config through the environment (git >= 2.31): never on a command line."""
    env = {"GIT_CONFIG_COUNT": str(len(pairs))}
    for i, (key, value) in enumerate(pairs):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


def _tail(text: str, lines: int = 4) -> str:
    kept = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return "; ".join(kept[-lines:])


@dataclass(frozen=True)
class _TreeEntry:
    mode: str
    kind: str
    oid: str
    size: int
    name: str


@dataclass(frozen=True)
class _Result:
    status: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace").strip()


class _GitFailed(Exception):
    def __init__(self, args: Sequence[str], result: _Result) -> None:
        super().__init__(f"git {args[0] if args else ''} exited {result.status}")
        self.result = result


# --------------------------------------------------------------------------- real source


class GitPythonSource:
    """`GitSource` over a private bare mirror, driven through gitpython's `Git.execute`.

    Thread-safe within a process (one lock) and across processes sharing `checkout_dir`
    (an advisory file lock); each call holds the lock for its whole duration.
    """

    _MIRROR = "mirror.git"
    _EXPORTS = "exports"
    _KEEP_REF_PREFIX = "refs/reconciler/exports/"

    def __init__(self, config: GitSourceConfig) -> None:
        check_branch_name(config.branch)
        url = check_url(config.url)
        path = normalize_repo_path(config.path)
        if config.signature_policy == "ssh" and config.allowed_signers_file is None:
            raise ValueError("signature_policy 'ssh' needs allowed_signers_file")
        if config.signature_policy == "gpg" and config.gpg_home is None:
            raise ValueError("signature_policy 'gpg' needs gpg_home")
        if config.timeout_s <= 0 or config.max_blob_bytes <= 0 or config.keep_exports < 1:
            raise ValueError("timeout_s, max_blob_bytes and keep_exports must be positive")
        self._config = config
        self._url = url
        self._path = path
        self._root = Path(config.checkout_dir).absolute()
        self._mirror = self._root / self._MIRROR
        self._exports = self._root / self._EXPORTS
        self._lock = threading.Lock()
        self._git = git.Git(str(self._root))
        self._secret: str | None = None  # the last token read, for scrubbing output
        self._suspect = False  # an export failed reading objects: check before trusting
        self._complete: set[str] = set()  # revisions whose objects were all readable

    @property
    def config(self) -> GitSourceConfig:
        return self._config

    @property
    def mirror_dir(self) -> Path:
        return self._mirror

    # ----------------------------------------------------------------- public API

    def fetch(self) -> CommitInfo:
        with self._locked():
            self._ensure_mirror()
            if self._suspect:
                self._complete.clear()
            if self._suspect and not self._mirror_healthy():
                self._recreate_mirror("objects unreadable during an earlier export")
            self._suspect = False
            try:
                self._fetch_once()
            except SourceError as err:
                if err.reason != "FetchFailed" or self._mirror_healthy():
                    raise
                self._recreate_mirror("fetch failed and the mirror does not check out")
                self._fetch_once()
            sha = self._branch_head()
            if not self._objects_complete(sha):
                self._recreate_mirror(f"objects of {sha} missing or unreadable")
                self._fetch_once()
                sha = self._branch_head()
                if not self._objects_complete(sha):
                    raise SourceError(
                        "CheckoutCorrupt",
                        "objects still unreadable after re-cloning the mirror",
                        revision=sha,
                        retryable=True,
                    )
            info = self._commit_info(sha)
            _log.info("git fetched", extra={"revision": sha, "branch": self._config.branch})
            return info

    def verify(self, revision: str, *, last_accepted: str | None) -> None:
        with self._locked():
            self._ensure_mirror()
            sha = self._resolve(revision)
            policy = self._config.signature_policy
            if policy != "none":
                self._verify_signature(sha, policy)
            if last_accepted is not None and not self._config.allow_non_fast_forward:
                self._verify_fast_forward(sha, last_accepted)

    def export(self, revision: str) -> Path:
        with self._locked():
            self._ensure_mirror()
            sha = self._resolve(revision)
            key = (
                sha
                if self._path == "."
                else (f"{sha}-{hashlib.sha256(self._path.encode()).hexdigest()[:12]}")
            )
            final = self._exports / key
            self._exports.mkdir(parents=True, exist_ok=True)
            self._clean_temp_exports()
            if not final.is_dir():
                self._materialize(sha, final)
            now = time.time()
            os.utime(final, (now, now))
            self._keep_ref(sha)
            self._prune_exports(keep=final)
            return final / "tree"

    # ----------------------------------------------------------------- locking

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            try:
                self._root.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(self._root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as err:
                raise SourceError(
                    "CheckoutCorrupt",
                    f"cannot use checkout dir {self._root}: {err.strerror}",
                    retryable=True,
                ) from None
            try:
                deadline = time.monotonic() + self._config.timeout_s
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise SourceError(
                                "FetchFailed",
                                f"checkout dir {self._root} is locked by another process",
                                retryable=True,
                            ) from None
                        time.sleep(0.05)
                yield
            finally:
                os.close(fd)  # releases the flock

    # ----------------------------------------------------------------- running git

    def _base_env(self) -> dict[str, str]:
        cfg = self._config
        timeout = max(1, math.ceil(cfg.timeout_s))
        ssh = [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={timeout}",
            "-o",
            "ServerAliveInterval=5",
            "-o",
            f"ServerAliveCountMax={max(1, timeout // 5)}",
        ]
        if cfg.ssh_key_file is not None:
            ssh += ["-i", str(cfg.ssh_key_file), "-o", "IdentitiesOnly=yes"]
        if cfg.ssh_known_hosts_file is not None:
            ssh += [
                "-o",
                f"UserKnownHostsFile={cfg.ssh_known_hosts_file}",
                "-o",
                "StrictHostKeyChecking=yes",
            ]
        return {
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "GIT_HTTP_LOW_SPEED_LIMIT": "1000",
            "GIT_HTTP_LOW_SPEED_TIME": str(timeout),
            "GIT_SSH_COMMAND": shlex.join(ssh),
            "GIT_SSH_VARIANT": "ssh",
        }

    def _run(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        config: Sequence[tuple[str, str]] = (),
        check: bool = True,
        output_stream: BinaryIO | None = None,
        istream: BinaryIO | None = None,
        timeout_s: float | None = None,
    ) -> _Result:
        """Run `git --git-dir=<mirror> <args>`; never raises GitCommandError."""
        full_env = self._base_env()
        full_env.update(_config_env([("credential.helper", ""), *config]))
        if env:
            full_env.update(env)
        command = ["git", f"--git-dir={self._mirror}", *args]
        try:
            raw = self._git.execute(
                command,
                with_extended_output=True,
                with_exceptions=False,
                kill_after_timeout=timeout_s or self._config.timeout_s,
                env=full_env,
                stdout_as_string=False,
                output_stream=output_stream,
                istream=istream,
            )
        except git.GitCommandNotFound as exc:
            raise SourceError("FetchFailed", "git executable not found", retryable=True) from exc
        status, out, err = cast("tuple[int, bytes | str | None, str | bytes]", raw)
        stdout = out if isinstance(out, bytes) else b""
        stderr = self._scrub(err if isinstance(err, str) else err.decode("utf-8", "replace"))
        result = _Result(int(status), stdout, stderr)
        if check and result.status != 0:
            raise _GitFailed(args, result)
        return result

    def _scrub(self, text: str) -> str:
        if self._secret:
            text = text.replace(self._secret, "***")
        return redact_url(text)

    # ----------------------------------------------------------------- mirror

    def _ensure_mirror(self) -> None:
        if not self._mirror_looks_usable():
            self._recreate_mirror("missing" if not self._mirror.exists() else "unusable")
        self._remove_stale_locks()

    def _mirror_looks_usable(self) -> bool:
        m = self._mirror
        if not ((m / "HEAD").is_file() and (m / "objects").is_dir() and (m / "refs").is_dir()):
            return False
        try:
            res = self._run(["rev-parse", "--is-bare-repository"], check=False)
        except SourceError:
            return False
        return res.status == 0 and res.text == "true"

    def _remove_stale_locks(self) -> None:
        # We hold the lock on checkout_dir, so any *.lock left here is from a killed run.
        candidates = [
            self._mirror / n
            for n in ("packed-refs.lock", "HEAD.lock", "config.lock", "shallow.lock", "index.lock")
        ]
        refs = self._mirror / "refs"
        if refs.is_dir():
            candidates += list(refs.rglob("*.lock"))
        for lock in candidates:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
                _log.warning("git mirror stale lock removed", extra={"file": str(lock)})

    def _mirror_healthy(self) -> bool:
        if not self._mirror_looks_usable():
            return False
        res = self._run(
            ["fsck", "--connectivity-only", "--no-dangling", "--no-progress"], check=False
        )
        return res.status == 0

    def _objects_complete(self, sha: str) -> bool:
        # Only the revision's own tree is read (export) and the commit graph is walked by
        # merge-base; walking every object of the history on each fetch grew with the
        # repo's age. A sha once found complete stays complete in an append-only mirror.
        if sha in self._complete:
            return True
        res = self._run(["rev-list", "--objects", "--no-walk", "--missing=error", sha], check=False)
        if res.status == 0:
            self._complete.add(sha)
        return res.status == 0

    def _recreate_mirror(self, why: str) -> None:
        self._complete.clear()
        _log.warning("git mirror re-created", extra={"why": why, "dir": str(self._mirror)})
        tmp = self._root / f".mirror-new-{secrets.token_hex(4)}"
        try:
            if self._mirror.exists() or self._mirror.is_symlink():
                trash = self._root / f".mirror-old-{secrets.token_hex(4)}"
                os.replace(self._mirror, trash)
                shutil.rmtree(trash, ignore_errors=True)
            self._git.execute(
                ["git", "init", "--quiet", "--bare", str(tmp)],
                kill_after_timeout=self._config.timeout_s,
                env=self._base_env(),
            )
            settings = [
                ("gc.autoDetach", "false"),  # no detached gc racing with our deletes
                ("maintenance.autoDetach", "false"),
                ("fetch.fsckObjects", "true"),  # refuse malformed objects and paths
                ("core.logAllRefUpdates", "false"),
                ("core.hooksPath", os.devnull),
            ]
            for key, value in settings:
                self._git.execute(
                    ["git", f"--git-dir={tmp}", "config", key, value],
                    kill_after_timeout=self._config.timeout_s,
                )
            os.replace(tmp, self._mirror)
        except (OSError, git.GitCommandError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            detail = exc.strerror if isinstance(exc, OSError) else _tail(str(exc.stderr))
            raise SourceError(
                "CheckoutCorrupt",
                f"cannot re-create git mirror in {self._root}: {detail}",
                retryable=True,
            ) from None

    # ----------------------------------------------------------------- fetch

    def _auth_config(self) -> list[tuple[str, str]]:
        cfg = self._config
        if cfg.token_file is None:
            return []
        scheme = _scheme(self._url)
        if scheme not in ("http", "https"):
            return []
        try:
            token = cfg.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise SourceError(
                "FetchFailed",
                f"cannot read token file {cfg.token_file}: {detail}",
                retryable=True,
            ) from None
        if not token or "\n" in token or "\r" in token:
            raise SourceError(
                "FetchFailed",
                f"token file {cfg.token_file} is empty or has several lines",
                retryable=True,
            )
        self._secret = token
        if cfg.token_username is not None:
            basic = base64.b64encode(f"{cfg.token_username}:{token}".encode()).decode()
            header = f"Authorization: Basic {basic}"
        else:
            header = f"Authorization: Bearer {token}"
        return [("http.extraHeader", header)]

    def _fetch_once(self) -> None:
        branch = self._config.branch
        refspec = f"+refs/heads/{branch}:refs/heads/{branch}"
        started = time.monotonic()
        res = self._run(
            ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--", self._url, refspec],
            config=self._auth_config(),
            check=False,
        )
        if res.status == 0:
            return
        stderr = res.stderr
        if "couldn't find remote ref" in stderr:
            raise SourceError(
                "BranchNotFound",
                f"branch {branch!r} not found at {redact_url(self._url)}",
                retryable=False,
            )
        elapsed = time.monotonic() - started
        if stderr.startswith("Timeout:") or elapsed >= self._config.timeout_s:
            detail = f"timed out after {self._config.timeout_s:g}s"
        else:
            detail = _tail(stderr) or f"exit status {res.status}"
        raise SourceError(
            "FetchFailed",
            f"git fetch from {redact_url(self._url)} failed: {detail}",
            retryable=True,
        )

    def _branch_head(self) -> str:
        ref = f"refs/heads/{self._config.branch}"
        res = self._run(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], check=False)
        if res.status != 0 or not _FULL_SHA.match(res.text):
            raise SourceError(
                "CheckoutCorrupt", f"{ref} missing in the mirror after fetch", retryable=True
            )
        return res.text

    def _commit_info(self, sha: str) -> CommitInfo:
        res = self._run(
            ["show", "-s", "--no-show-signature", "--format=%H%x00%s%x00%an <%ae>%x00%cI", sha],
            check=False,
        )
        fields = res.stdout.decode("utf-8", "replace").rstrip("\n").split("\x00")
        if res.status != 0 or len(fields) != 4:
            raise SourceError(
                "CheckoutCorrupt", f"cannot read commit {sha}", revision=sha, retryable=True
            )
        return CommitInfo(
            revision=fields[0], subject=fields[1], author=fields[2], committed_at=fields[3]
        )

    def _resolve(self, revision: str) -> str:
        if not revision or revision.startswith("-"):
            raise ValueError(f"invalid revision: {revision!r}")
        res = self._run(
            ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{revision}^{{commit}}"],
            check=False,
        )
        if res.status != 0 or not _FULL_SHA.match(res.text):
            raise SourceError(
                "FetchFailed",
                f"revision {revision} is not in the local mirror (fetch first)",
                revision=revision,
                retryable=True,
            )
        return res.text

    # ----------------------------------------------------------------- verify

    def _signature_kind(self, sha: str) -> str | None:
        """The first line of the commit's signature header, or None if unsigned."""
        res = self._run(["cat-file", "commit", sha], check=False)
        if res.status != 0:
            raise SourceError(
                "CheckoutCorrupt", f"cannot read commit {sha}", revision=sha, retryable=True
            )
        header = res.stdout.split(b"\n\n", 1)[0].decode("utf-8", "replace")
        for line in header.split("\n"):
            key, _, value = line.partition(" ")
            if key in ("gpgsig", "gpgsig-sha256"):
                return value.strip()
        return None

    def _verify_signature(self, sha: str, policy: SignaturePolicy) -> None:
        cfg = self._config
        kind = self._signature_kind(sha)
        if kind is None:
            raise SourceError(
                "SignatureMissing", f"commit {sha} is not signed", revision=sha, retryable=False
            )
        expected = (
            "-----BEGIN SSH SIGNATURE-----"
            if policy == "ssh"
            else ("-----BEGIN PGP SIGNATURE-----")
        )
        if kind != expected:
            raise SourceError(
                "SignatureInvalid",
                f"commit {sha} carries a signature of another kind than {policy}",
                revision=sha,
                retryable=False,
            )
        config: list[tuple[str, str]] = []
        env: dict[str, str] = {}
        if policy == "ssh":
            config = [
                ("gpg.format", "ssh"),
                ("gpg.ssh.allowedSignersFile", str(cfg.allowed_signers_file)),
            ]
        else:
            env = {"GNUPGHOME": str(cfg.gpg_home)}
        res = self._run(
            ["show", "-s", "--format=%G?%x00%GK%x00%GS", sha], config=config, env=env, check=False
        )
        status, _, rest = res.stdout.decode("utf-8", "replace").partition("\x00")
        key, _, signer = rest.rstrip("\n").partition("\x00")
        good = {"G"} if policy == "ssh" else {"G", "U"}
        if res.status == 0 and status in good:
            _log.info(
                "git signature verified",
                extra={"revision": sha, "key": key, "signer": signer, "policy": policy},
            )
            return
        meaning = {
            "B": "bad signature",
            "U": "key not in the allowed signers",
            "X": "signature expired",
            "Y": "key expired",
            "R": "key revoked",
            "E": "signature cannot be checked (unknown key)",
            "N": "no signature",
        }.get(status, f"verification failed ({_tail(res.stderr, 1) or status})")
        raise SourceError(
            "SignatureInvalid",
            f"commit {sha}: {meaning}" + (f" [{key}]" if key else ""),
            revision=sha,
            retryable=False,
        )

    def _verify_fast_forward(self, sha: str, last_accepted: str) -> None:
        res = self._run(
            ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{last_accepted}^{{commit}}"],
            check=False,
        )
        if res.status != 0:
            # The mirror holds all history of `sha`; a missing commit is not its ancestor.
            raise SourceError(
                "NonFastForward",
                f"{sha} does not descend from last accepted {last_accepted} "
                "(that commit is no longer reachable)",
                revision=sha,
                retryable=False,
            )
        last = res.text
        if last == sha:
            return
        res = self._run(["merge-base", "--is-ancestor", last, sha], check=False)
        if res.status == 0:
            return
        if res.status == 1:
            raise SourceError(
                "NonFastForward",
                f"{sha} does not descend from last accepted {last} (history was rewritten)",
                revision=sha,
                retryable=False,
            )
        raise SourceError(
            "CheckoutCorrupt",
            f"merge-base failed: {_tail(res.stderr)}",
            revision=sha,
            retryable=True,
        )

    # ----------------------------------------------------------------- export

    def _list_tree(self, sha: str) -> list[_TreeEntry]:
        treeish = f"{sha}^{{tree}}" if self._path == "." else f"{sha}:{self._path}"
        res = self._run(["cat-file", "-t", treeish], check=False)
        if res.status != 0 or res.text != "tree":
            what = "is not a directory" if res.status == 0 else "does not exist"
            raise SourceError(
                "PathNotFound",
                f"path {self._path!r} {what} at {sha}",
                revision=sha,
                retryable=False,
            )
        res = self._run(["ls-tree", "-r", "-l", "-z", treeish], check=False)
        if res.status != 0:
            self._suspect = True
            raise SourceError(
                "CheckoutCorrupt",
                f"cannot list {self._path!r} at {sha}",
                revision=sha,
                retryable=True,
            )
        entries = []
        for record in res.stdout.split(b"\x00"):
            if not record:
                continue
            meta, _, name = record.partition(b"\t")
            mode, kind, oid, size = meta.decode("ascii").split()
            entries.append(
                _TreeEntry(mode, kind, oid, int(size) if size != "-" else 0, os.fsdecode(name))
            )
        return entries

    def _materialize(self, sha: str, final: Path) -> None:
        entries = self._list_tree(sha)
        blobs: list[_TreeEntry] = []
        for e in entries:
            if e.kind != "blob":
                _log.warning("git export skips submodule", extra={"revision": sha, "file": e.name})
            elif e.mode == "120000":
                _log.warning("git export skips symlink", extra={"revision": sha, "file": e.name})
            elif e.size > self._config.max_blob_bytes:
                raise SourceError(
                    "BlobTooLarge",
                    f"{e.name} is {e.size} bytes, more than max_blob_bytes "
                    f"{self._config.max_blob_bytes}",
                    revision=sha,
                    retryable=False,
                )
            else:
                blobs.append(e)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{sha[:12]}-", dir=self._exports))
        try:
            tree = tmp / "tree"
            tree.mkdir()
            self._write_blobs(sha, blobs, tree, tmp)
            (tmp / "REVISION").write_text(f"{sha}\n{self._path}\n", encoding="utf-8")
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _write_blobs(self, sha: str, blobs: list[_TreeEntry], tree: Path, tmp: Path) -> None:
        if not blobs:
            return
        batch_in = tmp / "batch.in"
        batch_out = tmp / "batch.out"
        batch_in.write_text("".join(f"{b.oid}\n" for b in blobs), encoding="ascii")
        with batch_in.open("rb") as fin, batch_out.open("wb") as fout:
            res = self._run(["cat-file", "--batch"], istream=fin, output_stream=fout, check=False)
        if res.status != 0:
            self._suspect = True
            raise SourceError(
                "CheckoutCorrupt",
                f"cannot read blobs of {sha}: {_tail(res.stderr)}",
                revision=sha,
                retryable=True,
            )
        root = tree.resolve()
        with batch_out.open("rb") as stream:
            for blob in blobs:
                header = stream.readline().decode("ascii", "replace").split()
                if len(header) != 3 or header[0] != blob.oid or header[1] != "blob":
                    self._suspect = True
                    raise SourceError(
                        "CheckoutCorrupt",
                        f"object {blob.oid} ({blob.name}) unreadable at {sha}",
                        revision=sha,
                        retryable=True,
                    )
                size = int(header[2])
                dest = (tree / blob.name).resolve()
                if root not in dest.parents:
                    raise SourceError(
                        "PathNotFound",
                        f"unsafe file name {blob.name!r}",
                        revision=sha,
                        retryable=False,
                    )
                dest.parent.mkdir(parents=True, exist_ok=True)
                with dest.open("wb") as out:
                    remaining = size
                    while remaining:
                        chunk = stream.read(min(remaining, 1 << 20))
                        if not chunk:
                            raise SourceError(
                                "CheckoutCorrupt",
                                "short read from cat-file",
                                revision=sha,
                                retryable=True,
                            )
                        out.write(chunk)
                        remaining -= len(chunk)
                if blob.mode == "100755":
                    dest.chmod(0o755)
                stream.read(1)  # the newline after each object
        batch_in.unlink()
        batch_out.unlink()

    def _clean_temp_exports(self) -> None:
        for leftover in self._exports.glob(".tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def _keep_ref(self, sha: str) -> None:
        # Keeps exported commits reachable in the mirror, so gc never drops the last good
        # revision even after a force-push.
        self._run(["update-ref", f"{self._KEEP_REF_PREFIX}{sha}", sha], check=False)

    def _prune_exports(self, keep: Path) -> None:
        dirs = [d for d in self._exports.iterdir() if d.is_dir() and not d.name.startswith(".")]
        dirs.sort(key=lambda d: (d != keep, -d.stat().st_mtime))
        kept, dropped = dirs[: self._config.keep_exports], dirs[self._config.keep_exports :]
        for d in dropped:
            shutil.rmtree(d, ignore_errors=True)
        kept_shas = {d.name[:40] for d in kept}
        res = self._run(["for-each-ref", "--format=%(refname)", self._KEEP_REF_PREFIX], check=False)
        for ref in res.text.splitlines():
            if ref.removeprefix(self._KEEP_REF_PREFIX) not in kept_shas:
                self._run(["update-ref", "-d", ref], check=False)


# --------------------------------------------------------------------------- watcher


def find_git_dirs(repo: Path) -> list[Path]:
    """The directories holding HEAD and refs for a work tree or bare repository:
    `.git` (directory or `gitdir:` file), plus the common dir of a linked worktree."""
    repo = repo.resolve()
    dot = repo / ".git"
    if dot.is_dir():
        gitdir = dot
    elif dot.is_file():
        content = dot.read_text(encoding="utf-8").strip()
        if not content.startswith("gitdir:"):
            raise ValueError(f"{dot} is not a gitdir file")
        gitdir = (repo / content.removeprefix("gitdir:").strip()).resolve()
    elif (repo / "HEAD").is_file() and (repo / "objects").is_dir():
        gitdir = repo
    else:
        raise ValueError(f"{repo} is not a git repository")
    dirs = [gitdir]
    common = gitdir / "commondir"
    if common.is_file():
        dirs.append((gitdir / common.read_text(encoding="utf-8").strip()).resolve())
    return dirs


class LocalRefWatcher:
    """Calls `callback()` (from a background thread) when the refs of a local repository
    may have changed: HEAD, packed-refs or anything under refs/heads. The callback only
    wakes the loop; it gets no payload. Exceptions from the callback are logged."""

    def __init__(
        self,
        repo: Path | str,
        callback: Callable[[], None],
        *,
        debounce_ms: int = 200,
        force_polling: bool | None = None,
        name: str = "git-ref-watcher",
    ) -> None:
        self._dirs = find_git_dirs(Path(repo))
        self._callback = callback
        self._debounce_ms = debounce_ms
        self._force_polling = force_polling
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    @property
    def watched(self) -> list[Path]:
        return list(self._dirs)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> LocalRefWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _relevant(self, _change: object, path: str) -> bool:
        p = Path(path)
        for d in self._dirs:
            try:
                rel = p.relative_to(d).parts
            except ValueError:
                continue
            if rel in (("HEAD",), ("packed-refs",)):
                return True
            if len(rel) >= 3 and rel[:2] == ("refs", "heads") and not rel[-1].endswith(".lock"):
                return True
        return False

    def _main(self) -> None:
        while not self._stop.is_set():
            try:
                for _changes in watchfiles.watch(
                    *self._dirs,
                    watch_filter=self._relevant,
                    debounce=self._debounce_ms,
                    step=50,
                    stop_event=self._stop,
                    recursive=True,
                    force_polling=self._force_polling,
                    raise_interrupt=False,
                ):
                    try:
                        self._callback()
                    except Exception:
                        _log.exception("git ref watcher callback failed")
            except Exception as exc:
                level = (
                    logging.DEBUG
                    if isinstance(exc, OSError) and exc.errno in (errno.ENOENT,)
                    else logging.WARNING
                )
                _log.log(level, "git ref watcher restarting", extra={"error": repr(exc)})
                self._stop.wait(1.0)
