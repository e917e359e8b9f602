"""Turn the git source into a desired state, keeping the last good revision in force.

A revision becomes desired only after it is fetched, verified (signature policy,
fast-forward), exported and loaded without a single problem. Anything else is recorded
(reason, message, attempted revision) and the previous desired state stays: desired-
unknown is not desired-empty.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from reconciler.core.errors import InvalidDesiredState, Problem
from reconciler.desired.loader import load_directory
from reconciler.desired.state import DesiredState
from reconciler.ports.files import atomic_write
from reconciler.ports.git_source import CommitInfo, GitSource, SourceError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceFailure:
    reason: str
    message: str
    revision: str | None
    retryable: bool
    problems: tuple[Problem, ...] = ()


class SourceSync:
    """Owns the answer to "what is desired now". Persists the last good revision."""

    def __init__(self, source: GitSource, state_dir: Path) -> None:
        self.source = source
        self.record = state_dir / "source.json"
        self.fetched: CommitInfo | None = None
        self.attempted: CommitInfo | None = None
        self.good: CommitInfo | None = None
        self.desired: DesiredState | None = None
        self.failure: SourceFailure | None = None
        self.fetched_at: float | None = None
        self._restore()

    def _restore(self) -> None:
        """After a restart, bring back the last good revision without the network."""
        try:
            data = json.loads(self.record.read_text())
            info = CommitInfo(**data["good"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        try:
            path = self.source.export(info.revision)
            self.desired = load_directory(path, revision=info.revision)
            self.good = info
            log.info("restored last good revision", extra={"revision": info.revision})
        except (SourceError, InvalidDesiredState) as exc:
            log.error(
                "cannot restore last good revision",
                extra={"revision": info.revision, "error": str(exc)},
            )

    def sync(self, now: float) -> bool:
        """Fetch and maybe adopt a new revision. True when the desired state changed."""
        try:
            head = self.source.fetch()
        except SourceError as exc:
            self.failure = SourceFailure(exc.reason, exc.message, exc.revision, exc.retryable)
            log.warning("fetch failed", extra={"reason": exc.reason, "error": exc.message})
            return False
        self.fetched = head
        self.fetched_at = now
        if self.good is not None and head.revision == self.good.revision:
            self.attempted = head
            self.failure = None
            return False
        if (
            self.attempted is not None
            and head.revision == self.attempted.revision
            and self.failure is not None
            and not self.failure.retryable
        ):
            return False  # same bad commit: the verdict cannot change until a new push
        self.attempted = head
        try:
            self.source.verify(
                head.revision, last_accepted=self.good.revision if self.good else None
            )
            path = self.source.export(head.revision)
            desired = load_directory(path, revision=head.revision)
        except SourceError as exc:
            self.failure = SourceFailure(exc.reason, exc.message, head.revision, exc.retryable)
            log.error(
                "revision refused",
                extra={"revision": head.revision, "reason": exc.reason, "error": exc.message},
            )
            return False
        except InvalidDesiredState as exc:
            self.failure = SourceFailure(
                "InvalidDesiredState", str(exc), head.revision, False, tuple(exc.problems)
            )
            log.error("revision invalid", extra={"revision": head.revision, "error": str(exc)})
            return False
        self.desired = desired
        self.good = head
        self.failure = None
        atomic_write(
            self.record,
            json.dumps({"good": head.__dict__}, indent=1).encode(),
        )
        log.info("new desired revision", extra={"revision": head.revision, "subject": head.subject})
        return True
