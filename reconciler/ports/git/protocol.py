"""The git source's vocabulary: its config, a commit, its error and the GitSource protocol.

The daemon talks to git only through `GitSource`:

- `fetch()` updates a private bare mirror and returns the head of the branch. It applies
  no policy: a fetched revision is not yet trusted.
- `verify(revision, last_accepted=...)` applies the signature policy and refuses history
  rewrites (the new head must descend from the last accepted revision).
- `export(revision)` writes the `path` sub-directory at that revision into a directory of
  its own and returns it.

Every failure is a `SourceError` with a CamelCase `reason`, raised as one of its two types:
`TemporarySourceError` (network, disk, a broken mirror: trying again later can help) or
`PermanentSourceError` (the commit itself is refused: only a new push helps).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from reconciler.core.errors import PermanentError, ReconcilerError, TemporaryError

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


class SourceError(ReconcilerError):
    """A git source failure; raise one of its two types below. `retryable` (from the
    type) says whether trying again later can help without a new commit."""

    reason: SourceErrorReason
    message: str
    revision: str | None

    def __init__(
        self, reason: SourceErrorReason, message: str, *, revision: str | None = None
    ) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.revision = revision


class TemporarySourceError(SourceError, TemporaryError):  # type: ignore[misc]
    """Network, disk, a broken mirror: the next fetch may work."""


class PermanentSourceError(SourceError, PermanentError):
    """The commit itself is refused (unsigned, too large, not a fast-forward, no such
    path or branch): it stays refused until someone pushes another."""


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

