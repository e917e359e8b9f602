"""The real git source: a private bare mirror under `checkout_dir`, fetched, verified and
exported through the modules beside this one (runner, mirror, verify, export)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from reconciler.ports.git.export import (
    clean_temp_exports,
    keep_ref,
    materialize,
    prune_exports,
)
from reconciler.ports.git.mirror import Mirror
from reconciler.ports.git.protocol import (
    CommitInfo,
    GitSourceConfig,
    PermanentSourceError,
    SourceError,
    TemporarySourceError,
)
from reconciler.ports.git.runner import GitRunner, tail
from reconciler.ports.git.urls import check_branch_name, check_url, normalize_repo_path, redact_url
from reconciler.ports.git.verify import verify_fast_forward, verify_signature

_log = logging.getLogger(__name__)

FULL_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


class GitPythonSource:
    """`GitSource` over a private bare mirror, driven through gitpython's `Git.execute`.

    Thread-safe within a process (one lock) and across processes sharing `checkout_dir`
    (an advisory file lock); each call holds the lock for its whole duration.
    """

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
        self._exports = self._root / "exports"
        self._lock = threading.Lock()
        self._git = GitRunner(config, url, self._root)
        self._mirror = Mirror(self._git)
        self._suspect = False  # an export failed reading objects: check before trusting

    @property
    def config(self) -> GitSourceConfig:
        return self._config

    @property
    def mirror_dir(self) -> Path:
        return self._git.mirror

    # ----------------------------------------------------------------- public API

    def fetch(self) -> CommitInfo:
        with self._locked():
            self._mirror.ensure()
            if self._suspect:
                self._mirror.complete.clear()
            if self._suspect and not self._mirror.healthy():
                self._mirror.recreate("objects unreadable during an earlier export")
            self._suspect = False
            try:
                self._fetch_once()
            except SourceError as err:
                if err.reason != "FetchFailed" or self._mirror.healthy():
                    raise
                self._mirror.recreate("fetch failed and the mirror does not check out")
                self._fetch_once()
            sha = self._branch_head()
            if not self._mirror.objects_complete(sha):
                self._mirror.recreate(f"objects of {sha} missing or unreadable")
                self._fetch_once()
                sha = self._branch_head()
                if not self._mirror.objects_complete(sha):
                    raise TemporarySourceError(
                        "CheckoutCorrupt",
                        "objects still unreadable after re-cloning the mirror",
                        revision=sha,
                    )
            info = self._commit_info(sha)
            _log.info("git fetched", extra={"revision": sha, "branch": self._config.branch})
            return info

    def verify(self, revision: str, *, last_accepted: str | None) -> None:
        with self._locked():
            self._mirror.ensure()
            sha = self._resolve(revision)
            policy = self._config.signature_policy
            if policy != "none":
                verify_signature(self._git, sha, policy)
            if last_accepted is not None and not self._config.allow_non_fast_forward:
                verify_fast_forward(self._git, sha, last_accepted)

    def export(self, revision: str) -> Path:
        with self._locked():
            self._mirror.ensure()
            sha = self._resolve(revision)
            key = (
                sha
                if self._path == "."
                else (f"{sha}-{hashlib.sha256(self._path.encode()).hexdigest()[:12]}")
            )
            final = self._exports / key
            self._exports.mkdir(parents=True, exist_ok=True)
            clean_temp_exports(self._exports)
            if not final.is_dir():
                materialize(self._git, self._path, sha, final, self._mark_suspect)
            now = time.time()
            os.utime(final, (now, now))
            keep_ref(self._git, sha)
            prune_exports(self._git, self._exports, keep=final)
            return final / "tree"

    def _mark_suspect(self) -> None:
        self._suspect = True

    # ----------------------------------------------------------------- locking

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            try:
                self._root.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(self._root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as err:
                raise TemporarySourceError(
                    "CheckoutCorrupt",
                    f"cannot use checkout dir {self._root}: {err.strerror}",
                ) from None
            try:
                deadline = time.monotonic() + self._config.timeout_s
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise TemporarySourceError(
                                "FetchFailed",
                                f"checkout dir {self._root} is locked by another process",
                            ) from None
                        time.sleep(0.05)
                yield
            finally:
                os.close(fd)  # releases the flock

    def _fetch_once(self) -> None:
        branch = self._config.branch
        refspec = f"+refs/heads/{branch}:refs/heads/{branch}"
        started = time.monotonic()
        res = self._git.run(
            ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--", self._url, refspec],
            config=self._git.auth_config(),
            check=False,
        )
        if res.status == 0:
            return
        stderr = res.stderr
        if "couldn't find remote ref" in stderr:
            raise PermanentSourceError(
                "BranchNotFound",
                f"branch {branch!r} not found at {redact_url(self._url)}",
            )
        elapsed = time.monotonic() - started
        if stderr.startswith("Timeout:") or elapsed >= self._config.timeout_s:
            detail = f"timed out after {self._config.timeout_s:g}s"
        else:
            detail = tail(stderr) or f"exit status {res.status}"
        raise TemporarySourceError(
            "FetchFailed",
            f"git fetch from {redact_url(self._url)} failed: {detail}",
        )

    def _branch_head(self) -> str:
        ref = f"refs/heads/{self._config.branch}"
        res = self._git.run(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], check=False)
        if res.status != 0 or not FULL_SHA.match(res.text):
            raise TemporarySourceError(
                "CheckoutCorrupt", f"{ref} missing in the mirror after fetch"
            )
        return res.text

    def _commit_info(self, sha: str) -> CommitInfo:
        res = self._git.run(
            ["show", "-s", "--no-show-signature", "--format=%H%x00%s%x00%an <%ae>%x00%cI", sha],
            check=False,
        )
        fields = res.stdout.decode("utf-8", "replace").rstrip("\n").split("\x00")
        if res.status != 0 or len(fields) != 4:
            raise TemporarySourceError(
                "CheckoutCorrupt", f"cannot read commit {sha}", revision=sha
            )
        return CommitInfo(
            revision=fields[0], subject=fields[1], author=fields[2], committed_at=fields[3]
        )

    def _resolve(self, revision: str) -> str:
        if not revision or revision.startswith("-"):
            raise ValueError(f"invalid revision: {revision!r}")
        res = self._git.run(
            ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{revision}^{{commit}}"],
            check=False,
        )
        if res.status != 0 or not FULL_SHA.match(res.text):
            raise TemporarySourceError(
                "FetchFailed",
                f"revision {revision} is not in the local mirror (fetch first)",
                revision=revision,
            )
        return res.text
