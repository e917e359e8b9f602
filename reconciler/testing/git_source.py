"""A stateful, in-memory `GitSource` for tests and for users' own tests.

    src = FakeGitSource(path="clusters/prod", signature_policy="ssh")
    a = src.commit({"clusters/prod/app.yaml": "..."}, subject="add app")
    assert src.fetch().revision == a
    src.verify(a, last_accepted=None)
    directory = src.export(a)

It follows the real source's rules: `fetch` returns the branch head and applies no policy;
`verify` checks signatures (when a policy is set) and fast-forward against `last_accepted`;
`export` writes the files under `path` into a directory of their own and refuses files
bigger than `max_blob_bytes`. Failures are `SourceError`s with the same reasons.
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from reconciler.ports.git import (
    CommitInfo,
    PermanentSourceError,
    SignaturePolicy,
    TemporarySourceError,
    normalize_repo_path,
)

Signed = bool | Literal["unknown-key"]


def _rmtree(path: Path, ignore_errors: bool) -> None:
    shutil.rmtree(path, ignore_errors=ignore_errors)


@dataclass(frozen=True)
class FakeCommit:
    revision: str
    parent: str | None
    files: dict[str, str]  # the whole tree after this commit
    subject: str
    author: str
    committed_at: str
    signed: Signed


@dataclass
class _Calls:
    fetch: int = 0
    verify: int = 0
    export: int = 0
    history: list[str] = field(default_factory=list)


class FakeGitSource:
    """In-memory git source. `commit()` takes the files it changes (a value of None deletes
    a file); the tree carries over from the parent, as in git."""

    def __init__(
        self,
        *,
        path: str = ".",
        signature_policy: SignaturePolicy = "none",
        allow_non_fast_forward: bool = False,
        max_blob_bytes: int = 50 * 1024 * 1024,
        export_root: Path | None = None,
        author: str = "Operator <op@example.test>",
    ) -> None:
        self.path = normalize_repo_path(path)
        self.signature_policy = signature_policy
        self.allow_non_fast_forward = allow_non_fast_forward
        self.max_blob_bytes = max_blob_bytes
        self.author = author
        self.commits: dict[str, FakeCommit] = {}
        self.head: str | None = None
        self.branch_exists = True
        self.down = False
        self.calls = _Calls()
        self._fetched: set[str] = set()
        self._clock = itertools.count()
        if export_root is None:
            self._root = Path(tempfile.mkdtemp(prefix="fake-git-source-"))
            self._finalizer: Callable[[], object] | None = weakref.finalize(
                self, _rmtree, self._root, True
            )
        else:
            self._root = export_root
            self._finalizer = None

    # ---------------------------------------------------------------- operator side

    def commit(
        self,
        files: dict[str, str | None],
        subject: str = "change",
        signed: Signed = True,
        *,
        replace: bool = False,
    ) -> str:
        """Add a commit on the branch and return its revision. `signed`: True (trusted
        key), False (unsigned) or "unknown-key". `replace`: the tree is exactly `files`."""
        tree = {} if replace or self.head is None else dict(self.commits[self.head].files)
        for name, content in files.items():
            norm = normalize_repo_path(name)
            if content is None:
                tree.pop(norm, None)
            else:
                tree[norm] = content
        tick = next(self._clock)
        digest = hashlib.sha1(usedforsecurity=False)
        digest.update(f"{self.head}\0{subject}\0{tick}\0".encode())
        for name in sorted(tree):
            digest.update(f"{name}\0{tree[name]}\0".encode())
        revision = digest.hexdigest()
        self.commits[revision] = FakeCommit(
            revision=revision,
            parent=self.head,
            files=tree,
            subject=subject,
            author=self.author,
            committed_at=f"2025-01-01T00:{tick // 60 % 60:02d}:{tick % 60:02d}+00:00",
            signed=signed,
        )
        self.head = revision
        self.branch_exists = True
        return revision

    def force_reset(self, revision: str) -> None:
        """Point the branch at `revision` (any known commit): a force-push."""
        if revision not in self.commits:
            raise KeyError(revision)
        self.head = revision
        self.branch_exists = True

    def delete_branch(self) -> None:
        self.branch_exists = False

    def set_down(self, down: bool = True) -> None:
        """While down, fetch fails with a retryable FetchFailed."""
        self.down = down

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> FakeGitSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- GitSource

    def fetch(self) -> CommitInfo:
        self.calls.fetch += 1
        if self.down:
            raise TemporarySourceError("FetchFailed", "fake remote is down")
        if not self.branch_exists or self.head is None:
            raise PermanentSourceError("BranchNotFound", "branch not found on fake remote")
        self._fetched.update(self._ancestry(self.head))
        c = self.commits[self.head]
        self.calls.history.append(c.revision)
        return CommitInfo(c.revision, c.subject, c.author, c.committed_at)

    def verify(self, revision: str, *, last_accepted: str | None) -> None:
        self.calls.verify += 1
        c = self._known(revision)
        if self.signature_policy != "none":
            if c.signed is False:
                raise PermanentSourceError("SignatureMissing", f"commit {revision} is not signed",
                                  revision=revision)
            if c.signed != True:  # noqa: E712 - "unknown-key" is truthy
                raise PermanentSourceError("SignatureInvalid",
                                  f"commit {revision}: key not in the allowed signers",
                                  revision=revision)
        if last_accepted is None or self.allow_non_fast_forward or last_accepted == revision:
            return
        if last_accepted not in self._ancestry(revision):
            raise PermanentSourceError(
                "NonFastForward",
                f"{revision} does not descend from last accepted {last_accepted}",
                revision=revision,
            )

    def export(self, revision: str) -> Path:
        self.calls.export += 1
        c = self._known(revision)
        prefix = "" if self.path == "." else self.path + "/"
        selected = {n[len(prefix):]: t for n, t in c.files.items() if n.startswith(prefix)}
        if not selected and self.path != ".":
            raise PermanentSourceError("PathNotFound", f"path {self.path!r} does not exist at "
                              f"{revision}", revision=revision)
        for name, text in selected.items():
            if len(text.encode()) > self.max_blob_bytes:
                raise PermanentSourceError("BlobTooLarge", f"{name} is bigger than max_blob_bytes",
                                  revision=revision)
        out = self._root / revision / "tree"
        if out.is_dir():
            return out
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self._root))
        for name, text in selected.items():
            dest = tmp / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text, encoding="utf-8")
        (self._root / revision).mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
        return out

    # ---------------------------------------------------------------- helpers

    def _known(self, revision: str) -> FakeCommit:
        if revision not in self._fetched:
            raise TemporarySourceError(
                "FetchFailed", f"revision {revision} is not in the local mirror (fetch first)",
                revision=revision,
            )
        return self.commits[revision]

    def _ancestry(self, revision: str) -> list[str]:
        out: list[str] = []
        cur: str | None = revision
        while cur is not None:
            out.append(cur)
            cur = self.commits[cur].parent
        return out
